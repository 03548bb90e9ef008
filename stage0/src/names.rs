//! Pod names for `pod run`: unique among live pods, as podman's container
//! names, so that a command given a name finds one pod.
//!
//! `<data>/pods/names/<name>` is a symlink to the uuid of the last pod that
//! took the name. The name is taken while that pod is live: running, or
//! being prepared (its embryo or prepared directory locked by the `pod` that
//! prepares it). Claims are serialized by a flock on the `names` directory,
//! held only while the name is checked, the pod's embryo created and the
//! link pointed at it: not while images are fetched, so concurrent `pod
//! run`s wait on one another for a few system calls at most. A link whose
//! pod is gone is harmless (the name is free) and `pod gc` prunes it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use spec::AcName;

use crate::exit::{Exit, ExitCodeOf};
use crate::pods::{self, LockedPod, PodError, PodState, Pods};

/// What `pod run` does when a live pod has the new pod's name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SameName {
    /// Names are not checked (the CRI's sandboxes: kubelet names them).
    #[default]
    Allow,
    /// The new pod is refused, as `podman run --name` refuses.
    Refuse,
    /// `--replace`: the live pod is stopped and removed first.
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("a pod named {name} is {state} ({uuid}): stop it, pick another name (--name), or replace it (--replace)")]
    Taken { name: AcName, uuid: String, state: &'static str },
    #[error("replacing pod {uuid} (named {name}): {why}")]
    Replace { name: AcName, uuid: String, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Pod(#[from] PodError),
}

impl ExitCodeOf for NameError {
    fn exit(&self) -> Exit {
        match self {
            Self::Taken { .. } | Self::Replace { .. } => Exit::Conflict,
            Self::Io { .. } => Exit::Failure,
            Self::Pod(e) => e.exit(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NameError + 'a {
    move |source| NameError::Io { op, path: path.to_owned(), source }
}

/// How many times a `--replace` stops a pod that took the name before it
/// gives up (another `pod run --replace` of the same name keeps taking it).
const REPLACE_ATTEMPTS: usize = 3;

/// Creates a new pod (`pods.create()`) named `name`, as `same` says when a
/// live pod has the name already.
pub fn create_named(pods: &Pods, name: &AcName, same: SameName) -> Result<LockedPod, NameError> {
    if same == SameName::Allow {
        return Ok(pods.create()?);
    }
    let dir = pods.root().join("names");
    for _ in 0..REPLACE_ATTEMPTS {
        let lock = lock_names(&dir)?;
        let link = dir.join(name.as_str());
        let holder = fs::read_link(&link).ok().and_then(|uuid| live(pods, &uuid.to_string_lossy()));
        let Some(old) = holder else {
            let pod = pods.create()?;
            point(&dir, name, &pod.uuid)?;
            drop(lock);
            return Ok(pod);
        };
        drop(lock);
        if same == SameName::Refuse || old.state != PodState::Running {
            let state = if old.state == PodState::Running { "running" } else { "being started" };
            return Err(NameError::Taken { name: name.clone(), uuid: old.uuid, state });
        }
        tracing::info!(pod = %old.uuid, "--replace: stopping and removing the pod named {name}");
        let replace_err = |why: String| NameError::Replace { name: name.clone(), uuid: old.uuid.clone(), why };
        crate::lifecycle::stop(&old, None).map_err(|e| replace_err(e.to_string()))?;
        let exited = crate::lifecycle::find(pods, &old.uuid).map_err(|e| replace_err(e.to_string()))?;
        crate::lifecycle::remove(pods, &exited).map_err(|e| replace_err(e.to_string()))?;
    }
    Err(NameError::Taken { name: name.clone(), uuid: String::from("?"), state: "taken again and again" })
}

/// The names directory, created if need be, flocked (blocking: the holder
/// keeps it for a few system calls).
fn lock_names(dir: &Path) -> Result<File, NameError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let f = File::open(dir).map_err(io_err("open", dir))?;
    f.lock().map_err(io_err("lock", dir))?;
    Ok(f)
}

/// The pod `uuid`, if it is live: running, or locked while
/// it is prepared.
fn live(pods: &Pods, uuid: &str) -> Option<pods::PodRef> {
    if !pods::is_uuid(uuid) {
        return None;
    }
    let pod = pods.find(uuid, |_| None).ok()?;
    let live = match pod.state {
        PodState::Running => true,
        PodState::Embryo | PodState::Prepared => pods::is_locked(&pod.dir),
        PodState::Exited | PodState::Garbage => false,
    };
    live.then_some(pod)
}

/// Points `dir/<name>` at `uuid`, atomically (a new link renamed over it).
fn point(dir: &Path, name: &AcName, uuid: &str) -> Result<(), NameError> {
    let tmp = dir.join(format!(".{name}.{uuid}"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(uuid, &tmp).map_err(io_err("symlink", &tmp))?;
    let link = dir.join(name.as_str());
    fs::rename(&tmp, &link).map_err(io_err("rename", &tmp))
}

/// Removes the names whose pod is gone (`pod gc`); returns how many.
pub fn prune(pods: &Pods) -> Result<usize, NameError> {
    let dir = pods.root().join("names");
    if !dir.is_dir() {
        return Ok(0);
    }
    let _lock = lock_names(&dir)?;
    let mut pruned = 0;
    for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))?.flatten() {
        let path = entry.path();
        // `.<name>.<uuid>`: a link a killed `pod run` did not rename.
        let leftover = entry.file_name().to_string_lossy().starts_with('.');
        let gone = fs::read_link(&path).map_or(true, |uuid| {
            let uuid = uuid.to_string_lossy();
            !pods::is_uuid(&uuid) || pods.find(&uuid, |_| None).is_err()
        });
        if leftover || gone {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            pruned += 1;
        }
    }
    Ok(pruned)
}
