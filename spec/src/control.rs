//! pod-init's control channel: a tiny, versioned, line-based protocol over
//! a unix stream socket (`control.sock` in the pod directory of a namespace
//! pod), one request per connection.
//!
//! A request is one line, `pod-control <version> <verb> [<app> [<seconds>]]\n`:
//!
//! ```text
//! pod-control 1 inspect
//! pod-control 1 stop db
//! pod-control 1 stop db 2.5   (SIGKILL after 2.5 s, not the unit's TimeoutStopSec; 0: at once)
//! pod-control 1 start db
//! pod-control 1 add db
//! pod-control 1 remove db
//! pod-control 1 reopen-log db (close the app's log file, open its path anew)
//! pod-control 1 close-stdin db (pod-init lets go of the app's stdin FIFO)
//! pod-control 1 resize db 24 80 (the app's terminal is now 24 rows of 80 columns)
//! ```
//!
//! `stop` with a timeout, `reopen-log`, `close-stdin` and `resize` came later within version 1: a
//! pod-init that predates them refuses them as a bad request, and every
//! request it knew reads as it did.
//!
//! The answer is a head line, `pod-control <version> ok\n` or
//! `pod-control <version> error <kind> <message>\n`, and after an `ok` to
//! `inspect` one line per app, in start order, fields separated by one
//! space, `-` for none, the message last (the rest of the line, with `\`,
//! newline and carriage return escaped as `\\`, `\n`, `\r`):
//!
//! ```text
//! app <name> <state> <pid> <exit code> <signal> <restarts> <message>
//! ```
//!
//! Text, not JSON: pod-init (a static PID 1 with an RSS budget) renders and
//! parses it by hand. Either side refuses a head line of another version,
//! naming both versions. Parsing never panics, whatever the bytes.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::AcName;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Every line of a head starts with this word.
pub const MAGIC: &str = "pod-control";
/// The socket's name in the pod directory (`/control.sock` inside the pod).
pub const SOCKET: &str = "control.sock";
/// The longest request line pod-init reads (an AC name is at most 255 bytes).
pub const MAX_REQUEST: usize = 512;
/// The longest answer a client reads.
pub const MAX_RESPONSE: usize = 1 << 20;

/// What a client asks pod-init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Every app's state.
    Inspect,
    /// Stop an app (its stop signal, SIGKILL after its `TimeoutStopSec`); it
    /// is not restarted and the pod keeps running.
    Stop(AcName),
    /// Start a stopped or ended app again, as at boot.
    Start(AcName),
    /// Stop an app as [`Request::Stop`], SIGKILL after this grace instead
    /// of its `TimeoutStopSec` (zero: SIGKILL at once, as kubelet's
    /// StopContainer with timeout 0).
    StopWithin(AcName, Duration),
    /// Add an app whose unit and rootfs are prepared.
    Add(AcName),
    /// Remove an ended app.
    Remove(AcName),
    /// Close the app's log file and open its path again (a new file once
    /// the old one was renamed away: log rotation, CRI's
    /// ReopenContainerLog). Refused unless the app runs.
    ReopenLog(AcName),
    /// Close pod-init's own write end of the app's stdin FIFO, so the app
    /// reads end-of-file once the writers it has now are gone (CRI's
    /// `stdin_once`: the first attach's stdin is the app's whole input).
    CloseStdin(AcName),
    /// Set the size of the app's terminal (`TTY=yes`): rows, columns. The
    /// app's foreground process group gets SIGWINCH.
    Resize(AcName, u16, u16),
}

impl Request {
    /// The app the request is about, if any.
    pub fn app(&self) -> Option<&AcName> {
        match self {
            Request::Inspect => None,
            Request::Stop(a)
            | Request::StopWithin(a, _)
            | Request::Start(a)
            | Request::Add(a)
            | Request::Remove(a)
            | Request::ReopenLog(a)
            | Request::CloseStdin(a)
            | Request::Resize(a, ..) => Some(a),
        }
    }
}

/// Why pod-init refused a request; the wire word is [`ErrorKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request's protocol version is not the server's.
    Version,
    /// The request line is malformed.
    BadRequest,
    /// The pod has no app of that name.
    NoSuchApp,
    /// The verb exists but this pod-init does not serve it.
    Unsupported,
    /// The request conflicts with the state (the pod is stopping, ...).
    Conflict,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Version => "version",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::NoSuchApp => "no-such-app",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Conflict => "conflict",
        }
    }

    fn parse(word: &str) -> Option<ErrorKind> {
        [Self::Version, Self::BadRequest, Self::NoSuchApp, Self::Unsupported, Self::Conflict]
            .into_iter()
            .find(|k| k.as_str() == word)
    }
}

