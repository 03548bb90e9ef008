//! The pods' masquerade and published-port rules, in one nf_tables table
//! `ip pod` that every pod on the native default network shares (as
//! netavark's `netavark` table is shared), sent over netlink (what the CNI
//! bridge plugin's `ipMasq` and the portmap plugin do with iptables):
//!
//! ```text
//! table ip pod {
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr POD ip daddr != SUBNET ip daddr != 224.0.0.0/4 masquerade comment "pod-<uuid>"
//!     ip saddr 127.0.0.0/8 ip daddr POD masquerade comment "pod-<uuid>" }
//!   chain prerouting { type nat hook prerouting priority dstnat;
//!     fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to POD:80 comment "pod-<uuid>" }
//!   chain output { type nat hook output priority -100;
//!     fib daddr type local tcp dport 8080 dnat to POD:80 comment "pod-<uuid>" }
//!   chain input { type filter hook input priority filter;
//!     iifname "pod0" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop comment "pod-guard" }
//! }
//! ```
//!
//! Published ports answer on the host's loopback too: the output chain's
//! DNAT sends 127.0.0.1's connections over the bridge, with their source
//! masqueraded to the bridge's address so that the pod's replies come back
//! to the host. The kernel routes 127.0.0.0/8 over a bridge only with
//! `route_localnet` on it, which the network turns on for its own bridge
//! ([`super::Native`]), as netavark does. That sysctl would also let a pod
//! reach the host's loopback-only services through its gateway
//! (CVE-2020-8558, kube-proxy's): the input chain's guard drops every
//! packet from the bridge to 127.0.0.0/8 but the replies of those
//! translated connections, as kube-proxy's rule does.
//!
//! A pod's start is one transaction: the table and its four base chains
//! (no-ops once they exist), the guard (the input chain flushed and the
//! guard put back: one rule however many pods start) and the pod's rules,
//! each tagged with the pod's id in its comment (user data). Its stop finds
//! its rules by that tag in a dump of the table and deletes them by handle:
//! no hook is registered or unregistered, which is what made the former
//! table per pod slow to delete (hook unregistration waits for RCU grace
//! periods: 11 ms and more on a loaded 2-core host, on the pod's exit path).
//!
//! The table stays while pods come and go; gc ([`remove_if_unused`], from
//! `pod gc` and `pod rm`) deletes it once no pod has a rule in it: the
//! guard's chain is flushed and the chains are deleted non-recursively
//! (`NLM_F_NONREC`), so a pod that added a rule meanwhile makes the whole
//! transaction fail with `EBUSY` and the table (with its guard) stays.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_NONREC,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute,
    RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::nl::{Netlink, Refused};
use crate::network::ports::{PortMapping, Protocol};
use crate::network::IpNet;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Priorities of nft's `dstnat`, `srcnat` and `filter`.
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const RTN_LOCAL: u32 = 2;
/// The table all pods share.
pub const TABLE: &str = "pod";
/// The shared base chains: name, type, hook, priority.
const BASE_CHAINS: [(&str, &str, InetHookNumber, i32); 4] = [
    ("postrouting", "nat", InetHookNumber::PostRouting, PRIO_SRCNAT),
    ("prerouting", "nat", InetHookNumber::PreRouting, PRIO_DSTNAT),
    ("output", "nat", InetHookNumber::LocalOut, PRIO_DSTNAT),
    (GUARD_CHAIN, "filter", InetHookNumber::LocalIn, PRIO_FILTER),
];
/// The chain of the loopback guard, and the guard's comment.
const GUARD_CHAIN: &str = "input";
const GUARD_TAG: &str = "pod-guard";
/// `IPS_DST_NAT`: the connection's destination was translated.
const IPS_DST_NAT: u32 = 1 << 5;
const NF_DROP: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nf_tables {what} of table {table}: {source}")]
    Refused { what: String, table: String, source: io::Error },
}

/// The pod's rules.
#[derive(Debug, Clone)]
pub struct PodRules<'a> {
    pub pod_id: &'a str,
    pub pod_ip: Ipv4Addr,
    pub subnet: IpNet,
    /// The bridge the pods are on (the guard's input interface).
    pub bridge: &'a str,
    /// Every published port, loopback ones included.
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

/// A base chain (re-sending one that exists changes nothing).
fn chain(table: &str, name: &str, kind: &str, number: InetHookNumber, priority: i32) -> (Msg, bool) {
    // The kernel reads the priority as a signed 32-bit number.
    #[allow(clippy::cast_sign_loss)]
    let priority = priority as u32;
    let attributes = vec![
        ChainAttribute::Table(table.to_owned()),
        ChainAttribute::Name(name.to_owned()),
        ChainAttribute::Type(kind.into()),
        ChainAttribute::Hook(vec![Hook::Number(number.into()), Hook::Priority(priority)]),
        ChainAttribute::Policy(1),
    ];
    msg(NfTablesMessage::NewChain(ChainMessage { attributes }), NLM_F_CREATE)
}

