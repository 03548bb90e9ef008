//! The host end of the guest's stream port (`spec::vm::mux`): a thread of
//! the monitor holds qemu's socket of the enter port for the VM's whole
//! life (a guest that wrote to a port no one holds would block) and serves
//! `vm/stream.sock`. Each client connection there is one stream, spoken in
//! the port's own frames with id 0: the router numbers it, passes its
//! frames to the guest and the guest's back, and tells the guest to kill
//! what a client that went away left running. Flow control is the
//! client's and the guest's (end to end); the router only stops reading
//! clients while the port is backed up.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::{umask, Mode};
use spec::vm::mux::{Decoder, Frame, Kind};

/// Clients are not read while this much waits for the port.
const MAX_QUEUED: usize = 1 << 20;
/// How long the router waits for qemu's socket to appear.
const PORT_WAIT: Duration = Duration::from_secs(30);

/// One client's stream.
#[derive(Debug)]
struct Client {
    sock: UnixStream,
    decoder: Decoder,
    /// Frames for the client not written yet.
    out: Vec<u8>,
    opened: bool,
    /// The guest ended the stream: closed once `out` is written.
    ended: bool,
}

/// Listens on `listen` (mode 0600: only root runs commands in the pod)
/// and routes streams over qemu's socket at `port`, on a thread of its
/// own, until qemu closes the port.
pub fn spawn(listen: &Path, port: PathBuf) -> io::Result<()> {
    let _ = std::fs::remove_file(listen);
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(listen);
    umask(old);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("streams".into()).spawn(move || {
        let port = match connect_port(&port, PORT_WAIT) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pod-stage1-vm: stream port {}: {e}", port.display());
                return;
            }
        };
        if let Err(e) = Router::new(listener, port).and_then(|mut r| r.run()) {
            eprintln!("pod-stage1-vm: stream port: {e}");
        }
    })?;
    Ok(())
}

/// Connects to qemu's socket of a virtio-serial port, waiting up to `wait`
/// for qemu to listen on it.
pub(crate) fn connect_port(path: &Path, wait: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(path) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            connected => return connected,
        }
    }
}

#[derive(Debug)]
struct Router {
    listener: UnixListener,
    port: UnixStream,
    decoder: Decoder,
    to_port: Vec<u8>,
    clients: BTreeMap<u32, Client>,
    next_id: u32,
}

impl Router {
    fn new(listener: UnixListener, port: UnixStream) -> io::Result<Router> {
        port.set_nonblocking(true)?;
        Ok(Router {
            listener,
            port,
            decoder: Decoder::default(),
            to_port: Vec::new(),
            clients: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// Routes until the port closes (qemu is ending); the clients left are
    /// told the VM is gone.
    fn run(&mut self) -> io::Result<()> {
        let ended = loop {
            self.wait();
            if let Err(e) = self.read_port() {
                break e;
            }
            self.accept();
            self.read_clients();
            write_some(&mut self.port, &mut self.to_port)?;
            self.write_clients();
        };
        for mut c in std::mem::take(&mut self.clients).into_values() {
            let mut out = std::mem::take(&mut c.out);
            if !c.ended {
                Frame::fail(0, &format!("the VM's stream port closed: {ended}")).encode_into(&mut out);
            }
            let _ = c.sock.set_nonblocking(false).and_then(|()| c.sock.write_all(&out));
        }
        if ended.kind() == ErrorKind::UnexpectedEof {
            Ok(())
        } else {
            Err(ended)
        }
    }

    fn wait(&self) {
        let mut port = PollFlags::POLLIN;
        if !self.to_port.is_empty() {
            port |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(self.port.as_fd(), port), PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let reading = self.to_port.len() < MAX_QUEUED;
        for c in self.clients.values() {
            let mut events = PollFlags::empty();
            if reading && !c.ended {
                events |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.sock.as_fd(), events));
        }
        let _ = poll(&mut fds, PollTimeout::from(200u16));
    }

    fn read_port(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.port.read(&mut buf) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "qemu closed it")),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while let Some(frame) = self.decoder.next_frame().map_err(io::Error::other)? {
            // A stream whose client is gone: its last frames are dropped.
            let Some(c) = self.clients.get_mut(&frame.id) else { continue };
            c.ended |= frame.kind.ends();
            Frame { id: 0, ..frame }.encode_into(&mut c.out);
        }
        Ok(())
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            // Ids are never reused while the VM runs (a late frame of an
            // old stream must not reach a new one); 0 is the clients' own.
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let c = Client { sock, decoder: Decoder::default(), out: Vec::new(), opened: false, ended: false };
            self.clients.insert(self.next_id, c);
        }
    }

