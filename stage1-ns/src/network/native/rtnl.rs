//! The links, addresses and routes of the default network over rtnetlink
//! (what the CNI bridge plugin does through its netlink library): the
//! bridge with the gateway address, a veth pair whose host end is a bridge
//! port in hairpin mode and whose other end is the pod's `eth0`, and
//! inside the pod the address, the link up and the default route.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NetlinkMessage, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::nl::{Netlink, Refused};
use crate::network::IpNet;

/// An rtnetlink operation that failed, with what it was about.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct RtnlError {
    pub op: String,
    #[source]
    pub source: io::Error,
}

/// An rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub(super) struct Rtnl {
    nl: Netlink,
}

type Msg = NetlinkMessage<RouteNetlinkMessage>;

fn link_msg(attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes = attributes;
    m
}

impl Rtnl {
    pub fn open() -> Result<Self, RtnlError> {
        Netlink::open(NETLINK_ROUTE)
            .map(|nl| Self { nl })
            .map_err(|source| RtnlError { op: "open rtnetlink socket".into(), source })
    }

    /// Sends one message asking for an ACK; the replies on success, the
    /// kernel's errno on refusal.
    fn one(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl Fn() -> String,
    ) -> Result<Result<Vec<Msg>, io::Error>, RtnlError> {
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = flags;
        match self.nl.exchange(vec![(m, true)]) {
            Ok(Ok(replies)) => Ok(Ok(replies)),
            Ok(Err(Refused { error, .. })) => Ok(Err(error)),
            Err(source) => Err(RtnlError { op: op(), source }),
        }
    }

    fn must(&mut self, msg: RouteNetlinkMessage, flags: u16, op: impl Fn() -> String) -> Result<Vec<Msg>, RtnlError> {
        match self.one(msg, flags, &op)? {
            Ok(r) => Ok(r),
            Err(source) => Err(RtnlError { op: op(), source }),
        }
    }

    /// The index of link `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, RtnlError> {
        let op = || format!("look up link {name}");
        let get = RouteNetlinkMessage::GetLink(link_msg(vec![LinkAttribute::IfName(name.to_owned())]));
        match self.one(get, 0, op)? {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r.payload {
                netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    Some(l.header.index)
                }
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            Err(source) => Err(RtnlError { op: op(), source }),
        }
    }

    /// Bridge `name`, up, with `gateway` on it: made if missing (another
    /// pod making it at the same moment is fine). Returns its index.
    pub fn ensure_bridge(&mut self, name: &str, gateway: IpNet) -> Result<u32, RtnlError> {
        let index = match self.link_index(name)? {
            Some(i) => i,
            None => {
                let mut m = link_msg(vec![
                    LinkAttribute::IfName(name.to_owned()),
                    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
                ]);
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                let op = || format!("create bridge {name}");
                match self.one(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, op)? {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
                    Err(source) => return Err(RtnlError { op: op(), source }),
                }
                self.link_index(name)?.ok_or_else(|| RtnlError {
                    op: format!("create bridge {name}"),
                    source: io::Error::from_raw_os_error(nix::libc::ENODEV),
                })?
            }
        };
        self.set_up(index, name)?;
        self.add_address(index, gateway, name)?;
        Ok(index)
    }

    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), RtnlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.must(RouteNetlinkMessage::SetLink(m), 0, || format!("set {name} up")).map(drop)
    }

    /// Adds `addr` to link `index`; already there is fine.
    pub fn add_address(&mut self, index: u32, addr: IpNet, name: &str) -> Result<(), RtnlError> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.attributes = vec![AddressAttribute::Local(addr.addr), AddressAttribute::Address(addr.addr)];
        if let IpAddr::V4(v4) = addr.addr {
            m.attributes.push(AddressAttribute::Broadcast(broadcast(v4, addr.prefix)));
        }
        let op = || format!("add address {addr} to {name}");
        match self.one(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL, op)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
            Err(source) => Err(RtnlError { op: op(), source }),
        }
    }

    /// A veth pair: `host` (up, a port of bridge `master` if given) here,
    /// `peer` with MAC `mac` in the namespace `netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        master: Option<u32>,
        peer: &str,
        mac: [u8; 6],
        netns: BorrowedFd<'_>,
    ) -> Result<(), RtnlError> {
        let peer_msg = link_msg(vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
        ]);
        let mut attributes = vec![LinkAttribute::IfName(host.to_owned())];
        attributes.extend(master.map(LinkAttribute::Controller));
        attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        let mut m = link_msg(attributes);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.must(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, || format!("create veth {host}"))
            .map(drop)
    }

    /// Hairpin mode on bridge port `index`: a pod reaches itself through
    /// the host (its own published port on a host address).
    pub fn set_hairpin(&mut self, index: u32, name: &str) -> Result<(), RtnlError> {
        let mut m = link_msg(vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
        ])]);
        m.header.index = index;
        self.must(RouteNetlinkMessage::NewLink(m), 0, || format!("set hairpin mode on {name}")).map(drop)
    }

    /// Deletes link `name`; none is fine.
    pub fn del_link(&mut self, name: &str) -> Result<(), RtnlError> {
        let op = || format!("delete link {name}");
        let del = RouteNetlinkMessage::DelLink(link_msg(vec![LinkAttribute::IfName(name.to_owned())]));
        match self.one(del, 0, op)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(()),
            Err(source) => Err(RtnlError { op: op(), source }),
        }
    }

    /// The default route through `gateway` on link `index`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, index: u32) -> Result<(), RtnlError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway)), RouteAttribute::Oif(index)];
        self.must(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL, || {
            format!("add default route via {gateway}")
        })
        .map(drop)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The broadcast address of `ip/prefix` (what `ip addr add ... brd +` and
/// the CNI plugins set).
pub(super) fn broadcast(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_bits = 32u32.saturating_sub(u32::from(prefix));
    let mask = if host_bits >= 32 { 0 } else { u32::MAX << host_bits };
    Ipv4Addr::from(u32::from(ip) | !mask)
}
