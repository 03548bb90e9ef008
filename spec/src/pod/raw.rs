//! The pod file as serde_yaml sees it: the shape of the YAML with unknown
//! fields denied. Leaves stay the text the user wrote (serde_yaml gives any
//! scalar to a `String` verbatim: `cpu: 0.5` is "0.5", `host: 8080` is
//! "8080"), so `check` parses them with messages and positions of its own.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a pod: a mapping with name, apps and optionally isolation, network, accel, userns, pid, ipc, volumes, annotations, hostname, dns, sysctls, ports, cgroupParent"
)]
pub(super) struct Pod {
    pub name: String,
    #[serde(default)]
    pub isolation: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub accel: Option<String>,
    #[serde(default)]
    pub userns: Option<Userns>,
    #[serde(default)]
    pub pid: Option<String>,
    #[serde(default)]
    pub ipc: Option<String>,
    pub apps: Vec<App>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PodPort>,
    #[serde(default)]
    pub cgroup_parent: Option<String>,
}

/// `userns`: a word (`host`, `auto`) or an explicit mapping.
#[derive(Debug)]
pub(super) enum Userns {
    Word(String),
    Map(UsernsMap),
}

// By hand rather than `untagged`: serde's untagged enums buffer the
// value, which turns `host: 1000` into a number a `String` refuses.
impl<'de> Deserialize<'de> for Userns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Userns;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "userns: host, auto, or { uid: { container: 0, host: ID, size: N }, gid: { container: 0, host: ID, size: N } }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Userns, E> {
                Ok(Userns::Word(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Userns, A::Error> {
                UsernsMap::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Userns::Map)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping { uid: { container: 0, host: ID, size: N }, gid: { ... } }")]
pub(super) struct UsernsMap {
    pub uid: IdRange,
    pub gid: IdRange,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an id range { container: 0, host: ID, size: N }")]
pub(super) struct IdRange {
    pub container: String,
    pub host: String,
    pub size: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "dns: { servers: [IP...], searches: [DOMAIN...], options: [OPTION...] }")]
pub(super) struct Dns {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a pod port: { containerPort: PORT, host: PORT }, optional hostIP, protocol"
)]
pub(super) struct PodPort {
    pub container_port: String,
    pub host: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an app: a mapping with name, image, ...")]
pub(super) struct App {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub restart: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub start_timeout: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub seccomp: Option<String>,
    #[serde(default, rename = "readOnlyRootFS")]
    pub read_only_root_fs: bool,
    #[serde(default)]
    pub supplementary_groups: Vec<String>,
    #[serde(default)]
    pub supplementary_groups_policy: Option<String>,
    #[serde(default)]
    pub no_new_privileges: Option<bool>,
    #[serde(default)]
    pub masked_paths: Option<Vec<String>>,
    #[serde(default)]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub pid_namespace: Option<String>,
    #[serde(default)]
    pub log: Option<Log>,
    #[serde(default)]
    pub stdin: bool,
    /// `terminal: true`: a pseudo-terminal (as `podman run -t`).
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub devices: Vec<Device>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a device: { host: /dev/NODE, path: /ABS }, optional permissions (rwm)")]
pub(super) struct Device {
    pub host: String,
    pub path: String,
    #[serde(default)]
    pub permissions: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "log: { volume: NAME, path: RELATIVE/PATH }, optional format: raw | cri")]
pub(super) struct Log {
    pub volume: String,
    pub path: String,
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "capabilities: { add: [NAME...], drop: [NAME...] }")]
pub(super) struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a readiness probe: { tcp: PORT } or { exec: [ARGV...] }, optional timeout")]
pub(super) struct Readiness {
    #[serde(default)]
    pub tcp: Option<String>,
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a port mapping: { name: PORT-NAME, host: PORT }, optional hostIP, protocol")]
pub(super) struct Port {
    pub name: String,
    pub host: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "resources: { memory: SIZE, cpu: CPUS, pids: COUNT, cpuShares: WEIGHT, oomScoreAdj: SCORE }"
)]
pub(super) struct Resources {
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub pids: Option<String>,
    #[serde(default)]
    pub cpu_shares: Option<String>,
    #[serde(default)]
    pub oom_score_adj: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mount: { volume: NAME, path: /ABS } or { host: /ABS, path: /ABS }, optional readOnly, propagation, recursiveReadOnly"
)]
pub(super) struct Mount {
    #[serde(default)]
    pub volume: Option<String>,
    /// A host directory mounted without a declared volume (an anonymous
    /// host volume of the pod, checked as a declared one).
    #[serde(default)]
    pub host: Option<String>,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub propagation: Option<String>,
    #[serde(default)]
    pub recursive_read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a volume: { name: NAME, kind: empty } or { name: NAME, kind: host, source: /ABS, readOnly: BOOL }"
)]
pub(super) struct Volume {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub read_only: Option<bool>,
}
