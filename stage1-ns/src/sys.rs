//! The few raw syscalls the monitor needs that nix marks unsafe: fork.

use nix::unistd::{fork, ForkResult};

/// Forks. The caller must only be single-threaded here, or use only
/// async-signal-safe operations in the child until exec; the monitor forks
/// its pod launcher before it starts any thread.
pub fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: called while the monitor is single-threaded (before network
    // setup starts proxy threads, see monitor.rs), so the child's copy of the
    // address space has no lock held by a thread that no longer exists.
    unsafe { fork() }
}

/// Marks every inherited fd above stderr close-on-exec: a privileged
/// entrypoint hands nothing it did not mean to into the pod.
pub fn cloexec_inherited() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    for fd in fds {
        // A stale number (closed since the listing) fails with EBADF: ignored.
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
}
