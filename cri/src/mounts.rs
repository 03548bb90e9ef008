//! A CRI container's mounts as the app's host mounts (`mounts: [{ host:
//! /abs, path: /abs, readOnly, propagation, recursiveReadOnly }]`): each
//! becomes an anonymous host volume of the sandbox's pod, mounted into this
//! app alone and dropped with it.
//!
//! Checked at CreateContainer, so a bad mount fails there: the host path
//! must exist and is resolved (a symlink mounts what it points to, as CRI
//! asks); a directory or a regular file (kubelet's termination-log and
//! /etc/hosts are files). Which host paths a pod may mount is the kubelet's
//! decision (hostPath volumes, PodSecurity admission), so the CRI server
//! refuses only pod's own state (store, pods, trusted keys: see
//! `stage0::volumes::HostVolumePolicy::for_cri`). `recursive_read_only`
//! needs `readonly` and private propagation, as the CRI specifies.
//! Propagation: `PROPAGATION_HOST_TO_CONTAINER` is `rslave`,
//! `PROPAGATION_BIDIRECTIONAL` `rshared` (the host's new mounts reach the
//! container, and a privileged container's own mounts there reach the
//! host: see stage1-ns's mounts.rs). SELinux relabelling has nothing to do on a host without
//! SELinux; id-mapped and image mounts are refused.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::CriError;
use crate::proto;

/// A mount as the container was created with it, for ContainerStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub selinux_relabel: bool,
    #[serde(default)]
    pub propagation: i32,
    #[serde(default)]
    pub recursive_read_only: bool,
}

impl MountRecord {
    pub fn of(m: &proto::Mount) -> Self {
        Self {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            recursive_read_only: m.recursive_read_only,
        }
    }

    pub fn to_proto(&self) -> proto::Mount {
        proto::Mount {
            container_path: self.container_path.clone(),
            host_path: self.host_path.clone(),
            readonly: self.readonly,
            selinux_relabel: self.selinux_relabel,
            propagation: self.propagation,
            recursive_read_only: self.recursive_read_only,
            ..Default::default()
        }
    }
}

/// The pod-file mounts of container `name`'s CRI mounts, in order.
pub fn app_mounts(name: &str, mounts: &[proto::Mount]) -> Result<Vec<Value>, CriError> {
    mounts.iter().enumerate().map(|(i, m)| app_mount(name, i, m)).collect()
}

fn app_mount(name: &str, i: usize, m: &proto::Mount) -> Result<Value, CriError> {
    let at = |why: String| {
        CriError::InvalidArgument(format!("container {name:?}: mounts[{i}] ({}): {why}", m.container_path))
    };
    if m.image.as_ref().is_some_and(|img| !img.image.is_empty()) {
        return Err(CriError::Unimplemented(format!(
            "container {name:?}: mounts[{i}] ({}): image volumes are not served",
            m.container_path
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(CriError::Unimplemented(format!(
            "container {name:?}: mounts[{i}] ({}): id-mapped mounts are not served",
            m.container_path
        )));
    }
    if !m.container_path.starts_with('/') {
        return Err(at("container_path is not absolute".into()));
    }
    if !m.host_path.starts_with('/') {
        return Err(at(format!("host_path {:?} is not absolute", m.host_path)));
    }
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::PropagationPrivate) => "private",
        Ok(proto::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(proto::MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => return Err(at(format!("propagation {} is not a MountPropagation", m.propagation))),
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(at("recursive_read_only needs readonly".into()));
        }
        if propagation != "private" {
            return Err(at(format!("recursive_read_only needs PROPAGATION_PRIVATE, not {propagation}")));
        }
    }
    Ok(json!({
        "host": m.host_path,
        "path": m.container_path,
        "readOnly": m.readonly,
        "propagation": propagation,
        "recursiveReadOnly": m.recursive_read_only,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount(propagation: proto::MountPropagation, readonly: bool, rro: bool) -> proto::Mount {
        proto::Mount {
            container_path: "/mnt".into(),
            host_path: "/srv/x".into(),
            readonly,
            recursive_read_only: rro,
            selinux_relabel: true,
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn mounts_map_to_host_mounts() {
        let m = app_mounts("c", &[mount(proto::MountPropagation::PropagationHostToContainer, false, false)]).unwrap();
        assert_eq!(
            m,
            [
                json!({"host": "/srv/x", "path": "/mnt", "readOnly": false, "propagation": "rslave", "recursiveReadOnly": false})
            ]
        );
        let rro = app_mounts("c", &[mount(proto::MountPropagation::PropagationPrivate, true, true)]).unwrap();
        assert_eq!(rro[0]["recursiveReadOnly"], true);
    }

    #[test]
    fn the_three_recursive_read_only_refusals() {
        for (p, ro, why) in [
            (proto::MountPropagation::PropagationHostToContainer, true, "needs PROPAGATION_PRIVATE, not rslave"),
            (proto::MountPropagation::PropagationBidirectional, true, "needs PROPAGATION_PRIVATE, not rshared"),
            (proto::MountPropagation::PropagationPrivate, false, "needs readonly"),
        ] {
            let e = app_mounts("c", &[mount(p, ro, true)]).unwrap_err();
            assert!(
                matches!(&e, CriError::InvalidArgument(m) if m.contains(why) && m.contains("mounts[0] (/mnt)")),
                "{e}"
            );
        }
        let mut relative = mount(proto::MountPropagation::PropagationPrivate, false, false);
        relative.host_path = "srv".into();
        assert!(app_mounts("c", &[relative]).is_err());
    }
}
