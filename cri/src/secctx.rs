//! CRI's Linux security context and namespace options mapped onto pod's
//! own: a container's `LinuxContainerSecurityContext` becomes keys of its
//! app as a pod file writes them (`NewApp::extra`, checked exactly as a
//! pod file's), a sandbox's namespace options become its pod file's
//! `network`, `pid` and `ipc`. What pod cannot do is refused with the
//! field named, never dropped.
//!
//! Choices, as containerd and CRI-O make them:
//! - `privileged` is honoured (every capability, no seccomp filter,
//!   nothing masked, /sys writable, the host's devices), only in a
//!   privileged sandbox (containerd: "no privileged container allowed in
//!   sandbox").
//! - seccomp: `RuntimeDefault` is pod's default profile; no profile (nil)
//!   is unconfined, as CRI says; `Localhost` is an OCI profile file on the
//!   host, read at CreateContainer.
//! - AppArmor and SELinux: pod applies neither. Unset, or `Unconfined`,
//!   is fine (containerd on a host without AppArmor does the same); a
//!   profile asked for is refused. SELinux options are refused only where
//!   the host has SELinux enabled (elsewhere containerd ignores them too).
//! - Namespaces: host network, pid and ipc (`NODE`) are honoured, and a
//!   pid namespace per container (`CONTAINER`, Kubernetes' default: the
//!   app's `pidNamespace: own`); another container's (`TARGET`) is not yet.
//! - User namespaces: `NODE` is the host's; `POD` with kubelet's mapping
//!   (one range each for uids and gids, from id 0, the same length)
//!   becomes the pod file's `userns: { uid, gid }`, so the pod's user
//!   namespace has exactly that mapping, and every container is in it (a
//!   container's own `userns_options` are the sandbox's); a user namespace
//!   per container (`CONTAINER`) or another's (`TARGET`) is refused.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::CriError;
use crate::proto;

use proto::NamespaceMode;

fn invalid(m: impl Into<String>) -> CriError {
    CriError::InvalidArgument(m.into())
}

