//! UpdateContainerResources, and the resources ContainerStatus reports.
//!
//! An update is written into the running app's cgroup by
//! stage1-ns::cgroups::update_app (all or nothing, v1 and v2), the app's
//! resources in the pod's `pod.json` follow (what `pod status` reports an
//! OOM kill against), and the update is recorded as `cri-resources/<app>.json` in the sandbox's pod directory,
//! merged over earlier updates. The limits live in the
//! app's cgroup, which pod-init keeps when it restarts the app (Restart=),
//! so a restarted app runs under them; the record is what ContainerStatus
//! reports once the cgroup is gone (a stopped sandbox). The record names
//! the container's creation time, so a container created again under the
//! same name never inherits it.
//!
//! CRI's zero means "not given" for every field: crictl sends zeros for the
//! flags not set. `-1` lifts a CPU quota or lets the app swap freely.
//! `oom_score_adj` is a process attribute, not a cgroup limit, and is not
//! changed on update (runc's update cannot either); unified (raw cgroup v2
//! keys) and non-zero hugepage limits are refused.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spec::AcName;
use stage0::addapp;
use stage0::paths::Dirs;
use stage1_ns::cgroups::{self, CgroupError, CgroupLimits, Update};

use crate::container::{find_container, Container};
use crate::error::CriError;
use crate::live::Live;
use crate::proto;
use crate::sandbox::{read_json, write_json};
use crate::stats::read_app;

/// The resources last set through UpdateContainerResources, in CRI's
/// terms and units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// The container's `created_at`: a record for another container of
    /// the same name is ignored.
    pub created_at: i64,
    #[serde(default)]
    pub cpu_period: i64,
    #[serde(default)]
    pub cpu_quota: i64,
    #[serde(default)]
    pub cpu_shares: i64,
    #[serde(default)]
    pub memory_limit_in_bytes: i64,
    #[serde(default)]
    pub memory_swap_limit_in_bytes: i64,
    #[serde(default)]
    pub cpuset_cpus: String,
    #[serde(default)]
    pub cpuset_mems: String,
}

impl Recorded {
    /// `r`'s given (non-zero) fields over these.
    fn merge(&mut self, r: &proto::LinuxContainerResources) {
        let take = |old: &mut i64, new: i64| {
            if new != 0 {
                *old = new;
            }
        };
        take(&mut self.cpu_period, r.cpu_period);
        take(&mut self.cpu_quota, r.cpu_quota);
        take(&mut self.cpu_shares, r.cpu_shares);
        take(&mut self.memory_limit_in_bytes, r.memory_limit_in_bytes);
        take(&mut self.memory_swap_limit_in_bytes, r.memory_swap_limit_in_bytes);
        if !r.cpuset_cpus.is_empty() {
            self.cpuset_cpus.clone_from(&r.cpuset_cpus);
        }
        if !r.cpuset_mems.is_empty() {
            self.cpuset_mems.clone_from(&r.cpuset_mems);
        }
    }

    /// These fields over `r`'s, where they were given.
    fn overlay(&self, r: &mut proto::LinuxContainerResources) {
        let given = self.to_proto();
        let mut merged = Recorded::default();
        for source in [&*r, &given] {
            merged.merge(source);
        }
        let oom = r.oom_score_adj;
        *r = merged.to_proto();
        r.oom_score_adj = oom;
    }

    fn to_proto(&self) -> proto::LinuxContainerResources {
        proto::LinuxContainerResources {
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpu_shares: self.cpu_shares,
            memory_limit_in_bytes: self.memory_limit_in_bytes,
            memory_swap_limit_in_bytes: self.memory_swap_limit_in_bytes,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            ..Default::default()
        }
    }
}

/// The directory of update records in a sandbox's pod directory.
pub const RESOURCES_DIR: &str = "cri-resources";

fn record_path(c: &Container) -> PathBuf {
    c.sandbox.pod.dir.join(RESOURCES_DIR).join(format!("{}.json", c.record.app))
}

/// The container's recorded update, if it is this container's.
pub fn recorded(c: &Container) -> Option<Recorded> {
    read_json::<Recorded>(&record_path(c)).filter(|r| r.created_at == c.record.created_at)
}

/// Writes the container's record, or removes it for `None`.
fn save(c: &Container, rec: Option<&Recorded>) -> Result<(), CriError> {
    let path = record_path(c);
    match rec {
        Some(rec) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(crate::sandbox::io("create", dir))?;
            }
            write_json(&path, rec)
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::sandbox::io("remove", &path)(e)),
            _ => Ok(()),
        },
    }
}

