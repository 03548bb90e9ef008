//! The pod-wide settings of `pod.json` that the namespace stage1 applies
//! beside the network: the resolv.conf the pod's apps see, and the
//! namespaced sysctls written in the pod's own namespaces.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use spec::stage1::{Network, ResolvedPod};

/// The pod's resolv.conf: its `dns` when given, else the host's (none for
/// `network: none`, which has nothing to ask).
pub fn resolv_conf(pod: &ResolvedPod, host_resolv: &Path) -> String {
    match (&pod.dns, &pod.network) {
        (Some(dns), _) => dns.resolv_conf(),
        (None, Network::None) => String::new(),
        (None, _) => fs::read_to_string(host_resolv).unwrap_or_default(),
    }
}

/// A sysctl that could not be set.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}={value:?}: write {}: {source}", path.display())]
pub struct SysctlError {
    pub key: String,
    pub value: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes each sysctl under `proc_sys` (`/proc/sys`). Called in the pod's
/// PID 1 once it is in the pod's network, IPC and UTS namespaces: the
/// kernel resolves `/proc/sys/net`, `kernel.shm*`, `fs.mqueue` and the rest
/// by the writer's namespaces, so these are the pod's values, not the
/// host's. stage0 let only namespaced keys through (`spec::pod`); a key the
/// kernel does not know fails here, with its name.
pub fn write_sysctls(pod: &ResolvedPod, proc_sys: &Path) -> Result<(), SysctlError> {
    for (key, value) in &pod.sysctls {
        let path = proc_sys.join(key.replace('.', "/"));
        let fail = |source| SysctlError { key: key.clone(), value: value.clone(), path: path.clone(), source };
        if spec::pod::namespaced_sysctl(key).is_none() || key.split('.').any(|c| c.is_empty() || c == "..") {
            return Err(fail(io::Error::new(io::ErrorKind::PermissionDenied, "not a namespaced sysctl")));
        }
        // No create: a sysctl is a file the kernel made, or not one at all.
        let mut f = fs::OpenOptions::new().write(true).open(&path).map_err(fail)?;
        io::Write::write_all(&mut f, value.as_bytes()).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> ResolvedPod {
        let mut base = serde_json::json!({
            "uuid": "u", "name": "p", "source": "s", "isolation": "namespace", "accel": "auto",
            "network": "none", "apps": [], "volumes": [], "createdAt": "now"
        });
        if let (Some(b), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sysctls_are_written_under_the_given_root() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("kernel").join("shm_rmid_forced");
        fs::create_dir_all(file.parent().unwrap_or(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&file, "0").unwrap_or_else(|e| panic!("{e}"));
        write_sysctls(&pod(serde_json::json!({"sysctls": {"kernel.shm_rmid_forced": "1"}})), dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read_to_string(&file).unwrap_or_default(), "1");
        let e = write_sysctls(&pod(serde_json::json!({"sysctls": {"net.nope.x": "1"}})), dir.path())
            .expect_err("a sysctl the kernel lacks");
        assert!(e.to_string().starts_with("sysctl net.nope.x=\"1\": write "), "{e}");
        assert!(!dir.path().join("net").exists(), "nothing created");
        let e = write_sysctls(&pod(serde_json::json!({"sysctls": {"kernel.panic": "1"}})), dir.path())
            .expect_err("host-wide");
        assert!(e.to_string().contains("not a namespaced sysctl"), "{e}");
    }

    #[test]
    fn dns_replaces_the_hosts_resolv_conf() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let host = dir.path().join("resolv.conf");
        fs::write(&host, "nameserver 192.0.2.1\n").unwrap_or_else(|e| panic!("{e}"));
        let dns = serde_json::json!({"dns": {"servers": ["10.10.10.10"], "searches": ["x.y"], "options": ["ndots:8"]}});
        assert_eq!(resolv_conf(&pod(dns), &host), "search x.y\nnameserver 10.10.10.10\noptions ndots:8\n");
        assert_eq!(resolv_conf(&pod(serde_json::json!({})), &host), "");
        let cni = serde_json::json!({"network": {"cni": {"name": "n"}}});
        assert_eq!(resolv_conf(&pod(cni), &host), "nameserver 192.0.2.1\n");
    }
}
