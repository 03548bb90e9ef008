//! `pod app`: the apps of a running pod, through its PID 1's control
//! channel (`spec::control`, the socket `control.sock` in the pod
//! directory). The same for VM pods: there the VM's monitor listens on that
//! socket and relays each request to the guest's pod-init over the
//! virtio-serial control port (`spec::vm::relay`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spec::control::{AppInfo, ErrorKind, ProtocolError, Request, Response, MAX_RESPONSE, SOCKET};
use spec::stage1::Isolation;
use spec::AcName;

use crate::exit::{Exit, ExitCodeOf};
use crate::pods::{PodRef, PodState};
use crate::prepare::read_resolved;

/// How long one exchange with pod-init may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `stop`/`start` look whether the app got there.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("pod {uuid} is {state}, not running")]
    NotRunning { uuid: String, state: PodState },
    #[error("pod {uuid}: {op} {path}: {source}")]
    Io {
        uuid: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod {uuid}: its PID 1 answered: {source}")]
    Protocol {
        uuid: String,
        #[source]
        source: ProtocolError,
    },
    #[error("pod {uuid} has no app {app}")]
    NoApp { uuid: String, app: String },
    #[error("pod {uuid}: {message}")]
    Refused { uuid: String, kind: ErrorKind, message: String },
    #[error("pod {uuid}: app {app} {what}")]
    App { uuid: String, app: String, what: String },
    #[error("pod {uuid}: its VM's guest did not start its pod-init within {limit:?}")]
    NotBooted { uuid: String, limit: Duration },
}

impl ExitCodeOf for ControlError {
    fn exit(&self) -> Exit {
        match self {
            Self::NotRunning { .. } => Exit::Conflict,
            Self::NoApp { .. } => Exit::NotFound,
            Self::Refused { kind: ErrorKind::Conflict, .. } => Exit::Conflict,
            Self::Refused { kind: ErrorKind::NoSuchApp, .. } => Exit::NotFound,
            _ => Exit::Failure,
        }
    }
}

/// Sends one request to the pod's PID 1 and returns its `ok` answer (the
/// apps, for `inspect`); a refusal is an error naming the pod and app.
pub fn request(pod: &PodRef, request: &Request) -> Result<Vec<AppInfo>, ControlError> {
    if pod.state != PodState::Running {
        return Err(ControlError::NotRunning { uuid: pod.uuid.clone(), state: pod.state });
    }
    if read_resolved(&pod.dir).is_some_and(|r| r.isolation == Isolation::Vm) {
        wait_booted(pod, BOOT_LIMIT)?;
    }
    let path = pod.dir.join(SOCKET);
    let io = |op: &'static str| {
        let (uuid, path) = (pod.uuid.clone(), path.clone());
        move |source| ControlError::Io { uuid, op, path, source }
    };
    let mut stream = UnixStream::connect(&path).map_err(io("connect to"))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).map_err(io("set a timeout on"))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT)).map_err(io("set a timeout on"))?;
    stream.write_all(request.render().as_bytes()).map_err(io("write to"))?;
    let mut answer = Vec::new();
    (&mut stream).take(MAX_RESPONSE as u64).read_to_end(&mut answer).map_err(io("read from"))?;
    let response = Response::parse(&String::from_utf8_lossy(&answer))
        .map_err(|source| ControlError::Protocol { uuid: pod.uuid.clone(), source })?;
    match response {
        Response::Ok(apps) => Ok(apps),
        Response::Error { kind: ErrorKind::NoSuchApp, .. } => {
            let app = request.app().map(ToString::to_string).unwrap_or_default();
            Err(ControlError::NoApp { uuid: pod.uuid.clone(), app })
        }
        Response::Error { kind, message } => Err(ControlError::Refused { uuid: pod.uuid.clone(), kind, message }),
    }
}

