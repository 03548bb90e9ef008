//! The control channel (`spec::control`): a unix socket in the pod root
//! (in a VM, a guest-local one that the ctl agent relays the host's
//! requests to: `spec::vm::relay`), polled by the supervision loop; one
//! request per connection, answered at once. `inspect`, `stop APP
//! [SECONDS]`, `start APP`, `add APP` (its unit and rootfs made by stage1
//! first: read as at boot, appended to the plan and started), `remove APP`
//! (an ended app leaves the plan), `reopen-log APP` (a running
//! CRI-format app's log file is opened anew), `close-stdin APP` and
//! `resize APP ROWS COLS` (a running app's terminal) are served.
//!
//! No threads: a connection is read and answered in the loop, each read
//! and write bounded by [`IO_TIMEOUT`]. Only root can connect (mode 0600),
//! and `pod` writes its request whole as it connects.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::stat::{umask, Mode};
use spec::control::{AppInfo, ErrorKind, ProtocolError, Request, Response, MAX_REQUEST};

use super::Supervisor;
use crate::app::Phase;
use crate::exit::{StopReason, Verdict};
use crate::log;

/// The longest a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_millis(200);
/// Connections served per wakeup, so a flood cannot starve the apps.
const MAX_PER_WAKEUP: usize = 16;

#[derive(Debug)]
pub struct Listener(UnixListener, PathBuf);

impl Listener {
    /// Binds the socket at `path`, mode 0600, replacing a stale one. A
    /// socket that cannot be bound is logged: the pod runs without it.
    pub fn bind(path: &Path) -> Option<Listener> {
        let _ = std::fs::remove_file(path);
        // Created 0600 from the start: no window where others could connect.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        match bound.and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => Some(Listener(listener, path.to_owned())),
            Err(e) => {
                log!("control channel {}: {e}", path.display());
                None
            }
        }
    }

    /// The listening socket stage1 bound at `path` and passed as `fd`
    /// (`--control-fd`): in a pod with a user namespace, whose root may
    /// not create a file in the pod root, host root binds it (so the pod's
    /// root cannot swap the path for a link elsewhere on the host).
    pub fn inherited(fd: i32, path: &Path) -> Option<Listener> {
        use std::os::fd::FromRawFd;
        // SAFETY: stage1 passed this fd, a listening unix socket, to this
        // process alone (`--control-fd`), and nothing else here owns it.
        let listener = unsafe { UnixListener::from_raw_fd(fd) };
        let ready = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(std::io::Error::from)
            .and_then(|_| listener.set_nonblocking(true));
        match ready {
            Ok(()) => Some(Listener(listener, path.to_owned())),
            Err(e) => {
                log!("control channel {} (fd {fd}): {e}", path.display());
                None
            }
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Closes the socket and removes it: the pod has ended.
    pub fn close(self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

/// Reads one request line (up to [`MAX_REQUEST`] bytes).
fn read_request(stream: &mut UnixStream) -> Result<Request, ProtocolError> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Malformed { what: "request", why: e.to_string() }),
        }
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let line =
        std::str::from_utf8(line).map_err(|_| ProtocolError::Malformed { what: "request", why: "not UTF-8".into() })?;
    Request::parse(line)
}

