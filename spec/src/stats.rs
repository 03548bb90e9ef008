//! `pod-stage1-ns stats POD_DIR` and `pod-stage1-vm stats POD_DIR`: one
//! sample of a running pod's usage, printed as JSON on stdout, from which
//! stage0's `pod stats` computes rates between two samples.
//!
//! Counters only (CPU time, bytes moved), never rates: a stage1 samples
//! once and exits.

use serde::{Deserialize, Serialize};

/// One sample of a running pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSample {
    /// The apps that have something to measure (started, not removed); a
    /// VM pod has one entry, `vm`: the guest as the host sees it.
    pub apps: Vec<AppSample>,
    /// The pod's network interfaces but loopback, summed; `None` where the
    /// host cannot see them (a VM's user-mode network).
    pub net: Option<Io>,
}

/// One app's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSample {
    pub name: String,
    /// CPU time used since the app started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use without the page cache the kernel can drop at once
    /// (the working set, as kubelet and podman count it).
    pub memory_bytes: u64,
    /// The app's memory limit, if it has one.
    pub memory_limit: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes read from and written to storage by the app's live processes.
    pub block: Option<Io>,
}

/// Bytes in (received, read) and out (sent, written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Io {
    pub input: u64,
    pub output: u64,
}

/// Sums saturate: counters of many processes or interfaces never wrap.
impl std::ops::Add for Io {
    type Output = Io;
    fn add(self, other: Io) -> Io {
        Io { input: self.input.saturating_add(other.input), output: self.output.saturating_add(other.output) }
    }
}