/// The pod-file keys of a container's app for its security context.
/// `sandbox`: the sandbox's config as CreateContainer gives it.
#[allow(deprecated)] // seccomp_profile_path, apparmor_profile: older kubelets send them
pub fn container_keys(
    config: &proto::ContainerConfig,
    sandbox: Option<&proto::PodSandboxConfig>,
) -> Result<Map<String, Value>, CriError> {
    let mut keys = Map::new();
    // None at all: CRI's defaults (no seccomp profile is unconfined,
    // no_new_privs off; the sandbox's pid namespace mode).
    let none = proto::LinuxContainerSecurityContext::default();
    let sc = config.linux.as_ref().and_then(|l| l.security_context.as_ref()).unwrap_or(&none);
    let user = match (&sc.run_as_user, sc.run_as_username.as_str()) {
        (Some(uid), _) => Some(id("run_as_user", uid.value)?.to_string()),
        (None, "") => None,
        (None, name) => Some(name.to_owned()),
    };
    if let Some(gid) = &sc.run_as_group {
        if user.is_none() {
            return Err(invalid("security_context.run_as_group is set without run_as_user or run_as_username"));
        }
        keys.insert("group".into(), json!(id("run_as_group", gid.value)?.to_string()));
    }
    if let Some(u) = user {
        keys.insert("user".into(), json!(u));
    }
    let groups = sc
        .supplemental_groups
        .iter()
        .map(|g| id("supplemental_groups", *g).map(|g| g.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if !groups.is_empty() {
        keys.insert("supplementaryGroups".into(), json!(groups));
    }
    if sc.supplemental_groups_policy == proto::SupplementalGroupsPolicy::Strict as i32 {
        keys.insert("supplementaryGroupsPolicy".into(), json!("strict"));
    }
    if sc.readonly_rootfs {
        keys.insert("readOnlyRootFS".into(), json!(true));
    }
    keys.insert("noNewPrivileges".into(), json!(sc.no_new_privs));
    if let Some(caps) = &sc.capabilities {
        if !caps.add_ambient_capabilities.is_empty() {
            return Err(CriError::Unimplemented(
                "security_context.capabilities.add_ambient_capabilities: ambient capabilities are not supported".into(),
            ));
        }
        if !caps.add_capabilities.is_empty() || !caps.drop_capabilities.is_empty() {
            keys.insert("capabilities".into(), json!({"add": caps.add_capabilities, "drop": caps.drop_capabilities}));
        }
    }
    keys.insert("seccomp".into(), json!(seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?));
    if !sc.masked_paths.is_empty() {
        keys.insert("maskedPaths".into(), json!(sc.masked_paths));
    }
    if !sc.readonly_paths.is_empty() {
        keys.insert("readonlyPaths".into(), json!(sc.readonly_paths));
    }
    if sc.privileged {
        let sandbox_privileged = sandbox
            .and_then(|s| s.linux.as_ref())
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if !sandbox_privileged {
            return Err(invalid(
                "security_context.privileged: no privileged container in a sandbox that is not privileged",
            ));
        }
        keys.insert("privileged".into(), json!(true));
    }
    apparmor(sc.apparmor.as_ref(), &sc.apparmor_profile)?;
    selinux(sc.selinux_options.as_ref(), Path::new("/sys/fs/selinux/enforce"))?;
    let sandbox_pid = sandbox
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(NamespaceMode::Pod as i32, |n| n.pid);
    let pid = sc.namespace_options.as_ref().map_or(sandbox_pid, |n| n.pid);
    match NamespaceMode::try_from(pid) {
        Ok(NamespaceMode::Pod) => {}
        Ok(NamespaceMode::Container) => {
            keys.insert("pidNamespace".into(), json!("own"));
        }
        Ok(NamespaceMode::Node) if sandbox_pid == NamespaceMode::Node as i32 => {}
        Ok(NamespaceMode::Node) => {
            return Err(invalid("namespace_options.pid NODE: the sandbox does not share the host's pid namespace"))
        }
        Ok(NamespaceMode::Target) => {
            return Err(CriError::Unimplemented(
                "namespace_options.pid TARGET: sharing another container's pid namespace is not supported".into(),
            ))
        }
        Err(_) => return Err(invalid(format!("namespace_options.pid: unknown mode {pid}"))),
    }
    Ok(keys)
}

/// A CRI id (int64) as a uid or gid.
fn id(field: &str, v: i64) -> Result<u32, CriError> {
    u32::try_from(v).map_err(|_| invalid(format!("security_context.{field}: {v} is not a valid id")))
}

/// The pod file's `seccomp` for a CRI profile (or the deprecated path).
fn seccomp(profile: Option<&proto::SecurityProfile>, path: &str) -> Result<String, CriError> {
    use proto::security_profile::ProfileType;
    let localhost = |p: &str| -> Result<String, CriError> {
        if !p.starts_with('/') {
            return Err(invalid(format!("seccomp profile {p:?}: a Localhost profile is an absolute path")));
        }
        // Read now, so that CreateContainer fails on a bad profile.
        stage0::secprofile::read(p).map_err(|why| invalid(format!("seccomp profile {p}: {why}")))?;
        Ok(p.to_owned())
    };
    match profile {
        Some(sp) => match ProfileType::try_from(sp.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok("default".into()),
            Ok(ProfileType::Unconfined) => Ok("unconfined".into()),
            Ok(ProfileType::Localhost) => localhost(&sp.localhost_ref),
            Err(_) => Err(invalid(format!("seccomp: unknown profile type {}", sp.profile_type))),
        },
        None => match path {
            "" | "unconfined" => Ok("unconfined".into()),
            "runtime/default" | "docker/default" => Ok("default".into()),
            p => match p.strip_prefix("localhost/") {
                Some(rest) => localhost(rest),
                None => Err(invalid(format!(
                    "seccomp_profile_path {p:?}: not runtime/default, unconfined or localhost/PATH"
                ))),
            },
        },
    }
}

fn apparmor(profile: Option<&proto::SecurityProfile>, deprecated: &str) -> Result<(), CriError> {
    use proto::security_profile::ProfileType;
    let unconfined = match profile {
        Some(p) => p.profile_type == ProfileType::Unconfined as i32,
        None => deprecated.is_empty() || deprecated == "unconfined",
    };
    if unconfined {
        Ok(())
    } else {
        Err(CriError::Unimplemented("apparmor: pod applies no AppArmor profiles; leave it unset or Unconfined".into()))
    }
}

/// SELinux options are refused where SELinux is enabled (`enforce` exists):
/// pod would not label the container as asked.
fn selinux(options: Option<&proto::SeLinuxOption>, enforce: &Path) -> Result<(), CriError> {
    let asked =
        options.is_some_and(|o| !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty()));
    if asked && enforce.exists() {
        return Err(CriError::Unimplemented("selinux_options: pod does not apply SELinux labels".into()));
    }
    Ok(())
}

/// A sandbox's namespaces: the host's network, pid and ipc ones (`NODE`),
/// and the mapping of a user namespace of its own (`POD`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub userns: Option<spec::stage1::IdMap>,
}

