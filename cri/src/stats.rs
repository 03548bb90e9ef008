//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats, read from the host: each app's cgroup (its leaf
//! `pod/<uuid>/<app>`, stage1-ns::cgroups reading v1 or v2), the pod's
//! cgroup for the sandbox (its apps and its PID 1), the app's overlay upper
//! directory for the writable layer, and `/proc/<pod-init>/net/dev` for the
//! sandbox's network, which is PID 1's network namespace.
//!
//! A container created but not started (or whose pod has stopped) has no
//! cgroup: it is listed with zero figures, as kubelet and critest expect.
//! `usage_nano_cores` is a rate from this sample and the one before it
//! (live.rs); the first sample of a container has none.

use std::io;

use stage0::paths::Dirs;
use stage0::pods::PodState;
use stage1_ns::cgroups::{self, CgroupError, CgroupLimits, Psi, Stats};

use crate::container::{containers, find_container, Container};
use crate::error::CriError;
use crate::fsinfo;
use crate::live::{Live, Sample};
use crate::proto;
use crate::sandbox::{need_sandbox, now_nanos, sandboxes, selects, Sandbox};

pub(crate) fn u64v(value: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value })
}

/// What a cgroup read gave; `None` when there is no cgroup (not started,
/// removed, or the pod is not running).
pub(crate) type Reading = Option<(Stats, CgroupLimits)>;

/// A missing cgroup is no error for stats: it means "nothing running".
fn absent_ok<T>(r: Result<T, CgroupError>) -> Result<Option<T>, CriError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CriError::Failed(e.to_string())),
    }
}

/// The app's cgroup figures and limits, if it has a cgroup.
pub(crate) fn read_app(live: &Live, c: &Container) -> Result<Reading, CriError> {
    if c.sandbox.pod.state != PodState::Running {
        return Ok(None);
    }
    let h = live.hierarchy()?;
    let (loc, app) = (c.sandbox.cgroup_loc()?, &c.record.app);
    let Some(stats) = absent_ok(cgroups::app_stats(h, &loc, app))? else { return Ok(None) };
    let limits = absent_ok(cgroups::app_limits(h, &loc, app))?.unwrap_or_default();
    Ok(Some((stats, limits)))
}

/// Pressure as CRI gives it (kubelet's PSI metrics); `full` is zero where
/// the kernel has no such line.
fn psi(p: Option<Psi>) -> Option<proto::PsiStats> {
    let data = |d: stage1_ns::cgroups::PsiData| proto::PsiData {
        total: d.total_ns,
        avg10: d.avg10,
        avg60: d.avg60,
        avg300: d.avg300,
    };
    p.map(|p| proto::PsiStats { full: Some(data(p.full.unwrap_or_default())), some: Some(data(p.some)) })
}

fn io(now: i64, reading: &Reading) -> Option<proto::IoUsage> {
    let p = reading.as_ref()?.0.pressure.io?;
    Some(proto::IoUsage { timestamp: now, psi: psi(Some(p)) })
}

fn cpu(live: &Live, key: &str, now: i64, reading: &Reading) -> proto::CpuUsage {
    let usage_ns = reading.as_ref().map_or(0, |(s, _)| s.cpu.usage_ns);
    let nano_cores = match reading {
        Some(_) => live.nano_cores(key, Sample { at: now, usage_ns }),
        None => Some(0),
    };
    proto::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u64v(usage_ns),
        usage_nano_cores: nano_cores.and_then(u64v),
        psi: psi(reading.as_ref().and_then(|(s, _)| s.pressure.cpu)),
    }
}

fn memory(now: i64, reading: &Reading) -> proto::MemoryUsage {
    let (m, limit) = reading.as_ref().map_or((Default::default(), None), |(s, l)| (s.memory, l.memory_bytes));
    let pressure = reading.as_ref().and_then(|(s, _)| s.pressure.memory);
    let working_set = m.working_set();
    proto::MemoryUsage {
        timestamp: now,
        working_set_bytes: u64v(working_set),
        available_bytes: limit.and_then(|l| u64v(l.saturating_sub(working_set))),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.pgfault),
        major_page_faults: u64v(m.pgmajfault),
        psi: psi(pressure),
    }
}

