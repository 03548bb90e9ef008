//! stage0 of `pod`: the image store, fetching, signature verification, trust,
//! image building and dependency resolution. `main.rs` is a thin CLI over it.
#![forbid(unsafe_code)]

pub mod addapp;
pub mod archive;
pub mod attach;
pub mod build;
pub mod control;
pub mod crashpoint;
pub mod deps;
pub mod enter;
mod enter_tty;
pub mod exit;
pub mod fetch;
pub mod guest;
pub mod keys;
pub mod lifecycle;
mod listfile;
pub mod metadata;
pub mod mirrors;
pub mod names;
pub mod oci;
pub mod paths;
pub mod pods;
pub mod prepare;
pub mod render;
pub mod run;
pub mod secprofile;
pub mod sha512;
pub mod sources;
pub mod store;
pub mod terminal;
pub mod trust;
pub mod userns;
pub mod vmstream;
pub mod volumes;
