//! The pod's masquerade and published-port rules as an nf_tables table of
//! its own, `ip pod-<uuid>`, sent over netlink as one transaction (what the
//! CNI bridge plugin's `ipMasq` and the portmap plugin do with iptables):
//!
//! ```text
//! table ip pod-<uuid> {
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr POD ip daddr != SUBNET ip daddr != 224.0.0.0/4 masquerade }
//!   chain prerouting { type nat hook prerouting priority dstnat; fib daddr type local jump ports }
//!   chain output { type nat hook output priority -100; fib daddr type local jump ports }
//!   chain ports { ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to POD:80 ... }
//! }
//! ```
//!
//! A table per pod makes teardown one message that removes every rule of
//! the pod and nothing else, idempotent for gc (no table: nothing to do),
//! and needs no rule handles kept anywhere. Loopback destinations are left
//! to the userspace proxies, as with portmap's `conditionsV4`.
//!
//! Its cost: adding the table takes well under a millisecond, but deleting
//! it unregisters its nat hooks, which waits for RCU grace periods (11 ms
//! on average on a loaded 2-core host, and the next nf_tables transaction
//! waits longer still). A shared table whose base chains stay registered,
//! with a regular chain per pod reached by jump rules tagged with the pod's
//! id (found again by a rule dump for teardown and gc), would take that off
//! the pod's exit path.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{DefaultNla, NetlinkMessage, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute,
    RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::nl::{Netlink, Refused};
use crate::network::ports::{PortMapping, Protocol};
use crate::network::IpNet;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Priorities of nft's `dstnat` and `srcnat`.
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const RTN_LOCAL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nf_tables {what} of table {table}: {source}")]
    Refused { what: String, table: String, source: io::Error },
}

/// The table that holds pod `pod_id`'s rules.
pub fn table_name(pod_id: &str) -> String {
    format!("pod-{pod_id}")
}

/// What the pod's table says.
#[derive(Debug, Clone)]
pub struct PodRules<'a> {
    pub pod_id: &'a str,
    pub pod_ip: Ipv4Addr,
    pub subnet: IpNet,
    /// Mappings for host addresses (not loopback-only ones).
    pub ports: &'a [PortMapping],
}

type Msg = NetlinkMessage<NetfilterMessage>;

fn msg(inner: NfTablesMessage, flags: u16) -> (Msg, bool) {
    let mut m =
        NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), inner));
    m.header.flags = flags;
    (m, true)
}

fn batch(begin: bool) -> (Msg, bool) {
    let control = if begin { ControlMessage::BatchBegin } else { ControlMessage::BatchEnd };
    let m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        control,
    ));
    (m, false)
}

fn chain(table: &str, name: &str, hook: Option<(InetHookNumber, i32)>) -> (Msg, bool) {
    let mut attributes = vec![ChainAttribute::Table(table.to_owned()), ChainAttribute::Name(name.to_owned())];
    if let Some((number, priority)) = hook {
        attributes.push(ChainAttribute::Type("nat".into()));
        // The kernel reads the priority as a signed 32-bit number.
        #[allow(clippy::cast_sign_loss)]
        let priority = priority as u32;
        attributes.push(ChainAttribute::Hook(vec![Hook::Number(number.into()), Hook::Priority(priority)]));
        attributes.push(ChainAttribute::Policy(1));
    }
    msg(NfTablesMessage::NewChain(ChainMessage { attributes }), NLM_F_CREATE)
}

fn rule(table: &str, chain: &str, exprs: Vec<Expressions>) -> (Msg, bool) {
    let attributes = vec![
        RuleAttribute::Table(table.to_owned()),
        RuleAttribute::Chain(chain.to_owned()),
        RuleAttribute::Expressions(exprs.into_iter().map(ListAttribute::<ExpressionAttribute>::from).collect()),
    ];
    msg(NfTablesMessage::NewRule(RuleMessage { attributes }), NLM_F_CREATE | NLM_F_APPEND)
}

fn load(base: u32, offset: u32, len: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn cmp(op: Operator, data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![Cmp::SourceRegister(Register::Reg1), Cmp::Op(op), Cmp::Data(DataAttribute::Value(data))])
}

