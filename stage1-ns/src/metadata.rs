//! A namespace pod's side of the metadata service (`spec::metadata`): the
//! pod's PID 1, in the pod's network namespace before it execs pod-init,
//! binds the pod's listening socket on the pod's loopback and hands it to
//! the service with the pod's uuid; the monitor says when the pod has ended.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use spec::metadata::{PodId, Register, Request, PORT};

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
    let request = Request::Register(Register { uuid: uuid.to_owned(), host_network: listener.is_none() });
    let fds: Vec<i32> = listener.map(AsRawFd::as_raw_fd).into_iter().collect();
    ask(socket, &request, &fds)
}

/// Tells the service that pod `uuid` has ended: it closes the pod's socket
/// (and with it its hold on the pod's network namespace) now.
pub fn unregister(socket: &Path, uuid: &str) -> io::Result<()> {
    ask(socket, &Request::Unregister(PodId { uuid: uuid.to_owned() }), &[])
}

/// Registers VM pod `uuid`, whose requests come through [`exchange`]; the
/// caller (the VM's monitor) is the pod's process.
pub fn register_vm(socket: &Path, uuid: &str) -> io::Result<()> {
    ask(socket, &Request::Register(Register { uuid: uuid.to_owned(), host_network: false }), &[])
}

/// One request of a VM pod's apps (`request`: the HTTP request, whole, as
/// the guest's agent read it), made to the service as pod `uuid`'s on a
/// connection of its own: the service's whole answer.
pub fn exchange(socket: &Path, uuid: &str, request: &[u8]) -> io::Result<Vec<u8>> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    stream.set_write_timeout(Some(ANSWER_WITHIN))?;
    let mut line = serde_json::to_vec(&Request::Connect(PodId { uuid: uuid.to_owned() })).map_err(io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    // The request only after the `ok`: the service reads its line in one
    // gulp, which would take the request's first bytes along.
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    (&mut reader).take(4096).read_line(&mut answer)?;
    if answer.trim_end() != "ok" {
        let why = answer.trim_end();
        let why = if why.is_empty() { "the metadata service closed the connection" } else { why };
        return Err(io::Error::other(why.strip_prefix("error: ").unwrap_or(why).to_owned()));
    }
    (&stream).write_all(request)?;
    // One request per connection: the service sees the request's end,
    // answers, and closes.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut http = Vec::new();
    reader.take(spec::metadata::MAX_EXCHANGE as u64).read_to_end(&mut http)?;
    Ok(http)
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
