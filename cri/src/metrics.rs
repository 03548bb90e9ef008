//! ListMetricDescriptors and ListPodSandboxMetrics: cAdvisor's `container_*`
//! metrics, which kubelet serves on /metrics/cadvisor when the runtime
//! gives them (KEP-2371), with the names, label keys and meaning containerd
//! and CRI-O use: labels `pod, namespace, container, id, image` (the
//! sandbox's own metrics have empty container and image), plus
//! `interface` for network, `device` for filesystems, `failure_type,
//! scope` for memory failures. Values are whole numbers (CRI's UInt64):
//! seconds are truncated.
//!
//! Sources: the app's cgroup (stage1-ns::cgroups), its processes'
//! `/proc/<pid>/fd`, its overlay upper directory and the data
//! filesystem's statvfs, and the sandbox PID 1's `/proc/<pid>/net/dev`.
//! Described but not measured (critest counts them optional): block I/O
//! per device (pod manages no blkio cgroup on v1); pressure (PSI) is
//! measured where the host has a cgroup2 tree and PSI. The hugetlb, memory
//! reservation and ulimit metrics are not described at all.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use stage0::paths::Dirs;
use stage0::pods::PodState;
use stage1_ns::cgroups::{self, CgroupLimits, Stats};

use crate::container::{containers, Container};
use crate::error::CriError;
use crate::live::Live;
use crate::proto;
use crate::sandbox::{now_nanos, sandboxes, Sandbox};
use crate::stats::{read_app, sandbox_net, u64v, writable_layer, NetDev};

const BASE: &[&str] = &["pod", "namespace", "container", "id", "image"];

/// A metric: name, help, label keys beyond [`BASE`], counter or gauge.
struct Desc(&'static str, &'static str, &'static [&'static str], bool);

const COUNTER: bool = true;
const GAUGE: bool = false;
const NET: &[&str] = &["interface"];
const DEV: &[&str] = &["device"];

#[rustfmt::skip]
const DESCS: &[Desc] = &[
    Desc("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", &[], COUNTER),
    Desc("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", &[], COUNTER),
    Desc("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", &[], COUNTER),
    Desc("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", &[], COUNTER),
    Desc("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", &[], COUNTER),
    Desc("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", &[], COUNTER),
    Desc("container_memory_cache", "Number of bytes of page cache memory.", &[], GAUGE),
    Desc("container_memory_rss", "Size of RSS in bytes (anonymous memory).", &[], GAUGE),
    Desc("container_memory_kernel_usage", "Size of kernel memory allocated to the container in bytes.", &[], GAUGE),
    Desc("container_memory_mapped_file", "Size of memory mapped files in bytes.", &[], GAUGE),
    Desc("container_memory_swap", "Container swap usage in bytes.", &[], GAUGE),
    Desc("container_memory_failcnt", "Number of times memory usage hit the limit.", &[], COUNTER),
    Desc("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed.", &[], GAUGE),
    Desc("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", &[], GAUGE),
    Desc("container_memory_working_set_bytes", "Current working set in bytes (usage less inactive page cache).", &[], GAUGE),
    Desc("container_memory_failures_total", "Cumulative count of memory allocation failures.", &["failure_type", "scope"], COUNTER),
    Desc("container_oom_events_total", "Count of out of memory events observed for the container.", &[], COUNTER),
    Desc("container_fs_inodes_free", "Number of available inodes.", DEV, GAUGE),
    Desc("container_fs_inodes_total", "Number of inodes.", DEV, GAUGE),
    Desc("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", DEV, GAUGE),
    Desc("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", DEV, GAUGE),
    Desc("container_fs_reads_bytes_total", "Cumulative count of bytes read.", DEV, COUNTER),
    Desc("container_fs_reads_total", "Cumulative count of reads completed.", DEV, COUNTER),
    Desc("container_fs_writes_bytes_total", "Cumulative count of bytes written.", DEV, COUNTER),
    Desc("container_fs_writes_total", "Cumulative count of writes completed.", DEV, COUNTER),
    Desc("container_blkio_device_usage_total", "Blkio device bytes usage.", &["device", "major", "minor", "operation"], COUNTER),
    Desc("container_network_receive_bytes_total", "Cumulative count of bytes received.", NET, COUNTER),
    Desc("container_network_receive_packets_total", "Cumulative count of packets received.", NET, COUNTER),
    Desc("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving.", NET, COUNTER),
    Desc("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.", NET, COUNTER),
    Desc("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", NET, COUNTER),
    Desc("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", NET, COUNTER),
    Desc("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting.", NET, COUNTER),
    Desc("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.", NET, COUNTER),
    Desc("container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited due to CPU congestion.", &[], COUNTER),
    Desc("container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to CPU congestion.", &[], COUNTER),
    Desc("container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited due to memory congestion.", &[], COUNTER),
    Desc("container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to memory congestion.", &[], COUNTER),
    Desc("container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due to I/O congestion.", &[], COUNTER),
    Desc("container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to I/O congestion.", &[], COUNTER),
    Desc("container_processes", "Number of processes running inside the container.", &[], GAUGE),
    Desc("container_threads", "Number of threads running inside the container.", &[], GAUGE),
    Desc("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero.", &[], GAUGE),
    Desc("container_file_descriptors", "Number of open file descriptors for the container.", &[], GAUGE),
    Desc("container_sockets", "Number of open sockets for the container.", &[], GAUGE),
    Desc("container_last_seen", "Last time a container was seen by the exporter.", &[], GAUGE),
    Desc("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", &[], GAUGE),
    Desc("container_spec_cpu_period", "CPU period of the container.", &[], GAUGE),
    Desc("container_spec_cpu_quota", "CPU quota of the container.", &[], GAUGE),
    Desc("container_spec_cpu_shares", "CPU share of the container.", &[], GAUGE),
    Desc("container_spec_memory_limit_bytes", "Memory limit for the container, 0 if unlimited.", &[], GAUGE),
    Desc("container_spec_memory_swap_limit_bytes", "Memory plus swap limit for the container, 0 if unlimited.", &[], GAUGE),
];

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<proto::MetricDescriptor> {
    DESCS
        .iter()
        .map(|Desc(name, help, extra, _)| proto::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: BASE.iter().chain(extra.iter()).map(|k| (*k).to_owned()).collect(),
        })
        .collect()
}

