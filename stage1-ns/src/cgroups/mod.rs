//! Pod cgroups for the namespace stage1: one cgroup per pod, a leaf per app
//! with its limits, a leaf for the pod's PID 1, and the kill/destroy/gc side.
//!
//! Every pod lives at `<hierarchy>/<parent>/<uuid>` ([`PodLoc`]), the parent
//! `pod` unless the pod was given one (`cgroupParent`, the CRI's
//! `linux.cgroup_parent`: kubelet's `/kubepods/burstable/pod<uid>`), with
//! one child per app (`<parent>/<uuid>/<app>`) and
//! `<parent>/<uuid>/init.scope` for pod-init. A parent that is missing is
//! made (as runc does) and never removed: it is kubelet's, or shared. The init
//! leaf is not called `init` because `init` is a valid app name; `init.scope`
//! (systemd's name for PID 1's cgroup) contains a dot, so no app can take it.
//! Processes only ever live in leaves: cgroup v2 forbids them in a node whose
//! controllers are enabled for its children.
//!
//! The host is looked at once ([`detect()`], [`detect_host`]) and the answer, a
//! [`Hierarchy`], is passed to everything else. Its three modes:
//!
//! - **Unified** (pure cgroup v2): one tree; controllers are enabled in each
//!   ancestor's `cgroup.subtree_control`, limits go to `memory.max`,
//!   `cpu.max`, `pids.max`; `cgroup.kill` ends a pod.
//! - **Legacy** (cgroup v1): one tree per controller; the pod gets the same
//!   path in each of memory, cpu, cpuacct, pids and freezer (where mounted);
//!   the freezer stops forks while the pod is killed.
//! - **Hybrid** (v1 controllers plus a controller-less cgroup2 mount beside
//!   them, e.g. `/sys/fs/cgroup/unified`): limits as Legacy; the pod is also
//!   created in the cgroup2 tree so tools see it there, and its
//!   `cgroup.kill` kills the pod in one write.
//!
//! Version quirks stay in `v1.rs` and `v2.rs`; `pod.rs` holds what is common,
//! `detect.rs` the mode, `fsx.rs` the file operations. For the CRI server
//! (which links this library): `stats.rs` reads a pod's or an app's
//! accounting and limits, `psi.rs` its pressure, `update.rs` changes a
//! running app's limits all or nothing.
//!
//! Where systemd is PID 1 on a cgroup v2 host, the pod's cgroup is a
//! transient scope systemd makes (`systemd.rs`, [`PodLoc::scope`]), and the
//! pod is registered with systemd-machined (`machined.rs`); the leaves
//! inside it are made as above.

mod detect;
mod fsx;
pub mod machined;
mod pod;
mod psi;
mod stats;
pub mod systemd;
mod update;
mod v1;
mod v2;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod stats_tests;
#[cfg(test)]
mod systemd_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

use nix::unistd::Pid;

pub use detect::{detect, detect_host, FsKind, Hierarchy, Mode};
pub use pod::{
    add_pid, create_pod, join_self, list_pods, open_pod, self_joinable, PodCgroup, PodLoc, INIT_CGROUP, POD_BASE,
};
pub use psi::{Pressure, Psi, PsiData};
pub use stats::{
    app_limits, app_procs, app_stats, pod_stats, shares_to_weight, weight_to_shares, CgroupLimits, CpuStats,
    MemoryStats, Stats,
};
pub use update::{update_app, Applied, Update};

/// The CFS period every cpu limit uses, in microseconds (100 ms, the kernel
/// default and what Kubernetes uses).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel accepts, in microseconds.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// Resource limits of one app. `None` leaves the resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes; swap is not allowed beyond it.
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU (`500` is half a CPU, `2000` two).
    pub cpu_millis: Option<u64>,
    /// Most processes and threads the app may have at once.
    pub pids: Option<u64>,
    /// CPU weight against the pod's other apps, in v1 `cpu.shares` units
    /// (2-262144, 1024 the default); v2's `cpu.weight` is converted.
    pub cpu_shares: Option<u64>,
}

