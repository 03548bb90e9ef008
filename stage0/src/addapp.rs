//! `pod app add` and `pod app rm`: an app joins or leaves a running
//! namespace pod. Adding fetches and verifies the image with the same
//! `Fetcher` as `pod run`, resolves the app exactly as a pod file's (the
//! flags become a one-app pod file, so defaults and checks are the same),
//! appends it to `pod.json`, has the pod's stage1 set it up (`pod-stage1-ns
//! add-app`: cgroups, unit, mounts in the pod's namespaces; `pod-stage1-vm
//! add-app`: unit, rootfs under the VM's share) and tells the pod's PID 1
//! (`add`; a VM's over its control port, relayed by its monitor). Removing stops it, tells PID 1 (`remove`), has the
//! stage1 undo it all (`rm-app`) and drops it from `pod.json`. A failure
//! on the way leaves the pod as it was. One change at a time per pod:
//! `apps.lock` in the pod directory (the pod's own lock is its stage1's).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spec::control::{AppInfo, Request};
use spec::pod::PodFile;
use spec::stage1::{self, Isolation, ResolvedPod, POD_MANIFEST_FILE};
use spec::AcName;

use crate::control::{self, ControlError};
use crate::exit::{Exit, ExitCodeOf};
use crate::fetch::Fetcher;
use crate::pods::{PodRef, PodState};
use crate::prepare::{self, read_resolved, PrepareError};

/// The lock that serialises `pod app add` and `pod app rm` on one pod.
const APPS_LOCK: &str = "apps.lock";

