//! The guest's agents on the virtio-serial ports: one forked process per
//! port, so PID 1 stays single-threaded with its one poll loop. The ctl
//! agent turns `stop` into SIGTERM for PID 1 and relays the host's control
//! requests to PID 1's guest-local control socket (`spec::vm::relay`); the
//! stream agent runs commands in apps and connects to the guest's
//! loopback (`streams.rs`); the metadata agent passes the apps' requests
//! to the metadata service (`metadata.rs`).
//!
//! While nothing is connected on the host side, a port reads EOF and polls
//! as hung up; the agents then sleep [`IDLE`] and look again, never spin.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use spec::control::{ErrorKind, Response, MAX_RESPONSE};
use spec::vm::{relay, CTL_PORT, CTL_STOP, ENTER_PORT, METADATA_PORT};

use crate::log;
use crate::sys::{self, Fork};

/// The pause between looks at a port nobody on the host has open.
const IDLE: Duration = Duration::from_millis(200);
/// How long an agent waits for its port to be named (the host names ports
/// shortly after the device appears).
const PORT_WAIT: Duration = Duration::from_secs(5);
/// A request line longer than this is dropped.
const MAX_LINE: usize = 1 << 20;

/// The device name (`vport0p1`) of the virtio-serial port called `name`,
/// from `class_dir` (`/sys/class/virtio-ports`).
pub(crate) fn find_port(class_dir: &Path, name: &str) -> Option<String> {
    // Port names are unique: the first match is the one.
    std::fs::read_dir(class_dir).ok()?.flatten().find_map(|port| {
        let named = std::fs::read_to_string(port.path().join("name")).ok()?;
        (named.trim_end() == name).then(|| port.file_name().into_string().ok()).flatten()
    })
}

/// Splits a byte stream into lines; a line over [`MAX_LINE`] is dropped
/// whole.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// In the middle of an overlong line: skip to its newline.
    skipping: bool,
}

impl Lines {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, without its newline.
    pub(crate) fn next_line(&mut self) -> Option<String> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    self.buf.clear();
                    self.skipping = true;
                }
                return None;
            };
            let line: Vec<u8> = self.buf.drain(..=end).take(end).collect();
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// The host side went away: a partial line is meaningless now.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.skipping = false;
    }
}

/// An open virtio-serial port.
#[derive(Debug)]
pub(crate) struct Port {
    file: File,
    lines: Lines,
}

impl Port {
    /// Blocks until the host sends a whole line.
    pub(crate) fn read_line(&mut self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(line) = self.lines.next_line() {
                return line;
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::NONE).map(|_| fds[0].revents().unwrap_or(PollFlags::empty()));
            match ready {
                Ok(r) if r.contains(PollFlags::POLLIN) => match self.file.read(&mut buf) {
                    Ok(0) | Err(_) => self.idle(),
                    Ok(n) => self.lines.push(&buf[..n]),
                },
                // Hung up (no host side) or an error: wait, look again.
                Ok(_) | Err(_) => self.idle(),
            }
        }
    }

    fn idle(&mut self) {
        self.lines.reset();
        std::thread::sleep(IDLE);
    }

    /// The port itself, for an agent with a loop of its own.
    pub(crate) fn into_file(self) -> File {
        self.file
    }

    /// Sends bytes to the host.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }
}

/// Waits for the port named `name` and opens it; `None` (logged) if it
/// never appears.
fn open_port(name: &str) -> Option<Port> {
    let class_dir = Path::new("/sys/class/virtio-ports");
    let deadline = Instant::now() + PORT_WAIT;
    let dev = loop {
        match find_port(class_dir, name) {
            Some(dev) => break PathBuf::from("/dev").join(dev),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => {
                log!("no virtio-serial port named {name} in {}", class_dir.display());
                return None;
            }
        }
    };
    match std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
        Ok(file) => Some(Port { file, lines: Lines::default() }),
        Err(e) => {
            log!("{} ({name}): {e}", dev.display());
            None
        }
    }
}

/// Forks one agent serving `port_name`; PID 1 reaps it like any child.
fn spawn(port_name: &'static str, serve: impl FnOnce(Port)) {
    match sys::fork() {
        Ok(Fork::Parent(_)) => {}
        Err(e) => log!("fork agent for {port_name}: {e}"),
        Ok(Fork::Child) => {
            // Not PID 1's blocked signals and ignored SIGPIPE: SIGTERM from
            // the shutdown and a closed pipe must end an agent.
            sys::reset_signal_dispositions();
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            if let Ok(name) = CString::new(format!("pod-init {port_name}")) {
                let _ = nix::sys::prctl::set_name(&name);
            }
            if let Some(port) = open_port(port_name) {
                serve(port);
            }
            sys::exit_now(0)
        }
    }
}