    fn read_clients(&mut self) {
        if self.to_port.len() >= MAX_QUEUED {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut gone = Vec::new();
        for (&id, c) in &mut self.clients {
            if c.ended {
                continue;
            }
            let closed = loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => c.decoder.push(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let mut bad = false;
            loop {
                match c.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        // A stream starts with its Open, once; the client
                        // asks the guest nothing else (Exit, Fail are the
                        // guest's).
                        let fits = match frame.kind {
                            Kind::Open => !std::mem::replace(&mut c.opened, true),
                            Kind::Data | Kind::Eof | Kind::Window | Kind::Resize => c.opened,
                            Kind::Stderr | Kind::Exit | Kind::Fail | Kind::Kill => false,
                        };
                        if !fits {
                            bad = true;
                            break;
                        }
                        Frame { id, ..frame }.encode_into(&mut self.to_port);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            if closed || bad {
                if c.opened {
                    Frame::new(Kind::Kill, id, Vec::new()).encode_into(&mut self.to_port);
                }
                gone.push(id);
            }
        }
        for id in gone {
            self.clients.remove(&id);
        }
    }

    fn write_clients(&mut self) {
        let to_port = &mut self.to_port;
        self.clients.retain(|&id, c| match write_some(&mut c.sock, &mut c.out) {
            Ok(()) => !(c.ended && c.out.is_empty()),
            Err(_) => {
                // Gone: what it ran is killed.
                if c.opened && !c.ended {
                    Frame::new(Kind::Kill, id, Vec::new()).encode_into(to_port);
                }
                false
            }
        });
    }
}

/// Writes the front of `pending` to `w` until it would block.
fn write_some(w: &mut impl Write, pending: &mut Vec<u8>) -> io::Result<()> {
    let mut done = 0;
    let result = loop {
        if done == pending.len() {
            break Ok(());
        }
        match w.write(&pending[done..]) {
            Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    pending.drain(..done);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use spec::vm::mux::Open;

    /// Reads frames from `s` until `n` came.
    fn frames(s: &mut UnixStream, n: usize) -> Vec<Frame> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < n {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed after {got:?}");
            d.push(&buf[..k]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        got
    }

    #[test]
    fn streams_are_numbered_routed_back_and_killed_when_their_client_goes() {
        let dir = tempfile::tempdir().unwrap();
        let listen = dir.path().join("stream.sock");
        let (port, mut guest) = UnixStream::pair().unwrap();
        let old = umask(Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(&listen).unwrap();
        umask(old);
        listener.set_nonblocking(true).unwrap();
        let mut router = Router::new(listener, port).unwrap();
        std::thread::spawn(move || router.run());

        let open = Open::Exec { app: "web".into(), argv: vec!["true".into()], tty: false, size: None };
        let mut a = UnixStream::connect(&listen).unwrap();
        a.write_all(&open.frame(0).encode()).unwrap();
        let first = frames(&mut guest, 1);
        assert_eq!((first[0].kind, first[0].id), (Kind::Open, 1));
        let mut b = UnixStream::connect(&listen).unwrap();
        b.write_all(&Open::Connect { port: 80 }.frame(0).encode()).unwrap();
        b.write_all(&Frame::new(Kind::Data, 0, b"GET".to_vec()).encode()).unwrap();
        let got = frames(&mut guest, 2);
        assert_eq!((got[0].kind, got[0].id, got[1].kind, got[1].id), (Kind::Open, 2, Kind::Data, 2));

        // The guest's frames reach their own client, as id 0; the last one
        // closes the client's connection.
        guest.write_all(&Frame::new(Kind::Data, 1, b"hi".to_vec()).encode()).unwrap();
        guest.write_all(&Frame::exit(1, 3).encode()).unwrap();
        let got = frames(&mut a, 2);
        assert_eq!(got, [Frame::new(Kind::Data, 0, b"hi".to_vec()), Frame::exit(0, 3)]);
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(a.read(&mut [0u8; 16]).unwrap(), 0, "closed after its end");

        // A client that goes away has its stream killed in the guest; a
        // client that speaks for the guest is cut off the same way.
        drop(b);
        let got = frames(&mut guest, 1);
        assert_eq!((got[0].kind, got[0].id), (Kind::Kill, 2));
        let mut c = UnixStream::connect(&listen).unwrap();
        c.write_all(&Open::Connect { port: 81 }.frame(0).encode()).unwrap();
        c.write_all(&Frame::exit(0, 0).encode()).unwrap();
        let got = frames(&mut guest, 2);
        assert_eq!((got[0].kind, got[1].kind, got[1].id), (Kind::Open, Kind::Kill, 3));
    }
}
