//! The systemd cgroup manager: where systemd is PID 1, a pod's cgroup is a
//! transient scope under `machine.slice` (`pod-<uuid>.scope`, `Delegate=yes`)
//! that systemd makes over D-Bus, as podman's and crun's systemd cgroup
//! managers ask for theirs. The pod's own cgroups (a leaf per app and
//! `init.scope`) are then made inside it by [`super::create_pod`], which
//! the delegation allows.
//!
//! Detected as systemd itself does (`sd_booted()`: `/run/systemd/system`
//! exists), and used on a pure cgroup v2 host only: on v1 and hybrid hosts
//! the pod's per-controller cgroups stay cgroupfs ones (see `scope.rs` in
//! the stage1 for why). `POD_CGROUP_MANAGER=cgroupfs` forces cgroupfs, as
//! podman's `--cgroup-manager`.
//!
//! The bus is zbus's blocking API. A bus or a systemd that cannot be
//! reached is not an error ([`Bus::system`] says `None`, with a debug
//! line); a reachable systemd that refuses a unit is, naming the unit.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, Value};

/// The slice every pod's scope lives in, as for nspawn's and podman's machines.
pub const MACHINE_SLICE: &str = "machine.slice";

/// Written into the pod directory once its scope exists: the unit's name.
/// `pod gc`, `pod stats`, `pod app add` and the CRI find the pod's cgroups
/// through it ([`super::PodLoc::for_pod`]).
pub const SCOPE_FILE: &str = "systemd-scope";

/// The environment variable that picks the cgroup manager: `cgroupfs`
/// forces it, `systemd` (or unset) uses systemd where it runs.
pub const MANAGER_ENV: &str = "POD_CGROUP_MANAGER";

