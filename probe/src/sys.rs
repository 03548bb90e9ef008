//! The probe's raw system calls, each behind a safe wrapper that states why
//! the call is harmless even when the kernel allows it: every argument is
//! chosen so that the permission check is the only thing that can pass.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::unistd::{ForkResult, Pid};

/// `Ok` with the call's return value, or the errno.
fn result(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// fsopen("tmpfs"): the new mount API's first step. An fd is no mount yet;
/// it is closed at once.
pub fn fsopen_tmpfs() -> Result<(), Errno> {
    // SAFETY: the name is a NUL-terminated literal; the kernel returns an fd
    // or an error and touches no memory of ours.
    let fd = result(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 0u32) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// init_module with a buffer that is no ELF module: allowed, the kernel
/// answers ENOEXEC (or EINVAL) after the CAP_SYS_MODULE check; loads nothing.
pub fn init_module_garbage() -> Result<(), Errno> {
    let garbage = [0x5au8; 64];
    // SAFETY: the kernel reads `garbage.len()` bytes from `garbage` and the
    // NUL-terminated empty parameter string; both outlive the call.
    result(unsafe { libc::syscall(libc::SYS_init_module, garbage.as_ptr(), garbage.len(), c"".as_ptr()) }).map(drop)
}

/// finit_module on an fd of /dev/null: allowed, the kernel reads an empty
/// "module" and answers EINVAL or ENOEXEC; loads nothing.
pub fn finit_module(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: an fd we hold, an empty NUL-terminated parameter string, no flags.
    result(unsafe { libc::syscall(libc::SYS_finit_module, fd.as_raw_fd(), c"".as_ptr(), 0u32) }).map(drop)
}

/// reboot(2) with a wrong first magic number: the kernel checks
/// CAP_SYS_BOOT first (EPERM), then the magic (EINVAL); it never reaches
/// the command.
pub fn reboot_wrong_magic() -> Result<(), Errno> {
    let (magic1, magic2): (libc::c_long, libc::c_long) = (0x0bad_cafe, 0);
    // SAFETY: integer arguments and a null pointer the kernel never reads
    // (the magic check fails before any argument is used).
    result(unsafe {
        libc::syscall(libc::SYS_reboot, magic1, magic2, libc::LINUX_REBOOT_CMD_CAD_OFF, std::ptr::null::<u8>())
    })
    .map(drop)
}

/// clock_settime(CLOCK_REALTIME) with 2 000 000 000 ns, which is invalid:
/// the kernel rejects the value (EINVAL) before it checks CAP_SYS_TIME, so
/// this sets nothing and tells only whether seccomp stopped the call. The
/// raw system call: glibc's wrapper refuses the value itself.
pub fn clock_settime_invalid() -> Result<(), Errno> {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000_000 };
    // SAFETY: `ts` is a valid timespec on the stack for the call.
    result(unsafe { libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// clone3(NULL, 0): allowed, the kernel answers EINVAL for the size before
/// anything else; pod's filter answers ENOSYS. Creates no process.
pub fn clone3_invalid() -> Result<(), Errno> {
    // SAFETY: a null pointer with size 0: the kernel rejects the size
    // without reading memory.
    result(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) }).map(drop)
}

/// open_by_handle_at with an empty handle: the kernel checks
/// CAP_DAC_READ_SEARCH (EPERM) before it reads the handle (EINVAL for a
/// zero-length one); opens nothing.
pub fn open_by_handle_empty(mount: BorrowedFd<'_>) -> Result<(), Errno> {
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let handle = [0u32; 4];
    // SAFETY: `handle` is 16 readable bytes, more than the 8-byte header
    // the kernel reads; an fd we hold; plain flags.
    result(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount.as_raw_fd(), handle.as_ptr(), libc::O_RDONLY) })
        .map(|fd| {
            if let Ok(fd) = i32::try_from(fd) {
                // SAFETY: the kernel just returned this fd and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        })
}

/// prctl(PR_SET_SECCOMP, SECCOMP_MODE_DISABLED): there is no way back from
/// a filter; the kernel must refuse.
pub fn seccomp_disable() -> Result<(), Errno> {
    let zero: libc::c_ulong = 0;
    // SAFETY: integer arguments only.
    result(unsafe { libc::prctl(libc::PR_SET_SECCOMP, zero, zero, zero, zero) }.into()).map(drop)
}

/// prctl(PR_SET_NO_NEW_PRIVS, 0): clearing the flag must be refused.
pub fn clear_no_new_privs() -> Result<(), Errno> {
    let zero: libc::c_ulong = 0;
    // SAFETY: integer arguments only.
    result(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, zero, zero, zero, zero) }.into()).map(drop)
}

/// Installs a filter that allows everything. Filters stack and the
/// strictest answer wins, so this must relax nothing.
pub fn install_allow_all_filter() -> Result<(), Errno> {
    let allow = [libc::sock_filter {
        code: u16::try_from(libc::BPF_RET | libc::BPF_K).unwrap_or(6),
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog { len: 1, filter: allow.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `allow`, alive for the call; the kernel only
    // reads it.
    result(unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &prog) }).map(drop)
}

/// Runs `attempt` in a forked child and returns what it returned: the
/// child's exit status carries the errno (0 for success). For attempts
/// that would change the probe itself if they worked (a new user
/// namespace) or that must end with their process (a ptrace attach,
/// undone when the tracer exits).
pub fn in_child(attempt: fn() -> Result<(), Errno>) -> Result<(), Errno> {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: the probe is single-threaded, so the child is a full copy with
    // no lock held elsewhere; it runs `attempt` (system calls only) and
    // leaves through _exit without touching the parent's buffers.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            let code = match attempt() {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: _exit has no preconditions; it never returns.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => wait_code(child),
    }
}

fn wait_code(child: Pid) -> Result<(), Errno> {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(child, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(_, code) => Err(Errno::from_raw(code)),
        // Killed: a seccomp filter's KILL answer, say. Not a success.
        _ => Err(Errno::ECHILD),
    }
}
