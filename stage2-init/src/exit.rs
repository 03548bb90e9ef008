//! Exit statuses, as pure functions: how an app's end is judged, whether it
//! restarts and after what backoff, and the pod's exit code.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use spec::unit::Restart;

/// pod-init's own failure: bad units, a dependency cycle, an unknown app,
/// bad arguments, or a syscall PID 1 cannot do without.
pub const EXIT_INIT_FAILED: u8 = 125;
/// An app's program exists but cannot be executed (EACCES, ENOEXEC).
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// An app's program was not found, or setting up its process failed.
pub const EXIT_LAUNCH_FAILED: i32 = 127;

/// Backoff never grows past this (unless `RestartSec` itself is larger).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// An app that stayed up this long restarts after `RestartSec` again.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// The smallest step once backoff grows, so `RestartSec=0` cannot spin.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Code(i32),
    Signal(i32),
}

impl Termination {
    /// The status of a finished process, or `None` for stops and continues.
    pub fn from_wait(status: WaitStatus) -> Option<(nix::unistd::Pid, Termination)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, Termination::Code(code))),
            WaitStatus::Signaled(pid, signal, _) => Some((pid, Termination::Signal(signal as i32))),
            _ => None,
        }
    }

    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            Termination::Code(code) => code,
            Termination::Signal(signal) => 128 + signal,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Termination::Code(code) => format!("exited with code {code}"),
            Termination::Signal(signal) => match Signal::try_from(signal) {
                Ok(s) => format!("killed by {}", s.as_str()),
                Err(_) => format!("killed by signal {signal}"),
            },
        }
    }
}

/// Why pod-init signalled an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The pod is stopping (SIGTERM or SIGINT to pod-init).
    Pod,
    /// The app was not ready within `ReadinessTimeoutSec`.
    NotReady,
    /// A `stop` request on the control channel (`pod app stop`): judged as
    /// a pod stop, and never followed by a restart.
    Request,
}

/// The judgement on one run of an app; the status file's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exited 0 on its own.
    Exited,
    /// Exited non-zero, died of a signal pod-init did not send to stop it,
    /// failed to launch, was not ready in time, or was not started because
    /// an app it requires failed.
    Failed,
    /// Ended after pod-init asked it to stop the pod: by our SIGTERM or
    /// SIGKILL, or by exiting 0.
    Stopped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Exited => "exited",
            Verdict::Failed => "failed",
            Verdict::Stopped => "stopped",
        }
    }
}

/// Judges a run from how it ended and why (if at all) we signalled it.
/// `kill_signal` is what stopping the app sent first (its `KillSignal=`).
pub fn judge(end: Termination, stop: Option<StopReason>, kill_signal: i32) -> Verdict {
    let our_signal = |s: i32| s == kill_signal || s == Signal::SIGKILL as i32;
    match (stop, end) {
        (Some(StopReason::NotReady), _) => Verdict::Failed,
        (Some(StopReason::Pod | StopReason::Request), Termination::Signal(s)) if our_signal(s) => Verdict::Stopped,
        (Some(StopReason::Pod | StopReason::Request), Termination::Code(0)) => Verdict::Stopped,
        (_, Termination::Code(0)) => Verdict::Exited,
        _ => Verdict::Failed,
    }
}

/// Whether a run judged `verdict` is followed by another.
pub fn restarts(policy: Restart, verdict: Verdict, pod_stopping: bool) -> bool {
    !pod_stopping
        && match policy {
            Restart::No => false,
            Restart::OnFailure => verdict == Verdict::Failed,
            Restart::Always => verdict != Verdict::Stopped,
        }
}

/// Restart backoff: `RestartSec`, doubling up to [`BACKOFF_CAP`], back to
/// `RestartSec` after an app stayed up [`BACKOFF_RESET_AFTER`].
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration) -> Backoff {
        Backoff { initial, next: initial }
    }

    /// The delay before the next run, given how long the last one lasted.
    pub fn delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= BACKOFF_RESET_AFTER {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (delay * 2).max(BACKOFF_FLOOR).min(BACKOFF_CAP.max(self.initial));
        delay
    }
}

/// One app's final word, for the pod's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub verdict: Verdict,
    /// When it failed, in the order failures happened.
    pub failed_seq: u64,
    /// `Termination::exit_code` of its last run; `None` if it never ran.
    pub exit_code: Option<i32>,
}