/// How long systemd may take to start or stop a scope.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// A D-Bus call that failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{call} {unit}: {name}: {message}")]
    Refused { call: &'static str, unit: String, name: String, message: String },
    #[error("{call} {unit}: the job ended with {result:?}")]
    JobFailed { call: &'static str, unit: String, result: String },
    #[error("{call} {unit}: no answer from systemd within {}s", JOB_TIMEOUT.as_secs())]
    Timeout { call: &'static str, unit: String },
    #[error("{call} {unit}: {source}")]
    Bus {
        call: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
}

impl BusError {
    /// `zbus`'s error for `call` on `unit` (a unit or machine name).
    pub(crate) fn from_zbus(call: &'static str, unit: &str, e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, message, _) => Self::Refused {
                call,
                unit: unit.to_owned(),
                name: name.to_string(),
                message: message.unwrap_or_default(),
            },
            source => Self::Bus { call, unit: unit.to_owned(), source: Box::new(source) },
        }
    }

    /// The D-Bus error name, for a refusal.
    pub fn error_name(&self) -> Option<&str> {
        match self {
            Self::Refused { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Whether systemd is PID 1 here, as `sd_booted()` tells: `run` is
/// `/run/systemd/system`, a directory only systemd as PID 1 makes.
pub fn booted(run: &Path) -> bool {
    run.is_dir()
}

/// Whether the systemd manager is wanted: not when `POD_CGROUP_MANAGER`
/// (`value`) says `cgroupfs`. Anything else but `systemd` is an error.
pub fn wanted(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("" | "systemd") => Ok(true),
        Some("cgroupfs") => Ok(false),
        Some(other) => Err(format!("{MANAGER_ENV}={other:?}: expected \"systemd\" or \"cgroupfs\"")),
    }
}

/// systemd's escaping of one unit name component (`unit_name_escape`):
/// ASCII letters, digits, `:`, `_` and `.` (not first) stay, `/` becomes
/// `-`, every other byte `\xNN` (so `-` itself is `\x2d`).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The scope of pod `uuid`: `pod-<uuid>.scope`, with `-` kept (valid in
/// a unit name, and how `machinectl`/`systemctl` users will type it), any
/// other byte outside systemd's unit name set escaped.
pub fn unit_name(uuid: &str) -> String {
    let body: String = uuid.split('-').map(escape).collect::<Vec<_>>().join("-");
    format!("pod-{body}.scope")
}

/// What a pod's scope is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSpec {
    pub unit: String,
    pub description: String,
    pub slice: String,
    /// At least one process: systemd refuses an empty scope.
    pub pids: Vec<u32>,
}

impl ScopeSpec {
    /// The scope of pod `uuid` called `name`, for processes `pids`.
    pub fn for_pod(uuid: &str, name: &str, pids: Vec<u32>) -> Self {
        Self { unit: unit_name(uuid), description: format!("pod {name} {uuid}"), slice: MACHINE_SLICE.to_owned(), pids }
    }

    /// `StartTransientUnit`'s properties, `a(sv)`: podman's set.
    /// `CollectMode=inactive-or-failed` so that a scope whose processes
    /// were killed leaves no failed unit behind; `OOMPolicy=continue`.
    pub fn properties(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("Description", Value::from(self.description.as_str())),
            ("Slice", Value::from(self.slice.as_str())),
            ("Delegate", Value::from(true)),
            ("PIDs", Value::from(self.pids.clone())),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("DefaultDependencies", Value::from(false)),
            // An app's OOM kill is the pod's to report (pod status), not a
            // reason for systemd to stop the whole scope (its default).
            ("OOMPolicy", Value::from("continue")),
        ]
    }
}

/// A connection to the system bus (or another, for tests).
#[derive(Debug, Clone)]
pub struct Bus {
    conn: Connection,
}

impl Bus {
    /// The system bus, or `None` (logged at debug) when it cannot be reached.
    pub fn system() -> Option<Self> {
        match Connection::system() {
            Ok(conn) => Some(Self { conn }),
            Err(e) => {
                tracing::debug!(error = %e, "no system D-Bus: pods get no systemd scope nor machine registration");
                None
            }
        }
    }

    /// The bus at `address` (`unix:path=...`).
    pub fn at(address: &str) -> zbus::Result<Self> {
        let conn = zbus::blocking::connection::Builder::address(address)?.build()?;
        Ok(Self { conn })
    }

    pub(crate) fn proxy(
        &self,
        dest: &'static str,
        path: &'static str,
        iface: &'static str,
    ) -> zbus::Result<Proxy<'static>> {
        // No property cache: these proxies only call methods.
        zbus::blocking::proxy::Builder::new(&self.conn)
            .destination(dest)?
            .path(path)?
            .interface(iface)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
    }

    fn manager(&self) -> zbus::Result<Proxy<'static>> {
        self.proxy(SYSTEMD, SYSTEMD_PATH, MANAGER)
    }

    /// Starts `spec`'s scope and waits for its job to end (`JobRemoved`).
    /// A job that did not end `done` leaves nothing: the unit is stopped
    /// and its failure reset before the error returns.
    pub fn start_scope(&self, spec: &ScopeSpec) -> Result<(), BusError> {
        const CALL: &str = "StartTransientUnit";
        let unit = spec.unit.as_str();
        let err = |e| BusError::from_zbus(CALL, unit, e);
        let manager = self.manager().map_err(err)?;
        // Signals go to subscribers; subscribe (and match) before the call.
        subscribe(&manager).map_err(err)?;
        let removed = manager.receive_signal("JobRemoved").map_err(err)?;
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let job: OwnedObjectPath = manager.call(CALL, &(unit, "fail", spec.properties(), aux)).map_err(err)?;
        let result = wait_job(removed, job.as_str().to_owned());
        match result {
            Some(r) if r == "done" => {
                tracing::debug!(unit, "pod scope started");
                Ok(())
            }
            other => {
                self.stop_unit(unit);
                Err(match other {
                    Some(result) => BusError::JobFailed { call: CALL, unit: unit.to_owned(), result },
                    None => BusError::Timeout { call: CALL, unit: unit.to_owned() },
                })
            }
        }
    }

    /// Stops `unit` and resets its failure, if any: afterwards systemd
    /// forgets it. A unit already gone is fine; other errors are logged.
    pub fn stop_unit(&self, unit: &str) {
        let Ok(manager) = self.manager() else { return };
        let stopped = subscribe(&manager)
            .and_then(|()| manager.receive_signal("JobRemoved"))
            .and_then(|removed| {
                let job: OwnedObjectPath = manager.call("StopUnit", &(unit, "replace"))?;
                Ok(wait_job(removed, job.as_str().to_owned()))
            })
            .map_err(|e| BusError::from_zbus("StopUnit", unit, e));
        match stopped {
            Ok(_) => {}
            Err(e) if e.error_name() == Some("org.freedesktop.systemd1.NoSuchUnit") => {}
            Err(e) => tracing::warn!(error = %e, "stopping the pod's scope"),
        }
        let reset: zbus::Result<()> = manager.call("ResetFailedUnit", &(unit,));
        if let Err(e) = reset.map_err(|e| BusError::from_zbus("ResetFailedUnit", unit, e)) {
            if e.error_name() != Some("org.freedesktop.systemd1.NoSuchUnit") {
                tracing::debug!(error = %e, "resetting the pod's scope");
            }
        }
    }

    /// Whether systemd has a unit `unit` loaded (for tests and `pod gc`).
    pub fn has_unit(&self, unit: &str) -> bool {
        self.manager().and_then(|m| m.call::<_, _, OwnedObjectPath>("GetUnit", &(unit,))).is_ok()
    }
}

/// Asks systemd for its signals (`JobRemoved`): it sends them to
/// subscribers only. Once per connection; a second time is refused
/// (`AlreadySubscribed`), which is fine.
fn subscribe(manager: &Proxy<'_>) -> zbus::Result<()> {
    match manager.call::<_, _, ()>("Subscribe", &()) {
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {
            Ok(())
        }
        other => other,
    }
}

/// The result of job `job` (`done`, `failed`, `canceled`...) from the
/// `JobRemoved` signals, or `None` after [`JOB_TIMEOUT`]. The signal
/// iterator blocks, so it is read on a thread of its own that outlives a
/// timeout (and ends with the connection).
fn wait_job(removed: zbus::blocking::proxy::SignalIterator<'static>, job: String) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for msg in removed {
            let Ok((_id, path, _unit, result)) = msg.body().deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path.as_str() == job {
                let _ = tx.send(result);
                return;
            }
        }
    });
    rx.recv_timeout(JOB_TIMEOUT).ok()
}
