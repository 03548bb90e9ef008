//! The pod file: the YAML a user writes to describe a pod (`pod run web-db.yaml`),
//! parsed from untrusted bytes into typed, validated values.
//!
//! ```yaml
//! name: web-db
//! isolation: namespace          # or vm
//! network: default              # none | host | default | <CNI network name>
//! accel: auto                   # auto | kvm | tcg (vm isolation)
//! userns: auto                  # host (default) | auto: the pod's root is an unprivileged host range
//! # userns: { uid: { container: 0, host: 100000, size: 65536 }, gid: { container: 0, host: 100000, size: 65536 } }
//! pid: pod                      # pod (default) | host: the host's pid namespace
//! ipc: pod                      # pod (default) | host: the host's IPC namespace
//! apps:
//!   - name: db
//!     image: example.com/redis:7.0
//!     readiness: { tcp: 6379, timeout: 60s }   # or { exec: [/usr/bin/redis-cli, ping] }
//!   - name: web
//!     image: example.com/web:1.0
//!     after: [db]
//!     requires: [db]
//!     env: { REDIS_ADDR: "127.0.0.1:6379" }
//!     ports: [{ name: http, host: 8080 }]      # hostIP, protocol
//!     resources: { memory: 128Mi, cpu: 500m, pids: 256 }
//!     restart: on-failure
//!     stopTimeout: 10s                         # also bounds the image's post-stop handler
//!     startTimeout: 90s                        # bounds the image's pre-start handler
//!     mounts: [{ volume: data, path: /data }]  # readOnly
//!     capabilities: { add: [NET_ADMIN], drop: [MKNOD] }  # or CAP_NET_ADMIN; ALL
//!     seccomp: unconfined                      # default: the default deny list
//!     readOnlyRootFS: true                     # only volumes, /dev, /proc stay writable
//!     # seccomp: /etc/pod/seccomp/web.json     # an OCI seccomp profile on the host
//!     supplementaryGroups: [1234]              # gids added to the user's groups
//!     supplementaryGroupsPolicy: strict        # merge (default): also the image's /etc/group ones
//!     noNewPrivileges: false                   # default true: setuid binaries grant nothing
//!     maskedPaths: [/proc/kcore]               # replace the default masked paths
//!     readonlyPaths: [/proc/sys]               # replace the default read-only paths
//!     privileged: false                        # true: all caps, no seccomp, no masks, host devices
//!     pidNamespace: pod                        # own: the app is PID 1 of a pid namespace of its own
//!     log: { volume: logs, path: web/0.log, format: cri }  # default: logs/<app>.log, raw
//!     stdin: true                              # a FIFO, /stdin/<app> in the pod root
//!     terminal: true                           # a pseudo-terminal as its controlling terminal
//!     devices: [{ host: /dev/fuse, path: /dev/fuse }]  # permissions: rwm (default)
//! volumes:
//!   - { name: data, kind: empty }              # or kind: host, source: /abs, readOnly: true
//! annotations: { example.com/owner: me }
//! ```
//!
//! Settings of the pod as a whole, for sandboxes that start without apps
//! (the CRI's RunPodSandbox) as for any pod (see `podcfg.rs`):
//!
//! ```yaml
//! hostname: web-0                 # default: the pod's name
//! dns: { servers: [10.96.0.10], searches: [svc.cluster.local], options: [ndots:5] }
//! sysctls: { net.ipv4.ip_unprivileged_port_start: "0", kernel.shm_rmid_forced: "1" }
//! ports: [{ containerPort: 80, host: 8080 }]   # by number, no image port needed; hostIP, protocol
//! cgroupParent: /kubepods/burstable/pod1234    # the pod's cgroup is <parent>/<uuid>; default /pod
//! apps:
//!   - name: web
//!     mounts: [{ host: /srv/www, path: /www, readOnly: true, propagation: rslave }]
//!     resources: { memory: 64Mi, cpuShares: 512, oomScoreAdj: 500 }
//! ```
//!
//! Parsing runs in three steps. A pre-scan with an event parser that never
//! expands aliases enforces the hostile-input limits (size, nodes, depth,
//! alias expansion, duplicate keys) and records where each node starts.
//! serde_yaml then maps the text onto private raw structs that deny unknown
//! fields and keep every leaf as its text. Last, each value is checked and
//! converted; an error names the file, the line and column found through the
//! pre-scan's positions, and the field path (`apps[1].resources.memory`).

mod check;
mod privs;
mod raw;
mod scan;
mod values;

