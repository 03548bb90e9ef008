//! `userns: auto`: the pod's user namespace, and the few things the pod's
//! PID 1 does differently in it.
//!
//! The monitor makes the namespace first ([`PodUserNs::create`]): a
//! short-lived holder process unshares it, the monitor (host root) writes
//! its uid and gid maps (`0 <base> 65536`), and, unless the pod shares none,
//! the holder unshares the pod's network namespace *inside* it, so the
//! pod's root holds NET_BIND_SERVICE, NET_RAW, NET_ADMIN there and sysfs can
//! be mounted for it; CNI attaches that namespace from the host side as any
//! other. The holder exits; the monitor keeps both namespaces by fd.
//!
//! The pod's PID 1 does its mounts as host root in a mount namespace of its
//! own, as without a user namespace, with three differences:
//!
//! - **idmapped mounts** ([`idmapped_bind`]): each rendered tree is
//!   cloned (open_tree), given the pod's mapping (mount_setattr
//!   MOUNT_ATTR_IDMAP) and put back over itself before it becomes the
//!   overlay's lower layer, so the image's root-owned files look owned by the
//!   pod's root without a copy or a chown of the shared store; `host`
//!   volumes get the same, so host root's files there are the pod's root's
//!   (and what the pod's root writes there is host root's: see SECURITY.md);
//! - **ownership**: the overlay's upper directory and each `empty` volume
//!   are chowned to the pod's root, and whatever PID 1 creates inside the
//!   rootfs (mount points, /tmp, the tmpfs of /dev) is created with the
//!   pod's root as file-system owner ([`AsPodRoot`]);
//! - **joining** ([`join`]): last, after pivot_root, PID 1 enters the user
//!   namespace, becomes its root (host uid `<base>`), and unshares fresh
//!   mount, uts and ipc namespaces, which the user namespace then owns (the
//!   mounts made so far come along, locked together: the pod's root cannot
//!   unmount one to look underneath). The pid namespace is the one the
//!   monitor unshared to fork PID 1,
//!   owned by the host's user namespace: /proc is mounted before the join,
//!   and the pod's root has nothing to administer there.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Uid};
use spec::stage1::IdMap;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: nix::errno::Errno },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    #[error("making the user namespace: {0}")]
    Holder(String),
    #[error(
        "idmapped mount of {path}: {errno}; userns: auto needs a filesystem that supports idmapped mounts \
         (Linux 5.12+: ext4, xfs, btrfs, tmpfs 6.3+, ...)"
    )]
    Idmap { path: String, errno: nix::errno::Errno },
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> UsernsError {
    move |errno| UsernsError::Sys { what, errno }
}

/// The pod's user namespace and, unless the pod shares no network, the
/// network namespace it owns.
#[derive(Debug)]
pub struct PodUserNs {
    pub map: IdMap,
    user: OwnedFd,
    net: Option<OwnedFd>,
}

impl PodUserNs {
    /// Makes the namespaces through a holder process. Call while the
    /// monitor is single-threaded (it forks). `lock_fd`, the pod's lock, is
    /// closed in the holder: the lock is the monitor's alone.
    pub fn create(map: IdMap, with_net: bool, lock_fd: Option<i32>) -> Result<Self, UsernsError> {
        let (to_parent_r, to_parent_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
        let (to_child_r, to_child_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
        let child = match sys::fork_process().map_err(sys_err("fork"))? {
            ForkResult::Child => {
                drop((to_parent_r, to_child_w));
                if let Some(fd) = lock_fd {
                    let _ = nix::unistd::close(fd);
                }
                let code = holder(with_net, File::from(to_parent_w), File::from(to_child_r));
                #[allow(clippy::exit)] // a forked child must never return into the monitor
                std::process::exit(code);
            }
            ForkResult::Parent { child } => child,
        };
        drop((to_parent_w, to_child_r));
        let (mut from_child, mut to_child) = (File::from(to_parent_r), File::from(to_child_w));
        let made = (|| {
            expect_byte(&mut from_child, b'u')?;
            for (file, text) in [("uid_map", map.uid_map()), ("gid_map", map.gid_map())] {
                let path = format!("/proc/{child}/{file}");
                std::fs::write(&path, text).map_err(|source| UsernsError::Io { op: "write", path, source })?;
            }
            to_child.write_all(b"m").map_err(|e| UsernsError::Holder(e.to_string()))?;
            if with_net {
                expect_byte(&mut from_child, b'n')?;
            }
            let open = |ns: &str| {
                let path = format!("/proc/{child}/ns/{ns}");
                File::open(&path).map(OwnedFd::from).map_err(|source| UsernsError::Io { op: "open", path, source })
            };
            let user = open("user")?;
            let net = if with_net { Some(open("net")?) } else { None };
            Ok(Self { map, user, net })
        })();
        // EOF tells the holder to exit, whatever happened.
        drop(to_child);
        if made.is_err() {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        }
        let _ = waitpid(child, None);
        made
    }

    pub fn user_fd(&self) -> BorrowedFd<'_> {
        self.user.as_fd()
    }

    /// The pod's network namespace, made inside the user namespace.
    pub fn net_fd(&self) -> Option<BorrowedFd<'_>> {
        self.net.as_ref().map(AsFd::as_fd)
    }

