//! The VM stage1: the same pod directory, units and status contract as the
//! namespace stage1, run inside a qemu virtual machine (KVM where the
//! hardware allows, TCG otherwise) whose PID 1 is the same `pod-init`.
//! See `spec::vm` for the host → guest contract.

pub mod accel;
pub mod addapp;
pub mod control;
pub mod initramfs;
pub mod kernel;
pub mod kmod;
mod machine;
pub mod metadata;
pub mod monitor;
pub mod qemu;
pub mod sample;
pub mod streams;
pub mod tsc;

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Modules(#[from] kmod::KmodError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: nix::errno::Errno },
    #[error("preparing the pod: {0}")]
    Launch(String),
    #[error("the guest did not start the pod within {0:?}; its last words:\n{1}")]
    BootTimeout(Duration, String),
    #[error("the VM ended without the pod's status; its last words:\n{0}")]
    NoStatus(String),
}
