//! The CRI's sandbox and container settings that are not security context,
//! mapped onto pod-file keys (checked by the pod file's own parser, so a
//! bad value is refused with the field it came from):
//!
//! - sandbox: `hostname` → `hostname`; `dns_config` → `dns` (the apps'
//!   resolv.conf, the host's otherwise); `port_mappings` → pod-level
//!   `ports`, by container port number (a CRI port has no name; no image
//!   needs to declare it). A mapping without a host port publishes nothing:
//!   the pod's address is reachable from the node as it is, which is how
//!   kubelet's runtimes treat it. A VM sandbox's ports are forwarded by
//!   its qemu (user-mode networking), with or without a CNI network. `linux.sysctls` → `sysctls`: namespaced
//!   ones only (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*),
//!   set in the pod's own namespaces at its start (a VM sandbox's: in its
//!   guest kernel, by the guest's pod-init); others are refused with
//!   their name. `linux.cgroup_parent` → `cgroupParent`: the pod's cgroups
//!   are `<parent>/<uuid>` in each hierarchy instead of `pod/<uuid>`,
//!   recorded in `stage1.json` for gc, stats and updates; cgroupfs paths
//!   only (a systemd slice is refused: no systemd driver yet).
//! - container: `mounts` → host mounts (mounts.rs); `linux.resources` →
//!   `resources` (memory, CPU quota as a CPU count, CPU shares, OOM score
//!   adjustment); `devices` → `devices` (the host node bound at the
//!   container path; no device cgroup is made, so `permissions` are
//!   recorded, not enforced: see stage1-ns/src/devices.rs).
//!   The cpuset, hugepage, swap and `unified` fields are not applied: the
//!   memory limit is also the memory+swap limit.

use serde_json::{json, Map, Value};
use spec::stage1::Network;

use crate::error::CriError;
use crate::proto;

type Keys = Map<String, Value>;

/// The pod-file keys of a sandbox's hostname, DNS, port mappings and
/// sysctls. `network` is the one the sandbox joins: ports need a CNI
/// network, and with the host's they are dropped (the apps listen on the
/// host's ports themselves, as kubelet expects there). A VM sandbox (`vm`)
/// needs none: qemu forwards the host's ports into the guest itself.
pub fn sandbox_keys(config: &proto::PodSandboxConfig, network: &Network, vm: bool) -> Result<Keys, CriError> {
    let mut keys = Keys::new();
    if !config.hostname.is_empty() {
        keys.insert("hostname".into(), json!(config.hostname));
    }
    if let Some(dns) = &config.dns_config {
        if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) {
            keys.insert(
                "dns".into(),
                json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
            );
        }
    }
    let ports = if *network == Network::Host { Vec::new() } else { ports(&config.port_mappings)? };
    if !ports.is_empty() {
        if *network == Network::None && !vm {
            return Err(CriError::FailedPrecondition(
                "the sandbox publishes host ports, but there is no CNI network configuration to reach it through"
                    .into(),
            ));
        }
        keys.insert("ports".into(), Value::Array(ports));
    }
    let sysctls = config.linux.as_ref().map(|l| &l.sysctls).filter(|s| !s.is_empty());
    if let Some(sysctls) = sysctls {
        for key in sysctls.keys() {
            if spec::pod::namespaced_sysctl(&key.replace('/', ".")).is_none() {
                return Err(CriError::InvalidArgument(format!(
                    "sysctl {key} is not namespaced: setting it in a pod would change the whole node; a pod may set \
                     net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and kernel.domainname"
                )));
            }
        }
        let map: std::collections::BTreeMap<_, _> = sysctls.iter().collect();
        keys.insert("sysctls".into(), json!(map));
    }
    Ok(keys)
}

/// The pod file's `cgroupParent` for a sandbox's `linux.cgroup_parent`
/// (kubelet's `/kubepods/burstable/pod<uid>`), checked: a cgroupfs path,
/// since RuntimeConfig names the cgroupfs driver. For the VM handler it is
/// kept in the record only: a VM pod makes no cgroups on the host (the VM
/// is its boundary), and refusing it would refuse every kubelet sandbox.
pub fn cgroup_parent(config: &proto::PodSandboxConfig, handler: &str) -> Result<Option<String>, CriError> {
    let parent = config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or_default();
    if parent.is_empty() || !crate::sandbox::NS_HANDLERS.contains(&handler) {
        return Ok(None);
    }
    spec::cgroup::check_parent(parent).map_err(|m| CriError::InvalidArgument(format!("linux.cgroup_parent: {m}")))?;
    Ok(Some(parent.to_owned()))
}

