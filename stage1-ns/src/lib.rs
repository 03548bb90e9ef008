//! The namespace stage1: turns a prepared pod directory into running
//! namespaces, cgroups, root filesystems and a network, then execs
//! stage2-init as the pod's PID 1.

pub mod cgroups;
pub mod monitor;
pub mod network;
pub mod rootfs;
mod sys;
pub mod units;

/// Cleans the process before anything else: inherited fds (but the pod's
/// lock) are closed on exec, and the environment is emptied.
pub fn sanitize(lock_fd: Option<i32>) {
    sys::cloexec_inherited(lock_fd);
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        // Single-threaded here (main, before any thread starts).
        std::env::remove_var(k);
    }
    std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
}