/// One app as pod-init sees it: what its status file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    pub name: String,
    /// As in the status file: waiting, starting, running, ready,
    /// restarting, exited, failed, stopped.
    pub state: String,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub restarts: u32,
    pub message: String,
}

/// pod-init's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Done; the apps for `inspect`, empty otherwise.
    Ok(Vec<AppInfo>),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// A line that is not this protocol, or of another version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("control protocol version {theirs}, but this side speaks version {ours}")]
    Version { theirs: u32, ours: u32 },
    #[error("malformed control {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

fn malformed(what: &'static str, why: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed { what, why: why.into() }
}

/// `pod-control <version> ` off the front of a line, the version checked.
fn head<'a>(line: &'a str, what: &'static str) -> Result<&'a str, ProtocolError> {
    let rest = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed(what, format!("does not start with {MAGIC:?}")))?;
    let (version, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let theirs: u32 = version.parse().map_err(|_| malformed(what, format!("version {version:?}")))?;
    if theirs != VERSION {
        return Err(ProtocolError::Version { theirs, ours: VERSION });
    }
    Ok(rest)
}

impl Request {
    /// The request line, newline included.
    pub fn render(&self) -> String {
        let verb = match self {
            Request::Inspect => "inspect",
            Request::Stop(_) | Request::StopWithin(..) => "stop",
            Request::Start(_) => "start",
            Request::Add(_) => "add",
            Request::Remove(_) => "remove",
            Request::ReopenLog(_) => "reopen-log",
            Request::CloseStdin(_) => "close-stdin",
            Request::Resize(..) => "resize",
        };
        match (self.app(), self) {
            (Some(app), Request::StopWithin(_, t)) => {
                format!("{MAGIC} {VERSION} {verb} {app} {}\n", crate::unit::render_duration(*t))
            }
            (Some(app), Request::Resize(_, rows, cols)) => format!("{MAGIC} {VERSION} {verb} {app} {rows} {cols}\n"),
            (Some(app), _) => format!("{MAGIC} {VERSION} {verb} {app}\n"),
            (None, _) => format!("{MAGIC} {VERSION} {verb}\n"),
        }
    }

    /// Parses one request line (the trailing newline optional).
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let rest = head(line, "request")?;
        let mut words = rest.split(' ');
        let verb = words.next().unwrap_or_default();
        let app = words.next();
        let timeout = words.next();
        let cols = if verb == "resize" { words.next() } else { None };
        if words.next().is_some() || (timeout.is_some() && !matches!(verb, "stop" | "resize")) {
            return Err(malformed("request", "too many words"));
        }
        let given = app.is_some();
        let app = || {
            let word = app.ok_or_else(|| malformed("request", format!("{verb} needs an app name")))?;
            AcName::new(word).map_err(|e| malformed("request", e.to_string()))
        };
        match verb {
            "inspect" if !given => Ok(Request::Inspect),
            "inspect" => Err(malformed("request", "inspect takes no app")),
            "stop" => match timeout {
                None => Ok(Request::Stop(app()?)),
                Some(t) => {
                    let t = crate::unit::parse_duration(t).ok_or_else(|| {
                        malformed("request", format!("stop timeout {t:?} is not a number of seconds"))
                    })?;
                    Ok(Request::StopWithin(app()?, t))
                }
            },
            "start" => Ok(Request::Start(app()?)),
            "add" => Ok(Request::Add(app()?)),
            "remove" => Ok(Request::Remove(app()?)),
            "reopen-log" => Ok(Request::ReopenLog(app()?)),
            "close-stdin" => Ok(Request::CloseStdin(app()?)),
            "resize" => {
                let size = |w: Option<&str>, what: &str| {
                    let w = w.ok_or_else(|| malformed("request", "resize needs rows and columns"))?;
                    w.parse::<u16>()
                        .map_err(|_| malformed("request", format!("resize {what} {w:?} is not a number up to 65535")))
                };
                Ok(Request::Resize(app()?, size(timeout, "rows")?, size(cols, "columns")?))
            }
            other => Err(malformed("request", format!("unknown verb {other:?}"))),
        }
    }
}

/// Writes `Some(n)` as `n`, `None` as `-`.
fn field(out: &mut String, value: Option<impl fmt::Display>) {
    out.push(' ');
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push('-'),
    }
}

fn optional<T: std::str::FromStr>(word: &str) -> Result<Option<T>, ProtocolError> {
    match word {
        "-" => Ok(None),
        w => w.parse().map(Some).map_err(|_| malformed("app line", format!("{w:?} is not a number"))),
    }
}

fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