/// The pod file's `network` for the network a sandbox joins.
pub fn network_key(network: &Network) -> String {
    match network {
        Network::None => "none".into(),
        Network::Host => "host".into(),
        Network::Cni { name } => name.clone(),
    }
}

/// Port mappings with a host port, as pod-level `ports`.
fn ports(mappings: &[proto::PortMapping]) -> Result<Vec<Value>, CriError> {
    let mut out = Vec::new();
    for (i, p) in mappings.iter().enumerate() {
        let protocol = match proto::Protocol::try_from(p.protocol) {
            Ok(proto::Protocol::Tcp) => "tcp",
            Ok(proto::Protocol::Udp) => "udp",
            _ => {
                return Err(CriError::InvalidArgument(format!(
                    "port_mappings[{i}]: protocol {} is not served (TCP and UDP are)",
                    proto::Protocol::try_from(p.protocol)
                        .map_or_else(|_| p.protocol.to_string(), |x| x.as_str_name().to_owned())
                )))
            }
        };
        if p.host_port == 0 {
            continue;
        }
        let port = |what: &str, n: i32| {
            u16::try_from(n)
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| CriError::InvalidArgument(format!("port_mappings[{i}]: {what} {n} is outside 1-65535")))
        };
        let mut entry = json!({
            "containerPort": port("container_port", p.container_port)?.to_string(),
            "host": port("host_port", p.host_port)?.to_string(),
            "protocol": protocol,
        });
        if !p.host_ip.is_empty() {
            entry["hostIP"] = json!(p.host_ip);
        }
        out.push(entry);
    }
    Ok(out)
}

/// The pod-file keys of a container's devices, mounts and resources.
pub fn container_keys(config: &proto::ContainerConfig) -> Result<Keys, CriError> {
    let name = config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
    if !config.cdi_devices.is_empty() {
        return Err(CriError::Unimplemented(format!("container {name:?}: CDI devices are not served")));
    }
    let mut keys = Keys::new();
    let devices = devices(name, &config.devices)?;
    if !devices.is_empty() {
        keys.insert("devices".into(), Value::Array(devices));
    }
    let mounts = crate::mounts::app_mounts(name, &config.mounts)?;
    if !mounts.is_empty() {
        keys.insert("mounts".into(), Value::Array(mounts));
    }
    if let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        let resources = resources(name, r)?;
        if !resources.is_empty() {
            keys.insert("resources".into(), Value::Object(resources));
        }
    }
    Ok(keys)
}

/// A container's devices as the pod file's `devices`: the host path must
/// be a character or block device and the container path absolute; the
/// permissions are a combination of r, w, m (empty: rwm).
fn devices(name: &str, devices: &[proto::Device]) -> Result<Vec<Value>, CriError> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let bad = |what: String| CriError::InvalidArgument(format!("container {name:?}: devices[{i}].{what}"));
        if !d.container_path.starts_with('/') {
            return Err(bad(format!("container_path {:?} is not absolute", d.container_path)));
        }
        if !d.host_path.starts_with('/') {
            return Err(bad(format!("host_path {:?} is not absolute", d.host_path)));
        }
        let kind = std::fs::metadata(&d.host_path).map_err(|e| bad(format!("host_path {}: {e}", d.host_path)))?;
        if !(kind.file_type().is_char_device() || kind.file_type().is_block_device()) {
            return Err(bad(format!("host_path {} is not a character or block device", d.host_path)));
        }
        let permissions = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
        out.push(json!({"host": d.host_path, "path": d.container_path, "permissions": permissions}));
    }
    Ok(out)
}

