//! CNI result and error documents (spec 0.3.0 – 1.x; the fields pod reads
//! are the same in all of them) and what a pod keeps of a result: its
//! [`Attachment`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An address with its prefix length, as CNI writes it (`10.89.0.2/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            let keep = u32::from(width.saturating_sub(prefix));
            if keep >= 128 {
                0
            } else {
                bits >> keep
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix length above {max}"));
        }
        Ok(Self { addr, prefix })
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What the pod got from a network: its interface and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: String,
    /// The interface inside the pod (`eth0`).
    pub interface: String,
    pub mac: Option<String>,
    pub ips: Vec<IpNet>,
    pub gateway: Option<IpAddr>,
    /// The host-side interfaces made for the pod (a veth's host end; a
    /// shared bridge is filtered out where they are used, see
    /// [`Attachment::host_ifindices`]), for machined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_interfaces: Vec<String>,
}

impl Attachment {
    /// The first IPv4 address, else the first address: the target of the
    /// loopback port proxies.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.iter().map(|n| n.addr).find(IpAddr::is_ipv4).or_else(|| self.ips.first().map(|n| n.addr))
    }

    /// The host's indexes of [`Attachment::host_interfaces`], leaving out
    /// bridges (shared by every pod of the network) and names gone since.
    pub fn host_ifindices(&self) -> Vec<i32> {
        self.host_interfaces
            .iter()
            .map(|name| std::path::Path::new("/sys/class/net").join(name))
            .filter(|dir| !dir.join("bridge").exists())
            .filter_map(|dir| std::fs::read_to_string(dir.join("ifindex")).ok()?.trim().parse().ok())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
}

#[derive(Debug, Deserialize)]
struct RawInterface {
    name: String,
    mac: Option<String>,
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawIp {
    address: IpNet,
    gateway: Option<IpAddr>,
    interface: Option<usize>,
}

/// Reads the final result of a chain into an [`Attachment`] for `ifname`:
/// the addresses on that sandbox interface, or every address when the
/// result does not say which interface they belong to.
pub(crate) fn attachment(network: &str, ifname: &str, result: &Value) -> Result<Attachment, String> {
    let raw: RawResult = serde_json::from_value(result.clone()).map_err(|e| format!("malformed result: {e}"))?;
    let index = raw.interfaces.iter().position(|i| i.name == ifname && i.sandbox.is_some());
    let ips: Vec<&RawIp> = raw.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == index).collect();
    if ips.is_empty() {
        return Err(format!("result gives {ifname} no IP address"));
    }
    Ok(Attachment {
        network: network.to_owned(),
        interface: ifname.to_owned(),
        mac: index.and_then(|i| raw.interfaces[i].mac.clone()),
        ips: ips.iter().map(|ip| ip.address).collect(),
        gateway: ips.iter().find_map(|ip| ip.gateway),
        host_interfaces: raw.interfaces.iter().filter(|i| i.sandbox.is_none()).map(|i| i.name.clone()).collect(),
    })
}

/// The error document a failing plugin prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct PluginErrorDoc {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

pub(crate) fn parse_error(stdout: &[u8]) -> Option<PluginErrorDoc> {
    serde_json::from_slice(stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The result example of the CNI 1.0 spec (bridge + host-local).
    const SPEC_RESULT: &str = r#"{
      "cniVersion": "1.0.0",
      "interfaces": [
          { "name": "cni0", "mac": "00:11:22:33:44:55" },
          { "name": "veth3243", "mac": "55:44:33:22:11:11" },
          { "name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue" }
      ],
      "ips": [ { "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2 } ],
      "routes": [ { "dst": "0.0.0.0/0" } ],
      "dns": { "nameservers": [ "10.1.0.1" ] }
    }"#;

    #[test]
    fn host_ifindices_are_the_host_interfaces_that_still_exist() {
        let value: Value = serde_json::from_str(SPEC_RESULT).expect("json");
        let mut a = attachment("dbnet", "eth0", &value).expect("attachment");
        // `lo` always exists (index 1); the spec's names do not here.
        a.host_interfaces.push("lo".into());
        assert_eq!(a.host_ifindices(), [1]);
    }

    #[test]
    fn reads_the_spec_result_into_an_attachment() {
        let value: Value = serde_json::from_str(SPEC_RESULT).expect("json");
        let a = attachment("dbnet", "eth0", &value).expect("attachment");
        assert_eq!(
            a,
            Attachment {
                network: "dbnet".into(),
                interface: "eth0".into(),
                mac: Some("99:88:77:66:55:44".into()),
                ips: vec!["10.1.0.5/16".parse().expect("ipnet")],
                gateway: Some("10.1.0.1".parse().expect("ip")),
                host_interfaces: vec!["cni0".into(), "veth3243".into()],
            }
        );
        assert_eq!(a.primary_ip(), Some("10.1.0.5".parse().expect("ip")));
        let json = serde_json::to_value(&a).expect("serialise");
        assert_eq!(json["ips"], serde_json::json!(["10.1.0.5/16"]));
    }

    #[test]
    fn addresses_on_other_interfaces_are_not_the_pods() {
        let value = serde_json::json!({
            "interfaces": [{"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 1}],
        });
        let err = attachment("n", "eth0", &value).expect_err("no address for eth0");
        assert!(err.contains("no IP address"), "{err}");
        let v4 = serde_json::json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]});
        assert_eq!(attachment("n", "eth0", &v4).expect("0.4.0 result").ips[0].to_string(), "10.0.0.2/24");
    }

    #[test]
    fn ipnets_parse_and_contain() {
        let net: IpNet = "10.213.7.0/24".parse().expect("ipnet");
        assert!(net.contains("10.213.7.42".parse().expect("ip")));
        assert!(!net.contains("10.213.8.1".parse().expect("ip")));
        assert!("0.0.0.0/0".parse::<IpNet>().expect("default").contains("192.0.2.1".parse().expect("ip")));
        assert!("fd00::/64".parse::<IpNet>().expect("v6").contains("fd00::2".parse().expect("ip")));
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/8", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn error_documents_parse() {
        let doc = parse_error(br#"{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"subnet overlaps"}"#);
        assert_eq!(doc, Some(PluginErrorDoc { code: 7, msg: "bad config".into(), details: "subnet overlaps".into() }));
        assert_eq!(parse_error(br#"{"code":100,"msg":"x"}"#).map(|d| d.details), Some(String::new()));
        assert_eq!(parse_error(b"panic: runtime error"), None);
    }
}
