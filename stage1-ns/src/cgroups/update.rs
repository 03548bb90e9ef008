//! Changing a running app's limits in place (CRI UpdateContainerResources):
//! CPU shares, CFS quota and period, memory and memory+swap, pids, and on
//! cgroup v2 cpuset cpus and mems.
//!
//! All or nothing: every value is checked before a file is touched, each
//! file's old content is kept as it is written, and if the kernel refuses a
//! write (v1 refuses a memory limit below what the app uses with EBUSY)
//! the files written so far get their old content back, in reverse order,
//! so the app keeps the limits it had.
//!
//! v1 writes `cpu.shares`, `cpu.cfs_period_us`, `cpu.cfs_quota_us`,
//! `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` (the order
//! the kernel wants, v1.rs); v2 writes `cpu.weight` (the kubelet's
//! shares conversion), `cpu.max`, `memory.max`, `memory.swap.max` and, with
//! the cpuset controller enabled down to the app on demand, `cpuset.cpus`
//! and `cpuset.mems`. v1 cpusets are refused: pod makes no cgroup v1 cpuset
//! cgroups (detect::MANAGED_V1 says why). A v2 `memory.max` below what the
//! app uses is not refused by the kernel: it reclaims, then OOM-kills, as
//! runc's update does there too.

use std::path::{Path, PathBuf};

use super::pod::PodLoc;
use super::stats::{rel, shares_to_weight, Dirs};
use super::{fsx, v1, v2, CgroupError, Hierarchy, Result};

/// The kernel's bounds on the CFS period, in microseconds.
const PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The smallest CFS quota the kernel takes, in microseconds.
const MIN_QUOTA_US: i64 = 1_000;
/// The range of `cpu.shares` the kernel keeps (it clamps outside it).
const SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

/// New limits for an app; `None` leaves a limit as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub cpu_shares: Option<u64>,
    /// `-1` lifts the quota.
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Memory plus swap; `-1` lets the app swap without limit. Without it,
    /// a new memory limit allows no swap beyond it (as pod's own limits).
    pub memory_swap_bytes: Option<i64>,
    pub pids: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

impl Update {
    /// Checks every value against the kernel's bounds, naming the field.
    fn validate(&self, app: &str) -> Result<()> {
        let invalid = |why: String| Err(CgroupError::InvalidLimit { app: app.to_owned(), why });
        if let Some(p) = self.cpu_period_us.filter(|p| !PERIOD_US.contains(p)) {
            return invalid(format!("cpu period {p} µs is outside the kernel's 1000..=1000000 µs"));
        }
        if let Some(q) = self.cpu_quota_us.filter(|q| *q != -1 && *q < MIN_QUOTA_US) {
            return invalid(format!("cpu quota {q} µs is below the kernel's minimum of 1000 µs (-1 lifts it)"));
        }
        if let Some(s) = self.cpu_shares.filter(|s| !SHARES.contains(s)) {
            return invalid(format!("cpu shares {s} is outside 2..=262144"));
        }
        if self.memory_bytes == Some(0) {
            return invalid("a memory limit of 0 bytes cannot run anything".into());
        }
        if let (Some(m), Some(s)) = (self.memory_bytes, self.memory_swap_bytes) {
            if s != -1 && u64::try_from(s).map_or(true, |s| s < m) {
                return invalid(format!("memory+swap limit {s} is below the memory limit {m}"));
            }
        }
        if self.memory_swap_bytes.is_some() && self.memory_bytes.is_none() {
            return invalid("a memory+swap limit needs a memory limit beside it".into());
        }
        if self.pids == Some(0) {
            return invalid("a pids limit of 0 cannot run anything".into());
        }
        for (field, list) in [("cpuset cpus", &self.cpuset_cpus), ("cpuset mems", &self.cpuset_mems)] {
            if let Some(l) = list.as_deref().filter(|l| !valid_list(l)) {
                return invalid(format!("{field} {l:?} is not a list like 0-3,5"));
            }
        }
        Ok(())
    }
}

/// A kernel cpu/node list: `0-3,5,7-8`.
fn valid_list(s: &str) -> bool {
    let num = |n: &str| !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit());
    !s.is_empty()
        && s.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => num(a) && num(b),
            None => num(part),
        })
}

/// Writes files, remembering each one's old content to put back.
#[derive(Debug)]
struct Journal {
    done: Vec<(PathBuf, String)>,
}

impl Journal {
    fn write(&mut self, path: &Path, value: &str) -> Result<()> {
        let old = fsx::read(path)?;
        fsx::write(path, value)?;
        self.done.push((path.to_owned(), old.trim().to_owned()));
        Ok(())
    }

    /// Puts the old contents back, newest first; what cannot be undone is
    /// logged (the original error is the one returned).
    fn undo(self) {
        for (path, old) in self.done.into_iter().rev() {
            // v2's `cpu.max` and `memory.swap.max` read back as they are
            // written; v1's files too. An empty cpuset reads back empty,
            // which writing restores ("inherit the parent's").
            if let Err(e) = fsx::write(&path, &old) {
                tracing::warn!(error = %e, "could not restore a cgroup limit");
            }
        }
    }
}