/// `ip saddr`/`ip daddr` (offset 12/16) in or out of `net`.
fn ip_in(offset: u32, net: IpNet, op: Operator) -> Vec<Expressions> {
    let IpAddr::V4(addr) = net.addr else { return Vec::new() };
    let host_bits = 32u32.saturating_sub(u32::from(net.prefix));
    let mask = if host_bits >= 32 { 0 } else { u32::MAX << host_bits };
    let mut out = vec![load(PAYLOAD_NETWORK, offset, 4)];
    if mask != u32::MAX {
        out.push(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.to_be_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ]));
    }
    out.push(cmp(op, (u32::from(addr) & mask).to_be_bytes().to_vec()));
    out
}

fn other(name: &str, attrs: Vec<(u16, Vec<u8>)>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_owned(),
        attributes: attrs.into_iter().map(|(kind, value)| DefaultNla::new(kind, value)).collect(),
    }
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// `fib daddr type local`.
fn daddr_is_local() -> Vec<Expressions> {
    const NFTA_FIB_DREG: u16 = 1;
    const NFTA_FIB_RESULT: u16 = 2;
    const NFTA_FIB_FLAGS: u16 = 3;
    const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    const NFTA_FIB_F_DADDR: u32 = 1 << 1;
    vec![
        other(
            "fib",
            vec![
                (NFTA_FIB_DREG, be32(Register::Reg1.into())),
                (NFTA_FIB_RESULT, be32(NFT_FIB_RESULT_ADDRTYPE)),
                (NFTA_FIB_FLAGS, be32(NFTA_FIB_F_DADDR)),
            ],
        ),
        // The address type is a host-order u32 in the register.
        cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

fn jump(chain: &str) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![
            VerdictAttribute::Code(Verdict::Jump),
            VerdictAttribute::Chain(chain.to_owned()),
        ])),
    ])
}

/// One mapping: destination (a host address, or any but loopback),
/// protocol and port, then DNAT to the pod's address and port.
fn dnat(m: &PortMapping, pod_ip: Ipv4Addr) -> Vec<Expressions> {
    const NFTA_NAT_TYPE: u16 = 1;
    const NFTA_NAT_FAMILY: u16 = 2;
    const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
    const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
    const NFT_NAT_DNAT: u32 = 1;
    const NFPROTO_IPV4: u32 = 2;
    let mut out = match m.host_ip {
        Some(ip) => ip_in(16, IpNet { addr: ip, prefix: 32 }, Operator::Equal),
        None => ip_in(16, IpNet { addr: Ipv4Addr::new(127, 0, 0, 0).into(), prefix: 8 }, Operator::NotEqual),
    };
    let proto: u8 = match m.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    out.push(Expressions::Meta(vec![Meta::Key(MetaKey::L4Proto), Meta::DestinationRegister(Register::Reg1)]));
    out.push(cmp(Operator::Equal, vec![proto]));
    out.push(load(PAYLOAD_TRANSPORT, 2, 2));
    out.push(cmp(Operator::Equal, m.host_port.to_be_bytes().to_vec()));
    for (reg, data) in
        [(Register::Reg1, pod_ip.octets().to_vec()), (Register::Reg2, m.container_port.to_be_bytes().to_vec())]
    {
        out.push(Expressions::Immediate(vec![
            Immediate::DestinationRegister(reg),
            Immediate::Data(DataAttribute::Value(data)),
        ]));
    }
    out.push(other(
        "nat",
        vec![
            (NFTA_NAT_TYPE, be32(NFT_NAT_DNAT)),
            (NFTA_NAT_FAMILY, be32(NFPROTO_IPV4)),
            (NFTA_NAT_REG_ADDR_MIN, be32(Register::Reg1.into())),
            (NFTA_NAT_REG_PROTO_MIN, be32(Register::Reg2.into())),
        ],
    ));
    out
}

/// The messages that make the pod's table (one transaction).
fn add_batch(r: &PodRules<'_>) -> Vec<(Msg, bool)> {
    let table = table_name(r.pod_id);
    let mut msgs = vec![
        batch(true),
        msg(
            NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(table.clone())] }),
            NLM_F_CREATE,
        ),
        chain(&table, "postrouting", Some((InetHookNumber::PostRouting, PRIO_SRCNAT))),
    ];
    let mut masq = ip_in(12, IpNet { addr: r.pod_ip.into(), prefix: 32 }, Operator::Equal);
    masq.extend(ip_in(16, r.subnet, Operator::NotEqual));
    masq.extend(ip_in(16, IpNet { addr: Ipv4Addr::new(224, 0, 0, 0).into(), prefix: 4 }, Operator::NotEqual));
    masq.push(other("masq", Vec::new()));
    msgs.push(rule(&table, "postrouting", masq));
    let ports: Vec<&PortMapping> =
        r.ports.iter().filter(|m| m.host_ip.is_none_or(|ip| ip.is_ipv4() && !ip.is_loopback())).collect();
    if !ports.is_empty() {
        msgs.push(chain(&table, "ports", None));
        for (name, hook) in [("prerouting", InetHookNumber::PreRouting), ("output", InetHookNumber::LocalOut)] {
            msgs.push(chain(&table, name, Some((hook, PRIO_DSTNAT))));
            let mut e = daddr_is_local();
            e.push(jump("ports"));
            msgs.push(rule(&table, name, e));
        }
        for m in ports {
            msgs.push(rule(&table, "ports", dnat(m, r.pod_ip)));
        }
    }
    msgs.push(batch(false));
    msgs
}

