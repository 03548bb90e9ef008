//! The supervision loop: start apps as their dependencies settle, watch
//! readiness, reap every child (orphans included), restart with backoff,
//! stop the pod in reverse dependency order, and settle the pod's status.
//!
//! Single-threaded and event driven: one poll(2) over a signalfd (SIGCHLD,
//! SIGTERM, SIGINT, SIGHUP), the exec-report pipes of starting apps and the
//! output pipes of apps that log in the CRI format (output.rs), and the
//! terminals of apps that have one (tty.rs), with a timeout to the next
//! timer (restart, readiness check, SIGKILL); one wakeup is wait.rs.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use spec::unit::{render_duration, ReadinessCheck};

use crate::app::{App, Handler, Hook, Phase, Probe, Proc, Settled, Stop};
use crate::exit::{self, judge, pod_exit_code, StopReason, Termination, Verdict, EXIT_LAUNCH_FAILED};
use crate::launch::{self, Launch};
use crate::plan::Plan;
use crate::status::{self, PodStatus};
use crate::{log, Error};

mod control;
mod output;
mod tty;
mod wait;

pub use output::LogWriter;
pub use tty::Terminal;

/// How often readiness is checked.
pub const READINESS_POLL: Duration = Duration::from_millis(50);
/// The longest poll(2) sleep, so a lost wakeup costs at most this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Supervisor {
    apps: Vec<App>,
    signals: SignalFd,
    /// /dev/null for stdin and probe output; where /dev/null is missing, the
    /// read end of a pipe whose write end is closed: reads give EOF, writes
    /// fail with EBADF.
    null: OwnedFd,
    /// The pod root, where an added app's unit and rootfs are.
    root: PathBuf,
    status_dir: PathBuf,
    logs_dir: PathBuf,
    /// How many times the pod was asked to stop (a second request kills).
    stop_requests: u32,
    failures: u64,
    started_at: SystemTime,
    status_write_failed: bool,
    /// A sandbox outlives its apps, until it is stopped.
    sandbox: bool,
    /// The control channel (`spec::control`), where it could be bound.
    control: Option<control::Listener>,
}

