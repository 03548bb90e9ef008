//! pod's Kubernetes CRI server: CRI v1 over gRPC on a unix socket, a client
//! of stage0's library (never of the CLI's text). It keeps no state of its
//! own: every answer is read from the store and pods directory, so restarting
//! it disturbs nothing.
//!
//! Exec, Attach and PortForward answer with a URL on the streaming server
//! (streaming/): SPDY/3.1 and WebSocket, exec through `pod enter`.
//!
//! stage0's library is blocking (reqwest's blocking client, flock, plain
//! file I/O); tokio lives in this crate alone, and every library call runs on
//! `spawn_blocking`.

pub mod container;
pub mod error;
pub mod fsinfo;
pub mod images;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod mounts;
pub mod podcfg;
pub mod reference;
pub mod runtime;
pub mod sandbox;
pub mod secctx;
pub mod server;
pub mod stats;
pub mod streaming;
pub mod update;
pub mod vm;

pub mod proto {
    //! The CRI v1 API (`runtime.v1`), generated from proto/api.proto.
    #![allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("runtime.v1");
}
