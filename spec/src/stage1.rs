//! The stage0 → stage1 contract: two JSON files in the pod directory.
//!
//! - `pod.json` ([`ResolvedPod`]): the frozen, fully resolved pod — every
//!   image by ID and rendered tree, every app's exec, user, environment and
//!   ports merged from its image and the pod file. What runs.
//! - `stage1.json` ([`Invocation`]): how to run it on this host — versioned,
//!   with host paths (stage2 binary, CNI directories). A stage1 that meets a
//!   version or an option it cannot honour fails; nothing is dropped.
//!
//! stage1 is exec'd as `<stage1 binary> <pod directory>` with the pod's lock
//! fd inherited (its number in `POD_LOCK_FD`); holding it keeps the pod
//! `running`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::ImageId;
use crate::name::{AcName, ImageName};
use crate::security::{AppSecurity, CapSet, Seccomp, DEFAULT_CAPS};

/// The invocation version this build writes and reads.
pub const INVOCATION_VERSION: u32 = 1;
pub const INVOCATION_FILE: &str = "stage1.json";
pub const POD_MANIFEST_FILE: &str = "pod.json";
/// Environment variable naming the inherited pod lock fd.
pub const LOCK_FD_ENV: &str = "POD_LOCK_FD";
/// The pod's exit status, which stage1 writes into the pod directory once
/// the pod has ended, before it tears the pod down.
pub const EXIT_FILE: &str = "stage1-exit";

/// Records the pod's exit status in `pod_dir` ([`EXIT_FILE`]); best effort:
/// a pod whose status could not be written reads as exited without a code.
pub fn write_exit(pod_dir: &std::path::Path, status: i32) {
    let _ = std::fs::write(pod_dir.join(EXIT_FILE), format!("{status}\n"));
}

/// The pod's exit status as its stage1 recorded it ([`write_exit`]).
pub fn read_exit(pod_dir: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pod_dir.join(EXIT_FILE)).ok()?.trim().parse().ok()
}