/// CRI's resources as a cgroup update, every value checked: a negative
/// value (other than `-1` where it means "unlimited") names its field.
pub fn to_update(r: &proto::LinuxContainerResources) -> Result<Update, CriError> {
    let invalid = |field: &str, v: i64| CriError::InvalidArgument(format!("{field} {v} is negative"));
    let positive = |field: &str, v: i64| match v {
        0 => Ok(None),
        v if v < 0 => Err(invalid(field, v)),
        v => Ok(u64::try_from(v).ok()),
    };
    let or_unlimited = |field: &str, v: i64| match v {
        0 => Ok(None),
        -1 => Ok(Some(-1)),
        v if v < 0 => Err(invalid(field, v)),
        v => Ok(Some(v)),
    };
    if !r.unified.is_empty() {
        let keys: Vec<&str> = r.unified.keys().map(String::as_str).collect();
        return Err(CriError::InvalidArgument(format!("unified cgroup keys are not supported: {}", keys.join(", "))));
    }
    if let Some(h) = r.hugepage_limits.iter().find(|h| h.limit != 0) {
        return Err(CriError::InvalidArgument(format!(
            "hugepage limits are not supported ({} limited to {})",
            h.page_size, h.limit
        )));
    }
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(Update {
        cpu_shares: positive("cpu_shares", r.cpu_shares)?,
        cpu_quota_us: or_unlimited("cpu_quota", r.cpu_quota)?,
        cpu_period_us: positive("cpu_period", r.cpu_period)?,
        memory_bytes: positive("memory_limit_in_bytes", r.memory_limit_in_bytes)?,
        memory_swap_bytes: or_unlimited("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)?,
        pids: None,
        cpuset_cpus: nonempty(&r.cpuset_cpus),
        cpuset_mems: nonempty(&r.cpuset_mems),
    })
}

/// The gRPC class of a refused update: a value out of bounds is the
/// caller's; a kernel refusal (EBUSY: usage above a new memory limit) is
/// the container's state.
fn update_error(id: &str, e: CgroupError) -> CriError {
    let msg = format!("container {id}: {e}");
    match &e {
        CgroupError::InvalidLimit { .. } => CriError::InvalidArgument(msg),
        CgroupError::Write { source, path, .. } if source.raw_os_error() == Some(nix::libc::EBUSY) => {
            let why = if path.to_string_lossy().contains("memory") {
                " (the kernel could not bring the container's memory use under the new limit)"
            } else {
                ""
            };
            CriError::FailedPrecondition(format!("{msg}{why}; the old limits are kept"))
        }
        CgroupError::Write { source, .. } if source.raw_os_error() == Some(nix::libc::EINVAL) => {
            CriError::InvalidArgument(format!("{msg}; the old limits are kept"))
        }
        CgroupError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CriError::FailedPrecondition(format!("container {id} has no cgroup: it is not running"))
        }
        _ => CriError::Failed(msg),
    }
}

/// UpdateContainerResources.
pub fn update_container(
    dirs: &Dirs,
    live: &Live,
    id: &str,
    linux: Option<proto::LinuxContainerResources>,
) -> Result<(), CriError> {
    let c = find_container(dirs, id)?;
    let state = c.to_proto().state;
    if state != proto::ContainerState::ContainerRunning as i32 {
        let name = proto::ContainerState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name());
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running ({name}): only a running container's resources can be updated"
        )));
    }
    if crate::vm::isolation(&c.sandbox.record.runtime_handler) == spec::stage1::Isolation::Vm {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is in a {} sandbox: its limits are held by the VM's guest, where they cannot be \
             updated yet (they are the ones it was created with)",
            crate::vm::VM_HANDLER
        )));
    }
    let linux = linux.ok_or_else(|| CriError::InvalidArgument("no linux resources given".into()))?;
    let update = to_update(&linux)?;
    let h = live.hierarchy()?;
    let (loc, app) = (c.sandbox.cgroup_loc()?, &c.record.app);
    let name = AcName::new(app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?;
    let previous = recorded(&c);
    let mut rec = previous.clone().unwrap_or(Recorded { created_at: c.record.created_at, ..Recorded::default() });
    rec.merge(&linux);
    let (mut applied, mut saved) = (None, false);
    // The cgroup, then the record, then pod.json (under the apps lock):
    // whatever fails, what was done before it is undone.
    let done = addapp::update_resources(&c.sandbox.pod, &name, |res| -> Result<(), CriError> {
        applied = Some(cgroups::update_app(h, &loc, app, &update).map_err(|e| update_error(id, e))?);
        // pod.json says what the cgroup now enforces, in its own terms.
        let now = cgroups::app_limits(h, &loc, app).map_err(|e| CriError::Failed(e.to_string()))?;
        res.memory_bytes = now.memory_bytes;
        res.cpu_millis = now.cpu_quota_us.zip(now.cpu_period_us).map(|(q, p)| q.saturating_mul(1000) / p.max(1));
        res.pids = now.pids;
        save(&c, Some(&rec))?;
        saved = true;
        Ok(())
    });
    if let Err(e) = done {
        if let Some(a) = applied {
            a.undo();
        }
        if saved {
            if let Err(undo) = save(&c, previous.as_ref()) {
                tracing::warn!(error = %undo, "could not restore a container's resources record");
            }
        }
        return Err(e);
    }
    tracing::info!(container = %id, ?update, "container resources updated");
    Ok(())
}