#[derive(Debug, thiserror::Error)]
pub enum AddAppError {
    #[error("pod {uuid}: {op} {path}: {source}")]
    Io {
        uuid: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod {uuid} is {state}, not running")]
    NotRunning { uuid: String, state: PodState },
    #[error("pod {uuid}: app {app}: {why}")]
    Userns { uuid: String, app: String, why: &'static str },
    #[error("pod {uuid} already has an app {app}")]
    Duplicate { uuid: String, app: String },
    #[error("pod {uuid} has no app {app}")]
    NoApp { uuid: String, app: String },
    #[error("pod {uuid}: app {app}: the pod has no volume {volume}")]
    NoVolume { uuid: String, app: String, volume: String },
    #[error("pod {uuid}: app {app}: {why}")]
    HostVolume { uuid: String, app: String, why: String },
    #[error("pod {0}: another `pod app add` or `pod app rm` is changing its apps")]
    Busy(String),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("pod {uuid}: app {app}: {verb}: {why}")]
    Stage1 { uuid: String, app: String, verb: &'static str, why: String },
}

impl ExitCodeOf for AddAppError {
    fn exit(&self) -> Exit {
        match self {
            Self::NotRunning { .. } | Self::Userns { .. } | Self::Duplicate { .. } | Self::Busy(_) => Exit::Conflict,
            Self::NoApp { .. } | Self::NoVolume { .. } => Exit::NotFound,
            Self::HostVolume { .. } => Exit::InvalidInput,
            Self::Prepare(e) => e.exit(),
            Self::Control(e) => e.exit(),
            Self::Io { .. } | Self::Stage1 { .. } => Exit::Failure,
        }
    }
}

/// What `pod app add` asks for: the app as a pod file would give it.
#[derive(Debug, Clone)]
pub struct NewApp {
    pub name: AcName,
    pub image: String,
    pub exec: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<String>,
    /// `(volume, path, read_only)`: volumes the pod already has.
    pub mounts: Vec<(String, String, bool)>,
    /// More keys of the app, as a pod file writes them (`capabilities`,
    /// `seccomp`, `resources`, `readOnlyRootFS`, ...): callers that map
    /// another API (CRI) onto apps set them, and they are checked exactly
    /// as in a pod file. A key here wins over the fields above.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl NewApp {
    /// A one-app pod file of this app (JSON, which is YAML), so that it is
    /// checked and defaulted exactly as an app in a pod file. Its volumes
    /// are named only to pass the file's checks: the pod's are used.
    fn pod_file(&self) -> String {
        let mut app = serde_json::json!({"name": self.name.as_str(), "image": self.image});
        if let Some(exec) = &self.exec {
            app["exec"] = serde_json::json!(exec);
        }
        if !self.env.is_empty() {
            app["env"] = self.env.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        }
        for (key, value) in
            [("user", &self.user), ("group", &self.group), ("workingDirectory", &self.working_directory)]
        {
            if let Some(v) = value {
                app[key] = serde_json::json!(v);
            }
        }
        let mounts: Vec<_> =
            self.mounts.iter().map(|(v, p, ro)| serde_json::json!({"volume": v, "path": p, "readOnly": ro})).collect();
        let mut volumes: Vec<_> = self.mounts.iter().map(|(v, _, _)| v.clone()).collect();
        // The volume an app logs into (`log.volume`) is the pod's too.
        let log_volume = self.extra.get("log").and_then(|l| l.get("volume")).and_then(serde_json::Value::as_str);
        volumes.extend(log_volume.map(str::to_owned));
        volumes.sort();
        volumes.dedup();
        let volumes: Vec<_> = volumes.iter().map(|v| serde_json::json!({"name": v, "kind": "empty"})).collect();
        app["mounts"] = serde_json::json!(mounts);
        for (key, value) in &self.extra {
            app[key.as_str()] = value.clone();
        }
        serde_json::json!({"name": "added", "apps": [app], "volumes": volumes}).to_string()
    }
}

impl NewApp {
    /// Checks the app as [`add_with_host_volumes`] will, before any pod is
    /// touched: its one-app pod file, and its host directories under
    /// `policy` (each must exist; symlinks are followed). For callers that
    /// must refuse a bad app early (the CRI's CreateContainer).
    pub fn check(&self, policy: &crate::volumes::HostVolumePolicy) -> Result<(), String> {
        let file = format!("app {}", self.name);
        let pod_file = PodFile::parse(self.pod_file().as_bytes(), &file).map_err(|e| e.to_string())?;
        policy.check(&pod_file, &file).map(drop).map_err(|e| e.to_string())
    }
}

/// The pod, checked to take a change to its apps, and its lock for it.
struct Changing {
    resolved: ResolvedPod,
    _lock: File,
}

fn begin(pod: &PodRef) -> Result<Changing, AddAppError> {
    if pod.state != PodState::Running {
        return Err(AddAppError::NotRunning { uuid: pod.uuid.clone(), state: pod.state });
    }
    let io = |op: &'static str, path: &Path| {
        let (uuid, path) = (pod.uuid.clone(), path.to_owned());
        move |source| AddAppError::Io { uuid, op, path, source }
    };
    let lock_path = pod.dir.join(APPS_LOCK);
    let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(AddAppError::Busy(pod.uuid.clone())),
        Err(fs::TryLockError::Error(e)) => return Err(io("lock", &lock_path)(e)),
    }
    // Read under the lock: what another add or rm wrote is in it.
    let manifest = pod.dir.join(POD_MANIFEST_FILE);
    let resolved = read_resolved(&pod.dir)
        .ok_or_else(|| io("read", &manifest)(io::Error::new(io::ErrorKind::InvalidData, "missing or malformed")))?;
    Ok(Changing { resolved, _lock: lock })
}

/// Writes `pod.json` whole or not at all (temp file, fsync, rename).
fn write_manifest(pod: &PodRef, resolved: &ResolvedPod) -> Result<(), AddAppError> {
    let path = pod.dir.join(POD_MANIFEST_FILE);
    let tmp = pod.dir.join(format!(".{POD_MANIFEST_FILE}.tmp"));
    let io = |op: &'static str, path: &Path| {
        let (uuid, path) = (pod.uuid.clone(), path.to_owned());
        move |source| AddAppError::Io { uuid, op, path, source }
    };
    let json = serde_json::to_vec_pretty(resolved).map_err(|e| io("serialize", &path)(e.into()))?;
    fs::write(&tmp, json).map_err(io("write", &tmp))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))
}