fn refuse(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

impl Supervisor {
    /// Answers the connections waiting on the control socket.
    pub(super) fn serve_control(&mut self) {
        for _ in 0..MAX_PER_WAKEUP {
            let Some(listener) = &self.control else { return };
            let mut stream = match listener.0.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => {
                    log!("control channel: accept: {e}");
                    return;
                }
            };
            let prepared = stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
                .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
            if prepared.is_err() {
                continue;
            }
            let response = match read_request(&mut stream) {
                Ok(request) => self.control_request(request, Instant::now()),
                Err(e) => Response::refusal(&e),
            };
            // A client gone before the answer is its own loss.
            let _ = stream.write_all(response.render().as_bytes());
        }
    }

    fn control_request(&mut self, request: Request, now: Instant) -> Response {
        let name = match &request {
            Request::Inspect => return Response::Ok(self.apps.iter().map(info).collect()),
            Request::Add(name) => return self.add_app(name, now),
            Request::Remove(name) => return self.remove_app(name),
            Request::Stop(name)
            | Request::StopWithin(name, _)
            | Request::Start(name)
            | Request::ReopenLog(name)
            | Request::CloseStdin(name)
            | Request::Resize(name, ..) => name,
        };
        let Some(i) = self.apps.iter().position(|a| a.plan.name == *name) else {
            return refuse(ErrorKind::NoSuchApp, format!("no app {name} in this pod"));
        };
        let result = match &request {
            Request::Stop(_) => self.stop_app(i, now, None),
            Request::StopWithin(_, grace) => self.stop_app(i, now, Some(*grace)),
            Request::ReopenLog(_) => self.reopen_log(i),
            Request::CloseStdin(_) => {
                // The app reads end-of-file once the writers it has now are
                // gone; closing twice, or with no FIFO, changes nothing.
                self.apps[i].stdin_keeper = None;
                Ok(())
            }
            Request::Resize(_, rows, cols) => self.resize(i, *rows, *cols),
            _ => self.start_app(i, now),
        };
        match result {
            Ok(()) => Response::Ok(Vec::new()),
            Err(message) => refuse(ErrorKind::Conflict, message),
        }
    }

    /// `stop APP`: as a pod stop does for one app, but the pod runs on and
    /// the app is not restarted. Stopping an ended app changes nothing.
    /// `grace`: SIGKILL after it instead of the unit's `TimeoutStopSec`.
    fn stop_app(&mut self, i: usize, now: Instant, grace: Option<Duration>) -> Result<(), String> {
        let app = &mut self.apps[i];
        log!("{}: stop requested", app.name());
        match &mut app.phase {
            Phase::PreStart { .. } | Phase::Starting { .. } | Phase::Running { .. } | Phase::Ready { .. } => {
                match grace {
                    Some(grace) => self.stop_within(i, StopReason::Request, now, grace),
                    None => self.stop(i, StopReason::Request, now),
                }
            }
            Phase::Restarting { .. } => {
                let cause = app.message.split("; restarting in ").next().unwrap_or_default();
                app.message = format!("{cause}; not restarted: stopped by request");
                app.phase = Phase::Done(app.last_verdict.unwrap_or(Verdict::Stopped));
                self.publish(i);
            }
            Phase::PostStop { next, .. } => {
                // Its post-stop handler runs on; it is not started again.
                if matches!(**next, Phase::Restarting { .. }) {
                    let cause = app.message.split("; restarting in ").next().unwrap_or_default();
                    app.message = format!("{cause}; not restarted: stopped by request");
                    **next = Phase::Done(app.last_verdict.unwrap_or(Verdict::Stopped));
                }
            }
            Phase::Waiting => self.finish_unstarted(i, Verdict::Stopped, "not started: stopped by request".into()),
            Phase::Done(_) => {}
        }
        Ok(())
    }

    /// `reopen-log APP`: kubelet renamed the log away (rotation) and wants
    /// a new file at its path. Only a running app that logs in the CRI
    /// format (pod-init writes its file) can; as containerd, an app that
    /// does not run is an error.
    fn reopen_log(&mut self, i: usize) -> Result<(), String> {
        let app = &mut self.apps[i];
        let name = app.plan.name.to_string();
        if app.phase.proc().is_none() {
            return Err(format!("app {name} is {}, not running: its log cannot be reopened", app.phase.state()));
        }
        match app.writer.as_mut() {
            Some(cri) => {
                // What was written before the rename belongs in the old file.
                cri.drain();
                cri.reopen().map_err(|e| format!("app {name}: {e}"))
            }
            None => Err(format!("app {name} writes its log itself (raw format): there is nothing to reopen")),
        }
    }

    /// `resize APP ROWS COLS`: the size of a running app's terminal.
    fn resize(&mut self, i: usize, rows: u16, cols: u16) -> Result<(), String> {
        let app = &self.apps[i];
        match &app.terminal {
            Some(terminal) => terminal.resize(rows, cols).map_err(|e| format!("app {}: {e}", app.name())),
            None if !app.plan.unit.tty => Err(format!("app {} has no terminal (tty is not set)", app.name())),
            None => Err(format!("app {} is {}, not running: its terminal is gone", app.name(), app.phase.state())),
        }
    }

    /// `start APP`: starts an ended app again, as at the pod's start (same
    /// unit, rootfs, privileges; its log appended). A running or waiting
    /// app is left as it is.
    fn start_app(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let name = self.apps[i].name().to_owned();
        if self.stopping() {
            return Err(format!("app {name} not started: the pod is stopping"));
        }
        match &self.apps[i].phase {
            Phase::Starting { proc, .. } | Phase::Running { proc, .. } | Phase::Ready { proc }
                if proc.stop.is_some() =>
            {
                Err(format!("app {name} is stopping; start it again once it has ended"))
            }
            Phase::PostStop { .. } => Err(format!("app {name} is stopping; start it again once it has ended")),
            Phase::PreStart { .. }
            | Phase::Starting { .. }
            | Phase::Running { .. }
            | Phase::Ready { .. }
            | Phase::Waiting => Ok(()),
            Phase::Restarting { .. } | Phase::Done(_) => {
                log!("{name}: start requested");
                if self.apps[i].is_done() {
                    self.apps[i].restarts += 1;
                }
                self.start(i, now);
                Ok(())
            }
        }
    }
}

