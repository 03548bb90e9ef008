//! pod's appc metadata service (appc's ace.md): see `spec::metadata` for
//! the contract with stage0 and the stage1s, SECURITY.md for its threat
//! model. `answer` holds the endpoints, `service` the sockets and HTTP, `adopt`
//! the running pods a (re)started service takes back.

pub mod adopt;
pub mod answer;
pub mod service;
