//! CRI containers as apps of their sandbox pod. CreateContainer records
//! the container's config as `cri-containers/<app>.json` in the sandbox's
//! pod directory (state CREATED); StartContainer adds the app to the
//! running pod (`stage0::addapp::add`, which starts it). So pod-init's
//! control protocol needs no "add but do not start", and a created
//! container that is never started costs the pod nothing. Container ID =
//! `<pod uuid>-<app name>`.
//!
//! Every function here is blocking (stage0's library): the service calls
//! them on `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spec::AcName;
use stage0::addapp::{self, NewApp};
use stage0::control;
use stage0::fetch::{FetchOptions, Fetcher, PullPolicy};
use stage0::lifecycle;
use stage0::paths::Dirs;
use stage0::pods::PodState;
use stage0::prepare::read_resolved;
use stage0::store::Store;
use stage0::volumes::HostVolumePolicy;

use crate::error::CriError;
use crate::proto;
use crate::reference;
use crate::sandbox::{
    app_name, btree, container_id, fetcher_parts, hash, io, nanos, need_sandbox, now_nanos, read_json, sandboxes,
    selects, write_json, Sandbox,
};

/// What a container was created with (and when it was started).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub app: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it.
    pub image: String,
    /// The image's ID (as CRI reports it).
    pub image_ref: String,
    /// The reference the app is added with (resolved in the store).
    pub app_image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub working_dir: String,
    /// The image's entrypoint, kept when only `args` are given: CRI's args
    /// replace the image's Cmd, not its Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `log_directory/log_path`, as kubelet gives them: pod-init writes the
    /// container's output there in the CRI log format (logs.rs).
    #[serde(default)]
    pub log_path: String,
    /// `stdin`: the app reads a FIFO; `tty`: it runs on a terminal
    /// (logs.rs); the streaming server's attach honours `stdin_once`.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    /// More keys of the app, as a pod file writes them (podcfg.rs:
    /// mounts, resources; secctx.rs: its security context), checked at
    /// create and given to the app at start.
    #[serde(default)]
    pub app_keys: serde_json::Map<String, serde_json::Value>,
    /// The mounts as asked, for ContainerStatus.
    #[serde(default)]
    pub mounts: Vec<crate::mounts::MountRecord>,
}

/// A container: its sandbox, its record, and how the app is.
#[derive(Debug, Clone)]
pub struct Container {
    pub sandbox: Sandbox,
    pub record: ContainerRecord,
}

/// How an app is, for CRI.
#[derive(Debug, Clone, Default)]
struct AppState {
    state: i32,
    exit_code: i32,
    finished_at: i64,
    reason: String,
    message: String,
}

impl Container {
    pub fn id(&self) -> String {
        container_id(&self.sandbox.pod.uuid, &self.record.app)
    }

    fn added(&self) -> bool {
        read_resolved(&self.sandbox.pod.dir).is_some_and(|r| r.apps.iter().any(|a| a.name.as_str() == self.record.app))
    }

    fn app_state(&self) -> AppState {
        let created = AppState { state: proto::ContainerState::ContainerCreated as i32, ..AppState::default() };
        if !self.added() {
            return created;
        }
        let status_file = self.sandbox.pod.dir.join("status").join(format!("{}.json", self.record.app));
        let st: Option<lifecycle::AppStatus> = read_json(&status_file);
        let finished_at =
            fs::metadata(&status_file).and_then(|m| m.modified()).map(nanos).unwrap_or_else(|_| now_nanos());
        let exited = |st: &lifecycle::AppStatus, reason: &str| AppState {
            state: proto::ContainerState::ContainerExited as i32,
            exit_code: st
                .exit_code
                .and_then(|c| i32::try_from(c).ok())
                .or_else(|| st.signal.and_then(|s| i32::try_from(s).ok()).map(|s| 128 + s))
                .unwrap_or(0),
            finished_at,
            reason: reason.to_owned(),
            message: st.message.clone().unwrap_or_default(),
        };
        match st {
            None => created,
            Some(st) if self.sandbox.pod.state != PodState::Running => {
                let mut e = exited(&st, "Completed");
                if !matches!(st.state.as_str(), "exited" | "failed" | "stopped") {
                    e.reason = "PodStopped".into();
                }
                e
            }
            Some(st) => match st.state.as_str() {
                "exited" | "stopped" | "failed"
                    if crate::podcfg::oom_killed(&self.sandbox.pod.dir, &self.record.app) =>
                {
                    exited(&st, "OOMKilled")
                }
                "exited" | "stopped" => exited(&st, if st.exit_code == Some(0) { "Completed" } else { "Error" }),
                "failed" => exited(&st, "Error"),
                _ => AppState { state: proto::ContainerState::ContainerRunning as i32, ..AppState::default() },
            },
        }
    }