/// `LinuxContainerResources` as the pod file's `resources`: the quota over
/// the period as thousandths of a CPU (rounded up, so a quota is never
/// tightened), shares as the CPU weight, the memory limit, the OOM score
/// adjustment. Zero is "not set", as the CRI has it.
fn resources(name: &str, r: &proto::LinuxContainerResources) -> Result<Keys, CriError> {
    let bad = |what: &str, v: i64| CriError::InvalidArgument(format!("container {name:?}: {what} {v} is negative"));
    let mut out = Keys::new();
    if r.memory_limit_in_bytes < 0 {
        return Err(bad("memory_limit_in_bytes", r.memory_limit_in_bytes));
    }
    if r.memory_limit_in_bytes > 0 {
        out.insert("memory".into(), json!(r.memory_limit_in_bytes.to_string()));
    }
    if r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 { r.cpu_period } else { 100_000 };
        let millis = (i128::from(r.cpu_quota) * 1000 + i128::from(period) - 1) / i128::from(period);
        out.insert("cpu".into(), json!(format!("{}m", millis.max(1))));
    }
    if r.cpu_shares < 0 {
        return Err(bad("cpu_shares", r.cpu_shares));
    }
    if r.cpu_shares > 0 {
        // The kernel's own bounds, as runc clamps them.
        out.insert("cpuShares".into(), json!(r.cpu_shares.clamp(2, 262_144).to_string()));
    }
    if r.oom_score_adj != 0 {
        out.insert("oomScoreAdj".into(), json!(r.oom_score_adj.clamp(-1000, 1000).to_string()));
    }
    Ok(out)
}

/// Whether the kernel has `mount_setattr` (Linux 5.12), which recursive
/// read-only mounts need; from `osrelease` (`/proc/sys/kernel/osrelease`).
pub fn recursive_read_only_supported(osrelease: &str) -> bool {
    let mut parts = osrelease.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 12)
}

/// Whether the kernel can give a pod a user namespace as stage1-ns makes
/// one: idmapped mounts (5.12) under an overlay (idmapped lower layers,
/// 5.19).
pub fn user_namespaces_supported(osrelease: &str) -> bool {
    let mut parts = osrelease.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 19)
}

/// The handlers' features for Status: the namespace handlers mount
/// recursively read-only and give sandboxes user namespaces (mode POD)
/// where the kernel can (the VM handler's guest has a kernel of its own
/// and sees volumes through 9p: neither claimed there).
pub fn with_features(mut handlers: Vec<proto::RuntimeHandler>) -> Vec<proto::RuntimeHandler> {
    let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rro = recursive_read_only_supported(&osrelease);
    let userns = user_namespaces_supported(&osrelease);
    for h in &mut handlers {
        if crate::sandbox::NS_HANDLERS.contains(&h.name.as_str()) {
            let features = h.features.get_or_insert_with(Default::default);
            features.recursive_read_only_mounts = rro;
            features.user_namespaces = userns;
        }
    }
    handlers
}

/// Removes the pod of a sandbox whose stage1 failed to start it (its
/// monitor undid the network and cgroups on the way out). Best effort: a
/// pod left behind is `pod gc`'s, and the start's error is what matters.
pub fn discard_failed(pods: &stage0::pods::Pods, uuid: &str) {
    let removed = stage0::lifecycle::find(pods, uuid).and_then(|pod| stage0::lifecycle::remove(pods, &pod));
    if let Err(e) = removed {
        tracing::warn!(sandbox = %uuid, error = %e, "removing a sandbox that did not start");
    }
}

