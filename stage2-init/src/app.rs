//! One supervised app: its phase (one enum; the status file's `state` is
//! derived from it), its history, and its status record.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;
use spec::unit::ReadinessCheck;

use crate::exit::{Backoff, Final, StopReason, Termination, Verdict};
use crate::launch::c_strings;
use crate::plan::AppPlan;
use crate::status::AppStatus;

/// A process of an app that pod-init started and has not reaped yet.
#[derive(Debug)]
pub struct Proc {
    pub pid: Pid,
    pub since: Instant,
    pub stop: Option<Stop>,
}

/// pod-init asked the process to stop: SIGTERM was sent, SIGKILL follows
/// at `kill_at` unless it has been sent already.
#[derive(Debug)]
pub struct Stop {
    pub reason: StopReason,
    pub kill_at: Instant,
    pub killed: bool,
}

/// A readiness check between two attempts, or an exec probe running.
#[derive(Debug)]
pub enum Probe {
    Idle { next: Instant },
    Running { pid: Pid },
}

#[derive(Debug)]
pub enum Phase {
    /// Not started: waiting for the apps it is ordered after.
    Waiting,
    /// Forked; exec has not been confirmed. `report` is the child's
    /// close-on-exec pipe until it is read; `failure` what it reported.
    Starting {
        proc: Proc,
        report: Option<OwnedFd>,
        failure: Option<String>,
    },
    /// Executing, readiness not yet seen; failed if not ready by `deadline`.
    Running {
        proc: Proc,
        probe: Probe,
        deadline: Instant,
    },
    Ready {
        proc: Proc,
    },
    /// The image's `pre-start` handler (`ExecStartPre=`) runs; the program
    /// starts once it exits 0. It is killed at `deadline` (`TimeoutStartSec`).
    PreStart {
        handler: Handler,
    },
    /// The program ended; the image's `post-stop` handler (`ExecStopPost=`)
    /// runs, killed at its `deadline` (`TimeoutStopSec`); then the app is
    /// `next` (restarting, or done).
    PostStop {
        handler: Handler,
        next: Box<Phase>,
    },
    /// Ended; starts again at `at`.
    Restarting {
        at: Instant,
    },
    /// Ended for good.
    Done(Verdict),
}

impl Phase {
    pub fn proc(&self) -> Option<&Proc> {
        match self {
            Phase::Starting { proc, .. } | Phase::Running { proc, .. } | Phase::Ready { proc } => Some(proc),
            _ => None,
        }
    }

    pub fn proc_mut(&mut self) -> Option<&mut Proc> {
        match self {
            Phase::Starting { proc, .. } | Phase::Running { proc, .. } | Phase::Ready { proc } => Some(proc),
            _ => None,
        }
    }

    /// The event handler running, if any.
    pub fn handler_mut(&mut self) -> Option<&mut Handler> {
        match self {
            Phase::PreStart { handler } | Phase::PostStop { handler, .. } => Some(handler),
            _ => None,
        }
    }

    pub fn state(&self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Starting { .. } | Phase::PreStart { .. } => "starting",
            Phase::PostStop { .. } => "stopping",
            Phase::Running { .. } => "running",
            Phase::Ready { .. } => "ready",
            Phase::Restarting { .. } => "restarting",
            Phase::Done(verdict) => verdict.as_str(),
        }
    }
}

/// An image's event handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreStart,
    PostStop,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreStart => "pre-start",
            Hook::PostStop => "post-stop",
        }
    }
}

/// A running event handler: its process, its launch report (a failure
/// before its exec), and when it is killed. `killed`: why it was, once it
/// was (its deadline passed: `NotReady`; the app or pod was stopped).
#[derive(Debug)]
pub struct Handler {
    pub pid: Pid,
    pub report: OwnedFd,
    pub deadline: Instant,
    pub killed: Option<StopReason>,
}

/// How an app's dependents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Neither ready nor ended for good yet.
    No,
    /// Ready once, or ended for good without failing.
    Yes,
    /// Ended for good as a failure, never having been ready.
    Failed,
}