    fn metadata(&self) -> proto::ContainerMetadata {
        proto::ContainerMetadata { name: self.record.name.clone(), attempt: self.record.attempt }
    }

    fn image(&self) -> proto::ImageSpec {
        proto::ImageSpec { image: self.record.image.clone(), ..Default::default() }
    }

    pub fn to_proto(&self) -> proto::Container {
        proto::Container {
            id: self.id(),
            pod_sandbox_id: self.sandbox.pod.uuid.clone(),
            metadata: Some(self.metadata()),
            image: Some(self.image()),
            image_ref: self.record.image_ref.clone(),
            state: self.app_state().state,
            created_at: self.record.created_at,
            labels: hash(&self.record.labels),
            annotations: hash(&self.record.annotations),
            image_id: self.record.image_ref.clone(),
        }
    }

    pub fn status(&self) -> proto::ContainerStatus {
        let st = self.app_state();
        proto::ContainerStatus {
            id: self.id(),
            metadata: Some(self.metadata()),
            state: st.state,
            created_at: self.record.created_at,
            started_at: self.record.started_at,
            finished_at: if st.state == proto::ContainerState::ContainerExited as i32 { st.finished_at } else { 0 },
            exit_code: st.exit_code,
            image: Some(self.image()),
            image_ref: self.record.image_ref.clone(),
            reason: st.reason,
            message: st.message,
            labels: hash(&self.record.labels),
            annotations: hash(&self.record.annotations),
            log_path: self.record.log_path.clone(),
            image_id: self.record.image_ref.clone(),
            mounts: self.record.mounts.iter().map(crate::mounts::MountRecord::to_proto).collect(),
            user: (st.state == proto::ContainerState::ContainerRunning as i32)
                .then(|| crate::secctx::running_user(&self.sandbox.pod.dir, &self.record.app))
                .flatten(),
            ..Default::default()
        }
    }

    fn record_path(&self) -> PathBuf {
        self.sandbox.containers_dir().join(format!("{}.json", self.record.app))
    }
}

/// The container records of a sandbox, oldest first.
pub fn records(sandbox: &Sandbox) -> Vec<ContainerRecord> {
    let mut out: Vec<ContainerRecord> = fs::read_dir(sandbox.containers_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| read_json(&e.path()))
        .collect();
    out.sort_by_key(|c| c.created_at);
    out
}

/// Every container of every sandbox.
pub fn containers(dirs: &Dirs) -> Result<Vec<Container>, CriError> {
    Ok(sandboxes(dirs)?
        .into_iter()
        .flat_map(|s| records(&s).into_iter().map(move |record| Container { sandbox: s.clone(), record }))
        .collect())
}

/// The container with this ID (or a unique prefix of one).
pub fn find_container(dirs: &Dirs, id: &str) -> Result<Container, CriError> {
    if id.is_empty() {
        return Err(CriError::InvalidArgument("no container ID given".into()));
    }
    let mut hits: Vec<Container> = containers(dirs)?.into_iter().filter(|c| c.id().starts_with(id)).collect();
    if let Some(exact) = hits.iter().position(|c| c.id() == id) {
        return Ok(hits.swap_remove(exact));
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(CriError::NotFound(format!("container {id:?} not found"))),
        _ => Err(CriError::InvalidArgument(format!("container ID {id:?} is ambiguous"))),
    }
}

/// The image reference an app is added with: the stored image, by a name
/// the fetcher finds in the store.
fn app_image(meta: &stage0::store::ImageMeta) -> String {
    match &meta.oci {
        // Pinned to the stored manifest (the ID), which a pull policy of
        // never finds by digest.
        Some(_) => format!("docker://{}@{}", meta.name, reference::cri_id(&meta.id)),
        None => match meta.labels.get("version") {
            Some(v) => format!("{}:{v}", meta.name),
            None => meta.name.to_string(),
        },
    }
}