/// Builds metrics with one set of base label values and one timestamp.
struct Emit {
    labels: Vec<String>,
    now: i64,
    out: Vec<proto::Metric>,
}

impl Emit {
    fn new(labels: [&str; 5], now: i64) -> Self {
        Self { labels: labels.iter().map(|l| (*l).to_owned()).collect(), now, out: Vec::new() }
    }

    fn with(&mut self, name: &str, extra: &[&str], value: u64) {
        let counter = DESCS.iter().find(|d| d.0 == name).is_some_and(|d| d.3);
        let kind = if counter { proto::MetricType::Counter } else { proto::MetricType::Gauge };
        let mut label_values = self.labels.clone();
        label_values.extend(extra.iter().map(|e| (*e).to_owned()));
        self.out.push(proto::Metric {
            name: name.to_owned(),
            timestamp: self.now,
            metric_type: kind as i32,
            label_values,
            value: u64v(value),
        });
    }

    fn put(&mut self, name: &str, value: u64) {
        self.with(name, &[], value);
    }
}

/// What one container's metrics are made of, besides its cgroup.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// The filesystem's device (`major:minor`), capacity and inodes.
    pub device: String,
    pub fs_used: u64,
    pub fs_capacity: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub processes: u64,
    pub fds: u64,
    pub sockets: u64,
    /// Seconds since the epoch.
    pub started_at: u64,
    pub now_secs: u64,
}

const NS: u64 = 1_000_000_000;