/// A status as a process exit code: 0-255 as they are, any other 255.
pub fn exit_code(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(u8::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    Namespace,
    Vm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Network {
    /// Loopback only.
    None,
    /// The host's network namespace.
    Host,
    /// A CNI network by name (`default` is the built-in bridge).
    Cni { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Probe {
    Tcp(u16),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Readiness {
    pub probe: Probe,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    /// CPU weight, in cgroup v1 `cpu.shares` units (1024 = one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// The app process's `oom_score_adj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    pub name: AcName,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub volume: AcName,
    pub path: String,
    pub read_only: bool,
    /// Mounts below it travel from the host in (`rslave`) or both ways
    /// (`rshared`); absent: private.
    #[serde(default, skip_serializing_if = "Propagation::is_private")]
    pub propagation: Propagation,
    /// Read-only all the way down (`mount_setattr` with `AT_RECURSIVE`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive_read_only: bool,
}

/// A mount's propagation (see `spec::pod::Propagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    #[default]
    Private,
    Rslave,
    Rshared,
}

impl Propagation {
    pub fn is_private(&self) -> bool {
        *self == Self::Private
    }
}

impl From<crate::pod::Propagation> for Propagation {
    fn from(p: crate::pod::Propagation) -> Self {
        match p {
            crate::pod::Propagation::Private => Self::Private,
            crate::pod::Propagation::Slave => Self::Rslave,
            crate::pod::Propagation::Shared => Self::Rshared,
        }
    }
}

/// The pod's resolv.conf (see `spec::pod::Dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    /// The resolv.conf text: `search`, `nameserver` lines, `options`.
    pub fn resolv_conf(&self) -> String {
        let pod = crate::pod::Dns {
            servers: self.servers.iter().filter_map(|s| s.parse().ok()).collect(),
            searches: self.searches.clone(),
            options: self.options.clone(),
        };
        pod.resolv_conf()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum VolumeSource {
    /// `volumes/<name>` in the pod directory, created by stage0.
    Empty,
    /// A host directory.
    Host { path: PathBuf, read_only: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: AcName,
    pub source: VolumeSource,
}

/// One app, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    pub name: AcName,
    pub image_name: ImageName,
    pub image_id: ImageId,
    /// The read-only lower layers of the app's rootfs, bottom to top: one
    /// rendered tree for an ACI and its dependencies, one tree per layer for
    /// an OCI image (layers hold overlayfs whiteouts).
    pub layers: Vec<PathBuf>,
    pub exec: Vec<String>,
    pub user: String,
    pub group: String,
    pub supplementary_gids: Vec<u32>,
    pub working_directory: String,
    /// In order; later entries win.
    pub env: Vec<(String, String)>,
    pub after: Vec<AcName>,
    pub requires: Vec<AcName>,
    pub readiness: Option<Readiness>,
    pub restart: Restart,
    pub stop_timeout_ms: u64,
    /// What stopping the app sends first (an OCI image's StopSignal, e.g.
    /// `SIGQUIT`); absent: SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    pub resources: Resources,
    pub ports: Vec<Port>,
    pub mounts: Vec<Mount>,
    /// The app's capability set (`CAP_` names): its bounding set, and for
    /// root also permitted, effective and inheritable. Absent: the default.
    #[serde(default = "default_caps")]
    pub capabilities: CapSet,
    #[serde(default)]
    pub seccomp: Seccomp,
    /// The rootfs is remounted read-only once its mounts are in place.
    #[serde(default, rename = "readOnlyRootFS")]
    pub read_only_root_fs: bool,
    /// Supplementary groups and their policy, no_new_privs, masked and
    /// read-only paths, privileged (see [`AppSecurity`]). Absent: the
    /// defaults.
    #[serde(default, skip_serializing_if = "AppSecurity::is_default")]
    pub security: AppSecurity,
    /// Where and how its output is logged (`crate::stdio`); absent: raw,
    /// into the pod's `logs/<app>.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::stdio::AppLog>,
    /// Its stdin is a FIFO (`crate::stdio::stdin_fifo`); else /dev/null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// It runs on a pseudo-terminal (`crate::stdio`); else its output
    /// goes to its log through pipes or as is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Host device nodes bound into the app (see [`crate::pod::Device`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// The image's appc event handlers; absent: none.
    #[serde(default, skip_serializing_if = "EventHandlers::is_empty")]
    pub handlers: EventHandlers,
}

/// An image's appc event handlers (`eventHandlers` in its manifest), run
/// as the app runs: `pre-start` before each start of its program (it must
/// exit 0 within `start_timeout_ms`), `post-stop` after each end (within
/// the app's `stop_timeout_ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventHandlers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_stop: Option<Vec<String>>,
    pub start_timeout_ms: u64,
}

impl EventHandlers {
    pub fn is_empty(&self) -> bool {
        self.pre_start.is_none() && self.post_stop.is_none()
    }
}

/// A host device node given to an app (`devices` in the pod file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// The character or block device on the host (absolute).
    pub host: String,
    /// Where the app sees it (absolute, inside the app).
    pub path: String,
    /// `r`, `w`, `m` as the CRI and the device cgroup write them.
    pub permissions: String,
}

impl From<crate::pod::Device> for Device {
    fn from(d: crate::pod::Device) -> Self {
        Self { host: d.host, path: d.path, permissions: d.permissions }
    }
}

fn default_caps() -> CapSet {
    DEFAULT_CAPS
}

/// `pod.json`: what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedPod {
    pub uuid: String,
    pub name: AcName,
    /// The pod file it came from, for humans.
    pub source: String,
    pub isolation: Isolation,
    pub accel: Accel,
    pub network: Network,
    /// In start order (dependencies first).
    pub apps: Vec<App>,
    pub volumes: Vec<Volume>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// A sandbox (`pod run --sandbox`, or a pod file with `apps: []`):
    /// pod-init keeps the pod, its namespaces and network, once every app
    /// has ended, until the pod is stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// The pod's hostname, when not its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The pod's resolv.conf instead of the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Namespaced sysctls (dotted keys) set in the pod's namespaces at its
    /// start; stage0 checked each is namespaced.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Ports published to the pod's own ports by number, whichever app
    /// listens there (`name` is the container port's number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// `pid: host`: no pid namespace of the pod's own. A stage1 that
    /// cannot share the host's (the VM stage1) fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_pid: bool,
    /// `ipc: host`: no IPC namespace of the pod's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_ipc: bool,
}

impl ResolvedPod {
    /// The pod's hostname: its `hostname`, else its name.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(self.name.as_str())
    }
}

/// `stage1.json`: how to run it on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Invocation {
    pub version: u32,
    /// The stage2 PID 1 binary (`pod-init`) on the host.
    pub stage2: PathBuf,
    /// Where CNI network configurations live.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked up.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// Where network namespaces are bind-mounted (one file per pod uuid).
    pub netns_dir: PathBuf,
    /// Log debug detail.
    pub debug: bool,
    /// What a VM stage1 boots; absent where stage0 found no guest kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmHost>,
    /// The pod's user namespace (`userns: auto`); absent: the host's. A
    /// stage1 of this version that predates the field refuses the file
    /// (unknown field) rather than run the pod as host root; one that
    /// cannot honour it (the VM stage1) fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<IdMap>,
    /// The cgroup holding the pod's own, `<parent>/<uuid>` in every
    /// hierarchy (`cgroupParent`, checked by `crate::cgroup::check_parent`);
    /// absent: `/pod`. Recorded here so that the monitor, `pod gc`, the
    /// stats and updates find the pod's cgroups; a stage1 that cannot honour
    /// it (the VM stage1, whose VM is the pod's boundary) fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// The metadata service's unix socket (`crate::metadata`): the pod
    /// registers there as it starts, and its apps' environment has
    /// `AC_METADATA_URL`. Absent: the pod has no metadata service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_socket: Option<PathBuf>,
}