/// What the app's cgroup enforces now, in CRI's terms (0: unlimited).
fn from_limits(l: &CgroupLimits) -> proto::LinuxContainerResources {
    let i = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
    proto::LinuxContainerResources {
        cpu_period: i(l.cpu_period_us),
        cpu_quota: i(l.cpu_quota_us),
        cpu_shares: i(l.cpu_shares),
        memory_limit_in_bytes: i(l.memory_bytes),
        memory_swap_limit_in_bytes: i(l.memory_swap_bytes),
        cpuset_cpus: l.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: l.cpuset_mems.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// ContainerStatus.resources: the running app's cgroup limits, with the
/// values last asked for by an update over them (as containerd reports the
/// requested spec: the kernel keeps some values only approximately — v2's
/// `cpu.weight` is a lossy image of shares, v1 rounds memory to pages — and
/// kubelet compares what it asked for); once the app has no cgroup, the
/// recorded update alone; `None` if neither.
pub fn resources_of(live: &Live, c: &Container) -> Result<Option<proto::ContainerResources>, CriError> {
    let rec = recorded(c);
    let linux = match read_app(live, c)? {
        Some((_, limits)) => {
            let mut l = from_limits(&limits);
            if let Some(rec) = &rec {
                rec.overlay(&mut l);
            }
            Some(l)
        }
        None => rec.map(|r| r.to_proto()),
    };
    Ok(linux.map(|l| proto::ContainerResources { linux: Some(l), windows: None }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_not_given_and_negatives_name_their_field() {
        let r = proto::LinuxContainerResources {
            cpu_quota: -1,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        };
        let u = to_update(&r).unwrap();
        assert_eq!(u.cpu_quota_us, Some(-1));
        assert_eq!(u.memory_bytes, Some(64 << 20));
        assert_eq!((u.cpu_shares, u.cpu_period_us, u.memory_swap_bytes), (None, None, None));
        assert_eq!(u.cpuset_cpus.as_deref(), Some("0-1"));
        for (r, field) in [
            (
                proto::LinuxContainerResources { memory_limit_in_bytes: -5, ..Default::default() },
                "memory_limit_in_bytes",
            ),
            (proto::LinuxContainerResources { cpu_quota: -2, ..Default::default() }, "cpu_quota"),
            (proto::LinuxContainerResources { cpu_shares: -1, ..Default::default() }, "cpu_shares"),
        ] {
            let e = to_update(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().contains(field), "{e}");
        }
        let hp = proto::LinuxContainerResources {
            hugepage_limits: vec![proto::HugepageLimit { page_size: "2MB".into(), limit: 0 }],
            ..Default::default()
        };
        assert!(to_update(&hp).is_ok(), "kubelet sends zero hugepage limits");
    }

    #[test]
    fn records_merge_given_fields() {
        let mut rec = Recorded { created_at: 1, cpu_shares: 512, memory_limit_in_bytes: 100, ..Default::default() };
        rec.merge(&proto::LinuxContainerResources {
            memory_limit_in_bytes: 200,
            cpu_quota: 5000,
            ..Default::default()
        });
        assert_eq!((rec.cpu_shares, rec.memory_limit_in_bytes, rec.cpu_quota), (512, 200, 5000));
        let p = rec.to_proto();
        assert_eq!(p.memory_limit_in_bytes, 200);
        // Over what the cgroup says: the values asked for win, the others stay.
        let mut live = proto::LinuxContainerResources { cpu_shares: 508, cpu_period: 100_000, ..Default::default() };
        rec.overlay(&mut live);
        assert_eq!((live.cpu_shares, live.cpu_period, live.memory_limit_in_bytes), (512, 100_000, 200));
    }

    #[test]
    fn kernel_refusals_get_their_class() {
        let busy = CgroupError::Write {
            path: "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".into(),
            value: "1".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EBUSY),
        };
        let e = update_error("c1", busy);
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.to_string().contains("old limits are kept"), "{e}");
        let e = update_error("c1", CgroupError::InvalidLimit { app: "a".into(), why: "w".into() });
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