fn rule(table: &str, chain: &str, exprs: Vec<Expressions>, user_data: &[u8]) -> (Msg, bool) {
    let attributes = vec![
        RuleAttribute::Table(table.to_owned()),
        RuleAttribute::Chain(chain.to_owned()),
        RuleAttribute::Expressions(exprs.into_iter().map(ListAttribute::<ExpressionAttribute>::from).collect()),
        RuleAttribute::UserData(user_data.to_vec()),
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

/// Register 1 &= `mask` (a 4-byte value in the register's byte order).
fn and_mask(mask: [u8; 4]) -> Expressions {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(4),
        Bitwise::Mask(DataAttribute::Value(mask.to_vec())),
        Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
    ])
}

/// `ip saddr`/`ip daddr` (offset 12/16) in or out of `net`.
fn ip_in(offset: u32, net: IpNet, op: Operator) -> Vec<Expressions> {
    let IpAddr::V4(addr) = net.addr else { return Vec::new() };
    let host_bits = 32u32.saturating_sub(u32::from(net.prefix));
    let mask = if host_bits >= 32 { 0 } else { u32::MAX << host_bits };
    let mut out = vec![load(PAYLOAD_NETWORK, offset, 4)];
    if mask != u32::MAX {
        out.push(and_mask(mask.to_be_bytes()));
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

/// One mapping: destination (its host address; else any, or any but
/// loopback in the prerouting chain, where 127.0.0.0/8 is not for us),
/// protocol and port, then DNAT to the pod's address and port.
fn dnat(m: &PortMapping, pod_ip: Ipv4Addr, chain: &str) -> Vec<Expressions> {
    const NFTA_NAT_TYPE: u16 = 1;
    const NFTA_NAT_FAMILY: u16 = 2;
    const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
    const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
    const NFT_NAT_DNAT: u32 = 1;
    const NFPROTO_IPV4: u32 = 2;
    let mut out = match m.host_ip {
        Some(ip) => ip_in(16, IpNet { addr: ip, prefix: 32 }, Operator::Equal),
        None if chain == "prerouting" => ip_in(16, loopback_net(), Operator::NotEqual),
        None => Vec::new(),
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

fn loopback_net() -> IpNet {
    IpNet { addr: Ipv4Addr::new(127, 0, 0, 0).into(), prefix: 8 }
}

/// The guard: `iifname BRIDGE ip daddr 127.0.0.0/8 ct status & dnat == 0
/// drop`. The replies of a connection from the host's loopback to a pod
/// (whose destination was translated) pass; nothing else from the bridge
/// reaches 127.0.0.0/8.
fn guard(bridge: &str) -> Vec<Expressions> {
    const NFTA_CT_DREG: u16 = 1;
    const NFTA_CT_KEY: u16 = 2;
    const NFT_CT_STATUS: u32 = 2;
    let mut name = [0u8; 16];
    let len = bridge.len().min(15);
    name[..len].copy_from_slice(&bridge.as_bytes()[..len]);
    let mut out = vec![Expressions::Meta(vec![Meta::Key(MetaKey::Iifname), Meta::DestinationRegister(Register::Reg1)])];
    out.push(cmp(Operator::Equal, name.to_vec()));
    out.extend(ip_in(16, loopback_net(), Operator::Equal));
    out.push(other("ct", vec![(NFTA_CT_DREG, be32(Register::Reg1.into())), (NFTA_CT_KEY, be32(NFT_CT_STATUS))]));
    // The status is a host-order u32 in the register.
    out.push(and_mask(IPS_DST_NAT.to_ne_bytes()));
    out.push(cmp(Operator::Equal, vec![0; 4]));
    out.push(Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Other(NF_DROP))])),
    ]));
    out
}

/// Every rule of `chain` (a flush, in a transaction).
fn flush(chain: &str) -> (Msg, bool) {
    let attributes = vec![RuleAttribute::Table(TABLE.into()), RuleAttribute::Chain(chain.into())];
    msg(NfTablesMessage::DeleteRule(RuleMessage { attributes }), 0)
}

/// The pod's tag: the comment of each of its rules.
pub fn tag(pod_id: &str) -> String {
    format!("pod-{pod_id}")
}

