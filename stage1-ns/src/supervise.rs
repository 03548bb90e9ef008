//! The monitor's supervising phase: it waits for the pod's PID 1 (its
//! child), forwards SIGTERM/SIGINT/SIGHUP to it as a SIGTERM, streams the
//! apps' logs for a foreground `pod run`, says `READY=1` to systemd when
//! asked to (notify.rs) and records the apps' OOM kills (oom.rs).
//!
//! It only wakes when something needs it: a signal (signalfd: SIGCHLD
//! included, so PID 1's exit is seen at once), or a tick every
//! [`TICK`] while logs are streamed or readiness is still to be told, else
//! every [`OOM_EVERY`] for the OOM counts (read once more at the end).
//!
//! **The lean supervisor.** The set-up leaves the monitor's memory full of
//! what it no longer needs: the text of the network, cgroup and D-Bus code
//! it ran, their heap, a thread's cached stack. When nothing of it is still
//! in use (no loopback port proxy: a pod without ports), once the pod has
//! run for [`LEAN_AFTER`] the monitor re-execs itself (`/proc/self/exe`,
//! same pid, same argv) with its state in [`STATE_ENV`]: PID 1 stays its
//! child (and keeps PR_SET_PDEATHSIG on it, as the same thread runs on),
//! the pod's lock fd stays open, blocked and pending signals carry over.
//! The new image maps only the pages the supervising loop touches, and at
//! the end it tears the pod down as `pod-stage1-ns gc` does, from the pod
//! directory (monitor.rs [`crate::monitor::gc`]). A pod that ends sooner
//! (the usual `pod run` of a command) never pays for the exec.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use spec::stage1::ResolvedPod;

use crate::cgroups::PodCgroup;
use crate::logtail::LogTail;
use crate::monitor::Stage1Error;
use crate::notify::Notifier;

/// How often logs are pumped and readiness looked at, while needed.
pub const TICK: Duration = Duration::from_millis(200);
/// How often an otherwise idle monitor reads the apps' OOM kill counts.
pub const OOM_EVERY: Duration = Duration::from_secs(2);
/// How long the pod runs before the monitor turns into the lean supervisor.
pub const LEAN_AFTER: Duration = Duration::from_secs(1);
/// The environment variable carrying [`State`] across the re-exec.
pub const STATE_ENV: &str = "POD_STAGE1_SUPERVISE";

/// What the lean supervisor needs besides the pod directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    init: i32,
    stream_logs: bool,
    ooms: BTreeMap<String, u64>,
    /// Each streamed app's log offset (a re-exec waits for whole lines).
    logs: Vec<(String, u64)>,
    notify: crate::notify::Sent,
    lock_fd: Option<i32>,
}

/// Asks for the lean supervisor: the pod's lock fd to keep across the exec.
#[derive(Debug)]
pub struct Lean {
    pub lock_fd: Option<i32>,
}

#[derive(Debug)]
pub struct Supervisor {
    pod_dir: PathBuf,
    init: Pid,
    stream_logs: bool,
    apps: Vec<String>,
    ooms: BTreeMap<String, u64>,
    watched: crate::oom::Watched,
    tail: LogTail,
    notify: Notifier,
}

impl Supervisor {
    pub fn new(pod_dir: &Path, init: Pid, stream_logs: bool, pod: &ResolvedPod, cgroup: Option<PodCgroup>) -> Self {
        let apps: Vec<String> = pod.apps.iter().map(|a| a.name.to_string()).collect();
        Self {
            pod_dir: pod_dir.to_owned(),
            init,
            stream_logs,
            ooms: BTreeMap::new(),
            // Apps added while the pod runs (`pod app add`, CRI
            // containers) have cgroups the one made at the start does not
            // list: looked up again whenever pod.json changes.
            watched: crate::oom::Watched::new(pod_dir, cgroup, pod),
            tail: LogTail::new(pod_dir, apps.clone()),
            notify: Notifier::from_env(pod_dir),
            apps,
        }
    }

