//! Pod directories and their state.
//!
//! A pod's state is where its directory lives plus whether its lock is held,
//! as in rkt's pod lifecycle; no daemon is needed to know it:
//!
//! ```text
//! <data>/pods/embryo/<uuid>     being prepared (flocked by the preparing pod)
//! <data>/pods/prepared/<uuid>   ready to run
//! <data>/pods/run/<uuid>        running while its stage1 holds the lock; exited when not,
//!                               or once stage1 wrote `stage1-exit` (it may still tear down)
//! <data>/pods/garbage/<uuid>    being removed (flocked by the remover)
//! ```
//!
//! Transitions are rename(2) of the whole directory, so a pod is always in
//! exactly one state, and concurrent `pod` processes agree on it.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::exit::{Exit, ExitCodeOf};
use crate::paths::{self, Dirs};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no pod matches {0:?}")]
    NotFound(String),
    #[error("{query:?} matches {count} pods; use more of the uuid")]
    Ambiguous { query: String, count: usize },
    #[error("pod {0} is locked by another pod process")]
    Locked(String),
}

impl ExitCodeOf for PodError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::NotFound(_) => Exit::NotFound,
            Self::Ambiguous { .. } | Self::Locked(_) => Exit::Conflict,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PodError + 'a {
    move |source| PodError::Io { op, path: path.to_owned(), source }
}

/// The one state of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodState {
    Embryo,
    Prepared,
    Running,
    Exited,
    Garbage,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embryo => "embryo",
            Self::Prepared => "prepared",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Garbage => "garbage",
        }
    }
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const EMBRYO: &str = "embryo";
const PREPARED: &str = "prepared";
const RUN: &str = "run";
const GARBAGE: &str = "garbage";
const ALL: [&str; 4] = [EMBRYO, PREPARED, RUN, GARBAGE];
/// Age after which an unnamed embryo (`embryo/.<uuid>`) is a leftover.
const UNNAMED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The pods directory.
#[derive(Debug, Clone)]
pub struct Pods {
    root: PathBuf,
}

/// A pod found on disk.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub uuid: String,
    pub dir: PathBuf,
    pub state: PodState,
}

/// A pod directory held under an exclusive flock. The lock is taken on an
/// fd of the directory itself, so it follows the directory through renames,
/// and it can be handed to stage1, which keeps the pod "running" by holding it.
#[derive(Debug)]
pub struct LockedPod {
    pub uuid: String,
    pub dir: PathBuf,
    lock: File,
}

impl LockedPod {
    /// Gives up the lock as an fd for stage1. flock(2) locks belong to the
    /// open file description, so the lock lives as long as this fd (or its
    /// inherited copy in the exec'd stage1) is open.
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.lock)
    }
}