pub use check::podcfg::{namespaced_sysctl, Dns, PodPort, Propagation, SysctlNamespace};
pub use check::userns_conflict;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::name::{AcIdentifier, AcName};
use crate::security::{AppSecurity, CapSet, SeccompSpec};

/// A pod file larger than this is rejected before parsing.
pub const MAX_POD_FILE_BYTES: usize = 1024 * 1024;
/// Most apps in one pod.
pub const MAX_APPS: usize = 256;
/// Most volumes in one pod.
pub const MAX_VOLUMES: usize = 256;
/// Most entries in any other list or map (env, ports, mounts, exec, ...).
pub const MAX_ENTRIES: usize = 1024;
/// Longest scalar (string, number) anywhere in the file.
pub const MAX_SCALAR_BYTES: usize = 64 * 1024;
/// Most YAML nodes in the file, and most after expanding aliases.
pub const MAX_NODES: usize = 100_000;
/// Most bytes of scalars after expanding aliases.
pub const MAX_EXPANDED_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 32;
/// Readiness timeout when the file gives none.
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between the stop signal and SIGKILL when the file gives none.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an image's `pre-start` event handler may run (systemd's
/// default `TimeoutStartSec=`).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);

/// A parsed and validated pod file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFile {
    /// The pod's name, also its hostname (an AC Name of at most 63 bytes).
    pub name: AcName,
    pub isolation: Isolation,
    pub network: Network,
    /// The accelerator a VM stage1 should use; kept whatever the isolation,
    /// since the CLI may switch a pod to `vm`.
    pub accel: Accel,
    /// Whether the pod gets a user namespace of its own.
    pub userns: UserNs,
    /// `pid: host`: the pod shares the host's pid namespace (its apps see
    /// and may signal every process of the host); default `pod`, its own.
    pub host_pid: bool,
    /// `ipc: host`: the pod shares the host's IPC namespace (System V IPC,
    /// POSIX message queues); default `pod`, its own.
    pub host_ipc: bool,
    /// The apps in file order; see [`PodFile::app_order`] for start order.
    /// None (`apps: []`): a sandbox, held until stopped.
    pub apps: Vec<AppSpec>,
    pub volumes: Vec<Volume>,
    pub annotations: BTreeMap<AcIdentifier, String>,
    /// The pod's hostname when it is not its name (`hostname`).
    pub hostname: Option<String>,
    /// The pod's resolv.conf (`dns`) instead of the host's.
    pub dns: Option<Dns>,
    /// Namespaced kernel parameters set in the pod's own namespaces at its
    /// start (`sysctls`), keys written with dots.
    pub sysctls: BTreeMap<String, String>,
    /// Host ports published to the pod's own ports by number (`ports`),
    /// whichever app listens there.
    pub ports: Vec<PodPort>,
    /// The cgroup that holds the pod's own (`cgroupParent`, cgroupfs form,
    /// checked by [`crate::cgroup::check_parent`]); `None`: `/pod`.
    pub cgroup_parent: Option<String>,
}

/// How the pod is isolated from the host: which stage1 runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Linux namespaces and cgroups (`pod-stage1-ns`).
    #[default]
    Namespace,
    /// A KVM virtual machine (`pod-stage1-vm`).
    Vm,
}

/// The network the pod's shared network namespace joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Network {
    /// Loopback only.
    None,
    /// The host's network namespace.
    Host,
    /// The default bridge network, with port mappings.
    #[default]
    Default,
    /// A CNI network by name.
    Named(String),
}

/// The accelerator for `vm` isolation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Accel {
    /// KVM when /dev/kvm is usable, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The pod's user namespace (`userns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UserNs {
    /// The host's: root in the pod is root on the host (today's default,
    /// as rkt and Docker).
    #[default]
    Host,
    /// A user namespace of its own, the pod's ids 0-65535 mapped to a range
    /// of unprivileged host ids that stage0 picks for this pod alone (as
    /// podman's `--userns=auto`). Namespace isolation only, not with
    /// `network: host`.
    Auto,
    /// A user namespace of its own with exactly this mapping (the CRI's
    /// `userns_options` mode POD, where kubelet picks the range): the pod's
    /// ids `0..size` are the host's `uid..uid+size` (`gid..`). Keeping it
    /// apart from other pods' ranges is the caller's; `auto` ranges avoid
    /// it. As `Auto` otherwise.
    Map(crate::stage1::IdMap),
}

impl UserNs {
    /// Whether the pod has a user namespace of its own (`auto` or a mapping).
    pub fn own(&self) -> bool {
        *self != Self::Host
    }
}