impl Supervisor {
    pub fn new(
        plan: Plan,
        options: &crate::Options,
        signals: SignalFd,
        started_at: SystemTime,
    ) -> Result<Supervisor, Error> {
        let root = options.root.as_path();
        let null = match OpenOptions::new().read(true).write(true).open("/dev/null") {
            Ok(f) => OwnedFd::from(f),
            Err(_) => nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Sys)?.0,
        };
        let apps = plan.apps.into_iter().map(|p| App::new(p, root)).collect();
        Ok(Supervisor {
            apps,
            signals,
            null,
            root: root.to_owned(),
            status_dir: root.join("status"),
            logs_dir: root.join("logs"),
            stop_requests: 0,
            failures: 0,
            started_at,
            status_write_failed: false,
            sandbox: options.sandbox,
            control: match (options.control_fd, options.control.as_deref()) {
                (Some(fd), Some(path)) => control::Listener::inherited(fd, path),
                (_, path) => path.and_then(control::Listener::bind),
            },
        })
    }

    /// Runs the pod to its end; returns its exit code.
    pub fn run(mut self) -> Result<u8, Error> {
        self.write_pod("running", None, "");
        for i in 0..self.apps.len() {
            self.publish(i);
        }
        loop {
            self.tick(Instant::now());
            if self.apps.iter().all(App::is_done) && (!self.sandbox || self.stopping()) {
                break;
            }
            let timeout = self.next_timer().map(|at| at.saturating_duration_since(Instant::now()));
            self.wait(timeout)?;
        }
        if let Some(listener) = self.control.take() {
            listener.close();
        }
        for app in &mut self.apps {
            if let Some(cri) = app.writer.as_mut() {
                cri.close();
            }
        }
        let code = pod_exit_code(&self.apps.iter().map(App::final_word).collect::<Vec<_>>());
        log!("pod exited with code {code}");
        self.write_pod("exited", Some(code), "");
        Ok(code)
    }

    fn stopping(&self) -> bool {
        self.stop_requests > 0
    }

    /// Acts on everything that is due: timers, starts, stops.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.apps.len() {
            self.check_timers(i, now);
        }
        // Start order: an app's dependencies come before it, so one pass
        // sees every change a dependency made in this pass.
        for i in 0..self.apps.len() {
            if !matches!(self.apps[i].phase, Phase::Waiting) {
                continue;
            }
            if self.stopping() {
                self.finish_unstarted(i, Verdict::Stopped, "not started: the pod is stopping".into());
                continue;
            }
            let app = &self.apps[i];
            let failed_required = app.plan.requires.iter().find(|&&d| self.apps[d].settled() == Settled::Failed);
            if let Some(&dep) = failed_required {
                let message = format!("not started: required app {} failed", self.apps[dep].name());
                self.finish_unstarted(i, Verdict::Failed, message);
            } else if app.plan.deps.iter().all(|&d| self.apps[d].settled() != Settled::No) {
                self.start(i, now);
            }
        }
        if self.stopping() {
            // Reverse start order: an app stops once nothing that depends on
            // it is still running.
            for i in (0..self.apps.len()).rev() {
                let dependents_alive = self.apps.iter().any(|a| a.phase.proc().is_some() && a.plan.deps.contains(&i));
                let unsignalled = self.apps[i].phase.proc().is_some_and(|p| p.stop.is_none())
                    || matches!(&self.apps[i].phase, Phase::PreStart { handler } if handler.killed.is_none());
                if unsignalled && !dependents_alive {
                    self.stop(i, StopReason::Pod, now);
                }
            }
        }
    }

    fn check_timers(&mut self, i: usize, now: Instant) {
        /// What is due for one app, decided before acting on it.
        enum Due {
            Nothing,
            NoRestart,
            Restart,
            NotReady,
            Check,
        }
        let stopping = self.stopping();
        let app = &mut self.apps[i];
        if let Some(handler) = app.phase.handler_mut().filter(|h| h.killed.is_none() && h.deadline <= now) {
            handler.killed = Some(StopReason::NotReady);
            signal_group(handler.pid, Signal::SIGKILL);
        }
        if let Some(proc) = app.phase.proc_mut() {
            if let Some(stop) = proc.stop.as_mut().filter(|s| !s.killed && s.kill_at <= now) {
                stop.killed = true;
                signal_group(proc.pid, Signal::SIGKILL);
            }
        }
        let due = match &app.phase {
            Phase::Restarting { .. } if stopping => Due::NoRestart,
            Phase::Restarting { at } if *at <= now => Due::Restart,
            Phase::Running { proc, deadline, .. } if proc.stop.is_none() && *deadline <= now => Due::NotReady,
            Phase::Running { proc, probe: Probe::Idle { next }, .. } if proc.stop.is_none() && *next <= now => {
                Due::Check
            }
            _ => Due::Nothing,
        };
        match due {
            Due::Nothing => {}
            Due::NoRestart => {
                let cause = app.message.split("; restarting in ").next().unwrap_or_default();
                app.message = format!("{cause}; not restarted: the pod is stopping");
                app.phase = Phase::Done(app.last_verdict.unwrap_or(Verdict::Stopped));
                self.publish(i);
            }
            Due::Restart => self.start(i, now),
            Due::NotReady => {
                app.message = format!("not ready within {}s", render_duration(app.readiness_timeout()));
                self.stop(i, StopReason::NotReady, now);
            }
            Due::Check => {
                if let Phase::Running { probe, .. } = &mut app.phase {
                    *probe = Probe::Idle { next: now + READINESS_POLL };
                }
                match app.plan.unit.readiness.as_ref().map(|r| &r.check) {
                    Some(ReadinessCheck::Tcp(addr)) => {
                        if TcpStream::connect_timeout(addr, READINESS_POLL).is_ok() {
                            self.ready(i);
                        }
                    }
                    Some(ReadinessCheck::Exec(_)) => self.start_probe(i),
                    None => self.ready(i),
                }
            }
        }
    }

    /// The next instant a timer is due, if any.
    fn next_timer(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for app in &self.apps {
            if let Some(stop) = app.phase.proc().and_then(|p| p.stop.as_ref()).filter(|s| !s.killed) {
                consider(stop.kill_at);
            }
            match &app.phase {
                Phase::Restarting { at } => consider(*at),
                Phase::PreStart { handler } | Phase::PostStop { handler, .. } if handler.killed.is_none() => {
                    consider(handler.deadline)
                }
                Phase::Running { proc, probe, deadline } if proc.stop.is_none() => {
                    consider(*deadline);
                    if let Probe::Idle { next } = probe {
                        consider(*next);
                    }
                }
                _ => {}
            }
        }
        next
    }

    fn request_stop(&mut self) {
        self.stop_requests += 1;
        if self.stop_requests == 1 {
            log!("stopping the pod");
            self.write_pod("stopping", None, "");
            return;
        }
        log!("asked again: killing every app");
        for app in &mut self.apps {
            if let Some(handler) = app.phase.handler_mut() {
                signal_group(handler.pid, Signal::SIGKILL);
                handler.killed.get_or_insert(StopReason::Pod);
            }
            if let Some(proc) = app.phase.proc_mut() {
                signal_group(proc.pid, Signal::SIGKILL);
                if let Some(stop) = proc.stop.as_mut() {
                    stop.killed = true;
                }
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, end)) = Termination::from_wait(status) {
                        self.reaped(pid, end);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    /// A child ended: an app's process, an event handler, a probe, or an
    /// orphan that was reparented to us (nothing more to do for those once
    /// reaped).
    fn reaped(&mut self, pid: Pid, end: Termination) {
        let now = Instant::now();
        if let Some(i) = self.apps.iter().position(|a| a.phase.proc().is_some_and(|p| p.pid == pid)) {
            self.exited(i, end, now);
        } else if let Some(i) = self.apps.iter_mut().position(|a| a.phase.handler_mut().is_some_and(|h| h.pid == pid)) {
            self.handler_ended(i, end, now);
        } else if let Some(i) = self
            .apps
            .iter()
            .position(|a| matches!(a.phase, Phase::Running { probe: Probe::Running { pid: p }, .. } if p == pid))
        {
            let Phase::Running { probe, proc, .. } = &mut self.apps[i].phase else { return };
            *probe = Probe::Idle { next: now + READINESS_POLL };
            if end == Termination::Code(0) && proc.stop.is_none() {
                self.ready(i);
            }
        }
    }

    fn read_report(&mut self, i: usize, now: Instant) {
        let app = &mut self.apps[i];
        let Phase::Starting { report, failure, .. } = &mut app.phase else { return };
        let Some(message) = report.as_ref().and_then(launch::read_report) else { return };
        *report = None;
        if !message.is_empty() {
            *failure = Some(message);
            return; // the child exits next
        }
        let Phase::Starting { proc, .. } = std::mem::replace(&mut app.phase, Phase::Waiting) else { return };
        match &app.plan.unit.readiness {
            Some(readiness) => {
                let deadline = now + readiness.timeout;
                app.phase = Phase::Running { proc, probe: Probe::Idle { next: now }, deadline };
                app.message = "waiting for readiness".into();
                self.publish(i);
                self.check_timers(i, now);
            }
            None => {
                app.phase = Phase::Ready { proc };
                self.ready(i);
            }
        }
    }

    /// Marks an app ready (from running, or just exec'd without a check).
    fn ready(&mut self, i: usize) {
        let app = &mut self.apps[i];
        if let Phase::Running { .. } = app.phase {
            let Phase::Running { proc, .. } = std::mem::replace(&mut app.phase, Phase::Waiting) else { return };
            app.phase = Phase::Ready { proc };
        }
        app.ever_ready = true;
        app.message.clear();
        log!("{}: ready", app.name());
        self.publish(i);
    }

    /// Starts an app: its image's `pre-start` handler first, if it has one.
    fn start(&mut self, i: usize, now: Instant) {
        let app = &mut self.apps[i];
        if matches!(app.phase, Phase::Restarting { .. }) {
            app.restarts += 1;
        }
        (app.started_at, app.finished_at, app.last_end) = (Some(SystemTime::now()), None, None);
        if app.pre_start_argv.is_none() {
            return self.exec_program(i, now);
        }
        match self.spawn_handler(i, Hook::PreStart, now) {
            Ok(handler) => {
                let app = &mut self.apps[i];
                app.phase = Phase::PreStart { handler };
                app.message = "running its pre-start handler".into();
                self.publish(i);
            }
            Err(e) => {
                let message = format!("pre-start handler: {e}");
                self.conclude(i, Termination::Code(EXIT_LAUNCH_FAILED), Some(message), None, now, now);
            }
        }
    }

    /// Forks the app's `pre-start` or `post-stop` handler as its program
    /// would be (its rootfs, user, privileges, cgroups), stdin /dev/null and
    /// its output into the app's log.
    fn spawn_handler(&mut self, i: usize, hook: Hook, now: Instant) -> Result<Handler, String> {
        let app = &mut self.apps[i];
        let (argv, timeout) = match hook {
            Hook::PreStart => (&app.pre_start_argv, app.plan.unit.timeout_start),
            Hook::PostStop => (&app.post_stop_argv, app.plan.unit.timeout_stop),
        };
        let argv = match argv {
            Some(Ok(argv)) => argv.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => return Err("none".into()),
        };
        if let Some(mut old) = app.writer.take() {
            old.close();
        }
        let rootfs = Path::new(OsStr::from_bytes(app.rootfs.as_bytes()));
        let stdio = output::open(&self.root, &self.logs_dir, app.name(), &app.plan.unit, rootfs, true)?;
        let launch = Launch {
            app: app.plan.name.as_str(),
            unit: &app.plan.unit,
            rootfs: app.rootfs.clone(),
            cgroups: &app.cgroups,
            argv,
            seccomp: &app.plan.seccomp,
            stdin: self.null.as_fd(),
            stdout: stdio.stdout(),
            stderr: stdio.stderr(),
            terminal: false,
        };
        let spawned = launch::spawn(&launch).map_err(|e| format!("fork: {e}"));
        (app.writer, _, _) = stdio.launched();
        let spawned = spawned?;
        log!("{}: {} handler started, pid {}", app.name(), hook.as_str(), spawned.pid);
        Ok(Handler { pid: spawned.pid, report: spawned.report, deadline: now + timeout, killed: None })
    }

    /// An event handler ended. After `pre-start`, the program starts (it
    /// exited 0) or this start fails; after `post-stop`, the app goes on.
    fn handler_ended(&mut self, i: usize, end: Termination, now: Instant) {
        let app = &mut self.apps[i];
        let (handler, next) = match std::mem::replace(&mut app.phase, Phase::Waiting) {
            Phase::PreStart { handler } => (handler, None),
            Phase::PostStop { handler, next } => (handler, Some(next)),
            other => {
                app.phase = other;
                return;
            }
        };
        let failure = launch::read_report(&handler.report).filter(|m| !m.is_empty());
        let hook = if next.is_none() { Hook::PreStart } else { Hook::PostStop };
        let outcome = match (failure, handler.killed) {
            (Some(failure), _) => failure,
            (None, Some(StopReason::NotReady)) => {
                let limit = if next.is_none() { app.plan.unit.timeout_start } else { app.plan.unit.timeout_stop };
                format!("did not end within {}s; {}", render_duration(limit), end.describe())
            }
            (None, _) => end.describe(),
        };
        let Some(next) = next else {
            return match handler.killed {
                Some(StopReason::Pod | StopReason::Request) => self.finish_unstarted(
                    i,
                    Verdict::Stopped,
                    "not started: stopped during its pre-start handler".into(),
                ),
                None if end == Termination::Code(0) => self.exec_program(i, now),
                _ => {
                    let message = format!("{} handler {outcome}", hook.as_str());
                    self.conclude(i, Termination::Code(EXIT_LAUNCH_FAILED), Some(message), None, now, now)
                }
            };
        };
        log!("{}: {} handler {outcome}", app.name(), hook.as_str());
        if let Some(mut writer) = app.writer.take() {
            writer.close();
        }
        app.phase = *next;
        self.publish(i);
    }

    /// Starts the app's program (after its `pre-start` handler, if any).
    fn exec_program(&mut self, i: usize, now: Instant) {
        let app = &mut self.apps[i];
        // What a previous run left in its pipes goes to the log first.
        if let Some(mut old) = app.writer.take() {
            old.close();
        }
        app.terminal = None;
        let rootfs = Path::new(OsStr::from_bytes(app.rootfs.as_bytes()));
        let stdio = output::open(&self.root, &self.logs_dir, app.name(), &app.plan.unit, rootfs, false);
        let spawned = match (&app.argv, stdio) {
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(e),
            (Ok(argv), Ok(stdio)) => {
                let launch = Launch {
                    app: app.plan.name.as_str(),
                    unit: &app.plan.unit,
                    rootfs: app.rootfs.clone(),
                    cgroups: &app.cgroups,
                    argv: argv.clone(),
                    seccomp: &app.plan.seccomp,
                    stdin: stdio.stdin.as_ref().map_or(self.null.as_fd(), AsFd::as_fd),
                    stdout: stdio.stdout(),
                    stderr: stdio.stderr(),
                    terminal: stdio.terminal(),
                };
                let spawned = launch::spawn(&launch).map_err(|e| format!("fork: {e}"));
                (app.writer, app.stdin_keeper, app.terminal) = stdio.launched();
                spawned
            }
        };
        match spawned {
            Ok(s) => {
                log!("{}: started, pid {}", app.name(), s.pid);
                let proc = Proc { pid: s.pid, since: now, stop: None };
                app.phase = Phase::Starting { proc, report: Some(s.report), failure: None };
                app.message.clear();
                self.publish(i);
            }
            Err(message) => self.conclude(i, Termination::Code(EXIT_LAUNCH_FAILED), Some(message), None, now, now),
        }
    }

    fn start_probe(&mut self, i: usize) {
        let app = &mut self.apps[i];
        let Some(Ok(argv)) = &app.probe_argv else { return };
        let launch = Launch {
            app: app.plan.name.as_str(),
            unit: &app.plan.unit,
            rootfs: app.rootfs.clone(),
            cgroups: &app.cgroups,
            argv: argv.clone(),
            seccomp: &app.plan.seccomp,
            stdin: self.null.as_fd(),
            stdout: self.null.as_fd(),
            stderr: self.null.as_fd(),
            terminal: false,
        };
        // The probe's exit status is its whole answer; its report is not read.
        if let (Ok(spawned), Phase::Running { probe, .. }) = (launch::spawn(&launch), &mut app.phase) {
            *probe = Probe::Running { pid: spawned.pid };
        }
    }

    /// Asks an app's process group to stop: SIGTERM (and SIGCONT, so a
    /// stopped process sees it), SIGKILL after `TimeoutStopSec`.
    fn stop(&mut self, i: usize, reason: StopReason, now: Instant) {
        let grace = self.apps[i].plan.unit.timeout_stop;
        self.stop_within(i, reason, now, grace);
    }

    /// [`Supervisor::stop`] with SIGKILL after `grace` (zero: at once). An
    /// app already stopping is killed no later than `grace` from now.
    fn stop_within(&mut self, i: usize, reason: StopReason, now: Instant, grace: Duration) {
        let app = &mut self.apps[i];
        if let Phase::PreStart { handler } = &mut app.phase {
            // The program has not started: its pre-start handler ends now.
            if handler.killed.is_none() {
                handler.killed = Some(reason);
                signal_group(handler.pid, Signal::SIGKILL);
            }
            return;
        }
        let Some(proc) = app.phase.proc_mut() else { return };
        if let Some(stop) = proc.stop.as_mut() {
            stop.kill_at = stop.kill_at.min(now + grace);
            if grace.is_zero() && !stop.killed {
                stop.killed = true;
                signal_group(proc.pid, Signal::SIGKILL);
            }
            return;
        }
        proc.stop = Some(Stop { reason, kill_at: now + grace, killed: grace.is_zero() });
        if grace.is_zero() {
            signal_group(proc.pid, Signal::SIGKILL);
        }
        signal_group(proc.pid, Signal::try_from(app.plan.unit.kill_signal).unwrap_or(Signal::SIGTERM));
        signal_group(proc.pid, Signal::SIGCONT);
        if let Phase::Running { probe: Probe::Running { pid }, .. } = &app.phase {
            signal_group(*pid, Signal::SIGKILL);
        }
        app.message = if app.message.is_empty() { "stopping".into() } else { format!("{}; stopping", app.message) };
        self.publish(i);
    }

    /// An app's process ended.
    fn exited(&mut self, i: usize, end: Termination, now: Instant) {
        let app = &mut self.apps[i];
        let phase = std::mem::replace(&mut app.phase, Phase::Waiting);
        let (proc, failure) = match phase {
            Phase::Starting { proc, report, failure } => {
                let late = report.as_ref().and_then(launch::read_report).filter(|m| !m.is_empty());
                (proc, failure.or(late))
            }
            Phase::Running { proc, probe, .. } => {
                if let Probe::Running { pid } = probe {
                    signal_group(pid, Signal::SIGKILL);
                }
                (proc, None)
            }
            Phase::Ready { proc } => (proc, None),
            other => {
                app.phase = other;
                return;
            }
        };
        // The app is its main process: what it leaves behind in its
        // process group goes with it, as when a container's init exits.
        // (Not `signal_group`: the pid itself is reaped and may be reused.)
        let _ = killpg(proc.pid, Signal::SIGKILL);
        // Its output is in the log before its end is published.
        if let Some(cri) = app.writer.as_mut() {
            cri.drain();
        }
        // Input for it has nowhere to go.
        app.terminal = None;
        // Read now: the cgroups may be gone by the time stage1 looks.
        let ooms = crate::cgroupfs::oom_kills(&app.cgroups);
        if ooms > 0 {
            let name = format!("{}.oom", app.name());
            let result = status::write_atomic(&self.status_dir, &name, &format!("{ooms}\n"));
            self.note_status_error(result, &name);
        }
        let reason = proc.stop.as_ref().map(|s| s.reason);
        self.conclude(i, end, failure, reason, proc.since, now);
    }

    /// Records how a run ended and decides what comes next.
    fn conclude(
        &mut self,
        i: usize,
        end: Termination,
        launch_failure: Option<String>,
        reason: Option<StopReason>,
        since: Instant,
        now: Instant,
    ) {
        let stopping = self.stopping();
        let app = &mut self.apps[i];
        let verdict =
            if launch_failure.is_some() { Verdict::Failed } else { judge(end, reason, app.plan.unit.kill_signal) };
        app.message = match (launch_failure, reason) {
            (Some(failure), _) => failure,
            (None, Some(StopReason::NotReady)) => {
                format!("not ready within {}s; {}", render_duration(app.readiness_timeout()), end.describe())
            }
            (None, _) => end.describe(),
        };
        (app.last_end, app.last_verdict, app.finished_at) = (Some(end), Some(verdict), Some(SystemTime::now()));
        if verdict == Verdict::Failed {
            self.failures += 1;
            app.failed_seq = self.failures;
        }
        // An app stopped by request stays stopped until started again.
        if reason != Some(StopReason::Request) && exit::restarts(app.plan.unit.restart, verdict, stopping) {
            let delay = app.backoff.delay(now.saturating_duration_since(since));
            app.message = format!("{}; restarting in {}s", app.message, render_duration(delay));
            app.phase = Phase::Restarting { at: now + delay };
        } else {
            app.phase = Phase::Done(verdict);
        }
        log!("{}: {}", app.name(), app.message);
        if app.post_stop_argv.is_some() {
            match self.spawn_handler(i, Hook::PostStop, now) {
                Ok(handler) => {
                    let app = &mut self.apps[i];
                    let next = Box::new(std::mem::replace(&mut app.phase, Phase::Waiting));
                    app.phase = Phase::PostStop { handler, next };
                }
                Err(e) => log!("{}: post-stop handler: {e}", self.apps[i].name()),
            }
        }
        self.publish(i);
    }

    fn finish_unstarted(&mut self, i: usize, verdict: Verdict, message: String) {
        let app = &mut self.apps[i];
        if verdict == Verdict::Failed {
            self.failures += 1;
            app.failed_seq = self.failures;
            log!("{}: {message}", app.name());
        }
        app.phase = Phase::Done(verdict);
        app.message = message;
        self.publish(i);
    }

    fn publish(&mut self, i: usize) {
        let app = &self.apps[i];
        let name = format!("{}.json", app.name());
        let result = status::write_atomic(&self.status_dir, &name, &app.status().to_json());
        self.note_status_error(result, &name);
    }

    fn write_pod(&mut self, state: &str, exit_code: Option<u8>, message: &str) {
        let status = PodStatus {
            state,
            pid: std::process::id(),
            started_at: self.started_at,
            finished_at: exit_code.map(|_| SystemTime::now()),
            exit_code,
            message,
        };
        let result = status::write_atomic(&self.status_dir, "pod.json", &status.to_json());
        self.note_status_error(result, "pod.json");
    }

    /// A status file that cannot be written is logged once; PID 1 carries on.
    fn note_status_error(&mut self, result: std::io::Result<()>, name: &str) {
        if let Err(e) = result {
            if !self.status_write_failed {
                self.status_write_failed = true;
                log!("status/{name}: {e} (further status errors are not logged)");
            }
        }
    }
}

/// Signals a process group; a process that has not yet made its own group
/// (just forked) is signalled alone. Errors mean it is gone already.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal) == Err(Errno::ESRCH) {
        let _ = kill(pid, signal);
    }
}