impl Pods {
    pub fn new(dirs: &Dirs) -> Self {
        Self { root: dirs.data.join("pods") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state_dir(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }

    /// Creates a new embryo pod with a fresh uuid, locked.
    ///
    /// The directory is made and locked under a name `list` skips (`.<uuid>`)
    /// and only then renamed to its uuid: a concurrent `pod gc` must never
    /// see an embryo that is not yet locked, which it would take for the
    /// leftover of a killed `pod run`. A `.<uuid>` left by a kill in between
    /// is removed by [`Pods::remove_unnamed`] once it is a minute old.
    pub fn create(&self) -> Result<LockedPod, PodError> {
        paths::create_private_dir(&self.root).map_err(io_err("create directory", &self.root))?;
        for s in ALL {
            let d = self.state_dir(s);
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        let uuid = new_uuid()?;
        let hidden = self.state_dir(EMBRYO).join(format!(".{uuid}"));
        fs::create_dir(&hidden).map_err(io_err("create directory", &hidden))?;
        let lock = lock_dir(&hidden, &uuid)?;
        let dir = self.state_dir(EMBRYO).join(&uuid);
        fs::rename(&hidden, &dir).map_err(io_err("rename", &hidden))?;
        Ok(LockedPod { uuid, dir, lock })
    }

    /// Removes `embryo/.<uuid>` directories nobody holds that are older than
    /// a minute: pods killed between their mkdir and their rename. (A young
    /// one may be between its mkdir and its lock, two syscalls apart.)
    /// Returns how many.
    pub fn remove_unnamed(&self) -> Result<usize, PodError> {
        let d = self.state_dir(EMBRYO);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("read directory", &d)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &d))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(uuid) = name.strip_prefix('.') else { continue };
            if !is_uuid(uuid) {
                continue;
            }
            let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if age.is_none_or(|a| a < UNNAMED_GRACE) {
                continue;
            }
            // Locked: a `pod run` between mkdir and rename; it renames it soon.
            let Ok(lock) = lock_dir(&entry.path(), uuid) else { continue };
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &entry.path())(e)),
            }
            drop(lock);
        }
        Ok(removed)
    }

    /// Moves a locked pod to another state directory.
    pub fn transition(&self, pod: &mut LockedPod, to: PodState) -> Result<(), PodError> {
        let target = match to {
            PodState::Embryo => EMBRYO,
            PodState::Prepared => PREPARED,
            PodState::Running | PodState::Exited => RUN,
            PodState::Garbage => GARBAGE,
        };
        let dest = self.state_dir(target).join(&pod.uuid);
        fs::rename(&pod.dir, &dest).map_err(io_err("rename", &pod.dir))?;
        pod.dir = dest;
        Ok(())
    }

    /// The pod of a whole uuid, in whichever state directory it is.
    fn by_uuid(&self, uuid: &str) -> Option<PodRef> {
        ALL.into_iter().find_map(|s| {
            let dir = self.state_dir(s).join(uuid);
            fs::symlink_metadata(&dir).ok().filter(|m| m.is_dir())?;
            Some(PodRef { uuid: uuid.to_owned(), state: state_of(s, &dir), dir })
        })
    }

    /// Every pod, in uuid order.
    pub fn list(&self) -> Result<Vec<PodRef>, PodError> {
        let mut out = Vec::new();
        for s in ALL {
            let d = self.state_dir(s);
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read directory", &d)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("read directory", &d))?;
                let uuid = entry.file_name().to_string_lossy().into_owned();
                if !is_uuid(&uuid) {
                    continue;
                }
                let dir = entry.path();
                let state = state_of(s, &dir);
                out.push(PodRef { uuid, dir, state });
            }
        }
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(out)
    }

    /// Finds a pod by uuid, unique uuid prefix, or name (`name_of` reads a
    /// pod's name from its directory).
    pub fn find(&self, query: &str, name_of: impl Fn(&Path) -> Option<String>) -> Result<PodRef, PodError> {
        // A whole uuid is looked up in the four state directories rather
        // than by listing every pod (and testing each one's lock): with
        // many pods, `pod stop UUID` of each would be quadratic.
        if is_uuid(query) {
            if let Some(hit) = self.by_uuid(query) {
                return Ok(hit);
            }
        }
        let all = self.list()?;
        let mut hits: Vec<PodRef> = all.iter().filter(|p| p.uuid == query).cloned().collect();
        if hits.is_empty() {
            hits = all.iter().filter(|p| p.uuid.starts_with(query)).cloned().collect();
        }
        if hits.is_empty() {
            hits = all.into_iter().filter(|p| name_of(&p.dir).as_deref() == Some(query)).collect();
            // Several pods of one name: the one running, else the newest.
            if hits.len() > 1 {
                if let Some(run) = hits.iter().position(|p| p.state == PodState::Running) {
                    return Ok(hits.swap_remove(run));
                }
            }
        }
        match hits.len() {
            0 => Err(PodError::NotFound(query.to_owned())),
            1 => Ok(hits.swap_remove(0)),
            count => Err(PodError::Ambiguous { query: query.to_owned(), count }),
        }
    }

    /// Locks an exited pod, waiting while its stage1 still tears it down
    /// (see [`state_of`]); fails if the lock is still held after
    /// [`TEARDOWN_WAIT`].
    pub fn lock_exited(&self, pod: &PodRef) -> Result<LockedPod, PodError> {
        let deadline = std::time::Instant::now() + TEARDOWN_WAIT;
        loop {
            match self.lock(pod) {
                Err(PodError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                done => return done,
            }
        }
    }

    /// Locks an existing pod (fails if someone holds it).
    pub fn lock(&self, pod: &PodRef) -> Result<LockedPod, PodError> {
        let lock = lock_dir(&pod.dir, &pod.uuid)?;
        // Only a lock holder moves a pod. If its directory left `pod.dir`
        // between our open and our lock, that holder (a concurrent `pod gc`
        // or `rm`) has moved or removed it: our lock is on a stale inode.
        match fs::symlink_metadata(&pod.dir) {
            Ok(_) => Ok(LockedPod { uuid: pod.uuid.clone(), dir: pod.dir.clone(), lock }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PodError::NotFound(pod.uuid.clone())),
            Err(e) => Err(io_err("inspect", &pod.dir)(e)),
        }
    }
}

