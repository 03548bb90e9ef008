//! `pod-stage1-ns stats POD_DIR`: one [`PodSample`] of a running namespace
//! pod, read from the host: each app's cgroup (CPU time, working set, its
//! memory limit, pids), the app's live processes' `/proc/<pid>/io` (bytes
//! read from and written to storage: pods join no blkio/io controller),
//! and the pod's network namespace's interfaces through its PID 1.

use std::fs;
use std::io;
use std::path::Path;

use spec::stats::{AppSample, Io, PodSample};

use crate::cgroups::{self, CgroupError, Hierarchy, PodLoc};
use crate::monitor::{self, Stage1Error};
use crate::network::netdev;

/// A sample of the pod in `pod_dir`. Apps without a cgroup (not started
/// yet, or removed) are left out.
pub fn sample(pod_dir: &Path) -> Result<PodSample, Stage1Error> {
    let (inv, pod) = monitor::load(pod_dir)?;
    let h = monitor::hierarchy()?;
    // Where its cgroups are: `pod/<uuid>`, or under its recorded parent.
    let loc = monitor::pod_loc(pod_dir, &inv, &pod)?;
    let mut apps = Vec::new();
    for app in &pod.apps {
        if let Some(s) = app_sample(&h, &loc, app.name.as_str())? {
            apps.push(s);
        }
    }
    let net = crate::addapp::pod_pid(pod_dir).ok().map(|pid| {
        netdev::of_process(pid)
            .iter()
            .filter(|d| d.name != "lo")
            .fold(Io::default(), |sum, d| sum + Io { input: d.rx_bytes, output: d.tx_bytes })
    });
    Ok(PodSample { apps, net })
}

fn app_sample(h: &Hierarchy, loc: &PodLoc, app: &str) -> Result<Option<AppSample>, Stage1Error> {
    let stats = match cgroups::app_stats(h, loc, app) {
        Ok(s) => s,
        Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let limits = cgroups::app_limits(h, loc, app).unwrap_or_default();
    let block = cgroups::app_procs(h, loc, app)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/io")).ok())
        .map(|text| proc_io(&text))
        .fold(Io::default(), |sum, io| sum + io);
    Ok(Some(AppSample {
        name: app.to_owned(),
        cpu_ns: stats.cpu.usage_ns,
        memory_bytes: stats.memory.working_set(),
        memory_limit: limits.memory_bytes,
        pids: stats.pids,
        block: Some(block),
    }))
}

/// `/proc/<pid>/io`'s storage counters: `read_bytes` and `write_bytes`.
pub fn proc_io(text: &str) -> Io {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Io { input: field("read_bytes"), output: field("write_bytes") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_bytes_from_proc_io() {
        let text =
            "rchar: 5\nwchar: 6\nsyscr: 1\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(proc_io(text), Io { input: 4096, output: 8192 });
        assert_eq!(proc_io(""), Io::default());
    }
}