fn exchange(msgs: Vec<(Msg, bool)>, what: &str, table: &str) -> Result<Result<(), io::Error>, NftError> {
    let mut nl = Netlink::open(NETLINK_NETFILTER).map_err(NftError::Socket)?;
    match nl.exchange(msgs).map_err(NftError::Socket)? {
        Ok(_) => Ok(Ok(())),
        Err(Refused { error, .. }) => {
            tracing::debug!(table, what, %error, "nf_tables refused");
            Ok(Err(error))
        }
    }
}

/// Makes the pod's table with its masquerade and port rules (pod ids are
/// new each run: there is no table of the same name to replace).
pub fn add(r: &PodRules<'_>) -> Result<(), NftError> {
    let table = table_name(r.pod_id);
    exchange(add_batch(r), "add", &table)?.map_err(|source| NftError::Refused { what: "add".into(), table, source })
}

/// Removes the pod's table; none is fine.
pub fn delete(pod_id: &str) -> Result<(), NftError> {
    let table = table_name(pod_id);
    let del =
        msg(NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(table.clone())] }), 0);
    match exchange(vec![batch(true), del, batch(false)], "delete", &table)? {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
        Err(source) => Err(NftError::Refused { what: "delete".into(), table, source }),
    }
}

/// Whether the pod's table exists (tests, gc checks).
pub fn exists(pod_id: &str) -> Result<bool, NftError> {
    let table = table_name(pod_id);
    let get = msg(NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(table.clone())] }), 0);
    match exchange(vec![get], "look-up", &table)? {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
        Err(source) => Err(NftError::Refused { what: "look-up".into(), table, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_per_pod_with_masquerade_and_only_host_address_ports() {
        let ports = [
            PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None },
            PortMapping {
                host_port: 9000,
                container_port: 90,
                protocol: Protocol::Tcp,
                host_ip: Some(Ipv4Addr::LOCALHOST.into()),
            },
            PortMapping {
                host_port: 53,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: Some(Ipv4Addr::new(192, 0, 2, 2).into()),
            },
        ];
        let subnet: IpNet = "10.89.0.0/16".parse().expect("net");
        let r = PodRules { pod_id: "p1", pod_ip: Ipv4Addr::new(10, 89, 0, 2), subnet, ports: &ports };
        let msgs = add_batch(&r);
        let kinds: Vec<String> = msgs
            .iter()
            .map(|(m, _)| match &m.payload {
                netlink_packet_core::NetlinkPayload::InnerMessage(n) => match &n.inner {
                    netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(_)) => {
                        "table".into()
                    }
                    netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(c)) => {
                        format!(
                            "chain {:?}",
                            c.attributes
                                .iter()
                                .find_map(|a| match a {
                                    ChainAttribute::Name(n) => Some(n.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default()
                        )
                    }
                    netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(c)) => {
                        format!(
                            "rule {:?}",
                            c.attributes
                                .iter()
                                .find_map(|a| match a {
                                    RuleAttribute::Chain(n) => Some(n.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default()
                        )
                    }
                    _ => "control".into(),
                },
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "control",
                "table",
                "chain \"postrouting\"",
                "rule \"postrouting\"",
                "chain \"ports\"",
                "chain \"prerouting\"",
                "rule \"prerouting\"",
                "chain \"output\"",
                "rule \"output\"",
                "rule \"ports\"",
                "rule \"ports\"",
                "control"
            ],
            "the loopback-only mapping is the proxy's, not a rule"
        );
        let none = PodRules { ports: &[], ..r };
        assert_eq!(add_batch(&none).len(), 5, "no ports: the masquerade alone");
        assert_eq!(table_name("abc"), "pod-abc");
    }
}