/// nft's comment encoding of rule user data (libnftnl's
/// `NFTNL_UDATA_RULE_COMMENT`: type, length, the string with its NUL).
fn comment(text: &str) -> Vec<u8> {
    let bytes = &text.as_bytes()[..text.len().min(254)];
    let mut out = vec![0u8, u8::try_from(bytes.len() + 1).unwrap_or(u8::MAX)];
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

fn table_msg(create: bool) -> (Msg, bool) {
    let attributes = vec![TableAttribute::Name(TABLE.to_owned())];
    if create {
        msg(NfTablesMessage::NewTable(TableMessage { attributes }), NLM_F_CREATE)
    } else {
        msg(NfTablesMessage::DeleteTable(TableMessage { attributes }), NLM_F_NONREC)
    }
}

/// The messages that add the pod's rules (one transaction), making the
/// shared table and its chains first if they are not there.
fn add_batch(r: &PodRules<'_>) -> Vec<(Msg, bool)> {
    let tag = comment(&tag(r.pod_id));
    let mut msgs = vec![batch(true), table_msg(true)];
    for (name, kind, hook, prio) in BASE_CHAINS {
        msgs.push(chain(TABLE, name, kind, hook, prio));
    }
    msgs.push(flush(GUARD_CHAIN));
    msgs.push(rule(TABLE, GUARD_CHAIN, guard(r.bridge), &comment(GUARD_TAG)));
    let pod = IpNet { addr: r.pod_ip.into(), prefix: 32 };
    let mut masq = ip_in(12, pod, Operator::Equal);
    masq.extend(ip_in(16, r.subnet, Operator::NotEqual));
    masq.extend(ip_in(16, IpNet { addr: Ipv4Addr::new(224, 0, 0, 0).into(), prefix: 4 }, Operator::NotEqual));
    masq.push(other("masq", Vec::new()));
    msgs.push(rule(TABLE, "postrouting", masq, &tag));
    let ports: Vec<&PortMapping> = r.ports.iter().filter(|m| m.host_ip.is_none_or(|ip| ip.is_ipv4())).collect();
    if !ports.is_empty() {
        // Connections from the host's loopback leave with the bridge's
        // address, so that the pod's replies come back.
        let mut local = ip_in(12, loopback_net(), Operator::Equal);
        local.extend(ip_in(16, pod, Operator::Equal));
        local.push(other("masq", Vec::new()));
        msgs.push(rule(TABLE, "postrouting", local, &tag));
    }
    for m in ports {
        // Loopback is only ever the host's own traffic: the output chain.
        let chains: &[&str] =
            if m.host_ip.is_some_and(|ip| ip.is_loopback()) { &["output"] } else { &["prerouting", "output"] };
        for &name in chains {
            let mut e = daddr_is_local();
            e.extend(dnat(m, r.pod_ip, name));
            msgs.push(rule(TABLE, name, e, &tag));
        }
    }
    msgs.push(batch(false));
    msgs
}

fn exchange(msgs: Vec<(Msg, bool)>, what: &str) -> Result<Result<Vec<Msg>, io::Error>, NftError> {
    let mut nl = Netlink::open(NETLINK_NETFILTER).map_err(NftError::Socket)?;
    let answer = nl.exchange(msgs).map_err(NftError::Socket);
    close_later(nl);
    match answer? {
        Ok(replies) => Ok(Ok(replies)),
        Err(Refused { error, .. }) => {
            tracing::debug!(table = TABLE, what, %error, "nf_tables refused");
            Ok(Err(error))
        }
    }
}

/// Closes an nfnetlink socket on a thread of its own. Releasing the socket
/// makes nf_tables finish the clean-up of the transactions committed just
/// before, whose objects are freed after an RCU grace period: the close
/// waited 9-13 ms (`perf trace` of `pod run`), on the pod's start. On a
/// thread it overlaps the rest of the start; should no thread start, the
/// socket closes here, as before.
fn close_later(nl: Netlink) {
    let _ = std::thread::Builder::new().name("pod-nft-close".into()).spawn(move || drop(nl));
}

fn refused(what: &str, source: io::Error) -> NftError {
    NftError::Refused { what: what.into(), table: TABLE.into(), source }
}

/// Adds the pod's masquerade and port rules to the shared table.
pub fn add(r: &PodRules<'_>) -> Result<(), NftError> {
    exchange(add_batch(r), "add")?.map(drop).map_err(|e| refused("add", e))
}

/// The rules of the shared table as (chain, handle, comment); none when
/// there is no table.
fn dump() -> Result<Vec<(String, u64, Vec<u8>)>, NftError> {
    let get = msg(
        NfTablesMessage::GetRule(RuleMessage { attributes: vec![RuleAttribute::Table(TABLE.to_owned())] }),
        NLM_F_DUMP,
    );
    let replies = match exchange(vec![get], "rule dump")? {
        Ok(replies) => replies,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(refused("rule dump", e)),
    };
    let mut out = Vec::new();
    for reply in replies {
        let NetlinkPayload::InnerMessage(m) = reply.payload else { continue };
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)) = m.inner else { continue };
        let (mut chain, mut handle, mut data) = (None, None, Vec::new());
        for a in rule.attributes {
            match a {
                RuleAttribute::Chain(c) => chain = Some(c),
                RuleAttribute::Handle(h) => handle = Some(h),
                RuleAttribute::UserData(d) => data = d,
                _ => {}
            }
        }
        if let (Some(c), Some(h)) = (chain, handle) {
            out.push((c, h, data));
        }
    }
    Ok(out)
}

