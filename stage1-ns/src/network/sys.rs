//! The network module's only FFI: the interface-flags ioctl and the
//! pre-exec hook that gives a CNI plugin a read-only `/proc/sys`. Every
//! other syscall goes through nix's safe wrappers.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets `IFF_UP` on interface `name` in the calling thread's network
/// namespace (the socket is created in, and bound to, that namespace).
pub(super) fn set_link_up(name: &str) -> Result<(), Errno> {
    let mut req = ifreq_for(name)?;
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: `sock` is an open socket owned for the whole call; `req` is a
    // fully initialised `ifreq` that outlives the call, and SIOCGIFFLAGS
    // writes at most `sizeof(struct ifreq)` bytes into it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel stored the flags in the
    // `ifru_flags` member of the union; reading it is reading what was written.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1: it fits a c_short whatever the platform's int width.
    #[allow(clippy::cast_possible_truncation)]
    let up = libc::IFF_UP as libc::c_short;
    if flags & up != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`, which stays borrowed
    // and initialised for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc).map(drop)
}

/// An `ifreq` with `ifr_name` set and the union zeroed.
fn ifreq_for(name: &str) -> Result<libc::ifreq, Errno> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(Errno::EINVAL);
    }
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in ifr_name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    Ok(libc::ifreq { ifr_name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 } })
}

/// Makes `cmd` run in a private mount namespace whose `/proc/sys` is a
/// read-only bind mount: any sysctl the program tries to write fails with
/// `EROFS`, whatever network namespace it has joined.
pub(super) fn read_only_proc_sys(cmd: &mut Command) {
    let hook = || -> std::io::Result<()> {
        let none: Option<&str> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Private first, so nothing below propagates back to the host.
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        mount(Some("/proc/sys"), "/proc/sys", none, MsFlags::MS_BIND | MsFlags::MS_REC, none)?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, "/proc/sys", none, ro, none)?;
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only makes
    // raw syscalls (unshare, mount) through nix, whose path arguments are
    // short literals converted on the stack, and builds `io::Error`s from
    // errno values without allocating: no locks, no heap, so it is safe
    // between fork and exec in a multi-threaded parent.
    unsafe {
        cmd.pre_exec(hook);
    }
}
