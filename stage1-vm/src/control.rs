//! The host end of a VM pod's control channel (`spec::control`): the
//! monitor listens on `control.sock` in the pod directory, where a
//! namespace pod's pod-init listens, so stage0's `pod app` client and the
//! CRI server talk to both kinds of pod alike. Each connection's one
//! request line is relayed over the guest's ctl port and the guest's
//! answer written back (`spec::vm::relay` has the framing and the why).
//!
//! Driven by the monitor's poll loop, one exchange at a time: while one is
//! in flight the listener is not polled, so later clients wait in its
//! backlog (as they would for pod-init, which answers one at a time too).
//! A guest that does not answer within [`ANSWER_LIMIT`] is answered for,
//! before stage0's own 10 s timeout, so the user reads why.

use std::io::{self, ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::stat::{umask, Mode};
use spec::control::{ErrorKind, Request, Response, MAX_REQUEST};
use spec::vm::relay::{self, Answers};

/// How long a client may take to send its request, or to take the answer.
const CLIENT_IO: Duration = Duration::from_millis(500);
/// How long the guest may take to answer (TCG is slow; pod-init answers
/// between two turns of its loop).
pub const ANSWER_LIMIT: Duration = Duration::from_secs(8);

/// An exchange in flight: the client waits for the guest's answer.
#[derive(Debug)]
struct Pending {
    client: UnixStream,
    seq: u64,
    deadline: Instant,
}

/// The listening socket and the exchange in flight.
#[derive(Debug)]
pub struct Relay {
    listener: UnixListener,
    path: PathBuf,
    seq: u64,
    pending: Option<Pending>,
    answers: Answers,
}

impl Relay {
    /// Listens at `path`, mode 0600 from the start (only root may drive the
    /// pod's apps), replacing a stale socket.
    pub fn bind(path: &Path) -> io::Result<Relay> {
        let _ = std::fs::remove_file(path);
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        Ok(Relay { listener, path: path.to_owned(), seq: 0, pending: None, answers: Answers::default() })
    }

    /// Stops listening and removes the socket: the pod has ended.
    pub fn close(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// The listener, to poll while no exchange is in flight.
    pub fn listener_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pending.is_none().then(|| self.listener.as_fd())
    }

    /// Bytes the guest sent on the ctl port: the answer in flight goes to
    /// its client; a late answer to an exchange given up is dropped.
    pub fn from_guest(&mut self, bytes: &[u8]) {
        self.answers.push(bytes);
        while let Some((seq, answer)) = self.answers.next_answer() {
            if self.pending.as_ref().is_some_and(|p| p.seq == seq) {
                if let Some(mut p) = self.pending.take() {
                    // A client gone before the answer is its own loss.
                    let _ = p.client.write_all(&answer);
                }
            }
        }
    }

    /// Answers an exchange the guest left too long, then takes the next
    /// waiting client, if any, and sends its request over `ctl` (`None`:
    /// the port is not connected yet).
    pub fn pump(&mut self, ctl: Option<&mut impl Write>, now: Instant) {
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            if let Some(mut p) = self.pending.take() {
                let why = format!("the VM's pod-init did not answer within {ANSWER_LIMIT:?}");
                let _ = p.client.write_all(conflict(why).render().as_bytes());
            }
        }
        if self.pending.is_some() {
            return;
        }
        let mut client = match self.listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == IoKind::WouldBlock => return,
            Err(e) => {
                eprintln!("pod-stage1-vm: control channel: accept: {e}");
                return;
            }
        };
        let prepared = client
            .set_nonblocking(false)
            .and_then(|()| client.set_read_timeout(Some(CLIENT_IO)))
            .and_then(|()| client.set_write_timeout(Some(CLIENT_IO)));
        if prepared.is_err() {
            return;
        }
        let request = match read_request(&mut client) {
            Ok(request) => request,
            Err(refusal) => {
                let _ = client.write_all(refusal.render().as_bytes());
                return;
            }
        };
        let Some(ctl) = ctl else {
            let _ = client.write_all(conflict("the VM's control port is not connected yet".into()).render().as_bytes());
            return;
        };
        self.seq += 1;
        let sent = relay::encode_request(self.seq, &request.render())
            .ok_or_else(|| io::Error::new(IoKind::InvalidData, "a request of several lines"))
            .and_then(|line| ctl.write_all(line.as_bytes()));
        match sent {
            Ok(()) => self.pending = Some(Pending { client, seq: self.seq, deadline: now + ANSWER_LIMIT }),
            Err(e) => {
                let _ = client.write_all(conflict(format!("the VM's control port: {e}")).render().as_bytes());
            }
        }
    }
}

fn conflict(message: String) -> Response {
    Response::Error { kind: ErrorKind::Conflict, message }
}

/// Reads and checks the client's one request line (a malformed one is
/// refused here, as pod-init would, and never reaches the guest).
fn read_request(client: &mut UnixStream) -> Result<Request, Response> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match client.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(Response::Error { kind: ErrorKind::BadRequest, message: e.to_string() }),
        }
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    Request::parse(&String::from_utf8_lossy(line)).map_err(|e| Response::refusal(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn ask(path: &Path, line: &str) -> UnixStream {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(line.as_bytes()).unwrap();
        c
    }

    fn answer_of(c: UnixStream) -> String {
        let mut s = String::new();
        let mut c = c;
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn requests_go_to_the_guest_and_answers_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut relay = Relay::bind(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let (mut host, guest) = UnixStream::pair().unwrap();
        let mut guest = io::BufReader::new(guest);

        let client = ask(&path, "pod-control 1 stop web\n");
        relay.pump(Some(&mut host), Instant::now());
        let mut line = String::new();
        guest.read_line(&mut line).unwrap();
        assert_eq!(line, "control 1 pod-control 1 stop web\n");
        assert!(relay.listener_fd().is_none(), "one exchange at a time");
        // A stale answer is dropped; the right one, cut anywhere, goes through.
        relay.from_guest(&relay::encode_answer(0, b"pod-control 1 ok\n"));
        let frame = relay::encode_answer(1, b"pod-control 1 ok\n");
        relay.from_guest(&frame[..4]);
        relay.from_guest(&frame[4..]);
        assert_eq!(answer_of(client), "pod-control 1 ok\n");

        // A malformed request never reaches the guest.
        let client = ask(&path, "pod-control 1 reboot\n");
        relay.pump(Some(&mut host), Instant::now());
        assert!(answer_of(client).starts_with("pod-control 1 error bad-request "));
        relay.close();
        assert!(!path.exists());
    }

    #[test]
    fn a_silent_guest_or_no_port_is_answered_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut relay = Relay::bind(&path).unwrap();
        let client = ask(&path, "pod-control 1 inspect\n");
        relay.pump(None::<&mut Vec<u8>>, Instant::now());
        assert!(answer_of(client).contains("not connected yet"));

        let mut port = Vec::new();
        let client = ask(&path, "pod-control 1 inspect\n");
        let now = Instant::now();
        relay.pump(Some(&mut port), now);
        assert_eq!(port, b"control 1 pod-control 1 inspect\n");
        relay.pump(Some(&mut port), now + ANSWER_LIMIT);
        assert!(answer_of(client).contains("did not answer"));
        // The late answer finds no one and changes nothing.
        relay.from_guest(&relay::encode_answer(1, b"pod-control 1 ok\n"));
        assert!(relay.listener_fd().is_some());
    }
}
