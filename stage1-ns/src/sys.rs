//! The few raw syscalls the monitor needs that nix marks unsafe or lacks:
//! fork, the new mount API (idmapped mounts), capget/capset.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::unistd::{fork, ForkResult};

/// Forks. The caller must only be single-threaded here, or use only
/// async-signal-safe operations in the child until exec; the monitor forks
/// the pod's PID 1 before it starts any thread.
pub fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: called while the monitor is single-threaded (before network
    // setup starts threads, see monitor.rs), so the child's copy of the
    // address space has no lock held by a thread that no longer exists.
    unsafe { fork() }
}

// The new mount API (Linux 5.2; mount_setattr 5.12), which nix lacks.
// Values from <linux/mount.h> and <linux/fcntl.h>.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `MOUNT_ATTR_RDONLY`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `MOUNT_ATTR_NOEXEC`.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0: 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> nix::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// A detached copy of the mount tree at `path` (open_tree with
/// OPEN_TREE_CLONE), with `attrs` set and ids shifted through `userns`
/// (mount_setattr MOUNT_ATTR_IDMAP), recursively if `recursive`. The
/// caller attaches it with [`move_mount_to`]; dropped unattached, it goes.
pub fn idmapped_clone(path: &Path, userns: BorrowedFd<'_>, recursive: bool, attrs: u64) -> nix::Result<OwnedFd> {
    let userns_fd = u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    clone_with(path, recursive, MOUNT_ATTR_IDMAP | attrs, userns_fd)
}

/// A detached copy of the mount tree at `path`, as [`idmapped_clone`]
/// without the id mapping: how a host directory reaches a pod's mount
/// namespace after the pod pivoted away from the host's paths.
pub fn clone_tree(path: &Path, recursive: bool, attrs: u64) -> nix::Result<OwnedFd> {
    clone_with(path, recursive, attrs, 0)
}

fn clone_with(path: &Path, recursive: bool, attr_set: u64, userns_fd: u64) -> nix::Result<OwnedFd> {
    let cpath = c_path(path)?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    let flags = OPEN_TREE_CLONE | rec | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: `cpath` is a NUL-terminated string alive for the call; the
    // kernel returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, cpath.as_ptr(), flags) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned this fd just now; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    if attr_set == 0 {
        return Ok(tree);
    }
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd };
    let empty = c"";
    // SAFETY: `tree` is an open mount fd, `empty` a NUL-terminated string
    // and `attr` a `struct mount_attr` of the size passed, all alive for
    // the call; the kernel only reads them.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(tree)
}

/// Sets `attr_set` on the mount at `path` and every mount below it
/// (mount_setattr with AT_RECURSIVE): a recursively read-only volume.
pub fn setattr_recursive(path: &Path, attr_set: u64) -> nix::Result<()> {
    let cpath = c_path(path)?;
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: `cpath` is a NUL-terminated string and `attr` a `struct
    // mount_attr` of the size passed, both alive for the call; the kernel
    // only reads them.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Whether the kernel has mount_setattr: asked on fd -1, which it
/// refuses with EBADF when it has the call, ENOSYS when not.
pub fn mount_setattr_exists() -> bool {
    let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let empty = c"";
    // SAFETY: `empty` and `attr` are alive for the call and only read; fd
    // -1 makes the kernel fail before touching any mount.
    let r = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    });
    r != Err(Errno::ENOSYS)
}

// fsopen/fsconfig/fsmount (Linux 5.2), from <linux/mount.h>.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn c_str(s: &str) -> nix::Result<CString> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// A new, detached overlay mount (nodev): `options` are its
/// `key=value` (or flag) options, resolved in this mount namespace. The
/// caller attaches it with [`move_mount_to`], in another mount namespace
/// if it joins one first.
pub fn overlay_detached(options: &[(&str, Option<&str>)]) -> nix::Result<OwnedFd> {
    fs_detached(c"overlay", options, MOUNT_ATTR_NODEV)
}

/// A new, detached mount of the kernel filesystem `fstype` (`proc`,
/// `sysfs`) with `attrs` (`MOUNT_ATTR_*`): made where the mount namespace
/// is the host's, it may be attached in one a user namespace owns, where
/// the kernel refuses a new proc or sysfs unless a whole one is in sight.
pub fn kernel_fs_detached(fstype: &std::ffi::CStr, attrs: u64) -> nix::Result<OwnedFd> {
    fs_detached(fstype, &[], attrs)
}

fn fs_detached(fstype: &std::ffi::CStr, options: &[(&str, Option<&str>)], attrs: u64) -> nix::Result<OwnedFd> {
    // SAFETY: `fstype` is a NUL-terminated string alive for the call; the
    // kernel returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: fsopen returned this fd just now; nothing else owns it.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd) };
    for (key, value) in options {
        let ckey = c_str(key)?;
        let cvalue = value.map(c_str).transpose()?;
        let (cmd, vptr) = match &cvalue {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: `ctx` is an fs context fd; `ckey` and `cvalue` (or NULL
        // for a flag) are NUL-terminated strings alive for the call.
        Errno::result(unsafe { libc::syscall(libc::SYS_fsconfig, ctx.as_raw_fd(), cmd, ckey.as_ptr(), vptr, 0) })?;
    }
    // SAFETY: `ctx` is an fs context fd; no pointers are passed.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: `ctx` is a created fs context fd; no pointers are passed.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: fsmount returned this fd just now; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a detached mount (from [`idmapped_clone`], [`clone_tree`] or
/// [`overlay_detached`]) on `target`.
pub fn move_mount_to(tree: &OwnedFd, target: &Path) -> nix::Result<()> {
    let ctarget = c_path(target)?;
    let empty = c"";
    // SAFETY: `tree` is an open mount fd; both strings are NUL-terminated
    // and alive for the call.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Raises every permitted capability into the effective set: setfsuid
/// away from 0 drops the file capabilities (DAC_OVERRIDE, CHOWN, ...)
/// from it, which the setup done as the pod's root still needs on the
/// host's files.
pub fn raise_permitted_caps() -> nix::Result<()> {
    stage2_init::privs::raise_permitted_caps()
}