/// One app of the pod: an image plus the pod file's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub name: AcName,
    pub image: ImageSpec,
    /// Replaces the image's `exec`; `exec[0]` is absolute, or a bare program
    /// name looked up in the app's `PATH` when it starts.
    pub exec: Option<Vec<String>>,
    /// Replaces the image's user (name, ID or path, as appc).
    pub user: Option<String>,
    /// Replaces the image's group.
    pub group: Option<String>,
    /// Replaces the image's working directory (absolute).
    pub working_directory: Option<String>,
    /// Added to the image's environment; these win.
    pub env: BTreeMap<String, String>,
    /// Apps started (and, with readiness, ready) before this one.
    pub after: Vec<AcName>,
    /// Apps this one cannot run without; also started before it.
    pub requires: Vec<AcName>,
    pub readiness: Option<Readiness>,
    pub ports: Vec<PortMapping>,
    pub resources: Resources,
    pub restart: RestartPolicy,
    /// Time between the stop signal and SIGKILL; also how long the
    /// image's `post-stop` handler may run.
    pub stop_timeout: Duration,
    /// How long the image's `pre-start` handler may run before each start.
    pub start_timeout: Duration,
    pub mounts: Vec<Mount>,
    /// The app's capability set: the default set with the file's
    /// `capabilities.add`/`drop` applied (see [`crate::security`]).
    pub capabilities: CapSet,
    pub seccomp: SeccompSpec,
    /// `readOnlyRootFS`: the app's root filesystem is mounted read-only;
    /// its volumes, /dev, /dev/shm and /proc stay as they are.
    pub read_only_root_fs: bool,
    /// `supplementaryGroups`, `supplementaryGroupsPolicy`,
    /// `noNewPrivileges`, `maskedPaths`, `readonlyPaths`, `privileged`.
    pub security: AppSecurity,
    /// Where and how its output is logged (see [`crate::stdio`]); `None`:
    /// raw, into the pod's `logs/<app>.log`.
    pub log: Option<crate::stdio::AppLog>,
    /// Its stdin is a FIFO others write into (see [`crate::stdio`]).
    pub stdin: bool,
    /// It runs on a pseudo-terminal pod-init holds the master of (see
    /// [`crate::stdio`]).
    pub tty: bool,
    /// Host device nodes bound into the app's /dev or elsewhere (`devices`).
    pub devices: Vec<Device>,
}

/// A host device node an app is given (`devices: [{ host, path,
/// permissions }]`, the CRI's `devices`): the host's node is bound at
/// `path` in the app (namespace stage1; the VM stage1 refuses it).
/// `permissions` (any of `r`, `w`, `m`; default `rwm`) is recorded as the
/// CRI gives it: pod makes no device cgroup, so the node's own file mode
/// and the app's user decide what it may do with it (see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Absolute host path of a character or block device (stage0 checks
    /// what it is when it prepares the app).
    pub host: String,
    /// Absolute path in the app, without `..`, not `/`.
    pub path: String,
    pub permissions: String,
}

/// An app's image: the reference as written, and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The reference exactly as written in the file.
    pub reference: String,
    pub source: ImageSource,
}

/// What an image reference names, in the syntax of `pod fetch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `name[:version][,label=value...]`; `:version` is the `version` label.
    Name { name: AcIdentifier, labels: BTreeMap<String, String> },
    /// An `https://` or `http://` URL.
    Url(String),
    /// A file: `file://PATH`, an absolute path, a path starting with `.`, or
    /// a name ending in `.aci`. A relative path is kept as written; stage0
    /// resolves it.
    File(String),
    /// An OCI image: `docker://`, `oci:`, `oci-archive:`, `docker-archive:`.
    Oci(crate::oci::OciSource),
}

impl ImageSource {
    /// Parses an image reference as `pod fetch` and pod files write it:
    /// `file://PATH`, an absolute path, a path starting with `.` or ending in
    /// `.aci`, an `https://`/`http://` URL, or `name[:version][,label=value...]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        values::image(s)
    }
}

/// When an app counts as ready, for the apps that come `after` it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub probe: Probe,
    /// How long to wait for the probe to pass before the pod fails.
    pub timeout: Duration,
}

/// A readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect to this port in the pod's network namespace succeeds.
    Tcp(u16),
    /// This command, run in the app, exits 0; `argv[0]` is absolute or a
    /// bare program name looked up in the app's `PATH`.
    Exec(Vec<String>),
}

