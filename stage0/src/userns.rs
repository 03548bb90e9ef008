//! `userns: auto`: each pod's range of host ids.
//!
//! A pod with a user namespace gets [`IdMap::POD_SIZE`] (65536) uids and
//! gids, distinct from every other pod's. The candidates, in order:
//!
//! - the ranges `/etc/subuid` and `/etc/subgid` give the user `containers`
//!   (podman's convention for `--userns=auto`), cut into slices of 65536
//!   from each range's start, the n-th uid slice paired with the n-th gid
//!   slice;
//! - without such entries, a built-in window: uid = gid = 2^31 + k·65536 for
//!   k in 0..32767 (up to 4294901759, never the invalid id 2^32-1), ids no
//!   distribution hands to users.
//!
//! The allocation is recorded in the pod's `stage1.json` and nowhere else:
//! a range is in use exactly while a pod directory (in any state) names
//! it, so removing the pod (`pod rm`, `pod gc`) frees it and nothing can
//! leak. Choosing and recording happen under an flock on
//! `<pods>/userns.lock`, so concurrent `pod run`s get disjoint ranges.
//!
//! A pod file may give its mapping instead (`userns: { uid: { container: 0,
//! host: ID, size: N }, gid: ... }`, what the CRI's mode POD becomes):
//! [`reserve`] records it as given, and `auto` ranges then avoid it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use spec::stage1::{IdMap, INVOCATION_FILE};

use crate::exit::{Exit, ExitCodeOf};
use crate::pods::Pods;

/// The start of the built-in window: 2^31.
pub const BUILTIN_BASE: u32 = 1 << 31;
/// Slices in the built-in window.
pub const BUILTIN_SLOTS: u32 = 32767;
/// The user whose subordinate ids pods use, as podman's.
pub const SUBID_USER: &str = "containers";

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: malformed entry for {SUBID_USER} (want {SUBID_USER}:START:COUNT)")]
    Malformed { path: PathBuf, line: usize },
    #[error("every range of 65536 host ids is taken by another pod ({0} ranges); remove exited pods (pod gc)")]
    Exhausted(usize),
}

impl ExitCodeOf for UsernsError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::Malformed { .. } => Exit::InvalidInput,
            Self::Exhausted(_) => Exit::Conflict,
        }
    }
}

/// Where the subordinate id files are (`/etc/subuid`, `/etc/subgid`).
#[derive(Debug, Clone)]
pub struct SubIds {
    pub subuid: PathBuf,
    pub subgid: PathBuf,
}

impl Default for SubIds {
    fn default() -> Self {
        Self { subuid: "/etc/subuid".into(), subgid: "/etc/subgid".into() }
    }
}

/// The `(start, count)` ranges of [`SUBID_USER`] in a subid file; none if
/// the file is missing.
fn ranges(path: &Path) -> Result<Vec<(u64, u64)>, UsernsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(UsernsError::Io { op: "read", path: path.to_owned(), source }),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.trim().split(':');
        if fields.next() != Some(SUBID_USER) {
            continue;
        }
        let malformed = || UsernsError::Malformed { path: path.to_owned(), line: i + 1 };
        let start = fields.next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(malformed)?;
        let count = fields.next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(malformed)?;
        if fields.next().is_some() {
            return Err(malformed());
        }
        out.push((start, count));
    }
    Ok(out)
}

/// Slices of [`IdMap::POD_SIZE`] ids cut from each range, below 2^32-1.
fn slices(ranges: &[(u64, u64)]) -> Vec<u32> {
    let size = u64::from(IdMap::POD_SIZE);
    let mut out = Vec::new();
    for &(start, count) in ranges {
        let mut at = start;
        while at + size <= start.saturating_add(count) && at + size <= u64::from(u32::MAX) {
            if let Ok(id) = u32::try_from(at) {
                out.push(id);
            }
            at += size;
        }
    }
    out
}

/// Every candidate mapping, in the order they are handed out.
pub fn candidates(subids: &SubIds) -> Result<Vec<IdMap>, UsernsError> {
    let uids = slices(&ranges(&subids.subuid)?);
    let gids = slices(&ranges(&subids.subgid)?);
    if !uids.is_empty() && !gids.is_empty() {
        return Ok(uids.into_iter().zip(gids).map(|(uid, gid)| IdMap { uid, gid, size: IdMap::POD_SIZE }).collect());
    }
    Ok((0..BUILTIN_SLOTS)
        .map(|k| {
            let id = BUILTIN_BASE + k * IdMap::POD_SIZE;
            IdMap { uid: id, gid: id, size: IdMap::POD_SIZE }
        })
        .collect())
}

/// The mapping a pod directory's `stage1.json` records, if any.
pub fn recorded(pod_dir: &Path) -> Option<IdMap> {
    #[derive(serde::Deserialize)]
    struct Just {
        #[serde(default)]
        userns: Option<IdMap>,
    }
    let bytes = fs::read(pod_dir.join(INVOCATION_FILE)).ok()?;
    serde_json::from_slice::<Just>(&bytes).ok()?.userns
}

/// A mapping chosen for a pod, with the allocation lock still held: drop
/// it only once the pod's `stage1.json` records the mapping.
#[derive(Debug)]
pub struct Allocation {
    pub map: IdMap,
    _lock: File,
}

