//! systemd's readiness protocol (`sd_notify(3)`), spoken by the stage1
//! monitor, which is the unit's main process when `pod run` (foreground)
//! runs as a `Type=notify` service: stage0 execs stage1 in its place and
//! passes `NOTIFY_SOCKET` on. `READY=1` goes once every app is ready (its
//! readiness probe passed, or it runs and has none) or has ended without
//! failing; `STOPPING=1` once the pod is asked to stop or ends. A datagram
//! per message to the socket named by the variable (a path, or `@name` for
//! an abstract one); without the variable nothing is sent.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The variable naming systemd's socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// `NOTIFY_SOCKET` as the process started with it: [`crate::sanitize`]
/// empties the environment (nothing the monitor starts may inherit it).
static TARGET: OnceLock<Option<String>> = OnceLock::new();

/// Keeps `NOTIFY_SOCKET` before the environment is emptied.
pub(crate) fn capture() {
    let _ = TARGET.get_or_init(|| std::env::var(NOTIFY_SOCKET_ENV).ok().filter(|s| !s.is_empty()));
}

/// The target systemd named, as captured.
pub(crate) fn target() -> Option<String> {
    TARGET.get().cloned().flatten()
}

/// What a [`Notifier`] has sent, carried across the monitor's re-exec.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    ready: bool,
    stopping: bool,
}

#[derive(Debug)]
pub struct Notifier {
    target: Option<String>,
    status_dir: PathBuf,
    ready_sent: bool,
    stopping_sent: bool,
}

impl Notifier {
    /// Talks to the socket `NOTIFY_SOCKET` named when the process started,
    /// if it did; reads the apps' states from `pod_dir/status`.
    pub fn from_env(pod_dir: &Path) -> Self {
        capture();
        let target = TARGET.get().cloned().flatten();
        Self { target, status_dir: pod_dir.join("status"), ready_sent: false, stopping_sent: false }
    }

    /// Whether nothing is left to tell but `STOPPING=1` (no tick needed).
    pub fn settled(&self) -> bool {
        self.target.is_none() || self.ready_sent || self.stopping_sent
    }

    pub fn sent(&self) -> Sent {
        Sent { ready: self.ready_sent, stopping: self.stopping_sent }
    }

    pub fn resume(&mut self, sent: Sent) {
        self.ready_sent = sent.ready;
        self.stopping_sent = sent.stopping;
    }

    /// Sends `READY=1` the first time every app of `apps` is settled.
    pub fn tick<'a>(&mut self, apps: impl IntoIterator<Item = &'a str>) {
        if self.target.is_none() || self.ready_sent || self.stopping_sent {
            return;
        }
        let apps: Vec<&str> = apps.into_iter().collect();
        if apps.iter().all(|a| settled(&self.status_dir.join(format!("{a}.json")))) {
            self.ready_sent = true;
            self.send(&format!("READY=1\nSTATUS={} app(s) ready\nMAINPID={}", apps.len(), std::process::id()));
        }
    }

    /// Sends `STOPPING=1`, once.
    pub fn stopping(&mut self) {
        if self.target.is_some() && !self.stopping_sent {
            self.stopping_sent = true;
            self.send("STOPPING=1");
        }
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = send_to(target, message) {
            // Never fatal: the pod runs whether systemd hears of it or not.
            eprintln!("pod: {NOTIFY_SOCKET_ENV}={target}: {e}");
        }
    }
}

/// Sends one datagram to `target`: a socket path, or `@name` (abstract).
pub fn send_to(target: &str, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(message.as_bytes(), target)?;
        }
    }
    Ok(())
}

/// Whether the app whose pod-init status file is `path` is ready, or has
/// ended without failing (a one-shot app that did its work).
fn settled(path: &Path) -> bool {
    let Some(st) = fs::read(path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        return false;
    };
    match st["state"].as_str() {
        Some("ready") => true,
        Some("exited") => st["exitCode"].as_i64() == Some(0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_app_is_settled_then_stopping() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let status = dir.path().join("status");
        fs::create_dir(&status).unwrap_or_else(|e| panic!("{e}"));
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap_or_else(|e| panic!("{e}"));
        sock.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let mut n = Notifier {
            target: Some(sock_path.to_string_lossy().into_owned()),
            status_dir: status.clone(),
            ready_sent: false,
            stopping_sent: false,
        };
        let recv = || {
            let mut buf = [0u8; 256];
            sock.recv(&mut buf).ok().map(|len| String::from_utf8_lossy(&buf[..len]).into_owned())
        };
        let put = |app: &str, json: &str| fs::write(status.join(format!("{app}.json")), json).unwrap_or_default();
        put("db", r#"{"state":"ready"}"#);
        put("web", r#"{"state":"running"}"#);
        put("init", r#"{"state":"exited","exitCode":0}"#);
        n.tick(["db", "web", "init"]);
        assert_eq!(recv(), None, "web is not ready yet");
        put("web", r#"{"state":"ready"}"#);
        n.tick(["db", "web", "init"]);
        let ready = recv().unwrap_or_default();
        assert!(ready.starts_with("READY=1\n") && ready.contains("MAINPID="), "{ready}");
        n.tick(["db", "web", "init"]);
        assert_eq!(recv(), None, "once");
        n.stopping();
        n.stopping();
        assert_eq!(recv().as_deref(), Some("STOPPING=1"));
        assert_eq!(recv(), None, "once");
        // A failed one-shot app is not settled; nor is one with no status.
        put("init", r#"{"state":"failed","exitCode":1}"#);
        assert!(!settled(&status.join("init.json")) && !settled(&status.join("nope.json")));
    }

    #[test]
    fn abstract_sockets_too() {
        let name = format!("pod-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let sock = UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
        send_to(&format!("@{name}"), "READY=1").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..len], b"READY=1");
    }
}