impl SandboxNamespaces {
    /// Checks a sandbox's namespace options (user namespace included).
    pub fn of(config: &proto::PodSandboxConfig) -> Result<Self, CriError> {
        let Some(ns) =
            config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref())
        else {
            return Ok(Self::default());
        };
        // CONTAINER: each container gets its own (container_keys).
        if ns.pid == NamespaceMode::Target as i32 {
            return Err(invalid("namespace_options.pid TARGET: a sandbox has no target container"));
        }
        for (field, mode) in [("network", ns.network), ("ipc", ns.ipc)] {
            if mode != NamespaceMode::Pod as i32 && mode != NamespaceMode::Node as i32 {
                return Err(invalid(format!("namespace_options.{field}: a sandbox's is POD or NODE")));
            }
        }
        let userns = ns.userns_options.as_ref().map(userns).transpose()?.flatten();
        let this = Self {
            host_network: ns.network == NamespaceMode::Node as i32,
            host_pid: ns.pid == NamespaceMode::Node as i32,
            host_ipc: ns.ipc == NamespaceMode::Node as i32,
            userns,
        };
        if this.userns.is_some() {
            for (field, host) in [("network", this.host_network), ("pid", this.host_pid), ("ipc", this.host_ipc)] {
                if host {
                    return Err(invalid(format!(
                        "userns_options: mode POD cannot go with namespace_options.{field} NODE (the host's \
                         namespace is not the pod's user namespace's)"
                    )));
                }
            }
        }
        Ok(this)
    }

    /// Sets the pod file's `pid`, `ipc` and `userns`.
    pub fn apply(&self, pod_file: &mut Value) {
        if let Some(m) = self.userns {
            pod_file["userns"] = json!({
                "uid": {"container": 0, "host": m.uid, "size": m.size},
                "gid": {"container": 0, "host": m.gid, "size": m.size},
            });
        }
        if self.host_pid {
            pod_file["pid"] = json!("host");
        }
        if self.host_ipc {
            pod_file["ipc"] = json!("host");
        }
    }
}

