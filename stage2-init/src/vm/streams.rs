//! The stream agent on the enter port (`spec::vm::mux`): one poll loop
//! that runs commands in apps (`enter.rs`) and connects to the guest's
//! loopback for the host, many streams at once. Every fd is non-blocking;
//! a stream reads its command's (or connection's) output only while the
//! host has window left for it, and acknowledges the host's bytes once
//! written, so nothing it holds grows past [`WINDOW`] per stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use spec::vm::mux::{Decoder, Frame, Kind, Open, MAX_PAYLOAD, WINDOW};

use super::enter::{self, Stdio};
use crate::exit::Termination;
use crate::log;

/// How long output is still read after a command exits (something it left
/// in the background may hold its stdout open forever).
const DRAIN: Duration = Duration::from_secs(2);
/// The loop's longest sleep: how soon an exited command is noticed.
const TICK: u16 = 100;
/// The pause while no one holds the port on the host.
const IDLE: Duration = Duration::from_millis(200);
/// Output is not read while this much waits for the port.
const MAX_QUEUED: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn nonblocking(fd: &impl AsFd) {
    let _ = fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
}

/// Where a stream's output comes from.
#[derive(Debug)]
struct Out {
    kind: Kind,
    file: File,
    open: bool,
}

/// Where the host's bytes for a stream go.
#[derive(Debug)]
struct In {
    file: File,
    pending: Vec<u8>,
    /// The host sent Eof: close (or shut) once `pending` is written.
    eof: bool,
    socket: bool,
}

#[derive(Debug)]
struct Stream {
    /// The command (none for a connection).
    pid: Option<Pid>,
    outs: Vec<Out>,
    input: Option<In>,
    tty: Option<OwnedFd>,
    /// Bytes the host will still take.
    credit: u32,
    exited: Option<(i32, Instant)>,
}

impl Stream {
    fn outputs_done(&self) -> bool {
        self.outs.iter().all(|o| !o.open)
    }

