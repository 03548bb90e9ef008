//! The pod's network: a pinned network namespace ([`netns`]), attached to
//! the default network natively ([`native`]: rtnetlink and nf_tables) or to
//! a CNI network ([`cni`]), with published ports served by nf_tables DNAT
//! rules (loopback included), or by portmap's and, on loopback, by
//! userspace proxies ([`ports`], [`proxy`]).
//!
//! The stage1 monitor stays on the host: it calls [`setup`] before forking
//! the pod's PID 1 (which enters [`PodNetwork::netns`]), keeps the
//! [`PodNetwork`] for the pod's lifetime (the proxies run in it), and calls
//! [`PodNetwork::teardown`] after. gc uses [`teardown_leftovers`] for pods
//! whose stage1 died without tearing down.
//!
//! - `network: host`: nothing to do, no namespace.
//! - `network: none`: a namespace with only `lo`, up.
//! - `default`: a namespace plus `eth0` on bridge `pod0`, set up natively
//!   unless the configuration directory has a conflist of the user's named
//!   `default` (then it is CNI like any other name).
//! - a CNI network: a namespace plus `eth0` from the named list.

pub mod cni;
pub mod native;
pub mod netdev;
pub mod netns;
pub mod ports;
pub mod proxy;
mod sys;

#[cfg(test)]
mod kernel_tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use spec::stage1::Network;

pub use cni::{Attachment, Cni, CniError, IpNet};
pub use netns::{create_netns, is_pinned, list_netns, pin_netns, remove_netns, NetNs, NetnsError, DEFAULT_NETNS_DIR};
pub use ports::{plan_forwarding, ForwardingPlan, Loopback, PortError, PortMapping, Protocol};
pub use proxy::{PortProxy, ProxyError};