/// How many rules of pod `pod_id` the shared table holds (tests, checks).
pub fn rules_of(pod_id: &str) -> Result<usize, NftError> {
    let tag = comment(&tag(pod_id));
    Ok(dump()?.into_iter().filter(|(_, _, d)| *d == tag).count())
}

/// Removes the pod's rules from the shared table (which stays); none is
/// fine. A rule deleted by someone else meanwhile (gc) makes the
/// transaction fail with `ENOENT`: then it looks again.
pub fn delete(pod_id: &str) -> Result<(), NftError> {
    let tag = comment(&tag(pod_id));
    let mut tries = 0;
    loop {
        let mine: Vec<_> = dump()?.into_iter().filter(|(_, _, d)| *d == tag).collect();
        if mine.is_empty() {
            return Ok(());
        }
        let mut msgs = vec![batch(true)];
        for (chain, handle, _) in mine {
            let attributes =
                vec![RuleAttribute::Table(TABLE.into()), RuleAttribute::Chain(chain), RuleAttribute::Handle(handle)];
            msgs.push(msg(NfTablesMessage::DeleteRule(RuleMessage { attributes }), 0));
        }
        msgs.push(batch(false));
        match exchange(msgs, "rule deletion")? {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) && tries < 3 => tries += 1,
            Err(e) => return Err(refused("rule deletion", e)),
        }
    }
}

/// Deletes the shared table if no pod has a rule in it (gc); a table in
/// use, or none, is fine. Also deletes the table of pod `pod_id` made by
/// versions of pod that gave each pod its own (`ip pod-<uuid>`).
pub fn remove_if_unused(pod_id: Option<&str>) -> Result<(), NftError> {
    if let Some(id) = pod_id {
        let old = format!("pod-{id}");
        let del = msg(NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(old)] }), 0);
        match exchange(vec![batch(true), del, batch(false)], "deletion of the pod's own table")? {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(refused("deletion of the pod's own table", e)),
        }
    }
    let guard = comment(GUARD_TAG);
    if dump()?.iter().all(|(_, _, d)| *d == guard) {
        delete_if_empty()?;
    }
    Ok(())
}

/// Deletes the shared table and its chains, unless a chain holds a pod's
/// rule (`EBUSY`: the transaction does nothing) or there is no table. The
/// guard's chain is made (a table of an older pod may lack it) and flushed
/// first, in the same transaction.
pub(super) fn delete_if_empty() -> Result<(), NftError> {
    let (_, kind, hook, prio) = BASE_CHAINS[3];
    let mut msgs = vec![batch(true), chain(TABLE, GUARD_CHAIN, kind, hook, prio), flush(GUARD_CHAIN)];
    for (name, _, _, _) in BASE_CHAINS {
        let attributes = vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(name.to_owned())];
        msgs.push(msg(NfTablesMessage::DeleteChain(ChainMessage { attributes }), NLM_F_NONREC));
    }
    msgs.push(table_msg(false));
    msgs.push(batch(false));
    match exchange(msgs, "deletion")? {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::EBUSY)) => Ok(()),
        Err(e) => Err(refused("deletion", e)),
    }
}

/// Whether the shared table exists (tests, checks).
pub fn table_exists() -> Result<bool, NftError> {
    let get =
        msg(NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] }), 0);
    match exchange(vec![get], "look-up")? {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
        Err(e) => Err(refused("look-up", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_table_with_the_guard_and_the_pods_tagged_masquerade_and_ports() {
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
        let r = PodRules { pod_id: "p1", pod_ip: Ipv4Addr::new(10, 89, 0, 2), subnet, bridge: "pod0", ports: &ports };
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
                    netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::DeleteRule(_)) => {
                        "flush".into()
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
                "chain \"prerouting\"",
                "chain \"output\"",
                "chain \"input\"",
                "flush",
                "rule \"input\"",
                "rule \"postrouting\"",
                "rule \"postrouting\"",
                "rule \"prerouting\"",
                "rule \"output\"",
                "rule \"output\"",
                "rule \"prerouting\"",
                "rule \"output\"",
                "control"
            ],
            "the guard; masquerade of the pod and of loopback; the loopback-only mapping in output alone"
        );
        let none = PodRules { ports: &[], ..r };
        assert_eq!(add_batch(&none).len(), 10, "no ports: the guard and the masquerade alone");
        assert_eq!(tag("abc"), "pod-abc");
        assert_eq!(comment("ab"), [0, 3, b'a', b'b', 0], "nft's comment TLV");
    }
}