/// User namespace options: `NODE` is the host's (no mapping); `POD` is
/// checked as containerd checks it (exactly one mapping each, from
/// container id 0) and, as the pod file takes it, both of one length with
/// host root outside them: its mapping.
fn userns(u: &proto::UserNamespace) -> Result<Option<spec::stage1::IdMap>, CriError> {
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(invalid("userns_options: mode NODE takes no uid or gid mappings"));
            }
            Ok(None)
        }
        Ok(NamespaceMode::Pod) => {
            let mut ranges = [(0u32, 0u32); 2];
            for (slot, (what, maps)) in ranges.iter_mut().zip([("uids", &u.uids), ("gids", &u.gids)]) {
                let [m] = maps.as_slice() else {
                    return Err(invalid(format!(
                        "userns_options.{what}: exactly one mapping is supported, {} given",
                        maps.len()
                    )));
                };
                if m.container_id != 0 {
                    return Err(invalid(format!(
                        "userns_options.{what}: container ID 0 is not mapped (the one mapping must start at \
                         container_id 0, not {})",
                        m.container_id
                    )));
                }
                if m.length == 0 {
                    return Err(invalid(format!("userns_options.{what}: length 0 maps nothing")));
                }
                if m.host_id == 0 {
                    return Err(invalid(format!(
                        "userns_options.{what}: host_id 0 would make the pod's root the host's (use mode NODE)"
                    )));
                }
                if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
                    return Err(invalid(format!(
                        "userns_options.{what}: host_id {} + length {} passes the last valid id 4294967294",
                        m.host_id, m.length
                    )));
                }
                *slot = (m.host_id, m.length);
            }
            let [(uid, size), (gid, gid_size)] = ranges;
            if gid_size != size {
                return Err(invalid(format!(
                    "userns_options.gids: length {gid_size} differs from the uids' {size}: pod maps both alike"
                )));
            }
            Ok(Some(spec::stage1::IdMap { uid, gid, size }))
        }
        Ok(NamespaceMode::Container) => Err(invalid(
            "userns_options: mode CONTAINER (a user namespace per container) is not supported: use POD or NODE",
        )),
        Ok(NamespaceMode::Target) => Err(invalid(
            "userns_options: mode TARGET (another container's user namespace) is not supported: use POD or NODE",
        )),
        Err(_) => Err(invalid(format!("userns_options: unknown mode {}", u.mode))),
    }
}

/// What the runtime as a whole supports, for `Status`: the supplemental
/// groups policy (`Strict` leaves out the image's /etc/group memberships).
pub fn features() -> proto::RuntimeFeatures {
    proto::RuntimeFeatures { supplemental_groups_policy: true, ..Default::default() }
}

/// The identity of a running container's main process (ContainerStatus
/// `user`), as the kernel has it: read through the pod's PID 1 (its host
/// pid in `pid`) from the app's own /proc, where its pid (as pod-init
/// knows it, in `status/<app>.json`) means that process. None when it is
/// not running or cannot be read.
pub fn running_user(pod_dir: &Path, app: &str) -> Option<proto::ContainerUser> {
    let init: u32 = std::fs::read_to_string(pod_dir.join("pid")).ok()?.trim().parse().ok()?;
    let st: stage0::lifecycle::AppStatus =
        serde_json::from_slice(&std::fs::read(pod_dir.join("status").join(format!("{app}.json"))).ok()?).ok()?;
    let proc_dir = format!("/proc/{init}/root/apps/{app}/rootfs/proc");
    let pid = st.pid?;
    let mut status = std::fs::read_to_string(format!("{proc_dir}/{pid}/status")).ok()?;
    // An app with a pid namespace of its own: pod-init knows the waiter
    // (stage2-init/src/pidns.rs), the app is its one child.
    if status.lines().next().is_some_and(|l| l.split_whitespace().nth(1) == Some("pod-init")) {
        let children = std::fs::read_to_string(format!("{proc_dir}/{pid}/task/{pid}/children")).ok()?;
        let child = children.split_whitespace().next()?;
        status = std::fs::read_to_string(format!("{proc_dir}/{child}/status")).ok()?;
    }
    parse_user(&status)
}

/// `Uid:` (real), `Gid:` (real) and `Groups:` of a /proc/PID/status text.
fn parse_user(status: &str) -> Option<proto::ContainerUser> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace);
    let uid = field("Uid:")?.next()?.parse().ok()?;
    let gid = field("Gid:")?.next()?.parse().ok()?;
    let supplemental_groups = field("Groups:")?.filter_map(|g| g.parse().ok()).collect();
    Some(proto::ContainerUser { linux: Some(proto::LinuxContainerUser { uid, gid, supplemental_groups }) })
}

#[cfg(test)]
#[path = "secctx_tests.rs"]
mod tests;
