//! Pod addresses from the network's range, in the CNI host-local plugin's
//! store (`/var/lib/cni/networks/<network>/`) and by its rules, so pods on
//! the native default network and pods that attached through CNI (before
//! an upgrade, or from a `default` conflist) never get the same address:
//! one file per address holding `<container id>\r\n<ifname>`, the last one
//! handed out in `last_reserved_ip.0`, and every change under an exclusive
//! `flock` of `lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where host-local keeps its allocations unless a conflist says `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LAST_RESERVED: &str = "last_reserved_ip.0";
const LINE_BREAK: &str = "\r\n";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("no free address left in {subnet} ({})", dir.display())]
    Exhausted { subnet: String, dir: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IpamError + 'a {
    move |source| IpamError::Io { op, path: path.to_owned(), source }
}

/// An IPv4 range as host-local defaults it from a subnet: from the first
/// host address to the one before broadcast, the gateway left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Range {
    pub fn of_subnet(net: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Self {
        let host_bits = 32u32.saturating_sub(u32::from(prefix));
        let mask = if host_bits >= 32 { 0 } else { u32::MAX << host_bits };
        let base = u32::from(net) & mask;
        let bcast = base | !mask;
        Self { start: (base + 1).into(), end: (bcast - 1).into(), gateway, prefix }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// host-local's order: after `last` (when it is in the range), else
    /// from the start, wrapping once round, the gateway skipped.
    fn candidates(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (s, e) = (u32::from(self.start), u32::from(self.end));
        let first = match last {
            Some(l) if self.contains(l) => {
                if u32::from(l) == e {
                    s
                } else {
                    u32::from(l) + 1
                }
            }
            _ => s,
        };
        let len = e - s + 1;
        (0..len).map(move |i| Ipv4Addr::from(s + (first - s + i) % len)).filter(move |ip| *ip != self.gateway)
    }
}

/// One network's allocation directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path, network: &str) -> Self {
        Self { dir: data_dir.join(network) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io_err("create directory", &self.dir))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io_err("lock", &path)(e.into()))
    }

    /// Reserves the next free address of `range` for `id`/`ifname`.
    pub fn allocate(&self, range: &Range, id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        let last_path = self.dir.join(LAST_RESERVED);
        let last = fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        for ip in range.candidates(last) {
            let path = self.dir.join(ip.to_string());
            let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &path)(e)),
            };
            let written = file.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes());
            if let Err(e) = written {
                let _ = fs::remove_file(&path);
                return Err(io_err("write", &path)(e));
            }
            fs::write(&last_path, ip.to_string()).map_err(io_err("write", &last_path))?;
            return Ok(ip);
        }
        Err(IpamError::Exhausted { subnet: format!("{}/{}", range.start, range.prefix), dir: self.dir.clone() })
    }

    /// Frees what `id`/`ifname` holds: the file of `hint` when it is the
    /// owner's, else every file that names it (host-local's ReleaseByID).
    /// Nothing held is fine.
    pub fn release(&self, id: &str, ifname: &str, hint: Option<Ipv4Addr>) -> Result<(), IpamError> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let owner = format!("{}{LINE_BREAK}{ifname}", id.trim());
        let is_ours = |path: &Path| fs::read_to_string(path).is_ok_and(|s| s.trim() == owner || s.trim() == id.trim());
        if let Some(ip) = hint {
            let path = self.dir.join(ip.to_string());
            if is_ours(&path) {
                return fs::remove_file(&path).map_err(io_err("remove", &path));
            }
        }
        let entries = fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "lock" || name.starts_with("last_reserved_ip") || name.parse::<std::net::IpAddr>().is_err() {
                continue;
            }
            let path = entry.path();
            if is_ours(&path) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Addresses held by `id` (for tests and gc checks).
    pub fn held_by(&self, id: &str) -> Vec<Ipv4Addr> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<Ipv4Addr> = entries
            .flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_string_lossy().parse().ok()?;
                let text = fs::read_to_string(e.path()).ok()?;
                (text.split(LINE_BREAK).next().map(str::trim) == Some(id.trim())).then_some(ip)
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range::of_subnet(Ipv4Addr::new(10, 89, 0, 0), 16, Ipv4Addr::new(10, 89, 0, 1))
    }

    #[test]
    fn range_of_a_subnet_skips_network_gateway_and_broadcast() {
        let r = range();
        assert_eq!((r.start, r.end), (Ipv4Addr::new(10, 89, 0, 1), Ipv4Addr::new(10, 89, 255, 254)));
        let first: Vec<Ipv4Addr> = r.candidates(None).take(2).collect();
        assert_eq!(first, [Ipv4Addr::new(10, 89, 0, 2), Ipv4Addr::new(10, 89, 0, 3)]);
        let after_end: Vec<Ipv4Addr> = r.candidates(Some(r.end)).take(1).collect();
        assert_eq!(after_end, [Ipv4Addr::new(10, 89, 0, 2)], "wraps past the end, skipping the gateway");
        let small = Range::of_subnet(Ipv4Addr::new(10, 1, 2, 0), 30, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(small.candidates(None).collect::<Vec<_>>(), [Ipv4Addr::new(10, 1, 2, 2)]);
    }

    #[test]
    fn allocations_are_host_local_files_distinct_and_released_by_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), "default");
        // A CNI host-local allocation already there (and its last-reserved
        // mark) is respected: the next address follows it.
        fs::create_dir_all(store.dir()).expect("mkdir");
        fs::write(store.dir().join("10.89.0.2"), "cni-pod\r\neth0").expect("write");
        fs::write(store.dir().join(LAST_RESERVED), "10.89.0.2").expect("write");
        let a = store.allocate(&range(), "pod-a", "eth0").expect("a");
        let b = store.allocate(&range(), "pod-b", "eth0").expect("b");
        assert_eq!((a, b), (Ipv4Addr::new(10, 89, 0, 3), Ipv4Addr::new(10, 89, 0, 4)));
        assert_eq!(fs::read_to_string(store.dir().join("10.89.0.3")).expect("read"), "pod-a\r\neth0");
        assert_eq!(fs::read_to_string(store.dir().join(LAST_RESERVED)).expect("read"), "10.89.0.4");
        assert_eq!(store.held_by("pod-a"), [a]);

        store.release("pod-a", "eth0", Some(a)).expect("release a");
        store.release("pod-b", "eth0", None).expect("release b by scan");
        store.release("pod-b", "eth0", None).expect("again: nothing held");
        assert!(store.held_by("pod-a").is_empty() && store.held_by("pod-b").is_empty());
        assert_eq!(store.held_by("cni-pod"), [Ipv4Addr::new(10, 89, 0, 2)], "another owner's address stays");
        // Freed addresses are not reused at once: host-local goes on after the last.
        let c = store.allocate(&range(), "pod-c", "eth0").expect("c");
        assert_eq!(c, Ipv4Addr::new(10, 89, 0, 5));
        Store::new(&dir.path().join("missing"), "x").release("p", "eth0", None).expect("no directory: nothing held");
    }

    #[test]
    fn a_full_range_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), "tiny");
        let r = Range::of_subnet(Ipv4Addr::new(10, 1, 2, 0), 30, Ipv4Addr::new(10, 1, 2, 1));
        store.allocate(&r, "p1", "eth0").expect("the one address");
        let err = store.allocate(&r, "p2", "eth0").expect_err("full");
        assert!(err.to_string().contains("no free address"), "{err}");
    }
}