/// Swap, where the kernel accounts it; what is left of the swap the
/// limits allow when there are limits.
fn swap(now: i64, reading: &Reading) -> Option<proto::SwapUsage> {
    let (s, l) = reading.as_ref()?;
    let used = s.memory.swap?;
    let allowed = l.memory_swap_bytes.zip(l.memory_bytes).map(|(total, mem)| total.saturating_sub(mem));
    Some(proto::SwapUsage {
        timestamp: now,
        swap_usage_bytes: u64v(used),
        swap_available_bytes: allowed.and_then(|a| u64v(a.saturating_sub(used))),
    })
}

/// The app's writable layer: its overlay upper directory, counted as
/// ImageFsInfo counts the store (on the same data filesystem).
pub(crate) fn writable_layer(dirs: &Dirs, c: &Container, now: i64) -> Result<proto::FilesystemUsage, CriError> {
    let upper = c.sandbox.pod.dir.join("apps").join(&c.record.app).join("upper");
    let usage =
        if upper.is_dir() { fsinfo::usage(&upper, std::slice::from_ref(&upper))? } else { fsinfo::Usage::default() };
    Ok(proto::FilesystemUsage {
        timestamp: now,
        fs_id: Some(proto::FilesystemIdentifier { mountpoint: dirs.data.display().to_string() }),
        used_bytes: u64v(usage.bytes),
        inodes_used: u64v(usage.inodes),
    })
}

fn sample_key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

fn attributes(c: &Container) -> proto::ContainerAttributes {
    let p = c.to_proto();
    proto::ContainerAttributes { id: p.id, metadata: p.metadata, labels: p.labels, annotations: p.annotations }
}

/// One container's stats.
pub fn of_container(dirs: &Dirs, live: &Live, c: &Container) -> Result<proto::ContainerStats, CriError> {
    let now = now_nanos();
    let reading = read_app(live, c)?;
    Ok(proto::ContainerStats {
        attributes: Some(attributes(c)),
        cpu: Some(cpu(live, &sample_key("c", &c.id()), now, &reading)),
        memory: Some(memory(now, &reading)),
        writable_layer: Some(writable_layer(dirs, c, now)?),
        swap: swap(now, &reading),
        io: io(now, &reading),
    })
}

/// ContainerStats.
pub fn container_stats(dirs: &Dirs, live: &Live, id: &str) -> Result<proto::ContainerStats, CriError> {
    of_container(dirs, live, &find_container(dirs, id)?)
}

/// ListContainerStats: ID and sandbox ID by prefix, labels by selector.
pub fn list_container_stats(
    dirs: &Dirs,
    live: &Live,
    filter: Option<proto::ContainerStatsFilter>,
) -> Result<Vec<proto::ContainerStats>, CriError> {
    let filter = filter.unwrap_or_default();
    let all = containers(dirs)?;
    let ids: Vec<String> = all.iter().map(|c| sample_key("c", &c.id())).collect();
    live.retain_samples(&|k| k.starts_with("s/") || ids.iter().any(|i| i == k));
    all.iter()
        .filter(|c| filter.id.is_empty() || c.id().starts_with(&filter.id))
        .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox.pod.uuid.starts_with(&filter.pod_sandbox_id))
        .filter(|c| selects(&filter.label_selector, &c.record.labels))
        .map(|c| of_container(dirs, live, c))
        .collect()
}

pub use stage1_ns::network::netdev::NetDev;

/// The interfaces of a running sandbox's network namespace: its PID 1's.
pub(crate) fn sandbox_net(s: &Sandbox) -> Vec<NetDev> {
    if s.pod.state != PodState::Running {
        return Vec::new();
    }
    stage0::enter::init_pid(&s.pod.dir).map(stage1_ns::network::netdev::of_process).unwrap_or_default()
}

fn network(now: i64, devs: Vec<NetDev>) -> Option<proto::NetworkUsage> {
    let usage = |d: &NetDev| proto::NetworkInterfaceUsage {
        name: d.name.clone(),
        rx_bytes: u64v(d.rx_bytes),
        rx_errors: u64v(d.rx_errors),
        tx_bytes: u64v(d.tx_bytes),
        tx_errors: u64v(d.tx_errors),
    };
    // CNI's conventional name; else the first.
    let default = devs.iter().find(|d| d.name == "eth0").or(devs.first())?;
    Some(proto::NetworkUsage {
        timestamp: now,
        default_interface: Some(usage(default)),
        interfaces: devs.iter().map(usage).collect(),
    })
}

