//! The resource limits a unit carries for pod-init to enforce itself
//! (`[Service]`, systemd's names and syntax): `MemoryMax=` bytes,
//! `TasksMax=`, `CPUQuota=` a percentage of one CPU (one decimal),
//! `CPUWeight=` 1-10000. A stage1 that makes the app's cgroups itself (the
//! namespace stage1, on the host) writes none of them and names the
//! cgroups in `Cgroup=`; the VM stage1, whose guest kernel is pod-init's
//! alone, writes these instead and pod-init makes the app a cgroup of the
//! guest's with them (stage2-init's cgroupfs.rs).

/// An app's limits; all `None`: unlimited (no cgroup of pod-init's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `MemoryMax=`: bytes.
    pub memory_max: Option<u64>,
    /// `TasksMax=`: processes and threads.
    pub tasks_max: Option<u64>,
    /// `CPUQuota=`, in thousandths of a CPU (`CPUQuota=50%` is 500).
    pub cpu_millis: Option<u64>,
    /// `CPUWeight=`: cgroup v2's `cpu.weight`, 1-10000 (100 the default).
    pub cpu_weight: Option<u64>,
}

/// The keys, in the order [`Limits::render`] writes them.
pub const KEYS: [&str; 4] = ["MemoryMax", "TasksMax", "CPUQuota", "CPUWeight"];

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Sets `key` (one of [`KEYS`]) from its value; or why it cannot be.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        let positive = || value.parse::<u64>().ok().filter(|n| *n > 0);
        match key {
            "MemoryMax" => self.memory_max = Some(positive().ok_or("expected a positive number of bytes")?),
            "TasksMax" => self.tasks_max = Some(positive().ok_or("expected a positive number of tasks")?),
            "CPUQuota" => {
                self.cpu_millis = Some(parse_percent(value).ok_or("expected a positive percentage (50%, 12.5%)")?);
            }
            "CPUWeight" => {
                let weight = value.parse::<u64>().ok().filter(|n| (1..=10_000).contains(n));
                self.cpu_weight = Some(weight.ok_or("expected a number from 1 to 10000")?);
            }
            _ => return Err("not a limit"),
        }
        Ok(())
    }

    /// Each limit that is set, as `(key, value)`, for the unit file.
    pub fn render(&self) -> Vec<(&'static str, String)> {
        let quota =
            |m: u64| if m.is_multiple_of(10) { format!("{}%", m / 10) } else { format!("{}.{}%", m / 10, m % 10) };
        [
            self.memory_max.map(|n| n.to_string()),
            self.tasks_max.map(|n| n.to_string()),
            self.cpu_millis.map(quota),
            self.cpu_weight.map(|n| n.to_string()),
        ]
        .into_iter()
        .zip(KEYS)
        .filter_map(|(v, k)| v.map(|v| (k, v)))
        .collect()
    }

    /// The cgroup v2 controllers these limits need.
    pub fn controllers(&self) -> Vec<&'static str> {
        let cpu = self.cpu_millis.or(self.cpu_weight).map(|_| "cpu");
        [self.memory_max.map(|_| "memory"), self.tasks_max.map(|_| "pids"), cpu].into_iter().flatten().collect()
    }

    /// The cgroup v2 files that enforce them, with their contents
    /// (`cpu.max`: the quota per 100 ms period).
    pub fn cgroup2_files(&self) -> Vec<(&'static str, String)> {
        [
            ("memory.max", self.memory_max.map(|n| n.to_string())),
            ("pids.max", self.tasks_max.map(|n| n.to_string())),
            ("cpu.max", self.cpu_millis.map(|m| format!("{} 100000", m * 100))),
            ("cpu.weight", self.cpu_weight.map(|n| n.to_string())),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .collect()
    }
}

/// `50%`, `12.5%`, `200%` → thousandths of a CPU (500, 125, 2000).
fn parse_percent(value: &str) -> Option<u64> {
    let number = value.strip_suffix('%')?;
    let (whole, tenth) = match number.split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some(_) => return None,
        None => (number, "0"),
    };
    if whole.is_empty() || !whole.bytes().chain(tenth.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis = whole.parse::<u64>().ok()?.checked_mul(10)?.checked_add(tenth.parse().ok()?)?;
    // At most a million CPUs' worth: cpu.max's quota stays in range.
    (1..=1_000_000_000).contains(&millis).then_some(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_render_and_map_to_cgroup_files() {
        let mut l = Limits::default();
        assert!(l.is_empty() && l.render().is_empty() && l.cgroup2_files().is_empty());
        for (k, v) in [("MemoryMax", "67108864"), ("TasksMax", "100"), ("CPUQuota", "12.5%"), ("CPUWeight", "50")] {
            l.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        assert_eq!(
            l,
            Limits { memory_max: Some(67_108_864), tasks_max: Some(100), cpu_millis: Some(125), cpu_weight: Some(50) }
        );
        let rendered: Vec<String> = l.render().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(rendered, ["MemoryMax=67108864", "TasksMax=100", "CPUQuota=12.5%", "CPUWeight=50"]);
        assert_eq!(l.controllers(), ["memory", "pids", "cpu"]);
        let files: Vec<String> = l.cgroup2_files().into_iter().map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(files, ["memory.max=67108864", "pids.max=100", "cpu.max=12500 100000", "cpu.weight=50"]);
    }

    #[test]
    fn bad_limits_are_refused() {
        let mut l = Limits::default();
        for (k, v) in [
            ("MemoryMax", "0"),
            ("MemoryMax", "64M"),
            ("TasksMax", "-1"),
            ("CPUQuota", "50"),
            ("CPUQuota", "0%"),
            ("CPUQuota", "1.25%"),
            ("CPUQuota", ".5%"),
            ("CPUQuota", "+5%"),
            ("CPUWeight", "0"),
            ("CPUWeight", "10001"),
        ] {
            assert!(l.set(k, v).is_err(), "{k}={v} was accepted");
        }
        assert!(l.is_empty());
        assert_eq!(parse_percent("200%"), Some(2000));
        assert_eq!(parse_percent("0.1%"), Some(1));
    }
}
