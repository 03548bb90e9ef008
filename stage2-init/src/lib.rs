//! `pod-init`, the pod's PID 1 (stage2): reads one unit per app from the pod
//! root (`spec::unit` has the contract), starts the apps in dependency
//! order, each in its own mount namespace rooted at its rootfs, supervises
//! and reaps, stops the pod on SIGTERM, and exits with the pod's status.
//!
//! Logging is one terse line per event on stderr, prefixed `pod-init:`, for
//! stage1 to capture; no `tracing`, to keep PID 1's dependency tree (and its
//! memory) tiny.

pub mod appfs;
pub mod cgroupfs;
pub mod creds;
pub mod crilog;
pub mod exit;
pub mod plan;
pub mod privs;
pub mod status;
pub mod vm;

mod app;
mod launch;
mod pidns;
mod supervise;
mod sys;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use exit::EXIT_INIT_FAILED;
pub use launch::{become_app, join_app, ChildError, DEFAULT_PATH};
pub use supervise::READINESS_POLL;
pub use sys::cloexec_inherited_fds;
/// For `pod enter -t` (stage0 forbids unsafe code): fork(2) for a
/// single-threaded caller, _exit(2), a terminal of an app's devpts, its
/// size, and a command on it as its controlling terminal.
pub mod term {
    pub use crate::sys::{exit_now, fork, on_controlling_terminal, open_pty, recv_with_fd, set_window_size, Fork};
}

/// Writes one line to stderr, prefixed `pod-init:` (and, once
/// [`log_uptime`] turned it on, the time since boot). A failed write is
/// ignored: PID 1 must not die because its stderr went away.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "pod-init: {}{}", $crate::Uptime, format_args!($($arg)*));
    }};
}

static LOG_UPTIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prefixes every later log line with the seconds since boot (the VM
/// guest with `pod.debug`: where its time goes).
pub fn log_uptime() {
    LOG_UPTIME.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A log line's `[seconds.millis] ` since boot (CLOCK_BOOTTIME), once
/// [`log_uptime`] turned it on; nothing before. Integers, not floats:
/// float formatting would add to PID 1's text, and so to its RSS.
#[doc(hidden)]
#[derive(Debug)]
pub struct Uptime;

impl std::fmt::Display for Uptime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !LOG_UPTIME.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
            Ok(t) => write!(f, "[{}.{:03}] ", t.tv_sec(), t.tv_nsec() / 1_000_000),
            Err(_) => Ok(()),
        }
    }
}

/// What `pod-init` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pod root: `units/`, `apps/<app>/rootfs`, `status/`, `logs/`.
    pub root: PathBuf,
    /// A sandbox: runs with no app, and outlives its apps until stopped.
    pub sandbox: bool,
    /// Where to serve the control channel (`spec::control`), if anywhere.
    pub control: Option<PathBuf>,
    /// The control socket, already bound at `control` by stage1 and passed
    /// open (`--control-fd`: a pod with a user namespace).
    pub control_fd: Option<i32>,
}

impl Options {
    /// The pod at `root`, its control socket at `root/control.sock`.
    pub fn new(root: PathBuf) -> Options {
        let control = Some(root.join(spec::control::SOCKET));
        Options { root, sandbox: false, control, control_fd: None }
    }
}

/// pod-init's own failures; each ends it with [`EXIT_INIT_FAILED`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Sys(nix::errno::Errno),
}

/// Runs the pod to its end and returns its exit code (see README.md).
pub fn run(options: &Options) -> Result<u8, Error> {
    sys::ignore_sigpipe();
    sys::ensure_stdio();
    sys::cloexec_inherited_fds();
    let signals = signals()?;
    if std::process::id() != 1 {
        // Not PID 1 (tests, or a stage1 without a pid namespace): become a
        // subreaper so orphans of the apps still come to us.
        nix::sys::prctl::set_child_subreaper(true).map_err(Error::Sys)?;
    }
    let started_at = SystemTime::now();
    let root = options.root.as_path();
    for dir in ["status", "logs"] {
        let path = root.join(dir);
        // Not create_dir_all: a mistyped --root must not be created.
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::Io { path, source: e }),
            _ => {}
        }
    }
    let plan = match plan::load(root, options.sandbox) {
        Ok(plan) => plan,
        Err(e) => {
            record_failure(root, started_at, &e.to_string());
            return Err(e.into());
        }
    };
    log_debug("units, users and filters read");
    supervise::Supervisor::new(plan, options, signals, started_at)?.run()
}

/// Logs a step of the VM guest's boot, with `pod.debug` only.
pub(crate) fn log_debug(what: &str) {
    if LOG_UPTIME.load(std::sync::atomic::Ordering::Relaxed) {
        log!("{what}");
    }
}

/// Blocks the signals pod-init handles (SIGRTMIN+4 too, systemd's power
/// off) and returns a signalfd for them.
/// Blocked before any fork, so no SIGCHLD is missed.
fn signals() -> Result<SignalFd, Error> {
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(signal);
    }
    // `machinectl poweroff` (SIGRTMIN+4 to the pod's leader, pod-init).
    let mask = sys::with_poweroff(&mask);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(Error::Sys)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(Error::Sys)
}

/// `status/pod.json` for a pod that never started.
pub(crate) fn record_failure(root: &Path, started_at: SystemTime, message: &str) {
    let status = status::PodStatus {
        state: "exited",
        pid: std::process::id(),
        started_at,
        finished_at: Some(SystemTime::now()),
        exit_code: Some(EXIT_INIT_FAILED),
        message,
    };
    let _ = status::write_atomic(&root.join("status"), "pod.json", &status.to_json());
}
