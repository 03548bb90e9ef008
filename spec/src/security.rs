//! What an app may do, named once for every stage: Linux capabilities (names,
//! sets, the default set), the seccomp profile choice, and the /proc and
//! /sys paths masked or made read-only in every app.
//!
//! The default capability set is Docker's (and the OCI runtime spec's
//! example): [`DEFAULT_CAPS`]. An app's set bounds everything it and its
//! children can ever hold; an app running as root holds exactly that set
//! (permitted, effective, inheritable; no ambient), an app running as
//! another user holds none, as with Docker.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Capability names by number (linux/capability.h), without `CAP_`.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The highest capability number this build knows (`CAP_CHECKPOINT_RESTORE`).
pub const LAST_CAP: u32 = 40;

/// A set of capabilities, bit `n` for capability number `n`. Displays and
/// serialises as `CAP_` names in number order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapSet(u64);

/// The default set of every app: Docker's default.
pub const DEFAULT_CAPS: CapSet = CapSet::from_numbers(&[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
]);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);
    /// Every capability this build knows.
    pub const ALL: CapSet = CapSet((1 << (LAST_CAP + 1)) - 1);

    const fn from_numbers(numbers: &[u32]) -> CapSet {
        let mut bits = 0u64;
        let mut i = 0;
        while i < numbers.len() {
            bits |= 1 << numbers[i];
            i += 1;
        }
        CapSet(bits)
    }

    /// The set whose bits are `bits`; bits above [`LAST_CAP`] are dropped.
    pub const fn from_bits(bits: u64) -> CapSet {
        CapSet(bits & CapSet::ALL.0)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn contains(self, cap: u32) -> bool {
        cap <= LAST_CAP && self.0 & (1 << cap) != 0
    }

    #[must_use]
    pub const fn with(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    #[must_use]
    pub const fn without(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    /// The capability numbers in the set, ascending.
    pub fn numbers(self) -> impl Iterator<Item = u32> {
        (0..=LAST_CAP).filter(move |&n| self.contains(n))
    }

    /// `CAP_` names, ascending by number.
    pub fn names(self) -> Vec<String> {
        self.numbers().map(cap_name).collect()
    }

    /// Parses a list of capability names (see [`parse_cap`]); `ALL` is
    /// every capability.
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<CapSet, String> {
        names.iter().try_fold(CapSet::EMPTY, |set, n| Ok(set.with(parse_cap_or_all(n.as_ref())?)))
    }
}

/// `CAP_NAME` for capability number `n`.
pub fn cap_name(n: u32) -> String {
    match NAMES.get(n as usize) {
        Some(name) => format!("CAP_{name}"),
        None => format!("CAP_{n}"),
    }
}

/// A capability number from its name: `CAP_NET_ADMIN` or `NET_ADMIN`, any
/// letter case.
pub fn parse_cap(name: &str) -> Result<u32, String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|n| *n == bare)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{name:?} is not a capability name (like CAP_NET_ADMIN or NET_ADMIN, or ALL)"))
}

/// A capability name as a set, or `ALL` (also `CAP_ALL`) for every one.
pub fn parse_cap_or_all(name: &str) -> Result<CapSet, String> {
    if name.eq_ignore_ascii_case("ALL") || name.eq_ignore_ascii_case("CAP_ALL") {
        return Ok(CapSet::ALL);
    }
    parse_cap(name).map(|n| CapSet(1 << n))
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(" "))
    }
}

impl Serialize for CapSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CapSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CapSet, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        CapSet::parse_names(&names).map_err(serde::de::Error::custom)
    }
}

/// Which seccomp filter an app runs under (`pod.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seccomp {
    /// The default deny list (stage1-ns/src/seccomp.rs): EPERM for calls
    /// that reach past the pod (mount, modules, keyrings, clocks, reboot,
    /// ptrace, bpf, new user namespaces, ...).
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile file in the OCI runtime spec's format, read when the pod
    /// was prepared (`path`, for humans) and frozen here.
    Localhost { path: String, profile: crate::seccomp::OciSeccomp },
}

/// The pod file's `seccomp`: `default`, `unconfined`, or the absolute path
/// of an OCI seccomp profile on the host (read by stage0 when the pod is
/// prepared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum SeccompSpec {
    #[default]
    Default,
    Unconfined,
    Localhost(String),
}

/// How the supplementary groups of an app are made (CRI's
/// `SupplementalGroupsPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupsPolicy {
    /// The user's groups in the image's /etc/group, plus those given.
    #[default]
    Merge,
    /// Only the primary group and those given.
    Strict,
}