/// The pod's interface name inside its namespace.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("network {0}: published ports need a CNI network")]
    PortsWithoutCni(&'static str),
    #[error("CNI network {0:?} gave the pod no address to forward ports to")]
    NoAddress(String),
    #[error(transparent)]
    Native(#[from] native::NativeError),
}

/// The host side of a pod's network: where namespaces are pinned, the
/// pod's CNI runtime (with the cache inside the pod directory, which also
/// holds the native network's state) and the default network's shape.
#[derive(Debug, Clone)]
pub struct NetworkHost {
    pub netns_dir: PathBuf,
    pub cni: Cni,
    pub default_net: native::DefaultNet,
}

/// How a namespaced pod is attached, and so how it is detached.
#[derive(Debug)]
pub enum Attached {
    Cni(Cni),
    Native(native::Native),
}

/// A pod's network while it runs.
#[derive(Debug)]
pub enum PodNetwork {
    /// `network: host`: the host's namespace; nothing to undo.
    Host,
    /// `network: none` (no attachment) or a CNI network.
    Namespaced {
        netns: NetNs,
        container_id: String,
        attached: Option<Box<(Attached, Attachment)>>,
        proxies: Vec<PortProxy>,
    },
}

/// Brings `lo` up in the calling thread's network namespace: for a pod that
/// unshares a private namespace itself (`network: none` needs no pinned file).
pub fn bring_lo_up() -> Result<(), nix::errno::Errno> {
    sys::set_link_up("lo")
}

/// Builds the pod's network. `pod_id` names the namespace file and is the
/// CNI container ID. On failure nothing is left behind.
pub fn setup(
    network: &Network,
    pod_id: &str,
    host: &NetworkHost,
    ports: &[PortMapping],
) -> Result<PodNetwork, NetworkError> {
    setup_in(network, pod_id, host, ports, None)
}

/// [`setup`] in a namespace made already (`existing`: the one a pod's user
/// namespace owns) instead of a new one; it is pinned the same way.
pub fn setup_in(
    network: &Network,
    pod_id: &str,
    host: &NetworkHost,
    ports: &[PortMapping],
    existing: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<PodNetwork, NetworkError> {
    let name = match network {
        Network::Host if ports.is_empty() => return Ok(PodNetwork::Host),
        Network::Host => return Err(NetworkError::PortsWithoutCni("host")),
        Network::None if !ports.is_empty() => return Err(NetworkError::PortsWithoutCni("none")),
        Network::None => None,
        Network::Cni { name } => Some(name),
    };
    let native = match name {
        Some(n) if n == cni::DEFAULT_NETWORK => native::is_native(host.cni.conf_dir())?,
        _ => false,
    };
    let plan = plan_forwarding(ports, if native { Loopback::Rules } else { Loopback::Proxy })?;
    let netns = match existing {
        Some(fd) => pin_netns(&host.netns_dir, pod_id, fd)?,
        None => create_netns(&host.netns_dir, pod_id)?,
    };
    let Some(name) = name else {
        return Ok(PodNetwork::Namespaced {
            netns,
            container_id: pod_id.to_owned(),
            attached: None,
            proxies: Vec::new(),
        });
    };
    let undo_netns = |netns: &NetNs| {
        if let Err(undo) = remove_netns(netns.path()) {
            tracing::warn!(error = %undo, "removing the namespace after failed network setup");
        }
    };
    // Both undo their own partial work when they fail.
    let added = if native {
        native::Native::setup(&host.default_net, host.cni.cache_dir(), pod_id, &netns, &plan.rules)
            .map(|(n, a)| (Attached::Native(n), a))
            .map_err(NetworkError::from)
    } else {
        host.cni
            .add(netns.path(), pod_id, POD_IFNAME, name, &plan.rules)
            .map(|a| (Attached::Cni(host.cni.clone()), a))
            .map_err(NetworkError::from)
    };
    let (attached, attachment) = match added {
        Ok(added) => added,
        Err(e) => {
            undo_netns(&netns);
            return Err(e);
        }
    };
    match start_proxies(&plan, &netns, attachment.primary_ip()) {
        Ok(proxies) => Ok(PodNetwork::Namespaced {
            netns,
            container_id: pod_id.to_owned(),
            attached: Some(Box::new((attached, attachment))),
            proxies,
        }),
        Err(e) => {
            if let Err(undo) = detach(&attached, &netns, pod_id, name) {
                tracing::warn!(error = %undo, "detaching after failed network setup");
            }
            undo_netns(&netns);
            Err(e)
        }
    }
}

fn detach(attached: &Attached, netns: &NetNs, pod_id: &str, network: &str) -> Result<(), NetworkError> {
    match attached {
        Attached::Cni(cni) => Ok(cni.del(netns.path(), pod_id, POD_IFNAME, network)?),
        Attached::Native(n) => Ok(n.teardown()?),
    }
}

fn start_proxies(plan: &ForwardingPlan, netns: &NetNs, pod_ip: Option<IpAddr>) -> Result<Vec<PortProxy>, NetworkError> {
    // Dropping the vector on an error stops the proxies already started.
    plan.loopback
        .iter()
        .map(|fwd| {
            // Dial from inside the pod's namespace (see
            // PortProxy::start_in_netns): the pod's own address, which is
            // local there, so no host route to the pod is needed; loopback
            // when the pod has no address.
            let ip = pod_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            let target = SocketAddr::new(ip, fwd.container_port);
            PortProxy::start_in_netns(fwd.listen.ip(), fwd.listen.port(), target, netns.path())
                .map_err(NetworkError::from)
        })
        .collect()
}

impl PodNetwork {
    /// The namespace the pod's PID 1 enters; `None` for `network: host`.
    pub fn netns(&self) -> Option<&NetNs> {
        match self {
            Self::Host => None,
            Self::Namespaced { netns, .. } => Some(netns),
        }
    }

    /// What the CNI network gave the pod, if it has one.
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Self::Namespaced { attached: Some(a), .. } => Some(&a.1),
            _ => None,
        }
    }

    /// Loopback addresses served by proxies.
    pub fn proxied(&self) -> Vec<SocketAddr> {
        match self {
            Self::Host => Vec::new(),
            Self::Namespaced { proxies, .. } => proxies.iter().map(PortProxy::local_addr).collect(),
        }
    }

    /// Stops the loopback port proxies (joining their threads) and leaves
    /// the rest to [`Self::teardown`]: done before the monitor forks its
    /// teardown off ([`crate::monitor`]), where those threads would not exist.
    pub fn stop_proxies(&mut self) {
        if let Self::Namespaced { proxies, .. } = self {
            proxies.drain(..).for_each(PortProxy::stop);
        }
    }

    /// Stops the proxies, detaches from the network, removes the
    /// namespace. Every step runs even if one before failed; the first error
    /// is returned.
    pub fn teardown(self) -> Result<(), NetworkError> {
        let Self::Namespaced { netns, container_id, attached, proxies } = self else { return Ok(()) };
        proxies.into_iter().for_each(PortProxy::stop);
        let detached = match attached.as_deref() {
            // The namespace is removed below: its veth goes with it.
            Some((Attached::Native(n), _)) => n.teardown_with_netns().map_err(NetworkError::from),
            Some((attached, attachment)) => detach(attached, &netns, &container_id, &attachment.network),
            None => Ok(()),
        };
        let removed = remove_netns(netns.path());
        detached?;
        removed?;
        Ok(())
    }
}

/// Undoes what [`setup`] left for pod `pod_id` when its stage1 is gone
/// (gc): the native default network's rules, veth and address when the
/// pod's state says it had them, else CNI DEL from the pod's cache; then the
/// namespace file. Idempotent.
pub fn teardown_leftovers(network: &Network, pod_id: &str, host: &NetworkHost) -> Result<(), NetworkError> {
    let path: PathBuf = host.netns_dir.join(pod_id);
    let detached = match network {
        Network::Host => return Ok(()),
        Network::None => Ok(()),
        Network::Cni { name } if native::was_native(host.cni.cache_dir()) && name == cni::DEFAULT_NETWORK => {
            native::teardown_in(&host.default_net, host.cni.cache_dir(), pod_id).map_err(NetworkError::from)
        }
        // Torn down by its monitor: the shared table may be left to remove.
        Network::Cni { name } if name == cni::DEFAULT_NETWORK && native::is_native(host.cni.conf_dir())? => {
            native::remove_table_if_unused(pod_id).map_err(NetworkError::from)
        }
        Network::Cni { name } => host.cni.del(&path, pod_id, POD_IFNAME, name).map_err(NetworkError::from),
    };
    let removed = remove_netns(Path::new(&path));
    detached?;
    removed?;
    Ok(())
}