    /// The kernel counts OOM kills per cgroup; an app's process only ends
    /// by SIGKILL. Records them beside the app's status so `pod status`
    /// can say why, while the app runs on (a child of it killed); pod-init
    /// records the count as it reaps the app, when the cgroups surely exist.
    fn note_ooms(&mut self) {
        let Some((cg, apps)) = self.watched.current() else { return };
        for name in apps {
            let n = cg.oom_kills(&name).unwrap_or(0);
            if n > 0 && self.ooms.get(&name) != Some(&n) {
                // Replaced whole (pod-init writes the file too, as it
                // reaps the app: stage2-init's cgroupfs::oom_kills).
                let dir = self.pod_dir.join("status");
                let tmp = dir.join(format!(".{name}.oom.stage1"));
                let _ =
                    fs::write(&tmp, format!("{n}\n")).and_then(|()| fs::rename(&tmp, dir.join(format!("{name}.oom"))));
                self.ooms.insert(name, n);
            }
        }
    }

    fn finish(&mut self) {
        self.notify.stopping();
        self.note_ooms();
        self.tail.finish(self.stream_logs);
    }

    /// Waits for PID 1 and returns the pod's status (PID 1's exit code, or
    /// 128 + the signal that killed it). With `lean`, re-execs into the
    /// lean supervisor once the pod has run [`LEAN_AFTER`] (and only
    /// returns here if that exec failed).
    pub fn run(mut self, mask: &SigSet, lean: Option<Lean>) -> Result<i32, Stage1Error> {
        let sfd = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|errno| Stage1Error::Sys { what: "signalfd", errno })?;
        let mut lean = lean.map(|l| (Instant::now() + LEAN_AFTER, l));
        let mut next_oom = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_oom {
                self.note_ooms();
                next_oom = now + OOM_EVERY;
            }
            if !self.notify.settled() {
                self.notify.tick(self.apps.iter().map(String::as_str));
            }
            if self.stream_logs {
                self.tail.pump();
            }
            // Reap everything that reparented to us; note PID 1's end.
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == self.init => {
                        self.finish();
                        return Ok(code);
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.init => {
                        self.finish();
                        return Ok(128 + sig as i32);
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            if lean.as_ref().is_some_and(|(at, _)| *at <= now) {
                // A log line half read: tried again at the next tick.
                if let Some(state) = lean.as_ref().and_then(|(_, l)| self.state(l.lock_fd)) {
                    let err = reexec(&state);
                    eprintln!("pod-stage1-ns: re-exec into the lean supervisor: {err}");
                    lean = None;
                }
            }
            let mut wake = next_oom;
            if self.stream_logs || !self.notify.settled() {
                wake = wake.min(now + TICK);
            }
            if let Some((at, _)) = &lean {
                wake = wake.min(*at);
            }
            let ms = wake.saturating_duration_since(Instant::now()).as_millis();
            let timeout =
                nix::poll::PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(nix::poll::PollTimeout::MAX);
            let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&sfd), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, timeout);
            while let Ok(Some(info)) = sfd.read_signal() {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                if Signal::try_from(signo).is_ok_and(|sig| sig != Signal::SIGCHLD) {
                    self.notify.stopping();
                    let _ = kill(self.init, Signal::SIGTERM);
                }
            }
        }
    }

    /// The state to hand over, unless a log line is half read.
    fn state(&self, lock_fd: Option<i32>) -> Option<State> {
        Some(State {
            init: self.init.as_raw(),
            stream_logs: self.stream_logs,
            ooms: self.ooms.clone(),
            logs: self.tail.offsets()?,
            notify: self.notify.sent(),
            lock_fd,
        })
    }
}