impl Supervisor {
    /// `add APP`: its unit, seccomp filters and rootfs are in place (stage1
    /// made them); read them as at boot, append the app to the plan and let
    /// the next tick start it. It may only depend on apps already there,
    /// so appending keeps the start order.
    fn add_app(&mut self, name: &spec::AcName, now: Instant) -> Response {
        if self.stopping() {
            return refuse(ErrorKind::Conflict, format!("app {name} not added: the pod is stopping"));
        }
        if self.apps.iter().any(|a| a.plan.name == *name) {
            return refuse(ErrorKind::Conflict, format!("the pod already has an app {name}"));
        }
        let (unit, seccomp) = match crate::plan::load_app(&self.root, name) {
            Ok(loaded) => loaded,
            Err(e) => return refuse(ErrorKind::Conflict, format!("app {name} not added: {e}")),
        };
        let index = |dep: &spec::AcName| self.apps.iter().position(|a| a.plan.name == *dep);
        let mut deps = Vec::new();
        for dep in unit.dependencies() {
            match index(dep) {
                Some(i) => deps.push(i),
                None => return refuse(ErrorKind::Conflict, format!("app {name} depends on unknown app {dep}")),
            }
        }
        let requires = unit.requires.iter().filter_map(index).collect();
        if let Err(e) = crate::vm::app_added(&self.root, name) {
            crate::vm::app_removed(&self.root, name);
            return refuse(ErrorKind::Conflict, format!("app {name} not added: {e}"));
        }
        let plan = crate::plan::AppPlan { name: name.clone(), unit, deps, requires, seccomp };
        log!("{name}: added");
        self.apps.push(crate::app::App::new(plan, &self.root));
        let i = self.apps.len() - 1;
        self.publish(i);
        self.tick(now);
        Response::Ok(Vec::new())
    }

    /// `remove APP`: an app that has ended (stop it first) leaves the plan
    /// and the status list; stage1 then removes its files and mounts. An
    /// app another one depends on stays.
    fn remove_app(&mut self, name: &spec::AcName) -> Response {
        let Some(i) = self.apps.iter().position(|a| a.plan.name == *name) else {
            return refuse(ErrorKind::NoSuchApp, format!("no app {name} in this pod"));
        };
        if !matches!(self.apps[i].phase, Phase::Done(_) | Phase::Waiting) {
            return refuse(ErrorKind::Conflict, format!("app {name} is {}; stop it first", self.apps[i].phase.state()));
        }
        if let Some(d) = self.apps.iter().find(|a| a.plan.deps.contains(&i)) {
            return refuse(ErrorKind::Conflict, format!("app {} depends on app {name}", d.name()));
        }
        self.apps.remove(i);
        crate::vm::app_removed(&self.root, name);
        for app in &mut self.apps {
            for d in app.plan.deps.iter_mut().chain(app.plan.requires.iter_mut()) {
                if *d > i {
                    *d -= 1;
                }
            }
        }
        for file in [format!("{name}.json"), format!("{name}.oom")] {
            let _ = std::fs::remove_file(self.status_dir.join(file));
        }
        log!("{name}: removed");
        Response::Ok(Vec::new())
    }
}

/// One app for `inspect`: what its status file holds.
fn info(app: &crate::app::App) -> AppInfo {
    let s = app.status();
    AppInfo {
        name: s.app.to_owned(),
        state: s.state.to_owned(),
        pid: s.pid,
        exit_code: s.exit_code,
        signal: s.signal,
        restarts: s.restarts,
        message: s.message.to_owned(),
    }
}