#[derive(Debug)]
pub struct App {
    pub plan: AppPlan,
    pub rootfs: CString,
    /// `cgroup.procs` of each `Cgroup=` directory, as pod-init sees them.
    pub cgroups: Vec<PathBuf>,
    /// `ExecStart` and `ReadinessExec` for execve, or why they cannot be.
    pub argv: Result<Vec<CString>, String>,
    pub probe_argv: Option<Result<Vec<CString>, String>>,
    /// `ExecStartPre` and `ExecStopPost`, likewise.
    pub pre_start_argv: Option<Result<Vec<CString>, String>>,
    pub post_stop_argv: Option<Result<Vec<CString>, String>>,
    pub phase: Phase,
    pub backoff: Backoff,
    pub restarts: u32,
    pub ever_ready: bool,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub last_end: Option<Termination>,
    pub last_verdict: Option<Verdict>,
    /// Orders failures in time, for the pod's exit code.
    pub failed_seq: u64,
    pub message: String,
    /// The log writer of its latest start (`LogFormat=cri`, or `TTY=yes`).
    pub writer: Option<crate::supervise::LogWriter>,
    /// pod-init's write end of the app's stdin FIFO (`Stdin=fifo`), until
    /// `close-stdin` or the app's end.
    pub stdin_keeper: Option<std::os::fd::OwnedFd>,
    /// The master of its terminal (`TTY=yes`) while it runs.
    pub terminal: Option<crate::supervise::Terminal>,
}

impl App {
    /// `root` is the pod root; `Cgroup=` paths are inside it.
    pub fn new(plan: AppPlan, root: &Path) -> App {
        let rootfs = root.join("apps").join(plan.name.as_str()).join("rootfs");
        // No NUL: the root was a C string (an argument) and the rest is an
        // app name; an empty path would fail the launch, visibly.
        let rootfs = CString::new(rootfs.into_os_string().into_vec()).unwrap_or_default();
        // Limits that cannot be enforced fail the app's start, naming why.
        let (cgroups, argv) = match crate::plan::cgroup_procs(root, plan.name.as_str(), &plan.unit) {
            Ok(cgroups) => (cgroups, c_strings(&plan.unit.exec_start)),
            Err(e) => (Vec::new(), Err(format!("the app's limits: {e}"))),
        };
        let probe_argv = plan.unit.readiness.as_ref().and_then(|r| match &r.check {
            ReadinessCheck::Exec(words) => Some(c_strings(words)),
            ReadinessCheck::Tcp(_) => None,
        });
        let pre_start_argv = plan.unit.exec_start_pre.as_deref().map(c_strings);
        let post_stop_argv = plan.unit.exec_stop_post.as_deref().map(c_strings);
        App {
            backoff: Backoff::new(plan.unit.restart_sec),
            plan,
            rootfs,
            cgroups,
            argv,
            probe_argv,
            pre_start_argv,
            post_stop_argv,
            phase: Phase::Waiting,
            restarts: 0,
            ever_ready: false,
            started_at: None,
            finished_at: None,
            last_end: None,
            last_verdict: None,
            failed_seq: 0,
            message: String::new(),
            writer: None,
            stdin_keeper: None,
            terminal: None,
        }
    }

    pub fn name(&self) -> &str {
        self.plan.name.as_str()
    }

    pub fn settled(&self) -> Settled {
        match self.phase {
            _ if self.ever_ready => Settled::Yes,
            Phase::Done(Verdict::Failed) => Settled::Failed,
            Phase::Done(_) => Settled::Yes,
            _ => Settled::No,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    pub fn readiness_timeout(&self) -> Duration {
        self.plan.unit.readiness.as_ref().map_or(Duration::ZERO, |r| r.timeout)
    }

    pub fn status(&self) -> AppStatus<'_> {
        AppStatus {
            app: self.name(),
            state: self.phase.state(),
            pid: self.phase.proc().map(|p| p.pid.as_raw()),
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.last_end.map(Termination::exit_code),
            signal: match self.last_end {
                Some(Termination::Signal(s)) => Some(s),
                _ => None,
            },
            restarts: self.restarts,
            message: &self.message,
        }
    }

    pub fn final_word(&self) -> Final {
        Final {
            verdict: match self.phase {
                Phase::Done(v) => v,
                _ => Verdict::Failed,
            },
            failed_seq: self.failed_seq,
            exit_code: self.last_end.map(Termination::exit_code),
        }
    }
}
