//! cgroup v1 quirks: one tree per controller, v1 file names
//! (`memory.limit_in_bytes`, `cpu.cfs_quota_us`), swap limited through
//! `memory.memsw.*` in a fixed order, and no `cgroup.kill`: the freezer
//! holds a pod still while it is killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{cpu_quota_us, fsx, CgroupError, Limits, Result, CPU_PERIOD_US};

/// How long to wait for `FREEZING` to become `FROZEN` before killing
/// anyway (a task in uninterruptible sleep can hold it back).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Fails unless every controller in `required` has a mounted hierarchy.
pub(super) fn check_available(
    root: &Path,
    controllers: &BTreeMap<String, PathBuf>,
    required: &[&'static str],
) -> Result<()> {
    match required.iter().find(|c| !controllers.contains_key(**c)) {
        Some(missing) => Err(CgroupError::ControllerMissing { controller: missing, path: root.to_owned() }),
        None => Ok(()),
    }
}

/// Writes `limits` for the app at `rel` (relative to each hierarchy).
pub(super) fn apply(controllers: &BTreeMap<String, PathBuf>, rel: &Path, app: &str, limits: &Limits) -> Result<()> {
    let dir = |controller: &'static str| {
        controllers
            .get(controller)
            .map(|m| m.join(rel))
            .ok_or_else(|| CgroupError::ControllerMissing { controller, path: rel.to_owned() })
    };
    if let Some(bytes) = limits.memory_bytes {
        memory(&dir("memory")?, bytes)?;
    }
    if let Some(millis) = limits.cpu_millis {
        let dir = dir("cpu")?;
        let quota = cpu_quota_us(millis).ok_or_else(|| CgroupError::InvalidLimit {
            app: app.to_owned(),
            why: format!("cpu limit {millis}m is too large"),
        })?;
        fsx::write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        fsx::write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if let Some(pids) = limits.pids {
        fsx::write(&dir("pids")?.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// `memory.limit_in_bytes`, and the same for memory+swap when swap is
/// accounted, so the app cannot swap past its limit.
fn memory(dir: &Path, bytes: u64) -> Result<()> {
    let value = bytes.to_string();
    memory_and_swap(dir, &value, &value, &mut |path, value| fsx::write(path, value))
}

/// Writes `limit` to `memory.limit_in_bytes` and `memsw` (memory+swap,
/// `-1` unlimited) to `memory.memsw.limit_in_bytes` if swap is accounted,
/// each through `write`. The kernel insists memsw >= limit at every step:
/// lowering goes limit first, raising fails with EINVAL and is redone
/// memsw first.
pub(super) fn memory_and_swap(
    dir: &Path,
    limit: &str,
    memsw: &str,
    write: &mut dyn FnMut(&Path, &str) -> Result<()>,
) -> Result<()> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let memsw_file = dir.join("memory.memsw.limit_in_bytes");
    if !memsw_file.exists() {
        tracing::debug!(path = %memsw_file.display(), "no swap accounting; swap left unlimited");
        return write(&limit_file, limit);
    }
    match write(&limit_file, limit) {
        Ok(()) => write(&memsw_file, memsw),
        Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(nix::libc::EINVAL) => {
            write(&memsw_file, memsw)?;
            write(&limit_file, limit)
        }
        Err(e) => Err(e),
    }
}

/// OOM kills in the memory cgroup `dir` (`memory.oom_control`, Linux 4.13).
pub(super) fn oom_kills(dir: &Path) -> Result<u64> {
    fsx::keyed(&dir.join("memory.oom_control"), "oom_kill")
}

/// Freezes `dir` and below so nothing forks while it is being killed.
pub(super) fn freeze(dir: &Path) -> Result<()> {
    let state = dir.join("freezer.state");
    fsx::write(&state, "FROZEN")?;
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    while fsx::read(&state)?.trim() != "FROZEN" {
        if Instant::now() >= deadline {
            tracing::debug!(path = %state.display(), "still freezing; killing anyway");
            break;
        }
        thread::sleep(fsx::POLL);
    }
    Ok(())
}

/// Thaws `dir`: a v1-frozen task acts on its SIGKILL only once thawed.
pub(super) fn thaw(dir: &Path) -> Result<()> {
    fsx::write(&dir.join("freezer.state"), "THAWED")
}
