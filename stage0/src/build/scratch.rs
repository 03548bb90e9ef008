//! A build's scratch directory: `pod-build-*` in the temp dir, holding the
//! rootfs being assembled. A build killed with SIGKILL cannot remove it, so
//! each one is flocked by its build (a `.lock` inside) and every build first
//! removes the unlocked ones its killed predecessors left, as the store does
//! with its `tmp/`. It is made under a hidden name and renamed once locked,
//! so a visible one is never unlocked while its build lives; a hidden one
//! (a kill between two syscalls) is removed once it is an hour old.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, BuildError};

const PREFIX: &str = "pod-build-";
const LOCK: &str = ".lock";
const HIDDEN_GRACE: Duration = Duration::from_secs(3600);

/// The scratch directory; removed on drop.
#[derive(Debug)]
pub(super) struct Scratch {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Scratch {
    /// Removes the leftovers of killed builds in `parent`, then makes ours.
    pub(super) fn new(parent: &Path) -> Result<Self, BuildError> {
        sweep(parent);
        let hidden = tempfile::Builder::new()
            .prefix(&format!(".{PREFIX}"))
            .tempdir_in(parent)
            .map_err(io_err("creating a temp dir in", parent))?
            .keep();
        let lock_path = hidden.join(LOCK);
        let f = File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io_err("locking", &lock_path)(e.into()))?;
        let name = hidden.file_name().map(|n| n.to_string_lossy().trim_start_matches('.').to_owned());
        let path = parent.join(name.unwrap_or_default());
        fs::rename(&hidden, &path).map_err(io_err("renaming", &hidden))?;
        Ok(Self { path, _lock: lock })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover is removed by the next build.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Best effort: a leftover that cannot be removed now is tried again next time.
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let abandoned = if name.starts_with(PREFIX) {
            // No `.lock`: not made by this code; leave it alone.
            File::open(path.join(LOCK)).is_ok_and(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok())
        } else if name.strip_prefix('.').is_some_and(|n| n.starts_with(PREFIX)) {
            let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a > HIDDEN_GRACE)
        } else {
            false
        };
        if abandoned {
            tracing::debug!(path = %path.display(), "removing the scratch dir of a killed build");
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_builds_scratch_goes_a_live_ones_stays() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let live = Scratch::new(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(live.path().file_name().is_some_and(|n| n.to_string_lossy().starts_with(PREFIX)));
        // A killed build: its scratch dir stays, its lock is gone.
        let dead = tmp.path().join(format!("{PREFIX}dead"));
        fs::create_dir_all(dead.join("rootfs")).unwrap_or_else(|e| panic!("{e}"));
        File::create(dead.join(LOCK)).unwrap_or_else(|e| panic!("{e}"));
        let foreign = tmp.path().join(format!("{PREFIX}nolock"));
        fs::create_dir(&foreign).unwrap_or_else(|e| panic!("{e}"));
        let next = Scratch::new(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!dead.exists(), "the killed build's scratch is removed");
        assert!(live.path().is_dir(), "a live build's scratch stays");
        assert!(foreign.is_dir(), "a directory without a lock is not ours");
        let p = next.path().to_owned();
        drop(next);
        assert!(!p.exists(), "removed on drop");
    }
}
