//! cgroup v2 quirks: a controller must be enabled in every ancestor's
//! `cgroup.subtree_control` before a leaf has its files, limits use the
//! unified names, and `cgroup.kill` (Linux 5.14) kills a whole subtree.

use std::path::{Path, PathBuf};

use super::{cpu_quota_us, fsx, CgroupError, Limits, Result, CPU_PERIOD_US};

/// Controllers enabled for every pod when the host offers them, limited or
/// not: their accounting (`memory.events` for OOM kills, `cpu.stat`,
/// `pids.current`) is useful on its own.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Fails unless every controller in `required` is in `root`'s
/// `cgroup.controllers`; returns the ones to enable.
pub(super) fn check_available(root: &Path, required: &[&'static str]) -> Result<Vec<&'static str>> {
    let path = root.join("cgroup.controllers");
    let text = fsx::read(&path)?;
    let available: Vec<&str> = text.split_whitespace().collect();
    if let Some(missing) = required.iter().find(|c| !available.contains(c)) {
        return Err(CgroupError::ControllerMissing { controller: missing, path });
    }
    Ok(CONTROLLERS.into_iter().filter(|c| available.contains(c)).collect())
}

/// Enables `controllers` for the children of each directory in `chain`,
/// outermost first. A directory that already has them all is not written:
/// another pod may be using them, and the write would be a no-op anyway.
pub(super) fn enable(chain: &[PathBuf], controllers: &[&str]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line = controllers.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    for dir in chain {
        let path = dir.join("cgroup.subtree_control");
        let current = fsx::read(&path)?;
        let enabled: Vec<&str> = current.split_whitespace().collect();
        if !controllers.iter().all(|c| enabled.contains(c)) {
            fsx::write(&path, &line)?;
        }
    }
    Ok(())
}

/// `cpu.max` for `millis` thousandths of a CPU: `"<quota> <period>"`.
pub(super) fn cpu_max(millis: u64) -> Option<String> {
    cpu_quota_us(millis).map(|q| format!("{q} {CPU_PERIOD_US}"))
}

/// Writes `limits` into an app's leaf `dir`.
pub(super) fn apply(dir: &Path, app: &str, limits: &Limits) -> Result<()> {
    if let Some(bytes) = limits.memory_bytes {
        fsx::write(&dir.join("memory.max"), &bytes.to_string())?;
        // Without swap accounting (no file) the kernel cannot limit swap;
        // with it, an app may not swap its way past its memory limit.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            fsx::write(&swap, "0")?;
        } else {
            tracing::debug!(path = %swap.display(), "no swap accounting; swap left unlimited");
        }
    }
    if let Some(millis) = limits.cpu_millis {
        let value = cpu_max(millis).ok_or_else(|| CgroupError::InvalidLimit {
            app: app.to_owned(),
            why: format!("cpu limit {millis}m is too large"),
        })?;
        fsx::write(&dir.join("cpu.max"), &value)?;
    }
    if let Some(shares) = limits.cpu_shares {
        fsx::write(&dir.join("cpu.weight"), &super::cpu_weight(shares).to_string())?;
    }
    if let Some(pids) = limits.pids {
        fsx::write(&dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// OOM kills in `dir` and below (`memory.events`, `oom_kill`).
pub(super) fn oom_kills(dir: &Path) -> Result<u64> {
    fsx::keyed(&dir.join("memory.events"), "oom_kill")
}

/// Kills everything in `dir` and below in one write, forks included.
/// `false` if the kernel predates `cgroup.kill` or `dir` is gone; the
/// caller then signals process by process.
pub(super) fn kill(dir: &Path) -> Result<bool> {
    let path = dir.join("cgroup.kill");
    if !path.exists() {
        return Ok(false);
    }
    fsx::write(&path, "1")?;
    Ok(true)
}