/// A running container's metrics.
fn container_metrics(e: &mut Emit, s: &Stats, l: &CgroupLimits, x: &Extra) {
    let (c, m) = (&s.cpu, &s.memory);
    e.put("container_cpu_usage_seconds_total", c.usage_ns / NS);
    e.put("container_cpu_user_seconds_total", c.user_ns / NS);
    e.put("container_cpu_system_seconds_total", c.system_ns / NS);
    e.put("container_cpu_cfs_periods_total", c.periods);
    e.put("container_cpu_cfs_throttled_periods_total", c.throttled_periods);
    e.put("container_cpu_cfs_throttled_seconds_total", c.throttled_ns / NS);
    e.put("container_memory_cache", m.cache);
    e.put("container_memory_rss", m.rss);
    e.put("container_memory_kernel_usage", m.kernel.unwrap_or(0));
    e.put("container_memory_mapped_file", m.mapped_file);
    // As cAdvisor: 0 where the kernel does not account swap.
    e.put("container_memory_swap", m.swap.unwrap_or(0));
    e.put("container_memory_failcnt", m.failcnt);
    e.put("container_memory_usage_bytes", m.usage);
    e.put("container_memory_max_usage_bytes", m.max_usage.unwrap_or(m.usage));
    e.put("container_memory_working_set_bytes", m.working_set());
    e.with("container_memory_failures_total", &["pgfault", "container"], m.pgfault);
    e.with("container_memory_failures_total", &["pgmajfault", "container"], m.pgmajfault);
    e.put("container_oom_events_total", m.oom_kills);
    // Pressure: "waiting" is PSI's some, "stalled" its full (cAdvisor's names).
    let p = &s.pressure;
    for (kind, psi) in [("cpu", p.cpu), ("memory", p.memory), ("io", p.io)] {
        if let Some(psi) = psi {
            e.put(&format!("container_pressure_{kind}_waiting_seconds_total"), psi.some.total_ns / NS);
            if let Some(full) = psi.full {
                e.put(&format!("container_pressure_{kind}_stalled_seconds_total"), full.total_ns / NS);
            }
        }
    }
    let dev = [x.device.as_str()];
    e.with("container_fs_usage_bytes", &dev, x.fs_used);
    e.with("container_fs_limit_bytes", &dev, x.fs_capacity);
    e.with("container_fs_inodes_total", &dev, x.inodes_total);
    e.with("container_fs_inodes_free", &dev, x.inodes_free);
    e.put("container_processes", x.processes);
    e.put("container_threads", s.pids.unwrap_or(x.processes));
    e.put("container_threads_max", l.pids.unwrap_or(0));
    e.put("container_file_descriptors", x.fds);
    e.put("container_sockets", x.sockets);
    e.put("container_last_seen", x.now_secs);
    e.put("container_start_time_seconds", x.started_at);
    e.put("container_spec_cpu_period", l.cpu_period_us.unwrap_or(0));
    if let Some(q) = l.cpu_quota_us {
        e.put("container_spec_cpu_quota", q);
    }
    e.put("container_spec_cpu_shares", l.cpu_shares.unwrap_or(0));
    e.put("container_spec_memory_limit_bytes", l.memory_bytes.unwrap_or(0));
    e.put("container_spec_memory_swap_limit_bytes", l.memory_swap_bytes.unwrap_or(0));
}

fn network_metrics(e: &mut Emit, devs: &[NetDev]) {
    for d in devs {
        let i = [d.name.as_str()];
        e.with("container_network_receive_bytes_total", &i, d.rx_bytes);
        e.with("container_network_receive_packets_total", &i, d.rx_packets);
        e.with("container_network_receive_packets_dropped_total", &i, d.rx_dropped);
        e.with("container_network_receive_errors_total", &i, d.rx_errors);
        e.with("container_network_transmit_bytes_total", &i, d.tx_bytes);
        e.with("container_network_transmit_packets_total", &i, d.tx_packets);
        e.with("container_network_transmit_packets_dropped_total", &i, d.tx_dropped);
        e.with("container_network_transmit_errors_total", &i, d.tx_errors);
    }
}

/// Open descriptors and sockets of `pids` (cAdvisor's count); a process
/// that exits meanwhile counts nothing.
fn descriptors_of(pids: &[nix::unistd::Pid]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let dir = Path::new("/proc").join(pid.to_string()).join("fd");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            fds += 1;
            if fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

fn extra(dirs: &Dirs, live: &Live, c: &Container, now: i64) -> Result<Extra, CriError> {
    let data = &dirs.data;
    let meta = fs::metadata(data).map_err(crate::sandbox::io("inspect", data))?;
    let vfs = nix::sys::statvfs::statvfs(data.as_path())
        .map_err(|e| CriError::Failed(format!("statvfs {}: {e}", data.display())))?;
    let procs = cgroups::app_procs(live.hierarchy()?, &c.sandbox.cgroup_loc()?, &c.record.app).unwrap_or_default();
    let (fds, sockets) = descriptors_of(&procs);
    let layer = writable_layer(dirs, c, now)?;
    let secs = |ns: i64| u64::try_from(ns).unwrap_or(0) / NS;
    Ok(Extra {
        device: format!("{}:{}", nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev())),
        fs_used: layer.used_bytes.map_or(0, |v| v.value),
        fs_capacity: vfs.blocks().saturating_mul(vfs.fragment_size()),
        inodes_total: vfs.files(),
        inodes_free: vfs.files_free(),
        processes: u64::try_from(procs.len()).unwrap_or(0),
        fds,
        sockets,
        started_at: secs(c.record.started_at),
        now_secs: secs(now),
    })
}