/// How long a request to a VM pod waits for its guest to boot (TCG on a
/// busy host: tens of seconds).
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// Waits until a VM pod's guest runs its pod-init: it writes
/// `status/pod.json` once its control channel is served. Until then a
/// request would wait in the VM's control port, past the relay's patience.
fn wait_booted(pod: &PodRef, limit: Duration) -> Result<(), ControlError> {
    let status = pod.dir.join("status").join("pod.json");
    let start = Instant::now();
    while !status.exists() {
        if !crate::pods::is_locked(&pod.dir) {
            return Err(ControlError::NotRunning { uuid: pod.uuid.clone(), state: PodState::Exited });
        }
        if start.elapsed() > limit {
            return Err(ControlError::NotBooted { uuid: pod.uuid.clone(), limit });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits until the pod's PID 1 answers on its control channel (a VM pod's
/// once its guest has booted, at most `limit`).
pub fn wait_guest(pod: &PodRef, limit: Duration) -> Result<(), ControlError> {
    wait_booted(pod, limit)?;
    list(pod).map(drop)
}

/// Every app of the pod, as its PID 1 sees them, in start order.
pub fn list(pod: &PodRef) -> Result<Vec<AppInfo>, ControlError> {
    request(pod, &Request::Inspect)
}

fn find(pod: &PodRef, app: &AcName) -> Result<AppInfo, ControlError> {
    list(pod)?
        .into_iter()
        .find(|a| a.name == app.as_str())
        .ok_or_else(|| ControlError::NoApp { uuid: pod.uuid.clone(), app: app.to_string() })
}

/// Polls the app until `done` says so or `limit` passes.
fn wait_for(
    pod: &PodRef,
    app: &AcName,
    limit: Duration,
    done: impl Fn(&AppInfo) -> bool,
) -> Result<Option<AppInfo>, ControlError> {
    let start = Instant::now();
    loop {
        let info = find(pod, app)?;
        if done(&info) {
            return Ok(Some(info));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

fn has_ended(info: &AppInfo) -> bool {
    has_ended_state(&info.state)
}

fn has_ended_state(state: &str) -> bool {
    matches!(state, "exited" | "failed" | "stopped")
}

/// Stops an app and waits until it has ended (its stop timeout, then
/// SIGKILL, plus a margin); returns how it ended. Stopping the last app of
/// a pod that is not a sandbox ends the pod: then its status file says.
pub fn stop(pod: &PodRef, app: &AcName) -> Result<AppInfo, ControlError> {
    stop_app(pod, app, None)
}

/// Stops an app as [`stop`], SIGKILL after `grace` instead of its stop
/// timeout (zero: at once).
pub fn stop_within(pod: &PodRef, app: &AcName, grace: Duration) -> Result<AppInfo, ControlError> {
    // The protocol takes at most a year; kubelet's grace may be any int64.
    stop_app(pod, app, Some(grace.min(spec::unit::MAX_DURATION)))
}

fn stop_app(pod: &PodRef, app: &AcName, grace: Option<Duration>) -> Result<AppInfo, ControlError> {
    let resolved = read_resolved(&pod.dir);
    let grace = match grace {
        Some(g) => {
            request(pod, &Request::StopWithin(app.clone(), g))?;
            g
        }
        None => {
            request(pod, &Request::Stop(app.clone()))?;
            resolved
                .as_ref()
                .and_then(|r| r.apps.iter().find(|a| &a.name == app).map(|a| Duration::from_millis(a.stop_timeout_ms)))
                .unwrap_or(Duration::from_secs(10))
        }
    };
    let timeout = grace + Duration::from_secs(5);
    match wait_for(pod, app, timeout, has_ended) {
        Ok(Some(info)) => return Ok(info),
        Ok(None) => {}
        // The pod ended meanwhile (its PID 1 is gone): wait for its stage1
        // to release it, and read what pod-init recorded.
        Err(ControlError::Io { .. }) => {
            let start = Instant::now();
            while crate::pods::is_locked(&pod.dir) && start.elapsed() < timeout {
                std::thread::sleep(POLL);
            }
            let recorded = resolved
                .as_ref()
                .and_then(|r| crate::lifecycle::app_statuses(&pod.dir, r).into_iter().find(|a| a.app == app.as_str()));
            if let Some(st) = recorded.filter(|st| has_ended_state(&st.state)) {
                return Ok(AppInfo {
                    name: st.app,
                    state: st.state,
                    pid: None,
                    exit_code: st.exit_code.and_then(|c| i32::try_from(c).ok()),
                    signal: st.signal.and_then(|c| i32::try_from(c).ok()),
                    restarts: st.restarts.and_then(|r| u32::try_from(r).ok()).unwrap_or(0),
                    message: format!("{}; the pod ended with it", st.message.unwrap_or_default()),
                });
            }
        }
        Err(e) => return Err(e),
    }
    Err(ControlError::App { uuid: pod.uuid.clone(), app: app.to_string(), what: "did not end after SIGKILL".into() })
}

/// Has pod-init close the app's log file and open its path anew (after
/// the file was renamed away); refused unless the app runs.
pub fn reopen_log(pod: &PodRef, app: &AcName) -> Result<(), ControlError> {
    request(pod, &Request::ReopenLog(app.clone())).map(drop)
}

/// Has pod-init let go of the app's stdin FIFO: the app reads end-of-file
/// once its current writers are gone (CRI's `stdin_once`).
pub fn close_stdin(pod: &PodRef, app: &AcName) -> Result<(), ControlError> {
    request(pod, &Request::CloseStdin(app.clone())).map(drop)
}

/// Sets the window size of a running app's terminal (`tty: true`): its
/// foreground process group gets SIGWINCH.
pub fn resize(pod: &PodRef, app: &AcName, rows: u16, cols: u16) -> Result<(), ControlError> {
    request(pod, &Request::Resize(app.clone(), rows, cols)).map(drop)
}

/// Starts an ended app again and waits until it runs; an app that cannot
/// be started (its exec failed, say) is an error with pod-init's message.
pub fn start(pod: &PodRef, app: &AcName) -> Result<AppInfo, ControlError> {
    request(pod, &Request::Start(app.clone()))?;
    wait_started(pod, app, EXCHANGE_TIMEOUT)
}

/// Waits until a started (or added) app is past `waiting` and `starting`;
/// one that failed to start is an error with pod-init's message.
pub fn wait_started(pod: &PodRef, app: &AcName, limit: Duration) -> Result<AppInfo, ControlError> {
    let info = wait_for(pod, app, limit, |a| a.state != "starting" && a.state != "waiting")?.ok_or_else(|| {
        ControlError::App { uuid: pod.uuid.clone(), app: app.to_string(), what: "is still starting".into() }
    })?;
    if info.state == "failed" {
        return Err(ControlError::App {
            uuid: pod.uuid.clone(),
            app: app.to_string(),
            what: format!("failed to start: {}", info.message),
        });
    }
    Ok(info)
}