/// Whether the kernel OOM-killed in the app's cgroup, as pod-init and
/// the stage1 monitor record it (`status/<app>.oom`).
pub fn oom_killed(pod_dir: &std::path::Path, app: &str) -> bool {
    std::fs::read_to_string(pod_dir.join("status").join(format!("{app}.oom")))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cni() -> Network {
        Network::Cni { name: "n".into() }
    }

    #[test]
    fn sandbox_settings_become_pod_keys() {
        let mut config = proto::PodSandboxConfig {
            hostname: "web-0".into(),
            dns_config: Some(proto::DnsConfig {
                servers: vec!["10.10.10.10".into()],
                searches: vec!["a.b".into()],
                options: vec!["ndots:8".into()],
            }),
            port_mappings: vec![
                proto::PortMapping { container_port: 80, ..Default::default() },
                proto::PortMapping {
                    container_port: 80,
                    host_port: 12000,
                    host_ip: "127.0.0.1".into(),
                    ..Default::default()
                },
            ],
            linux: Some(proto::LinuxPodSandboxConfig {
                sysctls: [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let keys = Value::Object(sandbox_keys(&config, &cni(), false).unwrap());
        assert_eq!(keys["hostname"], "web-0");
        assert_eq!(keys["dns"]["options"][0], "ndots:8");
        assert_eq!(
            keys["ports"],
            json!([{"containerPort": "80", "host": "12000", "protocol": "tcp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(keys["sysctls"]["kernel.shm_rmid_forced"], "1");
        assert!(sandbox_keys(&config, &Network::Host, false).unwrap().get("ports").is_none());
        assert!(matches!(sandbox_keys(&config, &Network::None, false), Err(CriError::FailedPrecondition(_))));
        let vm = Value::Object(sandbox_keys(&config, &Network::None, true).unwrap());
        assert_eq!(vm["ports"][0]["host"], "12000", "a VM's qemu forwards ports without CNI: {vm}");
        config.linux = Some(proto::LinuxPodSandboxConfig {
            sysctls: [("kernel.panic".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        });
        let e = sandbox_keys(&config, &cni(), false).unwrap_err();
        assert!(
            matches!(&e, CriError::InvalidArgument(m) if m.contains("sysctl kernel.panic is not namespaced")),
            "{e}"
        );
        config.port_mappings[1].protocol = proto::Protocol::Sctp as i32;
        assert!(sandbox_keys(&config, &cni(), false).unwrap_err().to_string().contains("SCTP"));
    }

    #[test]
    fn cgroup_parents_are_checked_and_kept_for_vm_sandboxes() {
        let config = |parent: &str| proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig { cgroup_parent: parent.into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(cgroup_parent(&config("/kubepods/pod1"), "pod").unwrap().as_deref(), Some("/kubepods/pod1"));
        assert_eq!(cgroup_parent(&config(""), "pod").unwrap(), None);
        assert_eq!(cgroup_parent(&config("/kubepods/pod1"), "pod-vm").unwrap(), None);
        for bad in ["/kubepods.slice", "kubepods", "/a/../b"] {
            let e = cgroup_parent(&config(bad), "").unwrap_err();
            assert!(matches!(&e, CriError::InvalidArgument(m) if m.starts_with("linux.cgroup_parent: ")), "{e}");
        }
    }

    #[test]
    fn resources_become_pod_resources() {
        let r = proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 15 << 20,
            oom_score_adj: -997,
            ..Default::default()
        };
        let keys = Value::Object(resources("c", &r).unwrap());
        assert_eq!(keys, json!({"memory": "15728640", "cpu": "500m", "cpuShares": "512", "oomScoreAdj": "-997"}));
        let none = resources("c", &proto::LinuxContainerResources::default()).unwrap();
        assert!(none.is_empty());
        let odd = proto::LinuxContainerResources { cpu_period: 30_000, cpu_quota: 10_000, ..Default::default() };
        assert_eq!(Value::Object(resources("c", &odd).unwrap())["cpu"], "334m");
    }

    #[test]
    fn devices_become_pod_devices_and_bad_ones_are_refused_by_field() {
        let config = |host: &str, path: &str| proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata { name: "c".into(), attempt: 0 }),
            devices: vec![proto::Device {
                host_path: host.into(),
                container_path: path.into(),
                permissions: "".into(),
            }],
            ..Default::default()
        };
        let keys = Value::Object(container_keys(&config("/dev/null", "/dev/mynull")).unwrap());
        assert_eq!(keys["devices"], json!([{"host": "/dev/null", "path": "/dev/mynull", "permissions": "rwm"}]));
        let e = container_keys(&config("/dev/null", "dev/mynull")).unwrap_err();
        assert!(matches!(&e, CriError::InvalidArgument(m) if m.contains("devices[0].container_path")), "{e}");
        let e = container_keys(&config("/etc/hostname", "/dev/x")).unwrap_err();
        assert!(
            matches!(&e, CriError::InvalidArgument(m) if m.contains("devices[0].host_path /etc/hostname is not a character or block device")),
            "{e}"
        );
        let e = container_keys(&config("/no/such/node", "/dev/x")).unwrap_err();
        assert!(matches!(&e, CriError::InvalidArgument(m) if m.contains("devices[0].host_path /no/such/node")), "{e}");
    }

    #[test]
    fn kernel_versions() {
        assert!(recursive_read_only_supported("6.18.44-fc-v1147\n"));
        assert!(recursive_read_only_supported("5.12.0"));
        assert!(!recursive_read_only_supported("5.11.22-generic"));
        assert!(!recursive_read_only_supported(""));
        assert!(user_namespaces_supported("6.18.44-fc-v1147\n") && user_namespaces_supported("5.19.0"));
        assert!(!user_namespaces_supported("5.18.9") && !user_namespaces_supported(""));
    }
}