/// An app's privileges beyond its capabilities and seccomp profile: the
/// pod file's `supplementaryGroups`, `supplementaryGroupsPolicy`,
/// `noNewPrivileges`, `maskedPaths`, `readonlyPaths` and `privileged`,
/// carried as they are into `pod.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AppSecurity {
    /// Group ids added to the app's supplementary groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supplementary_groups: Vec<u32>,
    pub groups_policy: GroupsPolicy,
    /// `no_new_privs` for the app (the default): setuid binaries and file
    /// capabilities grant nothing. Off, a non-root app may gain privileges
    /// through them, within its bounding set (Kubernetes'
    /// `allowPrivilegeEscalation`).
    pub no_new_privileges: bool,
    /// Replaces [`MASKED_PATHS`] when given (paths inside the app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked_paths: Option<Vec<String>>,
    /// Replaces [`READONLY_PATHS`] when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    /// Every capability, no seccomp filter, nothing masked or read-only in
    /// /proc, /sys writable and the host's devices in /dev: what Docker's
    /// `--privileged` and Kubernetes' `privileged: true` give.
    pub privileged: bool,
    /// `pidNamespace: own`: the app's program is PID 1 of a pid namespace
    /// of its own, seeing only its processes (the CRI's per-container pid
    /// namespace); default: the pod's.
    pub own_pid_namespace: bool,
}

impl Default for AppSecurity {
    fn default() -> Self {
        AppSecurity {
            supplementary_groups: Vec::new(),
            groups_policy: GroupsPolicy::Merge,
            no_new_privileges: true,
            masked_paths: None,
            readonly_paths: None,
            privileged: false,
            own_pid_namespace: false,
        }
    }
}

impl AppSecurity {
    /// Whether these are the defaults (left out of `pod.json`).
    pub fn is_default(&self) -> bool {
        *self == AppSecurity::default()
    }

    /// The paths masked in the app: none when privileged.
    pub fn masked(&self) -> Vec<String> {
        match (&self.masked_paths, self.privileged) {
            (_, true) => Vec::new(),
            (Some(p), false) => p.clone(),
            (None, false) => MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The paths made read-only in the app: none when privileged.
    pub fn readonly(&self) -> Vec<String> {
        match (&self.readonly_paths, self.privileged) {
            (_, true) => Vec::new(),
            (Some(p), false) => p.clone(),
            (None, false) => READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Paths under an app's `/` hidden from it, as runc and Docker do: a file
/// gets `/dev/null` bound over it, a directory an empty read-only tmpfs. A
/// path the kernel does not have is skipped.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths under an app's `/` bound read-only onto themselves, as runc and
/// Docker do (`/sys` is read-only as a whole already).
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        assert_eq!(parse_cap("CAP_NET_ADMIN"), Ok(12));
        assert_eq!(parse_cap("net_admin"), Ok(12));
        assert_eq!(parse_cap("CHECKPOINT_RESTORE"), Ok(LAST_CAP));
        assert!(parse_cap("CAP_BOGUS").expect_err("bogus").contains("\"CAP_BOGUS\" is not a capability name"));
        assert!(parse_cap("ALL").is_err());
        assert_eq!(parse_cap_or_all("all"), Ok(CapSet::ALL));
        for n in 0..=LAST_CAP {
            assert_eq!(parse_cap(&cap_name(n)), Ok(n));
        }
    }

    #[test]
    fn default_set_is_dockers() {
        let want = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW",
            "CAP_SYS_CHROOT",
            "CAP_MKNOD",
            "CAP_AUDIT_WRITE",
            "CAP_SETFCAP",
        ];
        assert_eq!(DEFAULT_CAPS.names(), want);
        assert_eq!(DEFAULT_CAPS.bits(), 0xa80425fb, "Docker's CapBnd");
        assert_eq!(CapSet::ALL.bits(), 0x1ff_ffff_ffff);
        assert_eq!(CapSet::from_bits(u64::MAX), CapSet::ALL);
    }

    #[test]
    fn serde_round_trip() {
        let set = DEFAULT_CAPS.with(parse_cap_or_all("SYS_ADMIN").expect("name")).without(CapSet::from_bits(1 << 1));
        let json = serde_json::to_string(&set).expect("json");
        assert!(json.starts_with("[\"CAP_CHOWN\",\"CAP_FOWNER\""), "{json}");
        assert_eq!(serde_json::from_str::<CapSet>(&json).expect("parse"), set);
        assert!(serde_json::from_str::<CapSet>("[\"CAP_NOPE\"]").is_err());
        assert_eq!(set.to_string().split(' ').count(), 14);
    }
}
