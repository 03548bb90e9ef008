//! Network namespace lifecycle: a namespace is pinned by bind-mounting its
//! nsfs file onto `<dir>/<name>` (as `ip netns add` does, but with syscalls),
//! entered with setns(2), and released by unmounting and unlinking that file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};
use nix::unistd::gettid;

use super::sys;

/// Where stage1 pins pod network namespaces unless told otherwise.
pub const DEFAULT_NETNS_DIR: &str = "/run/pod/netns";

/// Unmount attempts before giving up on a file with stacked mounts.
const MAX_UNMOUNTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {0:?}: want a plain file name")]
    InvalidName(String),
    #[error("network namespace {} already exists", .0.display())]
    Exists(PathBuf),
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{op} for {}: {source}", path.display())]
    Sys { op: &'static str, path: PathBuf, source: Errno },
    #[error("the helper thread for {} panicked", .0.display())]
    ThreadPanicked(PathBuf),
}

impl NetnsError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io { op, path: path.to_owned(), source }
    }
    fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Self + 'a {
        move |source| Self::Sys { op, path: path.to_owned(), source }
    }
}

/// A pinned network namespace. Dropping the handle leaves the namespace in
/// place; [`remove_netns`] releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// A handle on an already pinned namespace (for example after a restart).
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The bind-mount file: what CNI plugins get as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file, e.g. before fork, for [`enter_fd`].
    pub fn open(&self) -> Result<File, NetnsError> {
        File::open(&self.path).map_err(NetnsError::io("open network namespace", &self.path))
    }

    /// Moves the calling thread into this namespace. Meant for the forked
    /// child that becomes the pod's PID 1; in a multi-threaded process only
    /// the calling thread moves.
    pub fn enter(&self) -> Result<(), NetnsError> {
        let file = self.open()?;
        enter_fd(&file).map_err(NetnsError::sys("setns", &self.path))
    }

    /// Runs `f` on a scoped helper thread that has entered this namespace,
    /// so the caller's thread never changes namespace. Sockets created by `f`
    /// stay in this namespace after it returns.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self.open()?;
        thread::scope(|s| {
            s.spawn(|| {
                enter_fd(&file).map_err(NetnsError::sys("setns", &self.path))?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::ThreadPanicked(self.path.clone()))?
        })
    }
}

/// setns(2) into the network namespace behind `fd`.
pub fn enter_fd(fd: impl AsFd) -> Result<(), Errno> {
    setns(fd, CloneFlags::CLONE_NEWNET)
}

/// Creates a network namespace pinned at `<dir>/<name>` with `lo` up.
///
/// The namespace is made on a short-lived helper thread that unshares its own
/// network namespace, so the calling thread (and the rest of the process)
/// stays where it was. Fails with [`NetnsError::Exists`] rather than replace
/// a namespace some pod may still use.
pub fn create_netns(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
    pin_with(dir, name, |target| {
        let target = target.to_path_buf();
        let path = target.clone();
        thread::Builder::new()
            .name("pod-netns".into())
            .spawn(move || pin_new_netns(&target))
            .map_err(NetnsError::io("spawn helper thread for", &path))?
            .join()
            .unwrap_or_else(|_| Err(NetnsError::ThreadPanicked(path.clone())))
    })
}

/// Pins an existing namespace (an open nsfs file, e.g. one made inside the
/// pod's user namespace) at `<dir>/<name>`, as [`create_netns`] pins a new one.
pub fn pin_netns(dir: &Path, name: &str, ns: BorrowedFd<'_>) -> Result<NetNs, NetnsError> {
    pin_with(dir, name, |target| {
        let source = format!("/proc/self/fd/{}", ns.as_raw_fd());
        let none: Option<&str> = None;
        mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
            .map_err(NetnsError::sys("bind-mount network namespace", target))
    })
}

/// Makes the mount point `<dir>/<name>`, has `pin` bind a namespace on it,
/// and removes it again if that fails.
fn pin_with(dir: &Path, name: &str, pin: impl FnOnce(&Path) -> Result<(), NetnsError>) -> Result<NetNs, NetnsError> {
    if name.is_empty() || name == "." || name == ".." || name.starts_with('.') || name.contains('/') {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(NetnsError::io("create directory", dir))?;
    let path = dir.join(name);
    match OpenOptions::new().write(true).create_new(true).mode(0o444).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(NetnsError::Exists(path)),
        Err(e) => return Err(NetnsError::io("create mount point", &path)(e)),
    }
    match pin(&path) {
        Ok(()) => {
            tracing::debug!(netns = %path.display(), "pinned network namespace");
            Ok(NetNs { path })
        }
        Err(e) => {
            if let Err(cleanup) = remove_netns(&path) {
                tracing::warn!(netns = %path.display(), error = %cleanup, "cleanup after failed create");
            }
            Err(e)
        }
    }
}

