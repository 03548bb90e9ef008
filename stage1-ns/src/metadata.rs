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

/// Registers VM pod `uuid`, whose connections come through
/// [`relay`]; the caller (the VM's monitor) is the pod's process.
pub fn register_vm(socket: &Path, uuid: &str) -> io::Result<()> {
    ask(socket, &Request::Register(Register { uuid: uuid.to_owned(), host_network: false }), &[])
}

/// One connection of a VM pod's apps (qemu's user-mode network runs this
/// for each, on its stdin and stdout): handed to the service as pod
/// `uuid`'s, then relayed both ways until either side ends.
pub fn relay(socket: &Path, uuid: &str) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_vec(&Request::Connect(PodId { uuid: uuid.to_owned() })).map_err(io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    // The answer, a byte at a time: what follows it is the HTTP answers.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < 4096 {
        match io::Read::read(&mut &stream, &mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => answer.push(byte[0]),
        }
    }
    if answer != b"ok" {
        return Err(io::Error::other(String::from_utf8_lossy(&answer).into_owned()));
    }
    let back = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut &stream);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    });
    // The service's end ends the relay (the thread goes with the process).
    // Flushed chunk by chunk: stdout is line-buffered, and an HTTP body
    // need not end with a newline.
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match io::Read::read(&mut &back, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
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
