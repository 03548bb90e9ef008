//! `pod attach` and `pod run -it`: a running app's terminal (`terminal:
//! true`) or output, and its stdin, on the user's terminal.
//!
//! As the CRI's attach (cri/src/streaming/attach.rs, which shares
//! [`stdin_fifo`] and [`parse_cri_line`] from here): pod-init logs the
//! app's output (a terminal's as it comes, as stdout) to its log file, so
//! attach follows the log (no second copy of the output is kept), and
//! writes what the user types into the app's stdin FIFO (`stdin: true`),
//! which pod-init types into the app's terminal. The window size goes to
//! pod-init's `resize` at the start and on every SIGWINCH. The user's
//! terminal is raw while attached to a terminal app, so ^C and ^D are
//! typed into the app's terminal and its line discipline acts on them.
//! The detach keys (ctrl-p ctrl-q by default) leave the app running.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use spec::stage1::{Isolation, ResolvedPod};
use spec::AcName;

use crate::control::{self, ControlError};
use crate::exit::{Exit, ExitCodeOf};
use crate::lifecycle;
use crate::pods::{PodRef, PodState};
use crate::terminal::{self, DetachKeys, RawMode, Signalled, Signals};

/// How often the log is read for more.
const POLL: Duration = Duration::from_millis(25);
/// Every how many polls the app's state is read.
const STATE_EVERY: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("pod {uuid} has no app {app}")]
    NoApp { uuid: String, app: String },
    #[error("pod {uuid} is {state}, not running")]
    PodNotRunning { uuid: String, state: PodState },
    #[error("pod {uuid}: app {app} is {state}, not running")]
    AppNotRunning { uuid: String, app: String, state: String },
    #[error("pod {uuid}: app {app} has no stdin to write to (its pod file says neither `stdin: true` nor `terminal: true`; `pod run -i` gives it one)")]
    NoStdin { uuid: String, app: String },
    #[error("pod {uuid}: the stdin of app {app} in the VM: {why}")]
    Vm { uuid: String, app: String, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl ExitCodeOf for AttachError {
    fn exit(&self) -> Exit {
        match self {
            Self::NoApp { .. } => Exit::NotFound,
            Self::PodNotRunning { .. } | Self::AppNotRunning { .. } | Self::NoStdin { .. } => Exit::Conflict,
            Self::Vm { .. } | Self::Io { .. } => Exit::Failure,
            Self::Control(e) => e.exit(),
        }
    }
}

/// How to attach.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Write stdin into the app's FIFO: `Some(true)` requires one,
    /// `Some(false)` uses it if the app has one, `None` never.
    pub stdin: Option<bool>,
    /// The detach sequence (empty: none).
    pub detach_keys: Vec<u8>,
    /// Show the log from its start (`pod run -it`: all the app wrote),
    /// else from its end now.
    pub from_start: bool,
    /// At the end of stdin, have pod-init let go of the FIFO, so the app
    /// reads end-of-file (^D on a terminal): `pod run -i`.
    pub close_at_eof: bool,
}

/// How attaching ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The app ended with this status (128+signal if killed).
    Exited(i32),
    /// The user typed the detach keys: the app runs on.
    Detached,
    /// `pod` itself got SIGTERM, SIGHUP or SIGINT: 128+signal. The app
    /// runs on.
    Signalled(i32),
}

/// The app's stdin FIFO in its pod directory (pod-init makes it for an
/// app with `stdin: true`, `Stdin=fifo`).
pub fn stdin_fifo(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join("stdin").join(app)
}

/// One line of a CRI-format log: whether it is stderr, whether the line
/// is whole (`F`) or a part (`P`), and its text.
pub fn parse_cri_line(line: &[u8]) -> Option<(bool, bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let stderr = match parts.next()? {
        b"stdout" => false,
        b"stderr" => true,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        // Tags may carry more than F/P, ':'-separated.
        t => !t.split(|b| *b == b':').any(|x| x == b"P"),
    };
    Some((stderr, full, parts.next().unwrap_or_default()))
}