/// CreateContainer: records the container in its sandbox's pod directory;
/// the app is added when it is started.
pub fn create_container(
    dirs: &Dirs,
    sandbox_id: &str,
    config: proto::ContainerConfig,
    sandbox_config: Option<proto::PodSandboxConfig>,
) -> Result<String, CriError> {
    let sandbox = need_sandbox(dirs, sandbox_id)?;
    if !sandbox.ready() {
        return Err(CriError::FailedPrecondition(format!("pod sandbox {} is not ready", sandbox.pod.uuid)));
    }
    let meta = config.metadata.clone().unwrap_or_default();
    if meta.name.is_empty() {
        return Err(CriError::InvalidArgument("the container config has no metadata.name".into()));
    }
    let app = app_name(&meta.name, meta.attempt);
    AcName::new(app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?;
    let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let store = Store::open(dirs)?;
    let image_meta = reference::resolve(&store, &image)?.ok_or_else(|| CriError::ImageNotFound(image.clone()))?;
    let taken = records(&sandbox).iter().any(|c| c.app == app)
        || read_resolved(&sandbox.pod.dir).is_some_and(|r| r.apps.iter().any(|a| a.name.as_str() == app));
    if taken {
        return Err(CriError::AlreadyExists(format!(
            "pod sandbox {} already has a container {:?} (attempt {})",
            sandbox.pod.uuid, meta.name, meta.attempt
        )));
    }
    let mut app_keys = crate::podcfg::container_keys(&config)?;
    app_keys.extend(crate::secctx::container_keys(&config, sandbox_config.as_ref())?);
    let mounts = config.mounts.iter().map(crate::mounts::MountRecord::of).collect();
    // The recorded log directory is the one bound into the sandbox's pod.
    let log_directory = match sandbox.record.log_directory.as_str() {
        "" => sandbox_config.map(|c| c.log_directory).unwrap_or_default(),
        recorded => recorded.to_owned(),
    };
    let log_path = match (log_directory.is_empty(), config.log_path.is_empty()) {
        (_, true) => String::new(),
        (true, false) => config.log_path.clone(),
        (false, false) => Path::new(&log_directory).join(&config.log_path).display().to_string(),
    };
    crate::logs::app_keys(&sandbox, &log_path, config.stdin, config.tty, &mut app_keys)?;
    crate::logs::check_stdin(&sandbox, config.stdin)?;
    let record = ContainerRecord {
        app: app.clone(),
        name: meta.name,
        attempt: meta.attempt,
        image,
        image_ref: reference::cri_id(&image_meta.id),
        app_image: app_image(&image_meta),
        entrypoint: match config.command.is_empty() && !config.args.is_empty() {
            true => image_entrypoint(&store, &image_meta),
            false => Vec::new(),
        },
        command: config.command,
        args: config.args,
        env: config.envs.into_iter().map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned())).collect(),
        working_dir: config.working_dir,
        labels: btree(config.labels),
        annotations: btree(config.annotations),
        log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        created_at: now_nanos(),
        started_at: 0,
        app_keys,
        mounts,
    };
    // The app as it will be added, checked now: a bad security context or
    // host path fails CreateContainer, not StartContainer.
    new_app(&record)?.check(&HostVolumePolicy::for_cri(dirs)).map_err(CriError::InvalidArgument)?;
    let dir = sandbox.containers_dir();
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    // Written aside, then linked into place: the record appears whole, and
    // of two creates of one name only one wins.
    let staged = dir.join(format!(".{app}.{}.json", std::process::id()));
    write_json(&staged, &record)?;
    let path = dir.join(format!("{app}.json"));
    let linked = fs::hard_link(&staged, &path);
    let _ = fs::remove_file(&staged);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CriError::AlreadyExists(format!(
                "pod sandbox {} already has a container {app}",
                sandbox.pod.uuid
            )))
        }
        Err(e) => return Err(io("link", &path)(e)),
    }
    let id = container_id(&sandbox.pod.uuid, &app);
    tracing::info!(container = %id, "container created");
    Ok(id)
}

/// StartContainer: adds the app to the running sandbox and starts it.
pub fn start_container(dirs: &Dirs, id: &str) -> Result<(), CriError> {
    let mut c = find_container(dirs, id)?;
    if c.added() {
        return Err(CriError::FailedPrecondition(format!("container {id} was started already")));
    }
    let new = new_app(&c.record)?;
    let (store, trust, sources) = fetcher_parts(dirs)?;
    let opts = FetchOptions { pull: PullPolicy::Never, ..FetchOptions::default() };
    let mut fetcher = Fetcher::new(&store, &trust, &sources, opts)?;
    let policy = HostVolumePolicy::for_cri(dirs);
    addapp::add_with_host_volumes(&c.sandbox.pod, &mut fetcher, &new, Some(&policy))?;
    c.record.started_at = now_nanos();
    write_json(&c.record_path(), &c.record)?;
    tracing::info!(container = %id, "container started");
    Ok(())
}

