//! Every `unsafe` call of pod-init, each behind a safe wrapper that states
//! the invariant it relies on. The one that matters: pod-init never starts a
//! thread, so a forked child is a full copy of a single-threaded process and
//! may allocate, read files and format messages before it execs.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

/// systemd's "power off" signal, SIGRTMIN+4: what `machinectl poweroff`
/// sends a machine's leader. pod-init takes it as SIGTERM.
pub(crate) fn sig_poweroff() -> i32 {
    libc::SIGRTMIN() + 4
}

/// `mask` with [`sig_poweroff`] added (nix's `Signal` has no real-time ones).
pub(crate) fn with_poweroff(mask: &SigSet) -> SigSet {
    let mut raw: libc::sigset_t = *mask.as_ref();
    // SAFETY: `raw` is a copy of an initialised sigset_t and the signal
    // number is a valid real-time one; sigaddset only sets its bit.
    unsafe { libc::sigaddset(&mut raw, sig_poweroff()) };
    // SAFETY: `raw` is initialised (copied from a SigSet, then sigaddset).
    unsafe { SigSet::from_sigset_t_unchecked(raw) }
}

/// Which side of a fork this process is on.
#[derive(Debug)]
pub enum Fork {
    Parent(Pid),
    Child,
}

/// fork(2), for single-threaded callers only (pod-init; `pod enter -t`
/// before it starts any thread).
pub fn fork() -> nix::Result<Fork> {
    // SAFETY: the callers are single-threaded: pod-init (it never spawns a thread, and
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
pub fn exit_now(code: i32) -> ! {
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
/// lock, say) stay open in pod-init but never reach an app; `pod enter`
/// does the same for whatever its caller left open.
pub fn cloexec_inherited_fds() {
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

/// Closes every fd from `first` up, for a forked copy of pod-init that
/// stays without exec (the waiter of pidns.rs): it must not keep pod-init's
/// control connections, pipes and sockets open.
pub(crate) fn close_fds_from(first: i32) {
    let first = libc::c_uint::try_from(first).unwrap_or(3);
    // SAFETY: called in a forked child that owns no Rust value using these
    // fds afterwards (it only waits and exits with _exit).
    if unsafe { libc::close_range(first, libc::c_uint::MAX, 0) } == 0 {
        return;
    }
    // Kernels before 5.11.
    for fd in first..4096 {
        let _ = nix::unistd::close(i32::try_from(fd).unwrap_or(i32::MAX));
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

/// An `AF_INET` socket address for the interface and route ioctls.
fn sockaddr_v4(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let mut data: [libc::c_char; 14] = [0; 14];
    // sa_data of AF_INET: port (2 bytes, zero here), then the address.
    for (slot, byte) in data[2..6].iter_mut().zip(ip.octets()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    let family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
    libc::sockaddr { sa_family: family, sa_data: data }
}

/// A zeroed `ifreq` naming interface `name`.
fn ifreq(name: &str) -> nix::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(Errno::EINVAL);
    }
    // SAFETY: ifreq is plain data (a name array and a union of integers,
    // sockaddrs and a pointer); all-zero is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    Ok(req)
}

/// SIOCSIFADDR or SIOCSIFNETMASK on interface `name`.
pub(crate) fn set_if_addr(
    sock: BorrowedFd<'_>,
    name: &str,
    request: libc::Ioctl,
    addr: std::net::Ipv4Addr,
) -> nix::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: `req` is a valid, initialised ifreq that outlives the call;
    // both requests read an AF_INET sockaddr from it and write nothing else.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) }).map(drop)
}

/// Sets IFF_UP on interface `name` (SIOCGIFFLAGS, then SIOCSIFFLAGS).
pub(crate) fn set_if_up(sock: BorrowedFd<'_>, name: &str) -> nix::Result<()> {
    let mut req = ifreq(name)?;
    // SAFETY: as above; SIOCGIFFLAGS writes the flags into the union.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just filled in ifru_flags, a plain c_short.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).unwrap_or(1);
    // SAFETY: as above; SIOCSIFFLAGS reads the flags.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) }).map(drop)
}

/// The kernel's `struct rtentry` (linux/route.h); glibc's libc crate
/// binding lacks it.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds the default route via `gateway` (SIOCADDRT).
pub(crate) fn add_default_route(sock: BorrowedFd<'_>, gateway: std::net::Ipv4Addr) -> nix::Result<()> {
    let any = sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED);
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: sockaddr_v4(gateway),
        rt_genmask: any,
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `route` has the kernel's rtentry layout and outlives the call;
    // rt_dev is null (the kernel picks the interface from the gateway).
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route) }).map(drop)
}

/// prctl(PR_CAPBSET_DROP): capability `cap` leaves the bounding set.
pub(crate) fn capbset_drop(cap: u32) -> nix::Result<()> {
    // Variadic: every argument as the unsigned long the kernel reads.
    let (cap, zero): (libc::c_ulong, libc::c_ulong) = (cap.into(), 0);
    // SAFETY: prctl with integer arguments only; it changes this process's
    // bounding set and nothing in memory.
    Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, zero, zero, zero) }).map(drop)
}

/// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
pub(crate) fn clear_ambient_caps() -> nix::Result<()> {
    // The kernel refuses CLEAR_ALL unless the other arguments are zero.
    let (clear, zero): (libc::c_ulong, libc::c_ulong) = (libc::PR_CAP_AMBIENT_CLEAR_ALL.unsigned_abs().into(), 0);
    // SAFETY: as above, integer arguments only.
    Errno::result(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear, zero, zero, zero) }).map(drop)
}

/// linux/capability.h: `_LINUX_CAPABILITY_VERSION_3`, 64-bit sets as two
/// 32-bit halves; glibc's libc crate binding lacks the structs.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capget(2) on this process: its permitted set.
pub(crate) fn capget_permitted() -> nix::Result<u64> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: version 3 writes two data structs of exactly this layout into
    // `data`, which lives on the stack for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Raises every permitted capability of this process into its effective
/// set, keeping the inheritable one.
pub fn raise_permitted_caps() -> nix::Result<()> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: version 3 writes two data structs of exactly this layout into
    // `data`, which lives on the stack for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    for d in &mut data {
        d.effective = d.permitted;
    }
    // SAFETY: as in capset below: one header and two data structs.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// capset(2) on this process: the three sets, bit `n` for capability `n`.
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
    let half = |set: u64, high: bool| u32::try_from(if high { set >> 32 } else { set & 0xffff_ffff }).unwrap_or(0);
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let data: [CapData; 2] = [false, true].map(|high| CapData {
        effective: half(effective, high),
        permitted: half(permitted, high),
        inheritable: half(inheritable, high),
    });
    // SAFETY: version 3 reads one header and two data structs with exactly
    // these layouts; both live on the stack for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER) with `program`. Needs no_new_privs (or
/// CAP_SYS_ADMIN); the kernel validates and copies the program.
pub(crate) fn install_seccomp(program: &[libc::sock_filter]) -> nix::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel
    // only reads it (the pointer is *mut in the C struct alone).
    Errno::result(unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) }).map(drop)
}

// The new mount API (Linux 5.2), which nix lacks; from <linux/mount.h>.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached copy of the mount tree at `path` (open_tree with
/// OPEN_TREE_CLONE | AT_RECURSIVE): a copy of a shared mount is a peer of
/// it, and being detached, no propagation change to this namespace's
/// mounts reaches it.
pub(crate) fn clone_tree(path: &std::ffi::CStr) -> nix::Result<std::os::fd::OwnedFd> {
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: `path` is a NUL-terminated string alive for the call; the
    // kernel returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned this fd just now; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Attaches a detached mount tree from [`clone_tree`] on `target`.
pub(crate) fn move_mount_to(tree: BorrowedFd<'_>, target: &std::ffi::CStr) -> nix::Result<()> {
    let empty = c"";
    // SAFETY: `tree` is an open mount fd; both strings are NUL-terminated
    // and alive for the call.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// The peer (slave) end of the pseudo-terminal whose master is `master`
/// (TIOCGPTPEER, Linux 4.13): opened through the master, so it is the
/// slave of the same devpts instance whatever mounts this process sees.
/// Unlocks it first (TIOCSPTLCK, as unlockpt(3)). Neither end becomes
/// anyone's controlling terminal here (O_NOCTTY).
pub(crate) fn pty_peer(master: BorrowedFd<'_>) -> nix::Result<std::os::fd::OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points
    // to a live local.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes its open flags by value and returns a new
    // file descriptor, which nothing else owns.
    let fd = Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: `fd` was just opened by the kernel for this process.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Makes terminal `fd` the calling process's controlling terminal
/// (TIOCSCTTY); the caller is a session leader without one.
pub(crate) fn set_controlling_terminal(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal it from
    // another session).
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// Sets the window size of terminal `fd` (TIOCSWINSZ); the kernel sends
/// SIGWINCH to its foreground process group when it changes.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` through the pointer,
    // which points to a live local of that type.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) }).map(drop)
}

/// A new terminal from the devpts instance whose `ptmx` is at `ptmx`
/// (an app's own, so the command's `tty` names one of the app's): the
/// master and its slave ([`pty_peer`]), both close-on-exec.
pub fn open_pty(ptmx: &std::path::Path) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd =
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC).open(ptmx)?.into();
    let slave = pty_peer(master.as_fd())?;
    Ok((master, slave))
}

/// Has `cmd`'s child start a session of its own and take its stdin, a
/// terminal, as its controlling terminal (as a login shell's), so that
/// ^C and ^Z on that terminal signal its process group and not the
/// caller's.
pub fn on_controlling_terminal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only setsid(2) and
    // ioctl(2), both async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Receives one message of at most `max` bytes on a Unix socket, with the
/// one descriptor it may carry (SCM_RIGHTS), close-on-exec.
pub fn recv_with_fd(sock: BorrowedFd<'_>, max: usize) -> nix::Result<(Vec<u8>, Option<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (n, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(got) = c {
                fds.extend(got);
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(n);
    // SAFETY: the kernel installed these descriptors in this process for
    // this message; nothing else owns them.
    let mut owned: Vec<std::os::fd::OwnedFd> =
        fds.into_iter().map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }).collect();
    let first = if owned.is_empty() { None } else { Some(owned.remove(0)) };
    Ok((buf, first))
}