/// Runs `pod-stage1-ns VERB POD_DIR APP` (`pod-stage1-vm` for a VM pod).
fn stage1(pod: &PodRef, isolation: Isolation, verb: &'static str, app: &AcName) -> Result<(), AddAppError> {
    let fail = |why: String| AddAppError::Stage1 { uuid: pod.uuid.clone(), app: app.to_string(), verb, why };
    let stage1 = crate::run::stage1_for(isolation).map_err(|e| fail(e.to_string()))?;
    let out = Command::new(&stage1)
        .arg(verb)
        .arg(&pod.dir)
        .arg(app.as_str())
        .env_clear()
        .output()
        .map_err(|e| fail(format!("run {}: {e}", stage1.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(fail(format!("{} ({})", stderr.trim().lines().last().unwrap_or_default(), out.status)))
}

/// Adds `new` to the running pod and starts it; returns it as its PID 1
/// sees it once it left `waiting`/`starting`. The image is fetched and
/// verified before the pod is touched. Host directories (`mounts: [{ host:
/// ... }]` in `new.extra`) are refused: see [`add_with_host_volumes`].
pub fn add(pod: &PodRef, fetcher: &mut Fetcher<'_>, new: &NewApp) -> Result<AppInfo, AddAppError> {
    add_with_host_volumes(pod, fetcher, new, None)
}

/// [`add`], with the app's host directories (`mounts: [{ host: /abs, ...
/// }]`, each an anonymous host volume of the pod named `<app>-host-<i>`)
/// checked by `policy` and mounted; with no policy they are refused.
pub fn add_with_host_volumes(
    pod: &PodRef,
    fetcher: &mut Fetcher<'_>,
    new: &NewApp,
    policy: Option<&crate::volumes::HostVolumePolicy>,
) -> Result<AppInfo, AddAppError> {
    let Changing { resolved, _lock } = begin(pod)?;
    if resolved.isolation == Isolation::Vm {
        // A guest still booting would read the new unit as one of its own
        // and refuse the `add`: wait until its pod-init runs.
        control::wait_guest(pod, control::BOOT_LIMIT)?;
    }
    let uuid = pod.uuid.clone();
    if resolved.apps.iter().any(|a| a.name == new.name) {
        return Err(AddAppError::Duplicate { uuid, app: new.name.to_string() });
    }
    let file = format!("pod {uuid}");
    let pod_file = PodFile::parse(new.pod_file().as_bytes(), &file).map_err(PrepareError::from)?;
    let host_volumes = host_volumes(pod, new, &pod_file, &resolved, policy)?;
    let spec = pod_file.apps.first().ok_or_else(|| PrepareError::App {
        file: file.clone(),
        app: new.name.to_string(),
        why: "no app".into(),
    })?;
    let base = std::env::current_dir().unwrap_or_default();
    let image_err = |source| PrepareError::Image {
        file: file.clone(),
        app: new.name.to_string(),
        image: new.image.clone(),
        source: Box::new(source),
    };
    let fetched = fetcher.fetch(&prepare::image_ref(&spec.image.source, &base)).map_err(image_err)?;
    let image_app = if fetched.meta.oci.is_some() {
        Some(crate::oci::pull::app_of(fetcher.store(), &fetched.meta.id).map_err(|e| image_err(e.into()))?.0)
    } else {
        fetcher.store().manifest(&fetched.meta.id).map_err(|e| image_err(e.into()))?.app
    };
    let volume_names: Vec<spec::AcName> = resolved
        .volumes
        .iter()
        .map(|v| v.name.clone())
        .chain(pod_file.volumes.iter().map(|v| v.name.clone()))
        .collect();
    let mut app = prepare::resolve_app(&file, spec, &fetched.meta, image_app.as_ref(), fetched.lower, &volume_names)?;
    // In a pod with the metadata service, the new app is served as well.
    let metadata = match crate::metadata::read_record(&pod.dir).ok() {
        Some(record) => {
            let facts = crate::metadata::ImageFacts::of(fetcher.store(), &fetched.meta, image_app.as_ref())
                .map_err(|why| PrepareError::App { file: file.clone(), app: new.name.to_string(), why })?;
            crate::metadata::give_url(&mut app, &record.token);
            Some(facts)
        }
        None => None,
    };
    if app.security.own_pid_namespace && crate::userns::recorded(&pod.dir).is_some() {
        // As a pod file's check says it (spec's `own_pid_with_userns`).
        let why = "pidNamespace: own cannot go with the pod's user namespace (not yet)";
        return Err(AddAppError::Userns { uuid, app: new.name.to_string(), why });
    }

    // Volumes: the pod's, and an OCI image's anonymous ones, made here.
    let mut updated = resolved.clone();
    let mut new_volumes = Vec::new();
    for m in &app.mounts {
        if let Some(v) = host_volumes.iter().find(|v| v.name == m.volume) {
            updated.volumes.push(v.clone());
            continue;
        }
        if updated.volumes.iter().any(|v| v.name == m.volume) {
            continue;
        }
        if new.mounts.iter().any(|(v, _, _)| v == m.volume.as_str()) {
            return Err(AddAppError::NoVolume { uuid, app: new.name.to_string(), volume: m.volume.to_string() });
        }
        updated.volumes.push(stage1::Volume { name: m.volume.clone(), source: stage1::VolumeSource::Empty });
        new_volumes.push(pod.dir.join("volumes").join(m.volume.as_str()));
    }
    if let Some(log) = app.log.as_ref().filter(|l| !updated.volumes.iter().any(|v| v.name == l.volume)) {
        return Err(AddAppError::NoVolume { uuid, app: new.name.to_string(), volume: log.volume.to_string() });
    }
    let app_spec = app.clone();
    updated.apps.push(app);

    let app_dir = pod.dir.join("apps").join(new.name.as_str());
    let undo_dirs = || {
        let _ = fs::remove_dir_all(&app_dir);
        for d in &new_volumes {
            let _ = fs::remove_dir_all(d);
        }
    };
    let made = (|| {
        for d in ["rootfs", "upper", "work"].map(|s| app_dir.join(s)).iter().chain(&new_volumes) {
            fs::create_dir_all(d).map_err(|source| AddAppError::Io {
                uuid: uuid.clone(),
                op: "create directory",
                path: d.clone(),
                source,
            })?;
        }
        write_manifest(pod, &updated)?;
        match &metadata {
            Some(facts) => crate::metadata::add_app(&pod.dir, &app_spec, facts).map_err(|source| AddAppError::Io {
                uuid: uuid.clone(),
                op: "write",
                path: pod.dir.join(spec::metadata::POD_FILE),
                source,
            }),
            None => Ok(()),
        }
    })();
    if let Err(e) = made {
        undo_dirs();
        return Err(e);
    }
    let isolation = resolved.isolation;
    let started = stage1(pod, isolation, "add-app", &new.name).and_then(|()| {
        control::request(pod, &Request::Add(new.name.clone())).map(drop).map_err(|e| {
            // pod-init refused it: undo the stage1's part too.
            let _ = stage1(pod, isolation, "rm-app", &new.name);
            AddAppError::from(e)
        })
    });
    if let Err(e) = started {
        // The stage1 undid its part; the rest is ours.
        let _ = write_manifest(pod, &resolved);
        let _ = crate::metadata::remove_app(&pod.dir, new.name.as_str());
        undo_dirs();
        return Err(e);
    }
    // A guest under TCG (no KVM) execs and maps an app's binaries over 9p,
    // far slower than a namespace pod does.
    let limit = Duration::from_secs(if isolation == Isolation::Vm { 60 } else { 10 });
    control::wait_started(pod, &new.name, limit).map_err(AddAppError::from)
}

/// The one-app pod file's host volumes, checked by `policy` and resolved,
/// as the pod's volumes they become. None may share a name with a volume
/// the pod has (it would silently be that one instead).
fn host_volumes(
    pod: &PodRef,
    new: &NewApp,
    pod_file: &PodFile,
    resolved: &ResolvedPod,
    policy: Option<&crate::volumes::HostVolumePolicy>,
) -> Result<Vec<stage1::Volume>, AddAppError> {
    let fail = |why: String| AddAppError::HostVolume { uuid: pod.uuid.clone(), app: new.name.to_string(), why };
    let declared = pod_file.volumes.iter().any(|v| matches!(v.kind, spec::pod::VolumeKind::Host { .. }));
    if !declared {
        return Ok(Vec::new());
    }
    let Some(policy) = policy else {
        return Err(fail("host directories cannot be mounted into an app added this way".into()));
    };
    let sources = policy.check(pod_file, &format!("pod {}", pod.uuid)).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    for (v, source) in pod_file.volumes.iter().zip(sources) {
        let (spec::pod::VolumeKind::Host { read_only, .. }, Some(path)) = (&v.kind, source) else { continue };
        if resolved.volumes.iter().any(|o| o.name == v.name) {
            return Err(fail(format!("the pod already has a volume named {}", v.name)));
        }
        out.push(stage1::Volume {
            name: v.name.clone(),
            source: stage1::VolumeSource::Host { path, read_only: *read_only },
        });
    }
    Ok(out)
}

/// Removes app `name` from the running pod: stops it (its stop timeout,
/// then SIGKILL), drops it from PID 1's plan, unmounts and removes its
/// files, cgroups and log, and drops it from `pod.json`.
pub fn remove(pod: &PodRef, name: &AcName) -> Result<(), AddAppError> {
    let Changing { resolved, _lock } = begin(pod)?;
    if !resolved.apps.iter().any(|a| &a.name == name) {
        return Err(AddAppError::NoApp { uuid: pod.uuid.clone(), app: name.to_string() });
    }
    match control::stop(pod, name) {
        // Unknown to PID 1: an add that died half-way. Clean up all the same.
        Ok(_) | Err(ControlError::NoApp { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match control::request(pod, &Request::Remove(name.clone())) {
        Ok(_) | Err(ControlError::NoApp { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    stage1(pod, resolved.isolation, "rm-app", name)?;
    let mut updated = resolved;
    updated.apps.retain(|a| &a.name != name);
    // Its anonymous host volumes (`<app>-host-<i>`) go with it.
    let anonymous = format!("{name}-host-");
    updated.volumes.retain(|v| {
        !(v.name.as_str().starts_with(&anonymous) && matches!(v.source, stage1::VolumeSource::Host { .. }))
            || updated.apps.iter().any(|a| a.mounts.iter().any(|m| m.volume == v.name))
    });
    write_manifest(pod, &updated)?;
    crate::metadata::remove_app(&pod.dir, name.as_str()).map_err(|source| AddAppError::Io {
        uuid: pod.uuid.clone(),
        op: "write",
        path: pod.dir.join(spec::metadata::POD_FILE),
        source,
    })
}

/// Changes app `name`'s resources in `pod.json` around `apply`, which
/// changes them where they are enforced (the app's cgroup, for CRI's
/// UpdateContainerResources) and then in the value it is given: all under
/// the apps lock, waiting for an add or rm in progress, so neither writes
/// back an older manifest. Nothing is written if `apply` fails.
pub fn update_resources<E: From<AddAppError>>(
    pod: &PodRef,
    name: &AcName,
    apply: impl FnOnce(&mut stage1::Resources) -> Result<(), E>,
) -> Result<(), E> {
    let io = |op: &'static str, path: &Path| {
        let (uuid, path) = (pod.uuid.clone(), path.to_owned());
        move |source| AddAppError::Io { uuid, op, path, source }
    };
    let lock_path = pod.dir.join(APPS_LOCK);
    let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    let manifest = pod.dir.join(POD_MANIFEST_FILE);
    let mut resolved = read_resolved(&pod.dir)
        .ok_or_else(|| io("read", &manifest)(io::Error::new(io::ErrorKind::InvalidData, "missing or malformed")))?;
    let app = resolved
        .apps
        .iter_mut()
        .find(|a| a.name == *name)
        .ok_or_else(|| AddAppError::NoApp { uuid: pod.uuid.clone(), app: name.to_string() })?;
    apply(&mut app.resources)?;
    write_manifest(pod, &resolved)?;
    Ok(())
}
