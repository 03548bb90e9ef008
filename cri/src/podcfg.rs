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
//!   their name. `linux.cgroup_parent` is kept in the sandbox record only:
//!   pod's cgroups are `pod/<uuid>` in each hierarchy, which `pod gc` and the
//!   stats find without a record (kubelet's QoS slices are not honoured).
//! - container: `mounts` → host mounts (mounts.rs); `linux.resources` →
//!   `resources` (memory, CPU quota as a CPU count, CPU shares, OOM score
//!   adjustment); `devices` are refused (no device cgroup to grant them).
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

/// The pod-file keys of a container's mounts and resources; its devices
/// are refused.
pub fn container_keys(config: &proto::ContainerConfig) -> Result<Keys, CriError> {
    let name = config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
    if let Some(d) = config.devices.first() {
        return Err(CriError::Unimplemented(format!(
            "container {name:?}: devices ({} on {}) are not served: pod gives apps no device nodes beyond its minimal /dev",
            d.host_path, d.container_path
        )));
    }
    if !config.cdi_devices.is_empty() {
        return Err(CriError::Unimplemented(format!("container {name:?}: CDI devices are not served")));
    }
    let mut keys = Keys::new();
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

/// The handlers' features for Status: the namespace handlers mount
/// recursively read-only where the kernel can (the VM handler's guest sees
/// volumes through 9p: not claimed there).
pub fn with_features(mut handlers: Vec<proto::RuntimeHandler>) -> Vec<proto::RuntimeHandler> {
    let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rro = recursive_read_only_supported(&osrelease);
    for h in &mut handlers {
        if crate::sandbox::NS_HANDLERS.contains(&h.name.as_str()) {
            h.features.get_or_insert_with(Default::default).recursive_read_only_mounts = rro;
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

/// Whether the kernel OOM-killed in the app's cgroup, as the stage1
/// monitor records it (`status/<app>.oom`).
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
    fn devices_are_refused_by_name() {
        let config = proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata { name: "c".into(), attempt: 0 }),
            devices: vec![proto::Device {
                host_path: "/dev/fuse".into(),
                container_path: "/dev/fuse".into(),
                permissions: "rwm".into(),
            }],
            ..Default::default()
        };
        let e = container_keys(&config).unwrap_err();
        assert!(matches!(&e, CriError::Unimplemented(m) if m.contains("/dev/fuse")), "{e}");
    }

    #[test]
    fn kernel_versions() {
        assert!(recursive_read_only_supported("6.18.44-fc-v1147\n"));
        assert!(recursive_read_only_supported("5.12.0"));
        assert!(!recursive_read_only_supported("5.11.22-generic"));
        assert!(!recursive_read_only_supported(""));
    }
}
