//! Reading a pod's or an app's cgroup accounting and limits, for stats
//! consumers (the CRI server's ContainerStats, PodSandboxStats and
//! metrics). Each version's file names and units stay here: v1 reads
//! `cpuacct.usage`, `memory.stat`'s `total_*` keys and
//! `memory.memsw.*`; v2 reads `cpu.stat`'s `usage_usec`, `memory.current`
//! and `memory.swap.*`. Both give the same [`Stats`], in bytes and
//! nanoseconds.
//!
//! A file the kernel does not offer (`memory.peak` before Linux 5.19, swap
//! accounting turned off, a controller not enabled) reads as absent, not as
//! an error: stats are reported with what the host has. A cgroup that is
//! gone is [`CgroupError::Io`] with `NotFound`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::detect::Layout;
use super::pod::PodLoc;
use nix::unistd::Pid;

use super::psi::{self, Pressure};
use super::{fsx, validate_app, validate_uuid, CgroupError, Hierarchy, Result};

/// v1's `cpuacct.stat` counts in USER_HZ ticks, which the kernel's ABI
/// fixes at 100 a second whatever its internal HZ.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// v1 has no "max": an unlimited `memory.limit_in_bytes` reads as
/// `PAGE_COUNTER_MAX` pages (9223372036854771712 on 4 KiB pages). Anything
/// at or above 2^62 is taken as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// What a cgroup has used, cumulative counters and current gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    /// Tasks in the cgroup and below (`pids.current`); `None` without the
    /// pids controller.
    pub pids: Option<u64>,
    /// Pressure stall information, where the host has it (psi.rs).
    pub pressure: Pressure,
}

/// CPU time, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    /// CFS enforcement periods elapsed, throttled, and the time throttled.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

/// Memory, in bytes (page faults in events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Everything charged: anonymous, page cache, kernel.
    pub usage: u64,
    /// The high-water mark, where the kernel keeps one.
    pub max_usage: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: u64,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache: u64,
    pub mapped_file: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub kernel: Option<u64>,
    pub pgfault: u64,
    pub pgmajfault: u64,
    /// Swap in use, where swap is accounted.
    pub swap: Option<u64>,
    /// Times the limit was hit (v1 `memory.failcnt`, v2 `memory.events` max).
    pub failcnt: u64,
    pub oom_kills: u64,
}

impl MemoryStats {
    /// What kubelet evicts on: usage less the inactive page cache the
    /// kernel can drop at once (cAdvisor's and containerd's definition).
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }
}

/// The limits a cgroup has now, as CRI's LinuxContainerResources counts
/// them: `None` is unlimited (or, for cpuset, not set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// v1 `cpu.shares`; on v2 `cpu.weight` mapped back to shares.
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Memory plus swap (v1 `memory.memsw.limit_in_bytes`; v2
    /// `memory.max` + `memory.swap.max`), as CRI's
    /// `memory_swap_limit_in_bytes` means it.
    pub memory_swap_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

/// The kubelet's cpu.shares → cpu.weight conversion (cgroup v2 maps
/// shares' [2, 262144] onto weight's [1, 10000]), as runc and crun apply it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142
}

/// The inverse of [`shares_to_weight`], rounded up so that
/// `shares_to_weight(weight_to_shares(w)) == w`.
pub fn weight_to_shares(weight: u64) -> u64 {
    let w = weight.clamp(1, 10_000);
    2 + ((w - 1) * 262_142).div_ceil(9_999)
}

/// Where one cgroup (the pod's, or an app's leaf) is, per backend.
pub(super) enum Dirs {
    V2(PathBuf),
    /// Controller name → the cgroup's directory in its hierarchy.
    V1(BTreeMap<String, PathBuf>),
}

impl Dirs {
    pub(super) fn of(h: &Hierarchy, rel: &Path) -> Self {
        match &h.layout {
            Layout::V2 { root } => Self::V2(root.join(rel)),
            Layout::V1 { controllers, .. } => {
                Self::V1(controllers.iter().map(|(c, mount)| (c.clone(), mount.join(rel))).collect())
            }
        }
    }

