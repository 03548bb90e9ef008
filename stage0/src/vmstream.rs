//! The client of a VM pod's streams (`spec::vm::mux`, served by the VM
//! monitor on `vm/stream.sock`): `pod enter` in a VM pod, with stdin, a
//! terminal when stdin is one, and the command's own stdout, stderr and
//! status; and `pod enter --port`, this process's stdin and stdout joined
//! to a TCP port of the guest's loopback (the CRI's port-forward).
//!
//! Threads: the calling one reads the guest's frames (output to stdout and
//! stderr, each write acknowledged with a window), one copies stdin within
//! the window the guest gives, one passes terminal size changes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use spec::vm::mux::{Decoder, Frame, Kind, Open, MAX_PAYLOAD, WINDOW};

use crate::terminal::{term_size, RawMode};

/// What ended a stream other than its Exit.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The guest could not start it (no such app, connection refused...),
    /// or the VM ended.
    #[error("{0}")]
    Guest(String),
}

/// The socket writer, shared by the threads that send frames.
#[derive(Clone)]
struct Sender(Arc<Mutex<UnixStream>>);

impl Sender {
    fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut s = self.0.lock().map_err(|_| io::Error::other("a sender panicked"))?;
        s.write_all(&frame.encode())
    }
}

/// The window the guest gives this side's data.
#[derive(Default)]
struct Credit {
    left: Mutex<u32>,
    more: Condvar,
}

impl Credit {
    fn add(&self, n: u32) {
        if let Ok(mut left) = self.left.lock() {
            *left = left.saturating_add(n);
            self.more.notify_all();
        }
    }

    /// Waits for some window; takes up to `want` of it.
    fn take(&self, want: usize) -> usize {
        let Ok(mut left) = self.left.lock() else { return 0 };
        while *left == 0 {
            left = match self.more.wait(left) {
                Ok(l) => l,
                Err(_) => return 0,
            };
        }
        let n = want.min(*left as usize);
        *left -= u32::try_from(n).unwrap_or(*left);
        n
    }
}

/// Opens stream `open` at `socket`; returns the reading side and the
/// sender.
fn connect(socket: &Path, open: &Open) -> Result<(UnixStream, Sender), StreamError> {
    let io = |op| move |source| StreamError::Io { op, path: socket.to_owned(), source };
    let stream = UnixStream::connect(socket).map_err(io("connect to"))?;
    let writer = Sender(Arc::new(Mutex::new(stream.try_clone().map_err(io("clone"))?)));
    writer.send(&open.frame(0)).map_err(io("write to"))?;
    Ok((stream, writer))
}