/// The pod's exit code: 0 if no app failed, else the exit code of the app
/// that failed first (128 + signal for a signal).
pub fn pod_exit_code(finals: &[Final]) -> u8 {
    let mut failures: Vec<&Final> = finals.iter().filter(|f| f.verdict == Verdict::Failed).collect();
    failures.sort_by_key(|f| f.failed_seq);
    match failures.first() {
        None => 0,
        // An app that never ran failed because an app it requires failed
        // earlier; that one carries the code.
        Some(_) => {
            let code = failures.iter().find_map(|f| f.exit_code).unwrap_or(1);
            // Exit codes are 0..=255, 128 + signal at most 128 + 64.
            u8::try_from(code & 0xff).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: i32 = Signal::SIGTERM as i32;
    const KILL: i32 = Signal::SIGKILL as i32;
    const SEGV: i32 = Signal::SIGSEGV as i32;

    #[test]
    fn judging() {
        assert_eq!(judge(Termination::Code(0), None, TERM), Verdict::Exited);
        assert_eq!(judge(Termination::Code(5), None, TERM), Verdict::Failed);
        assert_eq!(judge(Termination::Signal(TERM), None, TERM), Verdict::Failed);
        assert_eq!(judge(Termination::Signal(TERM), Some(StopReason::Pod), TERM), Verdict::Stopped);
        assert_eq!(judge(Termination::Signal(KILL), Some(StopReason::Pod), TERM), Verdict::Stopped);
        assert_eq!(judge(Termination::Code(0), Some(StopReason::Pod), TERM), Verdict::Stopped);
        assert_eq!(judge(Termination::Code(3), Some(StopReason::Pod), TERM), Verdict::Failed);
        assert_eq!(judge(Termination::Signal(SEGV), Some(StopReason::Pod), TERM), Verdict::Failed);
        // An app stopped with its own StopSignal (SIGQUIT: 3) was stopped.
        assert_eq!(judge(Termination::Signal(3), Some(StopReason::Pod), 3), Verdict::Stopped);
        assert_eq!(judge(Termination::Signal(TERM), Some(StopReason::Pod), 3), Verdict::Failed);
        assert_eq!(judge(Termination::Signal(TERM), Some(StopReason::NotReady), TERM), Verdict::Failed);
        assert_eq!(Termination::Signal(KILL).exit_code(), 137);
        assert_eq!(Termination::Signal(KILL).describe(), "killed by SIGKILL");
    }

    #[test]
    fn restart_policy() {
        assert!(!restarts(Restart::No, Verdict::Failed, false));
        assert!(restarts(Restart::OnFailure, Verdict::Failed, false));
        assert!(!restarts(Restart::OnFailure, Verdict::Exited, false));
        assert!(restarts(Restart::Always, Verdict::Exited, false));
        assert!(!restarts(Restart::Always, Verdict::Failed, true));
        assert!(!restarts(Restart::Always, Verdict::Stopped, false));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1));
        let quick = Duration::from_millis(10);
        let delays: Vec<u64> = (0..7).map(|_| b.delay(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(s(10)), s(1));
        let mut zero = Backoff::new(Duration::ZERO);
        assert_eq!((zero.delay(quick), zero.delay(quick)), (Duration::ZERO, Duration::from_millis(100)));
        let mut big = Backoff::new(s(60));
        assert_eq!((big.delay(quick), big.delay(quick)), (s(60), s(60)));
    }

    #[test]
    fn pod_code() {
        let f = |verdict, failed_seq, exit_code| Final { verdict, failed_seq, exit_code };
        assert_eq!(pod_exit_code(&[]), 0);
        assert_eq!(pod_exit_code(&[f(Verdict::Exited, 0, Some(0)), f(Verdict::Stopped, 0, Some(143))]), 0);
        assert_eq!(pod_exit_code(&[f(Verdict::Failed, 2, Some(5)), f(Verdict::Failed, 1, Some(3))]), 3);
        assert_eq!(pod_exit_code(&[f(Verdict::Failed, 2, None), f(Verdict::Failed, 1, Some(137))]), 137);
        assert_eq!(pod_exit_code(&[f(Verdict::Failed, 1, None)]), 1);
    }
}