/// The app's state and status (128+signal if killed), from its status
/// file.
fn app_state(pod: &PodRef, resolved: &ResolvedPod, app: &str) -> (String, Option<i32>) {
    let st = lifecycle::app_statuses(&pod.dir, resolved).into_iter().find(|a| a.app == app).unwrap_or_default();
    let code = match (st.exit_code, st.signal) {
        (_, Some(sig)) => Some(128 + i32::try_from(sig).unwrap_or(0)),
        (Some(c), None) => Some(i32::try_from(c).unwrap_or(1)),
        _ => None,
    };
    (st.state, code)
}

fn ended(state: &str) -> bool {
    matches!(state, "exited" | "failed" | "stopped")
}

/// Where the user's input goes: the app's stdin FIFO, or, in a VM, a
/// stream to the guest's.
enum Input {
    Fifo(OwnedFd),
    Vm(crate::vmstream::AppStdin),
}

impl Input {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Input::Fifo(fd) => terminal::write_all_nb(fd.as_fd(), data),
            Input::Vm(s) => s.write(data),
        }
    }
}

/// The app's output, read from its log file as it grows (a VM's too: its
/// pod-init writes it on the pod directory's share).
struct Follow {
    path: PathBuf,
    file: Option<File>,
    /// A CRI-format log: lines to unwrap; what is not a whole line yet.
    cri: Option<Vec<u8>>,
    tty: bool,
}

impl Follow {
    /// Copies what the log has now to stdout (stderr lines of a CRI log
    /// to stderr); `true` if there was any.
    fn pump(&mut self) -> bool {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else { return false };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() || buf.is_empty() {
            return false;
        }
        let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
        match self.cri.as_mut() {
            None => {
                let _ = out.write_all(&buf);
            }
            Some(pending) => {
                pending.extend_from_slice(&buf);
                let mut start = 0;
                while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
                    if let Some((stderr, full, text)) = parse_cri_line(&pending[start..start + nl]) {
                        let w: &mut dyn Write = if stderr && !self.tty { &mut err } else { &mut out };
                        let _ = w.write_all(text);
                        if full {
                            let _ = w.write_all(b"\n");
                        }
                    }
                    start += nl + 1;
                }
                pending.drain(..start);
            }
        }
        let _ = out.flush();
        let _ = err.flush();
        true
    }
}

