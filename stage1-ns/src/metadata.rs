//! A namespace pod's side of the metadata service (`spec::metadata`): the
//! pod's PID 1, in the pod's network namespace before it execs pod-init,
//! binds the pod's listening socket on the pod's loopback and hands it to
//! the service with the pod's uuid; the monitor says when the pod has ended.

use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use spec::metadata::{Register, Request, Unregister, PORT};

/// How long the service may take to answer (it answers at once).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Binds the pod's socket for the service on the loopback of the network
/// namespace the caller is in.
pub fn listen_in_pod() -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, PORT))
}

/// Registers pod `uuid` with the service at `socket`, handing it
/// `listener` (none for a pod on the host's network).
pub fn register(socket: &Path, uuid: &str, listener: Option<&TcpListener>) -> io::Result<()> {
    let request = Request::Register(Register { uuid: uuid.to_owned() });
    let fds: Vec<i32> = listener.map(AsRawFd::as_raw_fd).into_iter().collect();
    ask(socket, &request, &fds)
}

/// Tells the service that pod `uuid` has ended: it closes the pod's socket
/// (and with it its hold on the pod's network namespace) now.
pub fn unregister(socket: &Path, uuid: &str) -> io::Result<()> {
    ask(socket, &Request::Unregister(Unregister { uuid: uuid.to_owned() }), &[])
}

fn ask(socket: &Path, request: &Request, fds: &[i32]) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    stream.set_write_timeout(Some(ANSWER_WITHIN))?;
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&line)], cmsgs, MsgFlags::empty(), None)?;
    if sent < line.len() {
        (&stream).write_all(&line[sent..])?;
    }
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err(io::Error::other("the metadata service closed the connection")),
        other => Err(io::Error::other(other.strip_prefix("error: ").unwrap_or(other).to_owned())),
    }
}
