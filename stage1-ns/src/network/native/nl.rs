//! One netlink request/response exchange on a plain (blocking) socket of
//! the calling thread's network namespace: send a batch of messages, each
//! asking for an ACK, and collect the replies up to the last ACK. Shared by
//! the rtnetlink ([`super::rtnl`]) and nf_tables ([`super::nft`]) halves.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink socket connected to the kernel, with its own sequence numbers.
#[derive(Debug)]
pub(super) struct Netlink {
    sock: Socket,
    seq: u32,
}

/// The kernel refused a message: the errno of its first NLMSG_ERROR.
#[derive(Debug)]
pub(super) struct Refused {
    pub error: io::Error,
}

impl Netlink {
    /// `protocol`: `NETLINK_ROUTE` or `NETLINK_NETFILTER`.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msgs` in one write (nf_tables takes a batch so, as one
    /// transaction), the messages in `acked` with `NLM_F_ACK`, and reads
    /// until each of those has its answer. Returns the other messages the
    /// kernel sent (GET replies), or the first refusal.
    pub fn exchange<I>(
        &mut self,
        msgs: Vec<(NetlinkMessage<I>, bool)>,
    ) -> io::Result<Result<Vec<NetlinkMessage<I>>, Refused>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        let mut buf = Vec::new();
        let mut waiting = Vec::new();
        for (mut msg, ack) in msgs {
            self.seq = self.seq.wrapping_add(1);
            msg.header.sequence_number = self.seq;
            msg.header.flags |= NLM_F_REQUEST;
            if ack {
                msg.header.flags |= NLM_F_ACK;
                waiting.push(self.seq);
            }
            msg.finalize();
            let start = buf.len();
            buf.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut buf[start..]);
        }
        let sent = self.sock.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink write"));
        }
        let mut replies = Vec::new();
        let mut refused: Option<Refused> = None;
        let mut rx = vec![0u8; 64 * 1024];
        while !waiting.is_empty() {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<I>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                let seq = msg.header.sequence_number;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        waiting.retain(|s| *s != seq);
                        if let Some(code) = e.code {
                            if refused.is_none() {
                                refused = Some(Refused { error: io::Error::from_raw_os_error(-code.get()) });
                            }
                        }
                    }
                    NetlinkPayload::Done(_) => waiting.retain(|s| *s != seq),
                    NetlinkPayload::InnerMessage(_) => replies.push(msg),
                    _ => {}
                }
            }
        }
        Ok(match refused {
            Some(r) => Err(r),
            None => Ok(replies),
        })
    }
}