/// Attaches the user's terminal to app `app` of a running pod until the
/// app ends, the user detaches or `pod` is signalled.
pub fn attach(pod: &PodRef, resolved: &ResolvedPod, app: &str, opts: &AttachOptions) -> Result<Attached, AttachError> {
    let uuid = pod.uuid.clone();
    let Some(spec) = resolved.apps.iter().find(|a| a.name.as_str() == app) else {
        return Err(AttachError::NoApp { uuid, app: app.to_owned() });
    };
    if pod.state != PodState::Running {
        return Err(AttachError::PodNotRunning { uuid, state: pod.state });
    }
    let has_stdin = spec.stdin;
    if opts.stdin == Some(true) && !has_stdin {
        return Err(AttachError::NoStdin { uuid, app: app.to_owned() });
    }
    let name = AcName::new(app).map_err(|_| AttachError::NoApp { uuid: uuid.clone(), app: app.to_owned() })?;
    let (state, _) = app_state(pod, resolved, app);
    // `pod run -it` shows an app that ended at once too.
    if ended(&state) && !opts.from_start {
        return Err(AttachError::AppNotRunning { uuid, app: app.to_owned(), state });
    }
    let log = lifecycle::app_log_file(&pod.dir, resolved, app);
    let mut follow = Follow {
        path: log.clone(),
        file: None,
        cri: spec.log.as_ref().filter(|l| l.format == spec::stdio::LogFormat::Cri).map(|_| Vec::new()),
        tty: spec.tty,
    };
    if !opts.from_start {
        if let Ok(mut f) = File::open(&log) {
            f.seek(SeekFrom::End(0)).map_err(|e| AttachError::Io { op: "seek", path: log.clone(), source: e })?;
            follow.file = Some(f);
        }
    }
    let input = opts.stdin.is_some() && has_stdin;
    let vm = resolved.isolation == Isolation::Vm;
    let fifo = if input && vm {
        // The FIFO is the guest's (on its tmpfs): written through a stream.
        match crate::vmstream::AppStdin::open(&pod.dir.join("vm").join("stream.sock"), app) {
            Ok(s) => Some(Input::Vm(s)),
            Err(_) if opts.from_start => None,
            Err(e) => return Err(AttachError::Vm { uuid, app: app.to_owned(), why: e.to_string() }),
        }
    } else if input {
        let path = stdin_fifo(&pod.dir, app);
        // Without blocking: pod-init holds the read end while the app
        // runs (ENXIO otherwise).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).bits())
            .open(&path);
        match f {
            Ok(f) => Some(Input::Fifo(OwnedFd::from(f))),
            // Ended already (no reader): its output is still shown.
            Err(_) if opts.from_start => None,
            Err(e) => return Err(AttachError::Io { op: "open the stdin of", path, source: e }),
        }
    } else {
        None
    };
    let mut signals =
        Signals::new().map_err(|e| AttachError::Io { op: "block signals for", path: "pod".into(), source: e })?;
    let user_tty = terminal::stdin_is_tty();
    let resize = |pod: &PodRef| {
        if let Some((cols, rows)) = terminal::term_size() {
            let _ = control::resize(pod, &name, rows, cols);
        }
    };
    if spec.tty && user_tty {
        resize(pod);
    }
    let raw = if spec.tty && input { RawMode::enter() } else { None };
    let mut keys = DetachKeys::new(if user_tty { opts.detach_keys.clone() } else { Vec::new() });
    let stdin = io::stdin();
    let mut fifo = fifo;
    let mut stdin_open = input;
    let mut buf = vec![0u8; 16 * 1024];
    let mut polls = 0u32;
    let outcome = loop {
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::NONE);
        let _ = poll(&mut fds, timeout);
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if ready[0] {
            let mut quit = None;
            for s in signals.read() {
                match s {
                    Signalled::Resized if spec.tty => resize(pod),
                    Signalled::Resized => {}
                    Signalled::Quit(code) => quit = Some(code),
                }
            }
            if let Some(code) = quit {
                break Attached::Signalled(code);
            }
        }
        if stdin_open && ready.get(1).copied().unwrap_or(false) {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    stdin_open = false;
                    if let Some(Input::Vm(s)) = fifo.take() {
                        s.finish();
                    }
                    if opts.close_at_eof {
                        let _ = control::close_stdin(pod, &name);
                    }
                }
                Ok(n) => {
                    let (data, detach) = keys.feed(&buf[..n]);
                    if let Some(fifo) = fifo.as_mut() {
                        if fifo.write(&data).is_err() {
                            stdin_open = false;
                        }
                    }
                    if detach {
                        break Attached::Detached;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => stdin_open = false,
            }
        }
        if follow.pump() {
            continue;
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(STATE_EVERY) {
            let (state, code) = app_state(pod, resolved, app);
            let gone = !crate::pods::is_locked(&pod.dir);
            if ended(&state) || gone {
                // What it wrote last: pod-init logs it before the status.
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until {
                    if !follow.pump() {
                        std::thread::sleep(POLL);
                    }
                }
                let code = code.or_else(|| spec::stage1::read_exit(&pod.dir)).unwrap_or(1);
                break Attached::Exited(code);
            }
        }
    };
    drop(raw);
    if outcome == Attached::Detached {
        eprintln!();
    }
    Ok(outcome)
}

/// Waits until a pod whose apps have all ended is released by its stage1
/// (at most `limit`), so that it is `exited` once `pod run -it` returns.
pub fn wait_pod_end(pod: &PodRef, resolved: &ResolvedPod, limit: Duration) {
    let all_ended = lifecycle::app_statuses(&pod.dir, resolved).iter().all(|a| ended(&a.state));
    if !all_ended || resolved.sandbox {
        return;
    }
    let start = Instant::now();
    while crate::pods::is_locked(&pod.dir) && start.elapsed() < limit {
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_split_by_stream_and_part() {
        assert_eq!(parse_cri_line(b"2026-01-01T00:00:00Z stdout F hi"), Some((false, true, &b"hi"[..])));
        assert_eq!(parse_cri_line(b"2026-01-01T00:00:00Z stderr P par"), Some((true, false, &b"par"[..])));
        assert_eq!(parse_cri_line(b"2026-01-01T00:00:00Z stdout F"), Some((false, true, &b""[..])));
        assert_eq!(parse_cri_line(b"garbage"), None);
    }
}