    /// The host ids of the pod's root.
    pub fn root(&self) -> (u32, u32) {
        (self.map.uid, self.map.gid)
    }
}

fn expect_byte(from: &mut File, want: u8) -> Result<(), UsernsError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    match from.read(&mut byte) {
        Ok(1) if byte[0] == want => Ok(()),
        _ => {
            let _ = from.read_to_end(&mut buf);
            let said = String::from_utf8_lossy(&buf).into_owned();
            Err(UsernsError::Holder(if said.is_empty() { "the holder process died".into() } else { said }))
        }
    }
}

/// The holder: new user namespace, wait for its maps, then the pod's
/// network namespace inside it with `lo` up; wait for EOF and exit.
fn holder(with_net: bool, mut to_parent: File, mut from_parent: File) -> i32 {
    let mut step = || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare user namespace: {e}"))?;
        to_parent.write_all(b"u").map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        if !matches!(from_parent.read(&mut byte), Ok(1)) {
            return Err("the monitor gave up".into());
        }
        if with_net {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare network namespace: {e}"))?;
            crate::network::bring_lo_up().map_err(|e| format!("lo up: {e}"))?;
            to_parent.write_all(b"n").map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let code = match step() {
        Ok(()) => 0,
        Err(e) => {
            let _ = to_parent.write_all(format!("E{e}").as_bytes());
            1
        }
    };
    let mut rest = Vec::new();
    let _ = from_parent.read_to_end(&mut rest);
    code
}

/// Mounts `src` on `target` with the pod's mapping: files owned by host id
/// `n` (n < 65536) appear owned by the pod's `n`, and what the pod writes
/// as its `n` lands as host `n`. `attrs`: `sys::MOUNT_ATTR_*`.
pub fn idmapped_bind(
    src: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
    attrs: u64,
) -> Result<(), UsernsError> {
    let tree = sys::idmapped_clone(src, userns, recursive, attrs)
        .map_err(|errno| UsernsError::Idmap { path: src.display().to_string(), errno })?;
    sys::move_mount_to(&tree, target).map_err(|errno| UsernsError::Idmap { path: target.display().to_string(), errno })
}

/// While alive, files and directories this process creates are owned by the
/// pod's root (setfsuid/setfsgid), its capabilities kept in effect. Single
/// threaded callers only (PID 1 before exec).
#[derive(Debug)]
pub struct AsPodRoot(());

impl AsPodRoot {
    pub fn new(uid: u32, gid: u32) -> Result<Self, UsernsError> {
        nix::unistd::setfsgid(Gid::from_raw(gid));
        nix::unistd::setfsuid(Uid::from_raw(uid));
        let guard = Self(());
        sys::raise_permitted_caps().map_err(sys_err("raise capabilities after setfsuid"))?;
        Ok(guard)
    }
}

impl Drop for AsPodRoot {
    fn drop(&mut self) {
        // Back to 0: the kernel puts the file capabilities back in effect.
        nix::unistd::setfsuid(Uid::from_raw(0));
        nix::unistd::setfsgid(Gid::from_raw(0));
    }
}

/// In the pod's PID 1, after pivot_root and before [`join`]: binds the
/// pod's control socket (`/control.sock`, 0600, host root's) and returns
/// its fd, open across exec, for pod-init (`--control-fd`).
pub fn bind_control() -> Result<i32, UsernsError> {
    use std::os::fd::IntoRawFd;
    let path = format!("/{}", spec::control::SOCKET);
    let _ = std::fs::remove_file(&path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|source| UsernsError::Io { op: "bind", path: path.clone(), source })?;
    let fd = listener.into_raw_fd();
    // Kept open across exec on purpose: pod-init's from here.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(sys_err("clear FD_CLOEXEC on the control socket"))?;
    Ok(fd)
}

/// In the pod's PID 1, after pivot_root: join the user namespace as its
/// root, then unshare the mount, uts and ipc namespaces it will own.
pub fn join(userns: BorrowedFd<'_>) -> Result<(), UsernsError> {
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(sys_err("setns user"))?;
    nix::unistd::setgroups(&[]).map_err(sys_err("setgroups"))?;
    let root_gid = Gid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(sys_err("setresgid 0"))?;
    let root = Uid::from_raw(0);
    nix::unistd::setresuid(root, root, root).map_err(sys_err("setresuid 0"))?;
    // A credential change clears the parent-death signal: set it again.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys_err("PR_SET_PDEATHSIG"))?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(sys_err("unshare in the user namespace"))
}