    /// Whether the stream is over; the status for its Exit frame.
    fn finished(&self) -> Option<i32> {
        match (self.pid, self.exited) {
            (Some(_), Some((code, at))) => (self.outputs_done() || at.elapsed() > DRAIN).then_some(code),
            (Some(_), None) => None,
            // A connection: both ways closed.
            (None, _) => (self.outputs_done() && self.input.is_none()).then_some(0),
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.filter(|_| self.exited.is_none()) {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

/// The agent's state.
struct Agent<'a> {
    root: &'a Path,
    port: File,
    decoder: Decoder,
    /// Bytes for the host not written yet.
    queued: Vec<u8>,
    streams: BTreeMap<u32, Stream>,
    /// Killed commands not reaped yet.
    dead: Vec<Pid>,
}

/// Serves the streams on `port` for the pod at `root`, forever.
pub(crate) fn serve(port: File, root: &Path) {
    // A command or connection gone must give EPIPE here, not end the
    // agent (its children get the default back before they exec).
    crate::sys::ignore_sigpipe();
    nonblocking(&port);
    let mut agent = Agent {
        root,
        port,
        decoder: Decoder::default(),
        queued: Vec::new(),
        streams: BTreeMap::new(),
        dead: Vec::new(),
    };
    loop {
        agent.wait();
        if !agent.read_port() {
            // No one on the host (the monitor holds the port for the VM's
            // life, so it is ending or restarting): every stream is lost.
            agent.drop_all();
            std::thread::sleep(IDLE);
            continue;
        }
        agent.service();
        agent.flush();
        agent.reap();
    }
}

impl Agent<'_> {
    fn send(&mut self, frame: &Frame) {
        frame.encode_into(&mut self.queued);
    }

    /// Sleeps until the port or a stream's fd is ready, or a tick passes.
    fn wait(&self) {
        let mut port_events = PollFlags::POLLIN;
        if !self.queued.is_empty() {
            port_events |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(self.port.as_fd(), port_events)];
        let reading = self.queued.len() < MAX_QUEUED;
        for s in self.streams.values() {
            if reading && s.credit > 0 {
                fds.extend(s.outs.iter().filter(|o| o.open).map(|o| PollFd::new(o.file.as_fd(), PollFlags::POLLIN)));
            }
            if let Some(i) = s.input.as_ref().filter(|i| !i.pending.is_empty()) {
                fds.push(PollFd::new(i.file.as_fd(), PollFlags::POLLOUT));
            }
        }
        let _ = poll(&mut fds, PollTimeout::from(TICK));
    }

    /// Reads what the host sent and acts on it; `false` if the host side
    /// is not connected.
    fn read_port(&mut self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.port.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return true,
                Err(e) => {
                    log!("enter port: {e}");
                    return false;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let id = frame.id;
        if frame.kind == Kind::Open {
            if self.streams.contains_key(&id) {
                return self.send(&Frame::fail(id, "a stream of that number is open"));
            }
            let open = std::str::from_utf8(&frame.payload).ok().and_then(Open::decode);
            match open.ok_or_else(|| "not a stream request".to_owned()).and_then(|o| self.open(&o)) {
                Ok(stream) => {
                    if stream.pid.is_none() {
                        // A connection is made: its first frame says so.
                        self.send(&Frame::window(id, 0));
                    }
                    self.streams.insert(id, stream);
                }
                Err(message) => self.send(&Frame::fail(id, &message)),
            }
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else { return };
        match frame.kind {
            Kind::Data => {
                if let Some(i) = stream.input.as_mut().filter(|i| !i.eof) {
                    i.pending.extend_from_slice(&frame.payload);
                }
            }
            Kind::Eof => {
                if let Some(i) = stream.input.as_mut() {
                    i.eof = true;
                }
            }
            Kind::Window => stream.credit = stream.credit.saturating_add(frame.count()),
            Kind::Resize => {
                if let (Some(tty), Some((cols, rows))) = (stream.tty.as_ref(), frame.size()) {
                    let _ = crate::sys::set_window_size(tty.as_fd(), rows, cols);
                }
            }
            Kind::Kill => {
                if let Some(mut s) = self.streams.remove(&id) {
                    s.kill();
                    self.dead.extend(s.pid.filter(|_| s.exited.is_none()));
                }
            }
            Kind::Open | Kind::Stderr | Kind::Exit | Kind::Fail => {}
        }
    }

    fn open(&self, open: &Open) -> Result<Stream, String> {
        let mut stream = Stream { pid: None, outs: Vec::new(), input: None, tty: None, credit: WINDOW, exited: None };
        let out = |kind, fd: OwnedFd| {
            nonblocking(&fd);
            Out { kind, file: File::from(fd), open: true }
        };
        let input = |fd: OwnedFd, socket| {
            nonblocking(&fd);
            In { file: File::from(fd), pending: Vec::new(), eof: false, socket }
        };
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        match open {
            Open::Exec { app, argv, tty, size } => {
                let command = enter::start(self.root, app, argv, tty.then_some(*size))?;
                stream.pid = Some(command.pid);
                match command.stdio {
                    Stdio::Pipes { stdin, stdout, stderr } => {
                        stream.outs = vec![out(Kind::Data, stdout), out(Kind::Stderr, stderr)];
                        stream.input = Some(input(stdin, false));
                    }
                    Stdio::Tty(master) => {
                        stream.outs = vec![out(Kind::Data, dup(&master)?)];
                        stream.input = Some(input(dup(&master)?, false));
                        stream.tty = Some(master);
                    }
                }
            }
            Open::Connect { port } => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                    .map_err(|e| format!("connecting to port {port} in the VM: {e}"))?;
                let fd = OwnedFd::from(socket);
                stream.outs = vec![out(Kind::Data, dup(&fd)?)];
                stream.input = Some(input(fd, true));
            }
            Open::Stdin { app } => {
                stream.input = Some(input(open_stdin(self.root, app)?, false));
            }
        }
        Ok(stream)
    }

    /// Moves each stream's bytes, notices ended commands, ends streams.
    fn service(&mut self) {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let reading = self.queued.len() < MAX_QUEUED;
        let mut ended = Vec::new();
        for (&id, s) in &mut self.streams {
            if let Some(i) = s.input.as_mut() {
                let written = write_some(&mut i.file, &mut i.pending);
                if written > 0 {
                    frames.push(Frame::window(id, u32::try_from(written).unwrap_or(u32::MAX)));
                }
                if i.eof && i.pending.is_empty() {
                    if i.socket {
                        let _ = nix::sys::socket::shutdown(i.file.as_raw_fd(), nix::sys::socket::Shutdown::Write);
                    }
                    // A terminal's input is its output too: kept (and the
                    // end of stdin means nothing to it).
                    if s.tty.is_none() {
                        s.input = None;
                    } else {
                        i.eof = false;
                    }
                }
            }
            if let (Some(pid), None) = (s.pid, s.exited) {
                let status = waitpid(pid, Some(WaitPidFlag::WNOHANG)).ok().and_then(Termination::from_wait);
                s.exited = status.map(|(_, end)| (end.exit_code(), Instant::now()));
            }
            for o in s.outs.iter_mut().filter(|o| o.open) {
                while reading && s.credit > 0 {
                    let want = (s.credit as usize).min(buf.len());
                    match o.file.read(&mut buf[..want]) {
                        Ok(0) => o.open = false,
                        Ok(n) => {
                            s.credit -= u32::try_from(n).unwrap_or(s.credit);
                            frames.push(Frame::new(o.kind, id, buf[..n].to_vec()));
                            continue;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        // EIO: a terminal whose last user closed it.
                        Err(_) => o.open = false,
                    }
                    break;
                }
                if !o.open && s.pid.is_none() {
                    // The connection's far side shut: once.
                    frames.push(Frame::new(Kind::Eof, id, Vec::new()));
                }
            }
            if let Some(code) = s.finished() {
                frames.push(Frame::exit(id, code));
                ended.push(id);
            }
        }
        for id in ended {
            self.streams.remove(&id);
        }
        for f in &frames {
            self.send(f);
        }
    }

    /// Writes what is queued for the host, as much as the port takes.
    fn flush(&mut self) {
        write_some(&mut self.port, &mut self.queued);
    }

    fn drop_all(&mut self) {
        for (_, mut s) in std::mem::take(&mut self.streams) {
            s.kill();
            self.dead.extend(s.pid.filter(|_| s.exited.is_none()));
        }
        self.queued.clear();
        self.decoder = Decoder::default();
    }

    fn reap(&mut self) {
        self.dead.retain(|&pid| {
            matches!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Ok(nix::sys::wait::WaitStatus::StillAlive))
        });
    }
}

/// The write end of running app `app`'s stdin FIFO (`stdin/<app>`, which
/// pod-init makes on the guest's tmpfs there: `boot::mount_stdin_dir`).
/// Non-blocking: pod-init holds the read end while the app runs (ENXIO
/// otherwise).
fn open_stdin(root: &Path, app: &str) -> Result<OwnedFd, String> {
    enter::app_pid(&root.join("status"), app)?;
    let path = root.join("stdin").join(app);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&path);
    match file {
        Ok(f) => Ok(OwnedFd::from(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(format!("app {app} has no stdin (stdin: true)")),
        Err(e) => Err(format!("app {app}: its stdin {}: {e}", path.display())),
    }
}

/// Writes the front of `pending` to `w` until it would block; returns how
/// many bytes went. A write error drops what is pending.
fn write_some(w: &mut impl Write, pending: &mut Vec<u8>) -> usize {
    let mut done = 0;
    while done < pending.len() {
        match w.write(&pending[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                // The reader is gone (a command that closed its stdin):
                // what it would not take is acknowledged as taken.
                done = pending.len();
                break;
            }
        }
    }
    pending.drain(..done);
    done
}