impl AppInfo {
    fn render(&self, out: &mut String) {
        out.push_str("app ");
        out.push_str(&self.name);
        out.push(' ');
        out.push_str(&self.state);
        field(out, self.pid);
        field(out, self.exit_code);
        field(out, self.signal);
        field(out, Some(self.restarts));
        out.push(' ');
        escape(out, &self.message);
        out.push('\n');
    }

    fn parse(line: &str) -> Result<AppInfo, ProtocolError> {
        let rest = line.strip_prefix("app ").ok_or_else(|| malformed("answer", format!("unexpected line {line:?}")))?;
        let mut words = rest.splitn(7, ' ');
        let mut next = |what: &str| {
            words.next().filter(|w| !w.is_empty()).ok_or_else(|| malformed("app line", format!("no {what}")))
        };
        let name = next("name")?.to_owned();
        let state = next("state")?.to_owned();
        let pid = optional(next("pid")?)?;
        let exit_code = optional(next("exit code")?)?;
        let signal = optional(next("signal")?)?;
        let restarts = optional(next("restarts")?)?.unwrap_or(0);
        let message = unescape(words.next().unwrap_or_default());
        Ok(AppInfo { name, state, pid, exit_code, signal, restarts, message })
    }
}

impl Response {
    /// The whole answer, newline-terminated lines.
    pub fn render(&self) -> String {
        let mut out = format!("{MAGIC} {VERSION} ");
        match self {
            Response::Ok(apps) => {
                out.push_str("ok\n");
                for app in apps {
                    app.render(&mut out);
                }
            }
            Response::Error { kind, message } => {
                out.push_str("error ");
                out.push_str(kind.as_str());
                out.push(' ');
                escape(&mut out, message);
                out.push('\n');
            }
        }
        out
    }

    /// Parses a whole answer.
    pub fn parse(text: &str) -> Result<Response, ProtocolError> {
        let mut lines = text.lines();
        let first = lines.next().ok_or_else(|| malformed("answer", "empty"))?;
        let rest = head(first, "answer")?;
        if rest == "ok" {
            return lines.map(AppInfo::parse).collect::<Result<_, _>>().map(Response::Ok);
        }
        let error = rest.strip_prefix("error ").ok_or_else(|| malformed("answer", format!("{rest:?}")))?;
        let (kind, message) = error.split_once(' ').unwrap_or((error, ""));
        let kind = ErrorKind::parse(kind).ok_or_else(|| malformed("answer", format!("unknown error kind {kind:?}")))?;
        Ok(Response::Error { kind, message: unescape(message) })
    }