/// Starts the ctl and enter agents for the pod at `root`, and the
/// metadata agent on `metadata` if the pod has the service.
pub(crate) fn start_all(root: &Path, metadata: Option<std::net::TcpListener>) {
    spawn(CTL_PORT, serve_ctl);
    let root = root.to_owned();
    spawn(ENTER_PORT, move |port| super::streams::serve(port.into_file(), &root));
    if let Some(listener) = metadata {
        // PID 1's copy goes with the closure when this returns.
        spawn(METADATA_PORT, move |port| super::metadata::serve(port.into_file(), &listener));
    }
}

/// `stop` → SIGTERM to PID 1, which has it blocked and reads it from its
/// signalfd: a stop requested before the supervisor runs is kept.
/// `control <seq> <request>` → the request to PID 1's control socket, its
/// answer back to the host.
fn serve_ctl(mut port: Port) {
    loop {
        let line = port.read_line();
        if let Some((seq, request)) = relay::decode_request(&line) {
            let answer = ask_pid1(Path::new(relay::GUEST_CONTROL_SOCKET), request);
            if let Err(e) = port.send(&relay::encode_answer(seq, &answer)) {
                log!("ctl: answer: {e}");
            }
            continue;
        }
        match line.trim() {
            CTL_STOP => {
                if let Err(e) = kill(Pid::from_raw(1), Signal::SIGTERM) {
                    log!("ctl: stop: {e}");
                }
            }
            "" => {}
            other => log!("ctl: unknown command {other:?}"),
        }
    }
}

/// How long PID 1 may take to answer a relayed request (it answers at
/// once, between two turns of its loop).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one control request line to PID 1 at `socket` and returns its
/// whole answer; a PID 1 that cannot be asked (not serving yet, or gone)
/// is answered for, as a `conflict` naming why.
pub(crate) fn ask_pid1(socket: &Path, request: &str) -> Vec<u8> {
    let asked = UnixStream::connect(socket).and_then(|mut s| {
        s.set_read_timeout(Some(ASK_TIMEOUT))?;
        s.set_write_timeout(Some(ASK_TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        s.write_all(b"\n")?;
        let mut answer = Vec::new();
        (&mut s).take(MAX_RESPONSE as u64).read_to_end(&mut answer)?;
        Ok(answer)
    });
    match asked {
        Ok(answer) if !answer.is_empty() => answer,
        Ok(_) => refusal("the guest's pod-init closed the control channel without an answer"),
        Err(e) => refusal(&format!("the guest's pod-init is not serving its control channel: {e}")),
    }
}

fn refusal(message: &str) -> Vec<u8> {
    Response::Error { kind: ErrorKind::Conflict, message: message.to_owned() }.render().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_found_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_port(dir.path(), CTL_PORT), None);
        for (dev, name) in [("vport0p0", None), ("vport0p1", Some("pod.ctl\n")), ("vport0p2", Some("pod.enter\n"))] {
            std::fs::create_dir(dir.path().join(dev)).expect("mkdir");
            if let Some(name) = name {
                std::fs::write(dir.path().join(dev).join("name"), name).expect("write");
            }
        }
        assert_eq!(find_port(dir.path(), CTL_PORT).as_deref(), Some("vport0p1"));
        assert_eq!(find_port(dir.path(), ENTER_PORT).as_deref(), Some("vport0p2"));
        assert_eq!(find_port(dir.path(), "pod.other"), None);
    }

    #[test]
    fn control_requests_reach_pid1_and_a_silent_pid1_is_answered_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let missing = String::from_utf8(ask_pid1(&socket, "pod-control 1 inspect")).expect("utf8");
        assert!(missing.starts_with("pod-control 1 error conflict ") && missing.contains("not serving"), "{missing}");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut line = [0u8; 22];
            s.read_exact(&mut line).expect("read");
            s.write_all(b"pod-control 1 ok\napp a ready 5 - - 0 \n").expect("write");
            line
        });
        let answer = ask_pid1(&socket, "pod-control 1 inspect");
        assert_eq!(&server.join().expect("server"), b"pod-control 1 inspect\n");
        assert_eq!(answer, b"pod-control 1 ok\napp a ready 5 - - 0 \n");
    }

    #[test]
    fn lines_split_across_reads_and_drop_overlong_ones() {
        let mut lines = Lines::default();
        lines.push(b"sto");
        assert_eq!(lines.next_line(), None);
        lines.push(b"p\nenter\ta\tb\nhal");
        assert_eq!(lines.next_line().as_deref(), Some("stop"));
        assert_eq!(lines.next_line().as_deref(), Some("enter\ta\tb"));
        assert_eq!(lines.next_line(), None);
        lines.reset();
        lines.push(b"f\n");
        assert_eq!(lines.next_line().as_deref(), Some("f"), "a reset drops the partial line");
        lines.push(&vec![b'x'; MAX_LINE + 1]);
        assert_eq!(lines.next_line(), None);
        lines.push(b"xxx\nstop\n");
        assert_eq!(lines.next_line().as_deref(), Some("stop"), "the overlong line is skipped whole");
    }
}