/// An OCI image's `Entrypoint` from its stored config (none for an ACI,
/// whose exec is one command line).
fn image_entrypoint(store: &Store, meta: &stage0::store::ImageMeta) -> Vec<String> {
    crate::images::oci_config(store, meta)
        .and_then(|mut c| serde_json::from_value(c["Entrypoint"].take()).ok())
        .unwrap_or_default()
}

/// The app a container's record adds to its sandbox.
fn new_app(r: &ContainerRecord) -> Result<NewApp, CriError> {
    // CRI: command replaces the image's entrypoint, args its Cmd. pod's
    // apps have one exec: command + args, else the image's entrypoint +
    // args, else the image's own.
    let head = if r.command.is_empty() { &r.entrypoint } else { &r.command };
    let exec: Vec<String> = head.iter().chain(&r.args).cloned().collect();
    Ok(NewApp {
        name: AcName::new(r.app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?,
        image: r.app_image.clone(),
        exec: (!exec.is_empty()).then_some(exec),
        env: r.env.clone(),
        user: None,
        group: None,
        working_directory: (!r.working_dir.is_empty()).then(|| r.working_dir.clone()),
        mounts: Vec::new(),
        extra: r.app_keys.clone(),
    })
}

/// StopContainer: stops the app (its stop signal, SIGKILL after `timeout`;
/// zero: SIGKILL at once). A container not started, already ended or gone
/// is no error (CRI: stopping is idempotent, and kubelet may retry after a
/// removal).
pub fn stop_container(dirs: &Dirs, id: &str, timeout: Duration) -> Result<(), CriError> {
    let c = match find_container(dirs, id) {
        Ok(c) => c,
        Err(CriError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !c.added() || c.sandbox.pod.state != PodState::Running {
        return Ok(());
    }
    let name = AcName::new(c.record.app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?;
    control::stop_within(&c.sandbox.pod, &name, timeout).map_err(addapp::AddAppError::from)?;
    Ok(())
}

/// RemoveContainer: removes the app from the running pod (stopping it
/// first) and the container's record. An unknown container is no error.
pub fn remove_container(dirs: &Dirs, id: &str) -> Result<(), CriError> {
    let c = match find_container(dirs, id) {
        Ok(c) => c,
        Err(CriError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if c.added() && c.sandbox.pod.state == PodState::Running {
        let name = AcName::new(c.record.app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?;
        addapp::remove(&c.sandbox.pod, &name)?;
    }
    let path = c.record_path();
    fs::remove_file(&path).map_err(io("remove", &path))?;
    tracing::info!(container = %id, "container removed");
    Ok(())
}

/// ListContainers.
pub fn list_containers(dirs: &Dirs, filter: Option<proto::ContainerFilter>) -> Result<Vec<proto::Container>, CriError> {
    let filter = filter.unwrap_or_default();
    Ok(containers(dirs)?
        .iter()
        .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox.pod.uuid.starts_with(&filter.pod_sandbox_id))
        .filter(|c| filter.id.is_empty() || c.id().starts_with(&filter.id))
        .filter(|c| selects(&filter.label_selector, &c.record.labels))
        .map(Container::to_proto)
        .filter(|c| filter.state.as_ref().is_none_or(|want| want.state == c.state))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(command: &[&str], args: &[&str], entrypoint: &[&str]) -> ContainerRecord {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        ContainerRecord {
            app: "c".into(),
            command: v(command),
            args: v(args),
            entrypoint: v(entrypoint),
            ..ContainerRecord::default()
        }
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_the_cmd() {
        let exec = |r: &ContainerRecord| new_app(r).unwrap().exec;
        let s = |x: &[&str]| Some(x.iter().map(|y| (*y).to_owned()).collect::<Vec<_>>());
        assert_eq!(exec(&record(&["/bin/echo"], &["hi"], &[])), s(&["/bin/echo", "hi"]));
        // Args alone follow the image's entrypoint.
        assert_eq!(exec(&record(&[], &["-c", "true"], &["/bin/sh"])), s(&["/bin/sh", "-c", "true"]));
        // An image without one (or an ACI): the args are the whole command.
        assert_eq!(exec(&record(&[], &["top"], &[])), s(&["top"]));
        assert_eq!(exec(&record(&[], &[], &[])), None);
    }
}