    /// The directory of `controller` (v1), or the one directory (v2).
    pub(super) fn dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Self::V2(dir) => Some(dir),
            Self::V1(map) => map.get(controller).map(PathBuf::as_path),
        }
    }

    /// Fails with NotFound unless the cgroup exists (in the memory
    /// hierarchy, every pod's, on v1).
    fn check_exists(&self) -> Result<()> {
        let dir = self.dir("memory").or_else(|| self.dir("cpuacct"));
        match dir {
            Some(d) if d.is_dir() => Ok(()),
            Some(d) => Err(CgroupError::Io {
                op: "open cgroup",
                path: d.to_owned(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
            None => Ok(()),
        }
    }
}

/// `<parent>/<uuid>` or `<parent>/<uuid>/<app>`, checked.
pub(super) fn rel(pod: &PodLoc, app: Option<&str>) -> Result<PathBuf> {
    validate_uuid(pod.uuid())?;
    let pod = pod.rel();
    match app {
        Some(app) => {
            validate_app(app)?;
            Ok(pod.join(app))
        }
        None => Ok(pod),
    }
}

/// What app `app` of pod `pod` has used.
pub fn app_stats(h: &Hierarchy, pod: impl Into<PodLoc>, app: &str) -> Result<Stats> {
    read_stats(h, &rel(&pod.into(), Some(app))?)
}

/// What the whole pod has used: its apps and its PID 1.
pub fn pod_stats(h: &Hierarchy, pod: impl Into<PodLoc>) -> Result<Stats> {
    read_stats(h, &rel(&pod.into(), None)?)
}

/// The limits app `app` of pod `pod` runs under now.
pub fn app_limits(h: &Hierarchy, pod: impl Into<PodLoc>, app: &str) -> Result<CgroupLimits> {
    read_limits(&Dirs::of(h, &rel(&pod.into(), Some(app))?))
}

/// The processes of app `app` of pod `pod` (its `cgroup.procs`).
pub fn app_procs(h: &Hierarchy, pod: impl Into<PodLoc>, app: &str) -> Result<Vec<Pid>> {
    let dirs = Dirs::of(h, &rel(&pod.into(), Some(app))?);
    dirs.check_exists()?;
    // Every managed v1 hierarchy holds the same processes.
    match ["memory", "pids", "cpuacct", "cpu"].iter().find_map(|c| dirs.dir(c)) {
        Some(dir) => fsx::procs(dir),
        None => Ok(Vec::new()),
    }
}

fn read_stats(h: &Hierarchy, rel: &Path) -> Result<Stats> {
    let dirs = Dirs::of(h, rel);
    dirs.check_exists()?;
    let mut stats = match &dirs {
        Dirs::V2(dir) => v2_stats(dir)?,
        Dirs::V1(_) => v1_stats(&dirs)?,
    };
    // The cgroup2 tree: the whole one, or Hybrid's mirror.
    if let Some(dir) = h.unified().map(|u| u.join(rel)).filter(|d| d.is_dir()) {
        stats.pressure = psi::read(&dir)?;
    }
    Ok(stats)
}

pub(super) fn read_limits(dirs: &Dirs) -> Result<CgroupLimits> {
    dirs.check_exists()?;
    match dirs {
        Dirs::V2(dir) => v2_limits(dir),
        Dirs::V1(_) => v1_limits(dirs),
    }
}

fn v2_stats(dir: &Path) -> Result<Stats> {
    let cpu = keyed(&dir.join("cpu.stat"))?.unwrap_or_default();
    let mem = keyed(&dir.join("memory.stat"))?.unwrap_or_default();
    let events = keyed(&dir.join("memory.events"))?.unwrap_or_default();
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let kernel = mem.get("kernel").copied().or_else(|| {
        // Before Linux 6.0's "kernel" line: its main parts.
        let parts = ["kernel_stack", "pagetables", "slab", "sock", "percpu"];
        parts.iter().any(|k| mem.contains_key(*k)).then(|| parts.iter().map(|k| get(&mem, k)).sum())
    });
    Ok(Stats {
        cpu: CpuStats {
            usage_ns: get(&cpu, "usage_usec") * 1000,
            user_ns: get(&cpu, "user_usec") * 1000,
            system_ns: get(&cpu, "system_usec") * 1000,
            periods: get(&cpu, "nr_periods"),
            throttled_periods: get(&cpu, "nr_throttled"),
            throttled_ns: get(&cpu, "throttled_usec") * 1000,
        },
        memory: MemoryStats {
            usage: number(&dir.join("memory.current"))?.unwrap_or(0),
            max_usage: number(&dir.join("memory.peak"))?,
            rss: get(&mem, "anon"),
            cache: get(&mem, "file"),
            mapped_file: get(&mem, "file_mapped"),
            active_file: get(&mem, "active_file"),
            inactive_file: get(&mem, "inactive_file"),
            kernel,
            pgfault: get(&mem, "pgfault"),
            pgmajfault: get(&mem, "pgmajfault"),
            swap: number(&dir.join("memory.swap.current"))?,
            failcnt: get(&events, "max"),
            oom_kills: get(&events, "oom_kill"),
        },
        pids: number(&dir.join("pids.current"))?,
        pressure: Pressure::default(),
    })
}

fn v1_stats(dirs: &Dirs) -> Result<Stats> {
    let file = |controller: &str, name: &str| dirs.dir(controller).map(|d| d.join(name));
    let num = |controller: &str, name: &str| file(controller, name).map_or(Ok(None), |p| number(&p));
    let map = |controller: &str, name: &str| {
        file(controller, name).map_or(Ok(BTreeMap::new()), |p| keyed(&p).map(Option::unwrap_or_default))
    };
    let acct = map("cpuacct", "cpuacct.stat")?;
    let cfs = map("cpu", "cpu.stat")?;
    let mem = map("memory", "memory.stat")?;
    let oom = map("memory", "memory.oom_control")?;
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let usage = num("memory", "memory.usage_in_bytes")?.unwrap_or(0);
    // memsw counts memory + swap: swap is the difference.
    let swap = num("memory", "memory.memsw.usage_in_bytes")?.map(|memsw| memsw.saturating_sub(usage));
    Ok(Stats {
        cpu: CpuStats {
            usage_ns: num("cpuacct", "cpuacct.usage")?.unwrap_or(0),
            user_ns: get(&acct, "user") * NS_PER_USER_HZ_TICK,
            system_ns: get(&acct, "system") * NS_PER_USER_HZ_TICK,
            periods: get(&cfs, "nr_periods"),
            throttled_periods: get(&cfs, "nr_throttled"),
            throttled_ns: get(&cfs, "throttled_time"),
        },
        memory: MemoryStats {
            usage,
            max_usage: num("memory", "memory.max_usage_in_bytes")?,
            // The hierarchical totals: a v1 cgroup's plain keys leave out
            // its children.
            rss: get(&mem, "total_rss"),
            cache: get(&mem, "total_cache"),
            mapped_file: get(&mem, "total_mapped_file"),
            active_file: get(&mem, "total_active_file"),
            inactive_file: get(&mem, "total_inactive_file"),
            kernel: num("memory", "memory.kmem.usage_in_bytes")?,
            pgfault: get(&mem, "total_pgfault"),
            pgmajfault: get(&mem, "total_pgmajfault"),
            swap,
            failcnt: num("memory", "memory.failcnt")?.unwrap_or(0),
            oom_kills: get(&oom, "oom_kill"),
        },
        pids: num("pids", "pids.current")?,
        pressure: Pressure::default(),
    })
}

fn v2_limits(dir: &Path) -> Result<CgroupLimits> {
    let (quota, period) = match read_opt(&dir.join("cpu.max"))? {
        Some(text) => {
            let mut words = text.split_whitespace();
            let quota = words.next().filter(|q| *q != "max").map(|q| parse(&dir.join("cpu.max"), q)).transpose()?;
            let period = words.next().map(|p| parse(&dir.join("cpu.max"), p)).transpose()?;
            (quota, period)
        }
        None => (None, None),
    };
    let memory = number(&dir.join("memory.max"))?;
    let swap = number(&dir.join("memory.swap.max"))?;
    let swap_file = dir.join("memory.swap.max").exists();
    Ok(CgroupLimits {
        cpu_shares: number(&dir.join("cpu.weight"))?.map(weight_to_shares),
        cpu_quota_us: quota,
        cpu_period_us: period,
        memory_bytes: memory,
        // With swap accounting, memory + swap; without, swap is not
        // limited at all.
        memory_swap_bytes: match (memory, swap, swap_file) {
            (Some(m), Some(s), true) => Some(m.saturating_add(s)),
            _ => None,
        },
        pids: number(&dir.join("pids.max"))?,
        cpuset_cpus: read_opt(&dir.join("cpuset.cpus"))?.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        cpuset_mems: read_opt(&dir.join("cpuset.mems"))?.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    })
}

fn v1_limits(dirs: &Dirs) -> Result<CgroupLimits> {
    let file = |controller: &str, name: &str| dirs.dir(controller).map(|d| d.join(name));
    let num = |controller: &str, name: &str| file(controller, name).map_or(Ok(None), |p| number(&p));
    let limit = |controller: &str, name: &str| num(controller, name).map(|v| v.filter(|v| *v < V1_UNLIMITED));
    let quota = match file("cpu", "cpu.cfs_quota_us") {
        // -1 is unlimited.
        Some(path) => match read_opt(&path)? {
            Some(q) if !q.trim().starts_with('-') => Some(parse(&path, q.trim())?),
            _ => None,
        },
        None => None,
    };
    Ok(CgroupLimits {
        cpu_shares: num("cpu", "cpu.shares")?,
        cpu_quota_us: quota,
        cpu_period_us: num("cpu", "cpu.cfs_period_us")?,
        memory_bytes: limit("memory", "memory.limit_in_bytes")?,
        memory_swap_bytes: limit("memory", "memory.memsw.limit_in_bytes")?,
        pids: num("pids", "pids.max")?,
        // pod makes no v1 cpuset cgroups (see detect::MANAGED_V1).
        cpuset_cpus: None,
        cpuset_mems: None,
    })
}

/// A control file's text; `None` if the kernel does not offer it.
pub(super) fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io { op: "read", path: path.to_owned(), source }),
    }
}

fn parse(path: &Path, value: &str) -> Result<u64> {
    value.parse().map_err(|_| CgroupError::Io {
        op: "parse",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{value:?} is not a number")),
    })
}

/// A one-number file; `max` (v2's unlimited) and a missing file are `None`.
pub(super) fn number(path: &Path) -> Result<Option<u64>> {
    match read_opt(path)? {
        Some(text) if text.trim() == "max" => Ok(None),
        Some(text) => parse(path, text.trim()).map(Some),
        None => Ok(None),
    }
}

/// A flat keyed file (`<key> <number>` lines), all of it; `None` if the
/// file is missing. Lines whose value is no number are skipped (v2's
/// `cpu.stat` may grow such lines).
pub(super) fn keyed(path: &Path) -> Result<Option<BTreeMap<String, u64>>> {
    Ok(read_opt(path)?.map(|text| parse_keyed(&text)))
}

pub(super) fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}