impl From<spec::stage1::Resources> for Limits {
    fn from(r: spec::stage1::Resources) -> Self {
        Self { memory_bytes: r.memory_bytes, cpu_millis: r.cpu_millis, pids: r.pids, cpu_shares: r.cpu_shares }
    }
}

impl Limits {
    /// The controllers these limits need, by their (v1 and v2) name.
    fn controllers(&self) -> impl Iterator<Item = &'static str> {
        let cpu = self.cpu_millis.or(self.cpu_shares).map(|_| "cpu");
        [self.memory_bytes.map(|_| "memory"), cpu, self.pids.map(|_| "pids")].into_iter().flatten()
    }

    fn validate(&self, app: &str) -> Result<()> {
        let invalid = |why: String| CgroupError::InvalidLimit { app: app.to_owned(), why };
        if self.memory_bytes == Some(0) {
            return Err(invalid("a memory limit of 0 bytes cannot run anything".into()));
        }
        if let Some(m) = self.cpu_millis {
            if m.checked_mul(CPU_PERIOD_US).is_none() {
                return Err(invalid(format!("cpu limit {m}m is too large")));
            }
        }
        Ok(())
    }
}

/// The CFS quota for `millis` thousandths of a CPU per [`CPU_PERIOD_US`]:
/// `500` → 50 000 µs, `2000` → 200 000 µs. Raised to the kernel's 1 ms
/// minimum (as the kubelet does) rather than refused, since a pod file may
/// ask for `1m`. `None` on overflow, which `create_pod` rejects before touching anything.
pub fn cpu_quota_us(millis: u64) -> Option<u64> {
    millis.checked_mul(CPU_PERIOD_US).map(|q| (q / 1000).max(CPU_MIN_QUOTA_US))
}

/// cgroup v2's `cpu.weight` (1-10000, default 100) for v1 `cpu.shares`
/// (2-262144, default 1024), as runc and the kubelet convert it.
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// What went wrong, with the path and operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("write {value:?} to {}: {source}", path.display())]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("statfs {}: {source}", path.display())]
    Statfs { path: PathBuf, source: nix::Error },
    #[error("{}:{line}: malformed mountinfo line", path.display())]
    Mountinfo { path: PathBuf, line: usize },
    #[error("no cgroup hierarchy mounted under {} (per {})", root.display(), mountinfo.display())]
    NoHierarchy { root: PathBuf, mountinfo: PathBuf },
    #[error("cgroup controller {controller} is not available in {}", path.display())]
    ControllerMissing { controller: &'static str, path: PathBuf },
    #[error("{}: no {key:?} line", path.display())]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("invalid pod uuid {0:?}: expected letters, digits and '-'")]
    InvalidUuid(String),
    #[error("invalid cgroup parent: {0}")]
    InvalidParent(String),
    #[error("invalid app name {name:?}: {source}")]
    InvalidApp { name: String, source: spec::NameError },
    #[error("app {0:?} is listed twice")]
    DuplicateApp(String),
    #[error("app {app:?}: {why}")]
    InvalidLimit { app: String, why: String },
    #[error("pod {uuid} has no app {app:?}")]
    UnknownApp { uuid: String, app: String },
    #[error("kill -9 {pid}: {source}")]
    Kill { pid: Pid, source: nix::Error },
    #[error("pod {uuid}: {left} processes still alive {ms} ms after SIGKILL")]
    KillTimeout { uuid: String, left: usize, ms: u128 },
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// Pod uuids become path components: letters, digits and inner '-' only.
fn validate_uuid(uuid: &str) -> Result<()> {
    let ok = !uuid.is_empty()
        && uuid.len() <= 128
        && uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !uuid.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidUuid(uuid.to_owned()))
    }
}

/// App names are appc names (`[a-z0-9]+(-[a-z0-9]+)*`): never a control file
/// (those all contain a dot), never `init.scope`, never a path.
fn validate_app(name: &str) -> Result<()> {
    spec::AcName::new(name).map(drop).map_err(|source| CgroupError::InvalidApp { name: name.to_owned(), source })
}
