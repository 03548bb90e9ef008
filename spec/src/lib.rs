//! The shared vocabulary of `pod`: names, labels, image IDs and the appc image
//! manifest. Parsing and validation only; no I/O.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod control;
pub mod id;
pub mod manifest;
pub mod metadata;
pub mod name;
pub mod oci;
pub mod pod;
pub mod seccomp;
pub mod security;
pub mod stage1;
pub mod stats;
pub mod stdio;
pub mod unit;
pub mod vm;

pub use id::{ImageId, ImageIdError};
pub use manifest::{App, Dependency, ImageManifest, Label, ManifestError, MAX_MANIFEST_BYTES};
pub use name::{AcIdentifier, AcName, ImageName, NameError};
