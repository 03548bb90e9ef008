//! What the server keeps in memory only, shared by every request: the last
//! CPU sample of each container and sandbox (a rate, `usage_nano_cores`,
//! needs two, as containerd keeps them), the pod CIDR kubelet gave with
//! UpdateRuntimeConfig, and the host's cgroup hierarchy, detected once.
//!
//! Nothing here is durable state: after a restart the first stats of each
//! container have no rate yet, and kubelet sends the CIDR again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use stage1_ns::cgroups::{self, Hierarchy};

use crate::error::CriError;

/// A cumulative CPU counter read at a time (both in nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: i64,
    pub usage_ns: u64,
}

#[derive(Debug, Default)]
pub struct Live {
    samples: Mutex<HashMap<String, Sample>>,
    pod_cidr: Mutex<Option<String>>,
    hierarchy: OnceLock<Result<Hierarchy, String>>,
}

impl Live {
    /// The host's cgroups, detected on first use.
    pub fn hierarchy(&self) -> Result<&Hierarchy, CriError> {
        self.hierarchy
            .get_or_init(|| {
                cgroups::detect_host(Path::new("/proc/self/mountinfo"), Path::new("/sys/fs/cgroup"))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| CriError::Failed(format!("cgroups: {e}")))
    }

    /// Records `now` for `key` and gives the CPU use since the previous
    /// sample in nanoseconds of CPU per second (1e9 is one core busy);
    /// `None` for a first sample or one not newer than the last. A counter
    /// that went back (a new cgroup under the same key) starts over.
    pub fn nano_cores(&self, key: &str, now: Sample) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = samples.get(key).copied();
        match prev {
            Some(p) if now.at <= p.at => return None,
            _ => {
                samples.insert(key.to_owned(), now);
            }
        }
        let p = prev.filter(|p| now.usage_ns >= p.usage_ns)?;
        let cpu = u128::from(now.usage_ns - p.usage_ns);
        let wall = u128::try_from(now.at - p.at).ok()?;
        u64::try_from(cpu * 1_000_000_000 / wall).ok()
    }

    /// Forgets the samples of keys not in `keep` (removed containers).
    pub fn retain_samples(&self, keep: &dyn Fn(&str) -> bool) {
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.retain(|k, _| keep(k));
    }

    pub fn set_pod_cidr(&self, cidr: Option<String>) {
        *self.pod_cidr.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = cidr;
    }

    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_from_two_samples() {
        let live = Live::default();
        assert_eq!(live.nano_cores("c", Sample { at: 1_000_000_000, usage_ns: 0 }), None, "first sample");
        // Half a core over two seconds.
        assert_eq!(live.nano_cores("c", Sample { at: 3_000_000_000, usage_ns: 1_000_000_000 }), Some(500_000_000));
        // Not newer: no rate, the last sample kept.
        assert_eq!(live.nano_cores("c", Sample { at: 3_000_000_000, usage_ns: 9 }), None);
        assert_eq!(live.nano_cores("c", Sample { at: 4_000_000_000, usage_ns: 3_000_000_000 }), Some(2_000_000_000));
        // A counter that went back starts over.
        assert_eq!(live.nano_cores("c", Sample { at: 5_000_000_000, usage_ns: 10 }), None);
        assert_eq!(live.nano_cores("d", Sample { at: 5_000_000_000, usage_ns: 10 }), None, "per key");
        live.retain_samples(&|k| k == "d");
        assert_eq!(live.nano_cores("c", Sample { at: 6_000_000_000, usage_ns: 20 }), None, "forgotten");
    }

    #[test]
    fn pod_cidr_is_kept() {
        let live = Live::default();
        assert_eq!(live.pod_cidr(), None);
        live.set_pod_cidr(Some("10.88.0.0/16".into()));
        assert_eq!(live.pod_cidr().as_deref(), Some("10.88.0.0/16"));
    }
}