/// The whole pod's cgroup figures, if it runs.
fn read_pod(live: &Live, s: &Sandbox) -> Result<Reading, CriError> {
    if s.pod.state != PodState::Running {
        return Ok(None);
    }
    let stats = absent_ok(cgroups::pod_stats(live.hierarchy()?, &s.cgroup_loc()?))?;
    Ok(stats.map(|st| (st, CgroupLimits::default())))
}

/// One sandbox's stats, its containers' with it.
pub fn of_sandbox(
    dirs: &Dirs,
    live: &Live,
    s: &Sandbox,
    containers: &[Container],
) -> Result<proto::PodSandboxStats, CriError> {
    let now = now_nanos();
    let reading = read_pod(live, s)?;
    let p = s.to_proto();
    let mine = containers.iter().filter(|c| c.sandbox.pod.uuid == s.pod.uuid);
    Ok(proto::PodSandboxStats {
        attributes: Some(proto::PodSandboxAttributes {
            id: p.id,
            metadata: p.metadata,
            labels: p.labels,
            annotations: p.annotations,
        }),
        linux: Some(proto::LinuxPodSandboxStats {
            cpu: Some(cpu(live, &sample_key("s", &s.pod.uuid), now, &reading)),
            memory: Some(memory(now, &reading)),
            network: network(now, sandbox_net(s)),
            process: Some(proto::ProcessUsage {
                timestamp: now,
                process_count: u64v(reading.as_ref().and_then(|(st, _)| st.pids).unwrap_or(0)),
            }),
            containers: mine.map(|c| of_container(dirs, live, c)).collect::<Result<_, _>>()?,
            io: io(now, &reading),
        }),
        windows: None,
    })
}

/// PodSandboxStats.
pub fn pod_sandbox_stats(dirs: &Dirs, live: &Live, id: &str) -> Result<proto::PodSandboxStats, CriError> {
    let s = need_sandbox(dirs, id)?;
    of_sandbox(dirs, live, &s, &containers(dirs)?)
}

/// ListPodSandboxStats: ID by prefix, labels by selector.
pub fn list_pod_sandbox_stats(
    dirs: &Dirs,
    live: &Live,
    filter: Option<proto::PodSandboxStatsFilter>,
) -> Result<Vec<proto::PodSandboxStats>, CriError> {
    let filter = filter.unwrap_or_default();
    let all = containers(dirs)?;
    let list = sandboxes(dirs)?;
    let mut keep: Vec<String> = all.iter().map(|c| sample_key("c", &c.id())).collect();
    keep.extend(list.iter().map(|s| sample_key("s", &s.pod.uuid)));
    live.retain_samples(&|k| keep.iter().any(|i| i == k));
    list.iter()
        .filter(|s| filter.id.is_empty() || s.pod.uuid.starts_with(&filter.id))
        .filter(|s| selects(&filter.label_selector, &s.record.labels))
        .map(|s| of_sandbox(dirs, live, s, &all))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn network_usage_names_eth0_the_default() {
        let dev = |name: &str, rx_bytes| NetDev { name: name.into(), rx_bytes, tx_bytes: 3, ..Default::default() };
        let net = network(7, vec![dev("net1", 5), dev("eth0", 1_296_102)]).unwrap();
        assert_eq!(net.default_interface.unwrap().rx_bytes.unwrap().value, 1_296_102);
        assert_eq!(net.interfaces.len(), 2);
        let lo_only = network(7, vec![dev("lo", 1)]).unwrap();
        assert_eq!(lo_only.default_interface.unwrap().tx_bytes.unwrap().value, 3);
        assert!(network(7, Vec::new()).is_none());
    }

    #[test]
    fn memory_figures_from_a_reading() {
        let mut st = Stats::default();
        st.memory.usage = 100;
        st.memory.inactive_file = 30;
        st.memory.swap = Some(5);
        let limits = CgroupLimits { memory_bytes: Some(200), memory_swap_bytes: Some(250), ..Default::default() };
        let reading: Reading = Some((st, limits));
        let m = memory(1, &reading);
        assert_eq!(m.working_set_bytes.unwrap().value, 70);
        assert_eq!(m.available_bytes.unwrap().value, 130);
        let s = swap(1, &reading).unwrap();
        assert_eq!((s.swap_usage_bytes.unwrap().value, s.swap_available_bytes.unwrap().value), (5, 45));
        // Nothing running: zeros, and no limit to measure against.
        let m = memory(1, &None);
        assert_eq!((m.working_set_bytes.unwrap().value, m.available_bytes), (0, None));
        assert!(swap(1, &None).is_none());
    }
}