/// An update written: kept, unless [`Applied::undo`] puts the old limits
/// back (the caller could not record it, say).
#[derive(Debug)]
#[must_use = "an update is undone only by calling undo; drop it to keep it"]
pub struct Applied {
    journal: Journal,
}

impl Applied {
    /// Puts back every limit the update changed, newest first.
    pub fn undo(self) {
        self.journal.undo();
    }
}

/// Applies `update` to app `app` of pod `pod`, all or nothing.
pub fn update_app(h: &Hierarchy, pod: impl Into<PodLoc>, app: &str, update: &Update) -> Result<Applied> {
    update.validate(app)?;
    let pod: PodLoc = pod.into();
    let uuid = pod.uuid();
    let dirs = Dirs::of(h, &rel(&pod, Some(app))?);
    // Fails (NotFound) if the app has no cgroup.
    super::stats::read_limits(&dirs)?;
    let mut journal = Journal { done: Vec::new() };
    let applied = match &dirs {
        Dirs::V2(dir) => apply_v2(dir, app, update, &mut journal),
        Dirs::V1(_) => apply_v1(&dirs, app, update, &mut journal),
    };
    if let Err(e) = applied {
        journal.undo();
        return Err(e);
    }
    tracing::debug!(uuid, app, ?update, "app limits updated");
    Ok(Applied { journal })
}

fn need<'a>(dirs: &'a Dirs, controller: &'static str) -> Result<&'a Path> {
    dirs.dir(controller).ok_or_else(|| CgroupError::ControllerMissing { controller, path: PathBuf::from("/") })
}

fn apply_v1(dirs: &Dirs, app: &str, u: &Update, j: &mut Journal) -> Result<()> {
    if u.cpuset_cpus.is_some() || u.cpuset_mems.is_some() {
        return Err(CgroupError::InvalidLimit {
            app: app.to_owned(),
            why: "cpuset limits need cgroup v2: on cgroup v1 pod makes no cpuset cgroups".into(),
        });
    }
    if u.cpu_shares.is_some() || u.cpu_period_us.is_some() || u.cpu_quota_us.is_some() {
        let cpu = need(dirs, "cpu")?;
        if let Some(s) = u.cpu_shares {
            j.write(&cpu.join("cpu.shares"), &s.to_string())?;
        }
        if let Some(p) = u.cpu_period_us {
            j.write(&cpu.join("cpu.cfs_period_us"), &p.to_string())?;
        }
        if let Some(q) = u.cpu_quota_us {
            j.write(&cpu.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
    }
    if let Some(m) = u.memory_bytes {
        let limit = m.to_string();
        let memsw = u.memory_swap_bytes.map_or_else(|| limit.clone(), |s| s.to_string());
        v1::memory_and_swap(need(dirs, "memory")?, &limit, &memsw, &mut |path, value| j.write(path, value))?;
    }
    if let Some(p) = u.pids {
        j.write(&need(dirs, "pids")?.join("pids.max"), &p.to_string())?;
    }
    Ok(())
}

fn apply_v2(dir: &Path, app: &str, u: &Update, j: &mut Journal) -> Result<()> {
    if u.cpuset_cpus.is_some() || u.cpuset_mems.is_some() {
        // Enabled from the root down to the pod, so the app's leaf has
        // the files; the pod's other leaves inherit every cpu and node.
        let chain: Vec<PathBuf> =
            dir.ancestors().skip(1).take(3).collect::<Vec<_>>().into_iter().rev().map(Path::to_path_buf).collect();
        let root = chain.first().map(PathBuf::as_path).unwrap_or(dir);
        v2::check_available(root, &["cpuset"]).map_err(|_| CgroupError::InvalidLimit {
            app: app.to_owned(),
            why: format!("the cpuset controller is not available in {}", root.display()),
        })?;
        v2::enable(&chain, &["cpuset"])?;
        if let Some(cpus) = &u.cpuset_cpus {
            j.write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &u.cpuset_mems {
            j.write(&dir.join("cpuset.mems"), mems)?;
        }
    }
    if let Some(s) = u.cpu_shares {
        j.write(&dir.join("cpu.weight"), &shares_to_weight(s).to_string())?;
    }
    if u.cpu_quota_us.is_some() || u.cpu_period_us.is_some() {
        let path = dir.join("cpu.max");
        let current = fsx::read(&path)?;
        let mut words = current.split_whitespace();
        let (old_quota, old_period) = (words.next().unwrap_or("max").to_owned(), words.next().unwrap_or("100000"));
        let quota = match u.cpu_quota_us {
            Some(-1) => "max".to_owned(),
            Some(q) => q.to_string(),
            None => old_quota,
        };
        let period = u.cpu_period_us.map_or_else(|| old_period.to_owned(), |p| p.to_string());
        j.write(&path, &format!("{quota} {period}"))?;
    }
    if let Some(m) = u.memory_bytes {
        j.write(&dir.join("memory.max"), &m.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            let value = match u.memory_swap_bytes {
                Some(-1) => "max".to_owned(),
                // validate: memory+swap >= memory.
                Some(s) => u64::try_from(s).unwrap_or(m).saturating_sub(m).to_string(),
                None => "0".to_owned(),
            };
            j.write(&swap, &value)?;
        }
    }
    if let Some(p) = u.pids {
        j.write(&dir.join("pids.max"), &p.to_string())?;
    }
    Ok(())
}