/// Copies `input` to the stream within the guest's window; sends Eof at
/// its end.
fn spawn_input(mut input: impl Read + Send + 'static, writer: Sender, credit: Arc<Credit>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = credit.take(buf.len());
            if n == 0 {
                return;
            }
            let got = loop {
                match input.read(&mut buf[..n]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match got {
                Ok(0) | Err(_) => {
                    let _ = writer.send(&Frame::new(Kind::Eof, 0, Vec::new()));
                    return;
                }
                Ok(got) => {
                    // Window not used goes back.
                    credit.add(u32::try_from(n - got).unwrap_or(0));
                    if writer.send(&Frame::new(Kind::Data, 0, buf[..got].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Where the guest's output goes.
struct Outputs<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    /// The far side shut its writing (a connection).
    on_eof: &'a mut dyn FnMut(),
    /// Kill the stream when its output cannot be written (a connection
    /// nobody reads); otherwise the output is dropped and the command
    /// runs on.
    kill_unread: bool,
}

/// Reads the guest's frames until the stream's end: output to `out`
/// (each write acknowledged), window to `credit`.
fn pump_output(
    mut reader: UnixStream,
    mut decoder: Decoder,
    writer: &Sender,
    credit: &Credit,
    out: Outputs<'_>,
) -> Result<i32, StreamError> {
    let mut buf = vec![0u8; 64 * 1024];
    let broken = |e: io::Error| StreamError::Guest(format!("the VM's stream broke: {e}"));
    loop {
        while let Some(frame) = decoder.next_frame().map_err(|e| StreamError::Guest(e.to_string()))? {
            match frame.kind {
                Kind::Data | Kind::Stderr => {
                    let w: &mut dyn Write = if frame.kind == Kind::Data { &mut *out.stdout } else { &mut *out.stderr };
                    // A reader gone (a closed pipe) drops the output; the
                    // command still runs to its end.
                    if w.write_all(&frame.payload).and_then(|()| w.flush()).is_err() && out.kill_unread {
                        let _ = writer.send(&Frame::new(Kind::Kill, 0, Vec::new()));
                        return Err(StreamError::Guest("the forwarded connection's reader is gone".into()));
                    }
                    let n = u32::try_from(frame.payload.len()).unwrap_or(0);
                    // The stream may have ended already (its Exit on the
                    // way, the router gone): the frames still to read say.
                    let _ = writer.send(&Frame::window(0, n));
                }
                Kind::Window => credit.add(frame.count()),
                Kind::Eof => (out.on_eof)(),
                Kind::Exit => return Ok(frame.code().unwrap_or(-1)),
                Kind::Fail => return Err(StreamError::Guest(String::from_utf8_lossy(&frame.payload).into_owned())),
                Kind::Open | Kind::Resize | Kind::Kill => {}
            }
        }
        match reader.read(&mut buf) {
            Ok(0) => return Err(StreamError::Guest("the VM's stream closed without an end".into())),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(broken(e)),
        }
    }
}

/// Runs `argv` in app `app` through the streams at `socket`, with this
/// process's stdio; on a terminal of the guest's when `tty` (`pod enter
/// -t`: the user's raw while it runs when stdin is one, its size passed
/// on). Returns the command's status.
pub fn exec(socket: &Path, app: &str, argv: &[String], tty: bool) -> Result<i32, StreamError> {
    // The size goes with the request: the command may ask for it at once.
    let size = if tty { term_size() } else { None };
    let open = Open::Exec { app: app.to_owned(), argv: argv.to_vec(), tty, size };
    // Blocked before any thread starts, so only the size thread takes it.
    let mut winch = nix::sys::signal::SigSet::empty();
    winch.add(nix::sys::signal::Signal::SIGWINCH);
    if tty {
        let _ = winch.thread_block();
    }
    let (stream, writer) = connect(socket, &open)?;
    let _raw = tty.then(RawMode::enter).flatten();
    if tty {
        let sizes = writer.clone();
        std::thread::spawn(move || {
            while winch.wait().is_ok() {
                if let Some((cols, rows)) = term_size() {
                    if sizes.send(&Frame::resize(0, cols, rows)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let credit = Arc::new(Credit { left: Mutex::new(WINDOW), more: Condvar::new() });
    spawn_input(io::stdin(), writer.clone(), credit.clone());
    let out = Outputs { stdout: &mut io::stdout(), stderr: &mut io::stderr(), on_eof: &mut || {}, kill_unread: false };
    pump_output(stream, Decoder::default(), &writer, &credit, out)
}

/// A TCP connection to a port of the guest's loopback, made.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    decoder: Decoder,
    writer: Sender,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl Connection {
    /// Connects to the guest's 127.0.0.1:`port` through the streams at
    /// `socket`; returns once the guest has (its first frame: a window of
    /// 0), or with why it could not.
    pub fn open(socket: &Path, port: u16) -> Result<Connection, StreamError> {
        let (stream, decoder, writer) = opened(socket, &Open::Connect { port })?;
        Ok(Connection { stream, decoder, writer })
    }

    /// Copies `input` to the connection and the connection to `output`
    /// until both ways end (`on_eof` when the guest's side shut); the
    /// connection is dropped in the guest if `output` stops taking bytes.
    pub fn run(
        self,
        input: impl Read + Send + 'static,
        output: &mut dyn Write,
        on_eof: &mut dyn FnMut(),
    ) -> Result<(), StreamError> {
        let credit = Arc::new(Credit { left: Mutex::new(WINDOW), more: Condvar::new() });
        spawn_input(input, self.writer.clone(), credit.clone());
        let out = Outputs { stdout: output, stderr: &mut io::sink(), on_eof, kill_unread: true };
        pump_output(self.stream, self.decoder, &self.writer, &credit, out).map(drop)
    }
}

/// Opens stream `open` at `socket` and waits for the guest's first frame,
/// a window of 0 (it is open), or why it could not.
fn opened(socket: &Path, open: &Open) -> Result<(UnixStream, Decoder, Sender), StreamError> {
    let (mut stream, writer) = connect(socket, open)?;
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_frame().map_err(|e| StreamError::Guest(e.to_string()))? {
            Some(f) if f.kind == Kind::Fail => {
                return Err(StreamError::Guest(String::from_utf8_lossy(&f.payload).into_owned()))
            }
            Some(f) if f.kind == Kind::Window && f.count() == 0 => break,
            Some(f) => return Err(StreamError::Guest(format!("the VM's stream began with {f:?}"))),
            None => {}
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(StreamError::Guest("the VM's stream closed without an answer".into())),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::Guest(format!("the VM's stream broke: {e}"))),
        }
    }
    Ok((stream, decoder, writer))
}

/// The stdin FIFO of an app in the VM, written through a stream
/// ([`Open::Stdin`]): `pod attach` and `pod run -i` in a VM pod. Writes
/// block while the guest's window is used up (the app reads slowly).
#[derive(Debug)]
pub struct AppStdin {
    stream: UnixStream,
    decoder: Decoder,
    credit: u32,
}

impl AppStdin {
    /// Opens running app `app`'s stdin through the streams at `socket`.
    pub fn open(socket: &Path, app: &str) -> Result<AppStdin, StreamError> {
        let (stream, decoder, _) = opened(socket, &Open::Stdin { app: app.to_owned() })?;
        Ok(AppStdin { stream, decoder, credit: WINDOW })
    }

    /// Reads the guest's frames (its windows) that came; with `block`,
    /// waits for at least one read.
    fn read_frames(&mut self, block: bool) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        self.stream.set_nonblocking(!block)?;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the VM's stream closed")),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            break;
        }
        while let Some(f) = self.decoder.next_frame().map_err(io::Error::other)? {
            match f.kind {
                Kind::Window => self.credit = self.credit.saturating_add(f.count()),
                // The app's stdin is gone (the app ended, the VM too).
                Kind::Exit | Kind::Fail => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the app's stdin closed"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes `data` into the app's stdin, within the guest's window.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.read_frames(false)?;
        while !data.is_empty() {
            if self.credit == 0 {
                self.read_frames(true)?;
                continue;
            }
            let n = data.len().min(self.credit as usize).min(MAX_PAYLOAD);
            self.stream.set_nonblocking(false)?;
            self.stream.write_all(&Frame::new(Kind::Data, 0, data[..n].to_vec()).encode())?;
            self.credit -= u32::try_from(n).unwrap_or(self.credit);
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the stream once the guest has written all that was sent (its
    /// Exit comes after), so that a `close-stdin` after it loses nothing.
    pub fn finish(mut self) {
        let sent = self
            .stream
            .set_nonblocking(false)
            .and_then(|()| self.stream.write_all(&Frame::new(Kind::Eof, 0, Vec::new()).encode()));
        if sent.is_err() {
            return;
        }
        let limit = std::time::Duration::from_secs(10);
        let until = std::time::Instant::now() + limit;
        let _ = self.stream.set_read_timeout(Some(limit));
        while std::time::Instant::now() < until && self.read_frames(true).is_ok() {}
    }
}

/// Joins this process's stdin and stdout to the guest's 127.0.0.1:`port`
/// through the streams at `socket`, until both ways have ended.
pub fn connect_port(socket: &Path, port: u16) -> Result<(), StreamError> {
    Connection::open(socket, port)?.run(io::stdin(), &mut io::stdout(), &mut || {})
}