/// The state of a pod in state directory `s`: one in `run/` is running
/// while its stage1 holds its lock and has not reported its exit. A stage1
/// that reported it (`stage1-exit`) may still hold the lock while it tears
/// the pod down, after a foreground `pod run` has returned: that pod has
/// exited, and [`Pods::lock_exited`] waits for it.
fn state_of(s: &str, dir: &Path) -> PodState {
    match s {
        EMBRYO => PodState::Embryo,
        PREPARED => PodState::Prepared,
        GARBAGE => PodState::Garbage,
        _ if dir.join(spec::stage1::EXIT_FILE).exists() => PodState::Exited,
        _ if is_locked(dir) => PodState::Running,
        _ => PodState::Exited,
    }
}

/// How long `rm` and `gc` wait for an exited pod's stage1 to finish its
/// teardown (usually milliseconds) before leaving the pod for a later gc.
const TEARDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn lock_dir(dir: &Path, uuid: &str) -> Result<File, PodError> {
    let f = match File::open(dir) {
        Ok(f) => f,
        // Renamed or removed since it was listed (by another `pod gc`).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PodError::NotFound(uuid.to_owned())),
        Err(e) => return Err(io_err("open", dir)(e)),
    };
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(PodError::Locked(uuid.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", dir)(e)),
    }
}

/// True while some process (a running stage1, a preparing `pod`) holds the lock.
pub fn is_locked(dir: &Path) -> bool {
    File::open(dir).is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// A random (version 4) uuid.
pub fn new_uuid() -> Result<String, PodError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| PodError::Io {
        op: "read randomness",
        path: PathBuf::from("getrandom"),
        source: io::Error::other(e.to_string()),
    })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_by_rename_and_lock() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pods = Pods::new(&Dirs::new(tmp.path(), tmp.path().join("cfg")));
        let mut pod = pods.create().unwrap_or_else(|e| panic!("{e}"));
        assert!(is_uuid(&pod.uuid));
        let state = |pods: &Pods, uuid: &str| {
            pods.list().ok().and_then(|l| l.into_iter().find(|p| p.uuid == uuid)).map(|p| p.state)
        };
        assert_eq!(state(&pods, &pod.uuid), Some(PodState::Embryo));
        pods.transition(&mut pod, PodState::Prepared).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state(&pods, &pod.uuid), Some(PodState::Prepared));
        pods.transition(&mut pod, PodState::Running).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state(&pods, &pod.uuid), Some(PodState::Running), "locked pod in run/ is running");
        let uuid = pod.uuid.clone();
        let fd = pod.into_fd();
        assert_eq!(state(&pods, &uuid), Some(PodState::Running), "lock survives handing over the fd");
        drop(fd);
        assert_eq!(state(&pods, &uuid), Some(PodState::Exited), "unlocked pod in run/ has exited");
        let found = pods.find(&uuid[..8], |_| None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.uuid, uuid);
        assert!(matches!(pods.find("nope", |_| None), Err(PodError::NotFound(_))));
    }
}