fn of_sandbox(dirs: &Dirs, live: &Live, s: &Sandbox, all: &[Container]) -> Result<proto::PodSandboxMetrics, CriError> {
    let now = now_nanos();
    let (pod, ns) = (s.record.name.as_str(), s.record.namespace.as_str());
    let mut e = Emit::new([pod, ns, "", &s.pod.uuid, ""], now);
    network_metrics(&mut e, &sandbox_net(s));
    let mut container_metrics_out = Vec::new();
    for c in all.iter().filter(|c| c.sandbox.pod.uuid == s.pod.uuid) {
        // Only containers with a cgroup: created or removed ones have no figures.
        let Some((stats, limits)) = read_app(live, c)? else { continue };
        let id = c.id();
        let mut ce = Emit::new([pod, ns, &c.record.name, &id, &c.record.image], now);
        container_metrics(&mut ce, &stats, &limits, &extra(dirs, live, c, now)?);
        container_metrics_out.push(proto::ContainerMetrics { container_id: id, metrics: ce.out });
    }
    Ok(proto::PodSandboxMetrics {
        pod_sandbox_id: s.pod.uuid.clone(),
        metrics: e.out,
        container_metrics: container_metrics_out,
    })
}

/// ListPodSandboxMetrics: every ready sandbox, its containers with it.
pub fn list_pod_sandbox_metrics(dirs: &Dirs, live: &Live) -> Result<Vec<proto::PodSandboxMetrics>, CriError> {
    let all = containers(dirs)?;
    sandboxes(dirs)?
        .iter()
        .filter(|s| s.pod.state == PodState::Running)
        .map(|s| of_sandbox(dirs, live, s, &all))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_metric_is_described_with_its_labels() {
        let descs: BTreeMap<String, usize> = descriptors().into_iter().map(|d| (d.name, d.label_keys.len())).collect();
        assert_eq!(descs.len(), DESCS.len(), "no name twice");
        let mut e = Emit::new(["p", "ns", "c", "id", "img"], 1);
        let limits = CgroupLimits { cpu_quota_us: Some(20_000), ..Default::default() };
        container_metrics(&mut e, &Stats::default(), &limits, &Extra::default());
        network_metrics(&mut e, &[NetDev { name: "eth0".into(), rx_bytes: 5, ..Default::default() }]);
        for m in &e.out {
            assert_eq!(descs.get(&m.name), Some(&m.label_values.len()), "{}: {:?}", m.name, m.label_values);
        }
        // Each descriptor but block I/O (not measured) and pressure (not on
        // every host) has a value.
        let emitted: Vec<&str> = e.out.iter().map(|m| m.name.as_str()).collect();
        let always = |n: &&String| !["fs_reads", "fs_writes", "blkio", "pressure"].iter().any(|x| n.contains(x));
        for name in descs.keys().filter(always) {
            assert!(emitted.contains(&name.as_str()), "{name} has no value");
        }
        let mut s = Stats::default();
        s.pressure.io = Some(stage1_ns::cgroups::Psi::default());
        let mut p = Emit::new(["p", "ns", "c", "id", "img"], 1);
        container_metrics(&mut p, &s, &limits, &Extra::default());
        assert!(p.out.iter().any(|m| m.name == "container_pressure_io_waiting_seconds_total"));
        for m in &p.out {
            assert_eq!(descs.get(&m.name), Some(&m.label_values.len()), "{}", m.name);
        }
        let rx = e.out.iter().find(|m| m.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!(rx.label_values.last().unwrap(), "eth0");
        assert_eq!(rx.metric_type, proto::MetricType::Counter as i32);
    }

    #[test]
    fn seconds_are_whole() {
        let mut e = Emit::new(["p", "ns", "c", "id", "img"], 1);
        let mut s = Stats::default();
        s.cpu.usage_ns = 2_999_999_999;
        container_metrics(&mut e, &s, &CgroupLimits::default(), &Extra::default());
        let cpu = e.out.iter().find(|m| m.name == "container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
    }
}
