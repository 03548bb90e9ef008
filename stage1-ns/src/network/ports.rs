//! Published ports and how each reaches the pod. On the native default
//! network every mapping, loopback included, is a DNAT rule of the pods'
//! nf_tables table (with `route_localnet` on the pods' own bridge, as
//! netavark does: see [`super::native`]). On a CNI network portmap's DNAT
//! rules serve host addresses other than loopback, and a userspace
//! [`PortProxy`] serves loopback (we do not turn on `route_localnet` on a
//! bridge of the user's); UDP has no loopback path there.
//!
//! [`PortProxy`]: super::proxy::PortProxy

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
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

/// One published port, serialised as the CNI `portMappings` capability
/// entry (`hostIP` omitted when the mapping is on every host address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None` means every host address (`0.0.0.0`).
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port {name}: protocol {protocol:?} is not tcp or udp")]
    Protocol { name: String, protocol: String },
    #[error("port {name}: host IP {host_ip:?} is not an IP address")]
    HostIp { name: String, host_ip: String },
    #[error("port {host_port}/udp on {host_ip}: UDP cannot be published on loopback (no userspace UDP proxy)")]
    LoopbackUdp { host_port: u16, host_ip: IpAddr },
}

impl PortMapping {
    /// From the resolved pod's port (`spec::stage1::Port`).
    pub fn from_spec(port: &spec::stage1::Port) -> Result<Self, PortError> {
        let protocol = match port.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(PortError::Protocol { name: port.name.to_string(), protocol: other.to_owned() }),
        };
        let host_ip = match port.host_ip.as_str() {
            "" => None,
            s => {
                let ip: IpAddr =
                    s.parse().map_err(|_| PortError::HostIp { name: port.name.to_string(), host_ip: s.to_owned() })?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        Ok(Self { host_port: port.host_port, container_port: port.container_port, protocol, host_ip })
    }
}

/// A loopback listener the stage1 monitor runs for a TCP mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackForward {
    pub listen: SocketAddr,
    pub container_port: u16,
}

/// Which mappings go to the network's DNAT rules and which need a loopback
/// proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingPlan {
    pub rules: Vec<PortMapping>,
    pub loopback: Vec<LoopbackForward>,
}

/// How the network reaches a pod from the host's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loopback {
    /// DNAT rules serve loopback too (the native default network).
    Rules,
    /// Userspace proxies serve loopback (CNI networks: portmap leaves it).
    Proxy,
}

/// Splits `mappings`. With [`Loopback::Rules`] every mapping is a rule.
/// With [`Loopback::Proxy`], every-address mappings go to portmap *and* get
/// a 127.0.0.1 proxy (TCP); loopback mappings get only the proxy; other host
/// addresses only portmap; a UDP mapping on loopback is refused rather than
/// silently unreachable.
pub fn plan_forwarding(mappings: &[PortMapping], loopback: Loopback) -> Result<ForwardingPlan, PortError> {
    let mut plan = ForwardingPlan::default();
    if loopback == Loopback::Rules {
        plan.rules = mappings.to_vec();
        return Ok(plan);
    }
    for m in mappings {
        match m.host_ip {
            Some(ip) if ip.is_loopback() => {
                if m.protocol == Protocol::Udp {
                    return Err(PortError::LoopbackUdp { host_port: m.host_port, host_ip: ip });
                }
                plan.loopback
                    .push(LoopbackForward { listen: (ip, m.host_port).into(), container_port: m.container_port });
            }
            Some(_) => plan.rules.push(*m),
            None => {
                plan.rules.push(*m);
                if m.protocol == Protocol::Tcp {
                    let listen = (Ipv4Addr::LOCALHOST, m.host_port).into();
                    plan.loopback.push(LoopbackForward { listen, container_port: m.container_port });
                }
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_ip: Option<&str>, protocol: Protocol, host_port: u16) -> PortMapping {
        PortMapping { host_port, container_port: 80, protocol, host_ip: host_ip.map(|s| s.parse().expect("ip")) }
    }

    #[test]
    fn mappings_serialise_as_the_cni_capability() {
        let json = serde_json::to_string(&[m(None, Protocol::Tcp, 8080), m(Some("192.0.2.2"), Protocol::Udp, 53)])
            .expect("serialise");
        assert_eq!(
            json,
            r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":80,"protocol":"udp","hostIP":"192.0.2.2"}]"#
        );
    }

    #[test]
    fn loopback_goes_to_the_proxy_on_cni_and_to_the_rules_natively() {
        let all = [
            m(None, Protocol::Tcp, 8080),
            m(None, Protocol::Udp, 5353),
            m(Some("127.0.0.1"), Protocol::Tcp, 9000),
            m(Some("192.0.2.2"), Protocol::Tcp, 9001),
        ];
        let plan = plan_forwarding(&all, Loopback::Proxy).expect("plan");
        assert_eq!(
            plan.rules,
            [m(None, Protocol::Tcp, 8080), m(None, Protocol::Udp, 5353), m(Some("192.0.2.2"), Protocol::Tcp, 9001)]
        );
        let listens: Vec<String> = plan.loopback.iter().map(|l| l.listen.to_string()).collect();
        assert_eq!(listens, ["127.0.0.1:8080", "127.0.0.1:9000"]);
        let udp = [m(Some("127.0.0.1"), Protocol::Udp, 53)];
        let err = plan_forwarding(&udp, Loopback::Proxy).expect_err("udp on loopback");
        assert!(err.to_string().contains("UDP cannot be published on loopback"), "{err}");

        // The native network's rules serve loopback too, UDP included.
        let native = plan_forwarding(&all, Loopback::Rules).expect("plan");
        assert_eq!(native, ForwardingPlan { rules: all.to_vec(), loopback: Vec::new() });
        assert_eq!(plan_forwarding(&udp, Loopback::Rules).expect("udp by rule").rules, udp);
    }
}
