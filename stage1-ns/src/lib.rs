//! The namespace stage1: turns a prepared pod directory into running
//! namespaces, cgroups, root filesystems and a network, then execs
//! stage2-init as the pod's PID 1.

pub mod addapp;
pub mod cgroups;
pub mod crashpoint;
pub mod devices;
mod logtail;
pub mod metadata;
pub mod monitor;
pub mod mounts;
pub mod network;
pub mod notify;
mod oom;
pub mod podcfg;
pub mod rootfs;
pub mod sample;
pub mod scope;
pub mod seccomp;
pub mod seccomp_oci;
pub mod supervise;
mod sys;
pub mod units;
pub mod userns;

/// Cleans the process before anything else: every inherited fd is closed on
/// exec, the pod's lock included — the monitor holds it, and neither CNI
/// plugins nor the pod's PID 1 may (a pod whose monitor died must read as
/// exited, so `pod gc` can clean it up). The environment is emptied
/// (systemd's `NOTIFY_SOCKET` kept aside for the monitor: notify.rs; and
/// `POD_CGROUP_MANAGER`: scope.rs).
pub fn sanitize() {
    crashpoint::arm();
    notify::capture();
    scope::capture();
    stage2_init::cloexec_inherited_fds();
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        // Single-threaded here (main, before any thread starts).
        std::env::remove_var(k);
    }
    std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
}