    /// The answer to a request line that did not parse.
    pub fn refusal(error: &ProtocolError) -> Response {
        let kind = match error {
            ProtocolError::Version { .. } => ErrorKind::Version,
            ProtocolError::Malformed { .. } => ErrorKind::BadRequest,
        };
        Response::Error { kind, message: error.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> AcName {
        AcName::new(s).expect("name")
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Inspect,
            Request::Stop(name("db")),
            Request::Start(name("web-1")),
            Request::Add(name("x")),
            Request::Remove(name("x")),
            Request::StopWithin(name("db"), Duration::ZERO),
            Request::StopWithin(name("db"), Duration::from_millis(2500)),
            Request::ReopenLog(name("web")),
            Request::CloseStdin(name("web")),
            Request::Resize(name("sh"), 24, 80),
            Request::Resize(name("sh"), 0, u16::MAX),
        ] {
            assert_eq!(Request::parse(&r.render()), Ok(r));
        }
        assert_eq!(Request::StopWithin(name("db"), Duration::from_secs(30)).render(), "pod-control 1 stop db 30\n");
        assert_eq!(Request::StopWithin(name("db"), Duration::ZERO).render(), "pod-control 1 stop db 0\n");
        assert_eq!(Request::ReopenLog(name("db")).render(), "pod-control 1 reopen-log db\n");
        assert_eq!(Request::CloseStdin(name("db")).render(), "pod-control 1 close-stdin db\n");
        assert_eq!(Request::parse("pod-control 1 close-stdin db\n"), Ok(Request::CloseStdin(name("db"))));
        assert_eq!(Request::Resize(name("db"), 50, 132).render(), "pod-control 1 resize db 50 132\n");
        assert_eq!(
            Request::parse("pod-control 1 stop db 1.5s"),
            Ok(Request::StopWithin(name("db"), Duration::from_millis(1500)))
        );
        assert_eq!(Request::Stop(name("db")).render(), "pod-control 1 stop db\n");
        assert_eq!(Request::parse("pod-control 1 inspect"), Ok(Request::Inspect));
    }

    #[test]
    fn bad_requests() {
        let bad = |line: &str| Request::parse(line).expect_err(line).to_string();
        assert_eq!(bad("pod-control 2 inspect"), "control protocol version 2, but this side speaks version 1");
        assert!(bad("GET / HTTP/1.1").contains("does not start with"));
        assert!(bad("pod-control x inspect").contains("version"));
        assert!(bad("pod-control 1 stop").contains("stop needs an app name"));
        assert!(bad("pod-control 1 stop Bad_Name").contains("request"));
        assert!(bad("pod-control 1 stop a b").contains("not a number of seconds"));
        assert!(bad("pod-control 1 stop a -1").contains("not a number of seconds"));
        assert!(bad("pod-control 1 stop a 1 2").contains("too many words"));
        assert!(bad("pod-control 1 start a 1").contains("too many words"));
        assert!(bad("pod-control 1 reopen-log a 1").contains("too many words"));
        assert!(bad("pod-control 1 reopen-log").contains("reopen-log needs an app name"));
        assert!(bad("pod-control 1 inspect a").contains("inspect takes no app"));
        assert!(bad("pod-control 1 inspect Bad_Name").contains("inspect takes no app"));
        assert!(bad("pod-control 1 reboot").contains("unknown verb"));
        assert!(bad("pod-control 1 resize a").contains("resize needs rows and columns"));
        assert!(bad("pod-control 1 resize a 24").contains("resize needs rows and columns"));
        assert!(bad("pod-control 1 resize a 24 x").contains("columns \"x\" is not a number"));
        assert!(bad("pod-control 1 resize a 70000 80").contains("rows \"70000\""));
        assert!(bad("pod-control 1 resize a 24 80 1").contains("too many words"));
        assert!(bad("pod-control 1 close-stdin a 24").contains("too many words"));
        assert!(bad("").contains("does not start with"));
        let refusal = Response::refusal(&Request::parse("pod-control 9 inspect").expect_err("v9"));
        assert!(matches!(refusal, Response::Error { kind: ErrorKind::Version, .. }));
    }

    #[test]
    fn responses_round_trip() {
        let apps = vec![
            AppInfo {
                name: "db".into(),
                state: "ready".into(),
                pid: Some(42),
                exit_code: None,
                signal: None,
                restarts: 0,
                message: String::new(),
            },
            AppInfo {
                name: "web".into(),
                state: "stopped".into(),
                pid: None,
                exit_code: Some(143),
                signal: Some(15),
                restarts: 3,
                message: "killed by SIGTERM\nsecond line \\ with a backslash and  two spaces".into(),
            },
        ];
        let ok = Response::Ok(apps);
        let text = ok.render();
        assert!(text.starts_with("pod-control 1 ok\napp db ready 42 - - 0 \napp web stopped - 143 15 3 killed"));
        assert_eq!(Response::parse(&text), Ok(ok));
        assert_eq!(Response::parse("pod-control 1 ok\n"), Ok(Response::Ok(Vec::new())));
        let err = Response::Error { kind: ErrorKind::NoSuchApp, message: "pod has no app x\nreally".into() };
        assert_eq!(Response::parse(&err.render()), Ok(err));
    }

    #[test]
    fn bad_responses() {
        let bad = |text: &str| Response::parse(text).expect_err(text).to_string();
        assert_eq!(bad("pod-control 3 ok\n"), "control protocol version 3, but this side speaks version 1");
        assert!(bad("").contains("empty"));
        assert!(bad("pod-control 1 maybe\n").contains("maybe"));
        assert!(bad("pod-control 1 error nonsense x\n").contains("unknown error kind"));
        assert!(bad("pod-control 1 ok\nnot an app\n").contains("unexpected line"));
        assert!(bad("pod-control 1 ok\napp db ready x - - 0 \n").contains("not a number"));
        assert!(bad("pod-control 1 ok\napp db\n").contains("no state"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A poor man's fuzzer: every prefix and every byte flipped of valid lines.
        let samples = [
            Request::Stop(name("db")).render(),
            Request::StopWithin(name("db"), Duration::from_millis(1250)).render(),
            Request::ReopenLog(name("db")).render(),
            Response::Ok(vec![AppInfo {
                name: "a".into(),
                state: "ready".into(),
                pid: Some(1),
                exit_code: Some(2),
                signal: Some(3),
                restarts: 4,
                message: "m\\n".into(),
            }])
            .render(),
        ];
        for s in &samples {
            let bytes = s.as_bytes();
            for i in 0..bytes.len() {
                for flip in [0u8, b' ', b'\\', b'\n', b'-', 0xff] {
                    let mut b = bytes.to_vec();
                    b[i] = flip;
                    let text = String::from_utf8_lossy(&b);
                    let _ = Request::parse(&text);
                    let _ = Response::parse(&text);
                    let _ = Request::parse(&text[..text.len().min(i)]);
                    let _ = Response::parse(&text[..text.len().min(i)]);
                }
            }
        }
    }
}
