//! Every `unsafe` call of pod-init, each behind a safe wrapper that states
//! the invariant it relies on. The one that matters: pod-init never starts a
//! thread, so a forked child is a full copy of a single-threaded process and
//! may allocate, read files and format messages before it execs.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

/// Which side of a fork this process is on.
#[derive(Debug)]
pub(crate) enum Fork {
    Parent(Pid),
    Child,
}

/// fork(2).
pub(crate) fn fork() -> nix::Result<Fork> {
    // SAFETY: pod-init is single-threaded (it never spawns a thread, and
    // neither do std or nix on its behalf), so no lock can be held by another
    // thread at the time of the fork and the child may use the allocator and
    // std freely until it execs or calls `exit_now`.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        ForkResult::Child => Ok(Fork::Child),
    }
}

/// _exit(2): leaves a forked child without running the parent's atexit
/// handlers or flushing its copies of buffers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Resets every catchable signal to its default action. A forked child
/// inherits ignored signals across exec: std ignores SIGPIPE in pod-init,
/// and an app must not start with it ignored.
pub(crate) fn reset_signal_dispositions() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL runs no Rust code in signal context, so
        // no handler can observe inconsistent state. Errors (none expected
        // for catchable signals) leave that signal as it was.
        let _ = unsafe { sigaction(signal, &default) };
    }
}

/// Ignores SIGPIPE, as std's runtime would (pod-init runs without it: see
/// main.rs): a closed stderr must give EPIPE, not kill PID 1.
pub(crate) fn ignore_sigpipe() {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in signal context.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &ignore) };
}

/// Marks every fd from 3 up close-on-exec. Inherited fds (stage1's pod
/// lock, say) stay open in pod-init but never reach an app.
pub(crate) fn cloexec_inherited_fds() {
    let flags = libc::c_int::try_from(libc::CLOSE_RANGE_CLOEXEC).unwrap_or(1 << 2);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds in
    // the range; it closes nothing, so no fd owned elsewhere is invalidated.
    let rc = unsafe { libc::close_range(3, libc::c_uint::MAX, flags) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: walk /proc/self/fd (its own fd is CLOEXEC already).
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    for fd in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|fd| *fd > 2) {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Opens /dev/null on any of fds 0, 1, 2 that is closed, so that files
/// pod-init opens later never land on a standard stream.
pub(crate) fn ensure_stdio() {
    for fd in 0..3 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            // open(2) returns the lowest free fd: the closed one. Keep it.
            if let Ok(file) = OpenOptions::new().read(true).write(true).open("/dev/null") {
                let _ = file.into_raw_fd();
            }
        }
    }
}