/// Runs on the helper thread: new netns, pin it, bring `lo` up. The thread
/// exits afterwards, so its namespace change dies with it.
fn pin_new_netns(target: &Path) -> Result<(), NetnsError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::sys("unshare(CLONE_NEWNET)", target))?;
    // The thread's own nsfs file: /proc/self/ns/net would name the thread
    // group leader's namespace, which did not change.
    let source = format!("/proc/self/task/{}/ns/net", gettid());
    let none: Option<&str> = None;
    mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
        .map_err(NetnsError::sys("bind-mount network namespace", target))?;
    sys::set_link_up("lo").map_err(NetnsError::sys("bring up lo", target))
}

/// Unpins and unlinks a namespace file. Idempotent: a missing file or one
/// that is no longer a mount point is not an error. The namespace itself
/// disappears once no process is left in it.
pub fn remove_netns(path: &Path) -> Result<(), NetnsError> {
    // Only nsfs mounts are ours to unmount; a plain file (a failed create)
    // is just unlinked.
    for _ in 0..MAX_UNMOUNTS {
        if !is_pinned(path) {
            break;
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => return Err(NetnsError::sys("unmount network namespace", path)(e)),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::io("remove", path)(e)),
    }
}

/// Whether `path` is a pinned namespace (an nsfs mount), not a leftover
/// plain file or nothing.
pub fn is_pinned(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// The namespace files in `dir`, sorted (for gc's leak count). A missing
/// directory has none.
pub fn list_netns(dir: &Path) -> Result<Vec<PathBuf>, NetnsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetnsError::io("read directory", dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(NetnsError::io("read directory", dir))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::time::Duration;

    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        println!("SKIP: network namespace tests need root");
        false
    }

    fn ns_inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).expect("stat nsfs file").ino()
    }

    #[test]
    fn rejects_names_that_are_not_plain_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(matches!(create_netns(dir.path(), bad), Err(NetnsError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn listing_and_removing_are_idempotent_on_plain_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(list_netns(&dir.path().join("missing")).expect("list").is_empty());
        fs::write(dir.path().join("b"), "").expect("write");
        fs::write(dir.path().join("a"), "").expect("write");
        fs::write(dir.path().join(".tmp"), "").expect("write");
        assert_eq!(list_netns(dir.path()).expect("list"), [dir.path().join("a"), dir.path().join("b")]);
        remove_netns(&dir.path().join("a")).expect("remove");
        remove_netns(&dir.path().join("a")).expect("remove again");
        assert_eq!(list_netns(dir.path()).expect("list"), [dir.path().join("b")]);
    }

    #[test]
    fn create_enter_and_remove_a_namespace() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let before = ns_inode("/proc/thread-self/ns/net");
        let ns = create_netns(dir.path(), "t1").expect("create");
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), before, "caller's namespace must not change");
        assert_ne!(ns_inode(ns.path().to_str().expect("utf-8")), before, "a new namespace is pinned");
        assert!(matches!(create_netns(dir.path(), "t1"), Err(NetnsError::Exists(_))));
        assert_eq!(list_netns(dir.path()).expect("list"), [ns.path().to_path_buf()]);

        // lo is up inside (a client connects over it), and the listener stays
        // in the namespace: the host's loopback does not reach it.
        let (inside, listener) = ns
            .run_in(|| {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in netns");
                let port = l.local_addr().expect("addr").port();
                TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect over lo in netns");
                (ns_inode("/proc/thread-self/ns/net"), l)
            })
            .expect("run_in");
        assert_eq!(inside, ns_inode(ns.path().to_str().expect("utf-8")));
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), before);
        let port = listener.local_addr().expect("addr").port();
        let from_host = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(500));
        assert!(from_host.is_err(), "the namespace's loopback is its own");
        drop(listener);

        remove_netns(ns.path()).expect("remove");
        remove_netns(ns.path()).expect("remove is idempotent");
        assert!(!ns.path().exists());
        assert!(list_netns(dir.path()).expect("list").is_empty());
    }
}