/// A user namespace's mapping: ids `0..size` inside are `uid..uid+size`
/// (`gid..gid+size`) on the host. stage0 allocates it, distinct from every
/// other pod's, and it is freed with the pod directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
}

impl IdMap {
    /// The ids a pod gets: 65536, as podman's `--userns=auto` default, so
    /// every 16-bit id an image may use is mapped.
    pub const POD_SIZE: u32 = 65536;

    /// The host uid of the pod's `inside` uid, if mapped.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        (inside < self.size).then(|| self.uid + inside)
    }

    /// The host gid of the pod's `inside` gid, if mapped.
    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        (inside < self.size).then(|| self.gid + inside)
    }

    /// `/proc/<pid>/uid_map` text.
    pub fn uid_map(&self) -> String {
        format!("0 {} {}\n", self.uid, self.size)
    }

    /// `/proc/<pid>/gid_map` text.
    pub fn gid_map(&self) -> String {
        format!("0 {} {}\n", self.gid, self.size)
    }

    /// Whether two mappings share a host uid or gid.
    pub fn overlaps(&self, other: &IdMap) -> bool {
        let meet = |a: u32, b: u32| {
            let (a, b, s, t) = (u64::from(a), u64::from(b), u64::from(self.size), u64::from(other.size));
            a < b + t && b < a + s
        };
        meet(self.uid, other.uid) || meet(self.gid, other.gid)
    }
}

/// The host side of VM pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmHost {
    /// The qemu system emulator.
    pub qemu: PathBuf,
    /// The guest kernel: a bzImage (decompressed once and cached) or an ELF vmlinux.
    pub kernel: PathBuf,
    /// The guest kernel's module tree (`lib/modules/<version>`); none for a
    /// kernel with the guest's drivers built in (pod's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<PathBuf>,
    /// Where the decompressed kernel and the initramfs are cached.
    pub cache_dir: PathBuf,
    /// qemu's machine model (`pc` when absent).
    #[serde(default)]
    pub machine: VmMachine,
}

/// The machine model a VM pod boots on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmMachine {
    /// The i440FX PC: PCI, SeaBIOS; virtio-pci devices. Any x86 kernel.
    #[default]
    Pc,
    /// qemu's microvm: no PCI bus and no BIOS tables (qboot firmware);
    /// virtio-mmio devices, which the kernel must have built in.
    Microvm,
}

impl Invocation {
    /// Checks the version before anything else is trusted.
    pub fn check_version(&self) -> Result<(), String> {
        if self.version == INVOCATION_VERSION {
            Ok(())
        } else {
            Err(format!(
                "stage1 invocation version {} is not supported (this stage1 reads {INVOCATION_VERSION})",
                self.version
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps() {
        let a = IdMap { uid: 1 << 31, gid: 1 << 31, size: IdMap::POD_SIZE };
        assert_eq!(a.uid_map(), "0 2147483648 65536\n");
        assert_eq!(
            (a.host_uid(0), a.host_uid(65535), a.host_uid(65536)),
            (Some(1 << 31), Some((1 << 31) + 65535), None)
        );
        let next = IdMap { uid: a.uid + 65536, gid: a.gid + 65536, ..a };
        assert!(!a.overlaps(&next) && !next.overlaps(&a));
        assert!(a.overlaps(&IdMap { uid: a.uid + 65535, gid: 0, size: 1 }));
        assert!(a.overlaps(&IdMap { uid: 0, gid: a.gid, size: 1 }), "a shared gid is an overlap too");
        // Version 1 files without the field read as the host's namespace.
        let inv: Invocation = serde_json::from_str(
            r#"{"version":1,"stage2":"/p","cniConfDir":"/c","cniPluginDirs":[],"netnsDir":"/n","debug":false}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inv.userns, None);
    }
}
