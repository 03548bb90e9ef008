//! Re-adopting the running pods when the service starts: a service that
//! was restarted (a crash, `systemctl restart`, a kill) has lost every
//! pod's registration, and the pods' stage1s register only as they start.
//! So the service finds them itself, from the data directory: each running
//! pod whose `stage1.json` names a metadata socket is registered again as
//! its stage1 registered it, with its `pid` file's process as the one
//! whose end ends the registration:
//!
//! - a namespace pod with a network namespace of its own: a listener bound
//!   anew at 127.0.0.1:2375 in the namespace of its PID 1 (a thread of the
//!   service enters it for the bind);
//! - a namespace pod on the host's network: the host's loopback listener;
//! - a VM pod: nothing to bind (its monitor connects per request).
//!
//! A pod that cannot be adopted (its PID 1 gone, its port taken meanwhile
//! by one of its own apps) is logged and left unserved, as a pod whose
//! registration failed at its start is.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::sched::CloneFlags;
use spec::stage1::{Invocation, Isolation, Network, ResolvedPod, INVOCATION_FILE};
use stage0::pods::{PodState, Pods};

/// How a pod registers: what [`crate::service::Service`] needs.
#[derive(Debug)]
pub struct Adoption {
    pub uuid: String,
    /// The pod's listener, for a pod with a network namespace of its own.
    pub listener: Option<OwnedFd>,
    pub host_network: bool,
    /// The process whose end ends the pod's registration.
    pub pid: i32,
}

/// The running pods of `pods` that use the service at `socket`, each
/// ready to be registered again; those that cannot be, with why.
pub fn find(pods: &Pods, socket: &Path) -> Vec<Result<Adoption, String>> {
    let Ok(all) = pods.list() else { return Vec::new() };
    all.into_iter()
        .filter(|p| p.state == PodState::Running)
        .filter_map(|p| adopt(&p.dir, &p.uuid, socket).transpose())
        .collect()
}

/// `Ok(None)`: the pod does not use this service.
fn adopt(dir: &Path, uuid: &str, socket: &Path) -> Result<Option<Adoption>, String> {
    let inv: Invocation = std::fs::read(dir.join(INVOCATION_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("pod {uuid}: no readable {INVOCATION_FILE}"))?;
    let same = |a: &Path| a == socket || std::fs::canonicalize(a).ok() == std::fs::canonicalize(socket).ok();
    if !inv.metadata_socket.as_deref().is_some_and(same) {
        return Ok(None);
    }
    let pod: ResolvedPod =
        stage0::prepare::read_resolved(dir).ok_or_else(|| format!("pod {uuid}: no readable pod manifest"))?;
    // A VM pod's `pid` file names its monitor, the process that registered it.
    let pid = stage0::enter::init_pid(dir).ok_or_else(|| format!("pod {uuid}: no pid file (still starting?)"))?;
    let (listener, host_network) = match (pod.isolation, &pod.network) {
        (Isolation::Vm, _) => (None, false),
        (Isolation::Namespace, Network::Host) => (None, true),
        (Isolation::Namespace, _) => (Some(listen_in(pid).map_err(|e| format!("pod {uuid}: {e}"))?), false),
    };
    Ok(Some(Adoption { uuid: uuid.to_owned(), listener, host_network, pid }))
}

/// Binds 127.0.0.1:[`spec::metadata::PORT`] in the network namespace of
/// process `pid`, which must not be the service's own (a pid the pod's PID
/// 1 left to another process would otherwise open the port on the host).
fn listen_in(pid: i32) -> Result<OwnedFd, String> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let ino = |f: &File| f.metadata().map(|m| (m.dev(), m.ino())).ok();
    let own = File::open("/proc/self/ns/net").map_err(|e| format!("/proc/self/ns/net: {e}"))?;
    if ino(&ns).is_none() || ino(&ns) == ino(&own) {
        return Err(format!("process {pid} is not in a network namespace of the pod's"));
    }
    // setns(CLONE_NEWNET) moves the calling thread only: a thread of its
    // own enters, binds and ends; the socket stays in the pod's namespace.
    let bound = std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpListener, String> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            TcpListener::bind((Ipv4Addr::LOCALHOST, spec::metadata::PORT))
                .map_err(|e| format!("127.0.0.1:{} in the pod: {e}", spec::metadata::PORT))
        })
        .join()
        .unwrap_or_else(|_| Err("the thread binding in the pod panicked".into()))
    })?;
    Ok(OwnedFd::from(bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_own_namespace_is_refused() {
        let me = i32::try_from(std::process::id()).unwrap_or_default();
        let err = listen_in(me).expect_err("the service's own namespace");
        assert!(err.contains("not in a network namespace of the pod's"), "{err}");
        assert!(listen_in(i32::MAX).expect_err("no such process").contains("/proc/"), "no such process");
    }
}