/// A host port published to a port the image declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The name of the port in the image's manifest.
    pub name: AcName,
    pub host_port: u16,
    /// The host address to listen on; `0.0.0.0` when not given.
    pub host_ip: IpAddr,
    /// `tcp` when not given; must match the image's port.
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Resource limits of one app; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU: `500m` and `0.5` are 500.
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    /// The app's CPU weight against its siblings (`cpuShares`, 2-262144,
    /// cgroup v1's `cpu.shares`; 1024 is one CPU's worth).
    pub cpu_shares: Option<u64>,
    /// `/proc/<pid>/oom_score_adj` of the app's process (`oomScoreAdj`,
    /// -1000 to 1000).
    pub oom_score_adj: Option<i32>,
}

/// What stage2-init does when an app exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    #[default]
    Never,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    Always,
}

/// A volume mounted into an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A volume declared in [`PodFile::volumes`].
    pub volume: AcName,
    /// Absolute, without `..`, not `/`.
    pub path: String,
    /// Read-only in this app; a read-only host volume is read-only everywhere.
    pub read_only: bool,
    /// How mounts made later below the mount point travel (`propagation`).
    pub propagation: Propagation,
    /// Read-only all the way down, mounts below the source included
    /// (`recursiveReadOnly`; needs `readOnly` and private propagation).
    pub recursive_read_only: bool,
}

/// A volume of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: AcName,
    pub kind: VolumeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// A fresh empty directory, shared by the apps that mount it, removed
    /// with the pod.
    Empty,
    /// A host directory (absolute path, without `..`).
    Host { source: String, read_only: bool },
}

/// What went wrong, for callers that branch on it; the text is in the
/// [`PodFileError`] itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodFileErrorKind {
    /// The file exceeds [`MAX_POD_FILE_BYTES`].
    TooLarge,
    /// Not UTF-8, or not YAML.
    Syntax,
    /// A hostile-input limit: nodes, depth, alias expansion, scalar length.
    Limit,
    /// A field unknown, missing or of the wrong type.
    Schema,
    /// A value that is not valid, or fields that do not agree.
    Invalid,
    /// The apps' `after`/`requires` form a cycle.
    Cycle,
}

/// An error in a pod file, with where it is. Displayed as
/// `FILE: line L, column C: FIELD: MESSAGE`; the parts not known are left
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFileError {
    /// The file name given to [`PodFile::parse`].
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The field path, e.g. `apps[1].resources.memory`; empty when the error
    /// is about the file as a whole.
    pub field: String,
    pub kind: PodFileErrorKind,
    pub message: String,
}

impl fmt::Display for PodFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " line {l}, column {c}:")?,
            (Some(l), None) => write!(f, " line {l}:")?,
            _ => {}
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for PodFileError {}

impl PodFile {
    /// Parses and validates a pod file from untrusted bytes. `file_name` is
    /// only used in error messages.
    pub fn parse(bytes: &[u8], file_name: &str) -> Result<Self, PodFileError> {
        check::parse(bytes, file_name)
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppSpec> {
        self.apps.iter().find(|a| a.name.as_str() == name)
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name.as_str() == name)
    }

    /// The apps in start order: each after everything it names in `after`
    /// and `requires`; among apps free to start, file order first. The order
    /// depends only on the file. On a hand-built value with a cycle, the
    /// apps of the cycle come last, in file order.
    pub fn app_order(&self) -> Vec<&AppSpec> {
        let index: BTreeMap<&str, usize> = self.apps.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
        let deps: Vec<BTreeSet<usize>> = self
            .apps
            .iter()
            .map(|a| a.dependencies().filter_map(|d| index.get(d.as_str()).copied()).collect())
            .collect();
        let mut placed = vec![false; self.apps.len()];
        let mut order = Vec::with_capacity(self.apps.len());
        // At most 256 apps: a quadratic scan is simpler than a heap.
        while order.len() < self.apps.len() {
            let next = (0..self.apps.len())
                .find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d] || d == i))
                .or_else(|| (0..self.apps.len()).find(|&i| !placed[i]));
            let Some(i) = next else { break };
            placed[i] = true;
            order.push(&self.apps[i]);
        }
        order
    }
}

impl AppSpec {
    /// The apps this one starts after: `after` then `requires`, each once.
    pub fn dependencies(&self) -> impl Iterator<Item = &AcName> {
        let mut seen = BTreeSet::new();
        self.after.iter().chain(&self.requires).filter(move |n| seen.insert(n.as_str()))
    }
}

impl ImageSpec {
    /// The image name, for a reference by name.
    pub fn name(&self) -> Option<&AcIdentifier> {
        match &self.source {
            ImageSource::Name { name, .. } => Some(name),
            _ => None,
        }
    }
}