/// Re-execs `/proc/self/exe` with the same argv and `state` in
/// [`STATE_ENV`]; returns only on failure.
fn reexec(state: &State) -> String {
    let step = || -> Result<std::convert::Infallible, String> {
        let json = serde_json::to_string(state).map_err(|e| e.to_string())?;
        if let Some(fd) = state.lock_fd {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                .map_err(|e| format!("keeping the pod's lock open: {e}"))?;
        }
        let cstr = |s: OsString| CString::new(s.into_vec()).map_err(|e| e.to_string());
        let args = std::env::args_os().map(cstr).collect::<Result<Vec<_>, _>>()?;
        let mut env = vec![cstr(format!("{STATE_ENV}={json}").into())?];
        if let Some(fd) = state.lock_fd {
            env.push(cstr(format!("{}={fd}", spec::stage1::LOCK_FD_ENV).into())?);
        }
        if let Some(target) = crate::notify::target() {
            env.push(cstr(format!("{}={target}", crate::notify::NOTIFY_SOCKET_ENV).into())?);
        }
        nix::unistd::execve(c"/proc/self/exe", &args, &env).map_err(|e| format!("exec /proc/self/exe: {e}"))?;
        Err("exec returned".into())
    };
    match step() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The lean supervisor, in the re-exec'd monitor (`state` from
/// [`STATE_ENV`]): supervises the pod to its end, writes `stage1-exit`,
/// tears the pod down as `gc` does and returns its status.
pub fn resume(pod_dir: &Path, state: &str) -> Result<i32, Stage1Error> {
    let state: State = serde_json::from_str(state).map_err(|e| Stage1Error::Invalid(format!("{STATE_ENV}: {e}")))?;
    // An exec of /proc/self/exe names the process `exe` (ps, pgrep, top):
    // it keeps the monitor's name.
    let _ = nix::sys::prctl::set_name(c"pod-stage1-ns");
    let (inv, pod) = crate::monitor::load(pod_dir)?;
    let h = crate::monitor::hierarchy()?;
    let cgroup = crate::cgroups::open_pod(&h, crate::monitor::pod_loc(pod_dir, &inv, &pod)?)?;
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(|errno| Stage1Error::Sys { what: "block signals", errno })?;
    let mut sup = Supervisor::new(pod_dir, Pid::from_raw(state.init), state.stream_logs, &pod, cgroup);
    sup.ooms = state.ooms;
    sup.tail = LogTail::resume(pod_dir, state.logs);
    sup.notify.resume(state.notify);
    release_setup_text();
    let stream_logs = state.stream_logs;
    let status = sup.run(&mask, None)?;
    crate::monitor::report_exit(pod_dir, status, stream_logs);
    if let Err(e) = crate::monitor::gc(pod_dir) {
        eprintln!("pod-stage1-ns: tearing the pod down: {e}");
    }
    Ok(status)
}

/// Unmaps the pages of the monitor's own binary that are read-only and
/// unmodified (its code and constants), so that only those the waiting
/// loop touches come back (a fault maps them from the page cache again).
///
/// Why: even re-exec'd, the lean supervisor's start (Rust's runtime, the
/// JSON of its state and of the pod files, the cgroup lookup) leaves ~2.2
/// MB of the binary's text mapped, since a fault maps the page cache's
/// whole 64 kB folio and that code is spread all over the binary, between
/// the set-up code; the loop itself needs a few folios. Without this the
/// lean monitor stays at ~2.9 MB VmRSS (bench/monitorrss.sh). Packing the
/// loop's code together (as pod-init's hot.ld does) would be the cleaner
/// fix, with a linker script to keep up to date. Safe: nothing in these
/// mappings differs from the file (no anonymous page in them), so a
/// refault reads the same bytes.
fn release_setup_text() {
    let Ok(exe) = fs::read_link("/proc/self/exe") else { return };
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else { return };
    let mut current: Option<(usize, usize)> = None;
    let mut ranges = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let perms = f.next().unwrap_or_default();
            let path = f.nth(3).map(Path::new);
            let ours = path == Some(exe.as_path()) && !perms.contains('w');
            current = match (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                (Ok(lo), Ok(hi)) if ours => Some((lo, hi)),
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some((lo, hi)) = current.take() {
                if f.next() == Some("0") {
                    ranges.push((lo, hi));
                }
            }
        }
    }
    for (lo, hi) in ranges {
        let Some(addr) = std::ptr::NonNull::new(lo as *mut std::ffi::c_void) else { continue };
        // SAFETY: a read-only private mapping of our binary with no
        // anonymous (modified) page: dropping its page table entries loses
        // nothing, the next access maps the same file pages again.
        let _ = unsafe { nix::sys::mman::madvise(addr, hi - lo, nix::sys::mman::MmapAdvise::MADV_DONTNEED) };
    }
}