/// Picks the first candidate no existing pod's mapping overlaps.
pub fn allocate(pods: &Pods, subids: &SubIds) -> Result<Allocation, UsernsError> {
    let (lock, taken) = lock_taken(pods)?;
    let all = candidates(subids)?;
    let count = all.len();
    let map = all.into_iter().find(|c| !taken.iter().any(|t| t.overlaps(c))).ok_or(UsernsError::Exhausted(count))?;
    Ok(Allocation { map, _lock: lock })
}

/// An explicit mapping (a pod file's `userns: { uid, gid }`, the CRI's
/// mode POD), recorded as given under the same lock, so that a concurrent
/// [`allocate`] sees it. Whether it overlaps another pod's is not checked:
/// kubelet hands a pod's range to each of its sandboxes in turn, the
/// previous one perhaps not yet removed.
pub fn reserve(pods: &Pods, map: IdMap) -> Result<Allocation, UsernsError> {
    let (lock, _) = lock_taken(pods)?;
    Ok(Allocation { map, _lock: lock })
}

/// The allocation lock, held, and every mapping a pod directory records.
fn lock_taken(pods: &Pods) -> Result<(File, Vec<IdMap>), UsernsError> {
    let lock_path = pods.root().join("userns.lock");
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| UsernsError::Io { op, path, source }
    };
    fs::create_dir_all(pods.root()).map_err(io("create directory", pods.root()))?;
    let lock =
        File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    let taken: Vec<IdMap> = pods
        .list()
        .map_err(|e| UsernsError::Io { op: "list pods in", path: pods.root().to_owned(), source: io::Error::other(e) })?
        .iter()
        .filter_map(|p| recorded(&p.dir))
        .collect();
    Ok((lock, taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Dirs;

    fn subids(dir: &Path, uid: &str, gid: &str) -> SubIds {
        let s = SubIds { subuid: dir.join("subuid"), subgid: dir.join("subgid") };
        fs::write(&s.subuid, uid).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&s.subgid, gid).unwrap_or_else(|e| panic!("{e}"));
        s
    }

    #[test]
    fn builtin_window_without_subids() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let none = SubIds { subuid: dir.path().join("no"), subgid: dir.path().join("no") };
        let c = candidates(&none).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.len(), 32767);
        assert_eq!((c[0].uid, c[0].gid, c[0].size), (2_147_483_648, 2_147_483_648, 65536));
        let last = c[c.len() - 1];
        assert!(u64::from(last.uid) + u64::from(last.size) - 1 < u64::from(u32::MAX), "never 2^32-1");
        // An entry for another user changes nothing.
        let other = subids(dir.path(), "alice:100000:65536\n", "alice:100000:65536\n");
        assert_eq!(candidates(&other).unwrap_or_else(|e| panic!("{e}"))[0].uid, BUILTIN_BASE);
    }

    #[test]
    fn containers_ranges_are_sliced_and_paired() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = subids(
            dir.path(),
            "alice:1:2\ncontainers:1000000:131072\ncontainers:5000000:70000\n",
            "containers:2000000:200000\n",
        );
        let c = candidates(&s).unwrap_or_else(|e| panic!("{e}"));
        let pairs: Vec<(u32, u32)> = c.iter().map(|m| (m.uid, m.gid)).collect();
        assert_eq!(pairs, [(1_000_000, 2_000_000), (1_065_536, 2_065_536), (5_000_000, 2_131_072)]);
        let bad = subids(dir.path(), "containers:x:65536\n", "containers:0:65536\n");
        assert!(matches!(candidates(&bad), Err(UsernsError::Malformed { line: 1, .. })));
    }

    #[test]
    fn allocation_skips_ranges_pods_hold_and_frees_them_with_the_pod() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pods = Pods::new(&Dirs::new(dir.path(), dir.path().join("cfg")));
        let none = SubIds { subuid: dir.path().join("no"), subgid: dir.path().join("no") };
        let record = |map: IdMap| {
            let pod = pods.create().unwrap_or_else(|e| panic!("{e}"));
            let json = serde_json::json!({ "version": 1, "userns": map });
            fs::write(pod.dir.join(INVOCATION_FILE), json.to_string()).unwrap_or_else(|e| panic!("{e}"));
            pod.dir
        };
        let first = allocate(&pods, &none).unwrap_or_else(|e| panic!("{e}")).map;
        assert_eq!(first.uid, BUILTIN_BASE);
        let first_dir = record(first);
        let second = allocate(&pods, &none).unwrap_or_else(|e| panic!("{e}")).map;
        assert_eq!(second.uid, BUILTIN_BASE + 65536);
        assert!(!first.overlaps(&second));
        record(second);
        fs::remove_dir_all(first_dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(allocate(&pods, &none).unwrap_or_else(|e| panic!("{e}")).map, first, "freed with the pod");
        // An explicit mapping is taken as given; `auto` then avoids it.
        let named = IdMap { uid: first.uid, gid: first.gid, size: 100 };
        assert_eq!(reserve(&pods, named).unwrap_or_else(|e| panic!("{e}")).map, named);
        record(named);
        let next = allocate(&pods, &none).unwrap_or_else(|e| panic!("{e}")).map;
        assert!(!next.overlaps(&named), "{next:?}");
    }
}
