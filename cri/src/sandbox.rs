//! CRI sandboxes as pods, all their state in the pods directory. A sandbox
//! is a pod with no apps (`apps: []`; a VM pod for `pod-vm`: vm.rs), run detached. Its CRI
//! metadata, labels and annotations are `cri-sandbox.json` in the pod
//! directory; only pods that have one are CRI sandboxes. Sandbox ID = pod
//! uuid. Its containers are its apps (container.rs), named by the CRI name
//! sanitised into an AcName (with `-<attempt>` when the attempt is not 0).
//!
//! Every function here is blocking (stage0's library): the service calls
//! them on `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spec::stage1::Network;
use stage0::fetch::{FetchOptions, Fetcher, PullPolicy};
use stage0::lifecycle;
use stage0::paths::Dirs;
use stage0::pods::{PodRef, PodState, Pods};
use stage0::prepare::{self, HostConfig, Overrides};
use stage0::run;
use stage0::sources::Sources;
use stage0::store::Store;
use stage0::trust::TrustStore;
use stage0::volumes::HostVolumePolicy;

use crate::error::CriError;
use crate::proto;

/// The sandbox's CRI record in its pod directory.
pub const SANDBOX_FILE: &str = "cri-sandbox.json";
/// The directory of container records in a sandbox's pod directory.
pub const CONTAINERS_DIR: &str = "cri-containers";
/// The handler names served by the namespace stage1.
pub const NS_HANDLERS: [&str; 2] = ["", "pod"];
pub use crate::vm::VM_HANDLER;

/// Where pods run: the data and config directories and the host settings.
#[derive(Debug, Clone)]
pub struct Host {
    pub dirs: Dirs,
    pub cni_conf_dir: PathBuf,
    pub debug: bool,
}

/// What a sandbox was created with, kept so a restarted server rebuilds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub runtime_handler: String,
    #[serde(default)]
    pub log_directory: String,
    /// `linux.cgroup_parent` as given (honoured for the namespace
    /// handlers: podcfg.rs; `stage1.json` records what the pod uses).
    #[serde(default)]
    pub cgroup_parent: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    nanos(SystemTime::now())
}

pub(crate) fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The longest app name a CRI container gets.
const MAX_APP_NAME: usize = 200;
/// The longest pod name: a pod's name is also its default hostname (a DNS
/// label), and Kubernetes sandbox names are often longer (critest's are).
const MAX_POD_NAME: usize = 63;

/// A CRI name as an AcName of at most `max` bytes: lowercase, runs of
/// anything else than `[a-z0-9]` become one `-`, trimmed of `-`; empty
/// becomes `fallback`.
pub fn sanitize(name: &str, fallback: &str, max: usize) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    let out: String = out.chars().take(max).collect();
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        fallback.to_owned()
    } else {
        out.to_owned()
    }
}

/// The app name of a CRI container.
pub fn app_name(name: &str, attempt: u32) -> String {
    let base = sanitize(name, "container", MAX_APP_NAME);
    if attempt == 0 {
        base
    } else {
        format!("{base}-{attempt}")
    }
}

/// `<uuid>-<app>`.
pub fn container_id(uuid: &str, app: &str) -> String {
    format!("{uuid}-{app}")
}

pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CriError + 'a {
    move |source| CriError::Io { op, path: path.to_owned(), source }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Writes JSON whole or not at all.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CriError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| io("serialize", path)(e.into()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", &tmp))
}

/// A CRI sandbox found in the pods directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub pod: PodRef,
    pub record: SandboxRecord,
}

impl Sandbox {
    /// Where the sandbox's cgroups are: under the parent its `stage1.json`
    /// records (`linux.cgroup_parent`), else in its systemd scope or under `pod/`.
    pub fn cgroup_loc(&self) -> Result<stage1_ns::cgroups::PodLoc, CriError> {
        let parent = fs::read(self.pod.dir.join(spec::stage1::INVOCATION_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<spec::stage1::Invocation>(&b).ok())
            .and_then(|i| i.cgroup_parent);
        stage1_ns::cgroups::PodLoc::for_pod(&self.pod.dir, parent.as_deref(), &self.pod.uuid)
            .map_err(|e| CriError::Failed(e.to_string()))
    }

    pub fn ready(&self) -> bool {
        self.pod.state == PodState::Running
    }

    /// The pod's addresses, as stage1 wrote them into its hosts file.
    pub fn ips(&self) -> Vec<String> {
        fs::read_to_string(self.pod.dir.join("etc").join("hosts"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("127.") && !l.starts_with("::1") && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    fn metadata(&self) -> proto::PodSandboxMetadata {
        proto::PodSandboxMetadata {
            name: self.record.name.clone(),
            uid: self.record.uid.clone(),
            namespace: self.record.namespace.clone(),
            attempt: self.record.attempt,
        }
    }

    fn state(&self) -> i32 {
        if self.ready() {
            proto::PodSandboxState::SandboxReady as i32
        } else {
            proto::PodSandboxState::SandboxNotready as i32
        }
    }

    pub fn to_proto(&self) -> proto::PodSandbox {
        proto::PodSandbox {
            id: self.pod.uuid.clone(),
            metadata: Some(self.metadata()),
            state: self.state(),
            created_at: self.record.created_at,
            labels: hash(&self.record.labels),
            annotations: hash(&self.record.annotations),
            runtime_handler: self.record.runtime_handler.clone(),
        }
    }

    pub fn status(&self) -> proto::PodSandboxStatus {
        let mut ips = self.ips().into_iter();
        proto::PodSandboxStatus {
            id: self.pod.uuid.clone(),
            metadata: Some(self.metadata()),
            state: self.state(),
            created_at: self.record.created_at,
            network: Some(proto::PodSandboxNetworkStatus {
                ip: ips.next().unwrap_or_default(),
                additional_ips: ips.map(|ip| proto::PodIp { ip }).collect(),
            }),
            labels: hash(&self.record.labels),
            annotations: hash(&self.record.annotations),
            runtime_handler: self.record.runtime_handler.clone(),
            ..Default::default()
        }
    }

    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.pod.dir.join(CONTAINERS_DIR)
    }
}

pub(crate) fn hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// Every CRI sandbox (pods with a [`SANDBOX_FILE`]).
pub fn sandboxes(dirs: &Dirs) -> Result<Vec<Sandbox>, CriError> {
    let pods = Pods::new(dirs).list().map_err(lifecycle::LifecycleError::from)?;
    Ok(pods
        .into_iter()
        .filter_map(|pod| read_json(&pod.dir.join(SANDBOX_FILE)).map(|record| Sandbox { pod, record }))
        .collect())
}

/// The sandbox with this ID (or a unique prefix of one).
pub fn find_sandbox(dirs: &Dirs, id: &str) -> Result<Option<Sandbox>, CriError> {
    if id.is_empty() {
        return Err(CriError::InvalidArgument("no pod sandbox ID given".into()));
    }
    let mut hits: Vec<Sandbox> = sandboxes(dirs)?.into_iter().filter(|s| s.pod.uuid.starts_with(id)).collect();
    if let Some(exact) = hits.iter().position(|s| s.pod.uuid == id) {
        return Ok(Some(hits.swap_remove(exact)));
    }
    match hits.len() {
        0 => Ok(None),
        1 => Ok(hits.pop()),
        _ => Err(CriError::InvalidArgument(format!("pod sandbox ID {id:?} is ambiguous"))),
    }
}

pub(crate) fn need_sandbox(dirs: &Dirs, id: &str) -> Result<Sandbox, CriError> {
    find_sandbox(dirs, id)?.ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))
}

/// Checks a RuntimeHandler: the namespace stage1 serves "" and "pod", the
/// VM stage1 "pod-vm".
pub fn check_handler(handler: &str) -> Result<(), CriError> {
    if NS_HANDLERS.contains(&handler) || handler == VM_HANDLER {
        Ok(())
    } else {
        Err(CriError::InvalidArgument(format!(
            "unknown runtime handler {handler:?} (this runtime has \"pod\" and \"pod-vm\")"
        )))
    }
}

pub(crate) fn fetcher_parts(dirs: &Dirs) -> Result<(Store, TrustStore, Sources), CriError> {
    Ok((Store::open(dirs)?, TrustStore::new(dirs.trust()), Sources::new(dirs.sources())))
}

/// The CNI network sandboxes join: the first `.conflist` (by file name)
/// in `dir` that names one, as kubelet's runtimes pick it; `None` without.
pub fn cni_network(dir: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    files.iter().find_map(|f| {
        let doc: serde_json::Value = read_json(f)?;
        doc.get("name").and_then(serde_json::Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned)
    })
}

/// RunPodSandbox: a pod with no apps (of the handler's isolation: vm.rs),
/// run detached, on the CNI network of [`cni_network`] (`network: none`
/// when there is none; a VM's is qemu's user-mode network). The
/// same metadata asked again while its sandbox is ready gives that sandbox.
pub fn run_sandbox(host: &Host, config: proto::PodSandboxConfig, handler: &str) -> Result<String, CriError> {
    check_handler(handler)?;
    let meta = config.metadata.clone().unwrap_or_default();
    if meta.name.is_empty() {
        return Err(CriError::InvalidArgument("the sandbox config has no metadata.name".into()));
    }
    let same = |r: &SandboxRecord| {
        r.name == meta.name && r.uid == meta.uid && r.namespace == meta.namespace && r.attempt == meta.attempt
    };
    if let Some(s) = sandboxes(&host.dirs)?.into_iter().find(|s| s.ready() && same(&s.record)) {
        return Ok(s.pod.uuid);
    }
    let namespaces = crate::secctx::SandboxNamespaces::of(&config)?;
    let dirs = &host.dirs;
    let network = match namespaces.host_network {
        true => Network::Host,
        false => cni_network(&host.cni_conf_dir).map_or(Network::None, |name| Network::Cni { name }),
    };
    let vm = crate::vm::isolation(handler) == spec::stage1::Isolation::Vm;
    let mut settings = crate::podcfg::sandbox_keys(&config, &network, vm)?;
    if let Some(parent) = crate::podcfg::cgroup_parent(&config, handler)? {
        settings.insert("cgroupParent".into(), serde_json::json!(parent));
    }
    let record = SandboxRecord {
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        attempt: meta.attempt,
        labels: btree(config.labels),
        annotations: btree(config.annotations),
        runtime_handler: handler.to_owned(),
        log_directory: config.log_directory,
        cgroup_parent: config.linux.map(|l| l.cgroup_parent).unwrap_or_default(),
        created_at: now_nanos(),
    };
    let tmp = dirs.tmp();
    fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    let file = tempfile::Builder::new()
        .prefix("cri-sandbox-")
        .suffix(".json")
        .tempfile_in(&tmp)
        .map_err(io("create a file in", &tmp))?;
    let mut pod_file = serde_json::json!({"name": sanitize(&meta.name, "sandbox", MAX_POD_NAME), "apps": []});
    pod_file["network"] = serde_json::json!(crate::podcfg::network_key(&network));
    if vm {
        // Said in the file too: its checks know a VM publishes ports
        // without a network (qemu forwards them).
        pod_file["isolation"] = serde_json::json!("vm");
    }
    for (k, v) in settings {
        pod_file[k.as_str()] = v;
    }
    namespaces.apply(&mut pod_file);
    pod_file["volumes"] = crate::logs::sandbox_volumes(&record.log_directory)?;
    fs::write(file.path(), pod_file.to_string()).map_err(io("write", file.path()))?;

    let (store, trust, sources) = fetcher_parts(dirs)?;
    let pods = Pods::new(dirs);
    let hostcfg = HostConfig {
        stage2: run::stage2(),
        cni_conf_dir: host.cni_conf_dir.clone(),
        cni_plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
        netns_dir: "/run/pod/netns".into(),
        debug: host.debug,
        vm: crate::vm::host_vm(handler, &dirs.config)?,
        subids: stage0::userns::SubIds::default(),
        // Its one host volume is kubelet's log directory: kubelet's choice,
        // as the containers' mounts are (mounts.rs).
        volumes: HostVolumePolicy::for_cri(dirs),
        // Kubernetes' containers have the API server, not appc's service.
        metadata: None,
    };
    let overrides = Overrides {
        isolation: Some(crate::vm::isolation(handler)),
        network: Some(network.clone()),
        sandbox: true,
        ..Overrides::default()
    };
    let opts = FetchOptions { pull: PullPolicy::Never, ..FetchOptions::default() };
    let mut fetcher = Fetcher::new(&store, &trust, &sources, opts)?;
    let prepared = prepare::prepare(&pods, &mut fetcher, file.path(), &overrides, &hostcfg)?;
    let mut pod = prepared.pod;
    // Written before the pod runs: the record moves with its directory.
    write_json(&pod.dir.join(SANDBOX_FILE), &record)?;
    let stage1 = run::stage1_for(crate::vm::isolation(handler))?;
    pods.transition(&mut pod, PodState::Running).map_err(lifecycle::LifecycleError::from)?;
    let uuid = pod.uuid.clone();
    let dir = pod.dir.clone();
    if let Err(e) = run::start_detached(&stage1, &dir, &uuid, pod.into_fd()) {
        // A sandbox that did not start (a sysctl the kernel refused, say)
        // is not kept for kubelet to find NotReady.
        crate::podcfg::discard_failed(&pods, &uuid);
        return Err(e.into());
    }
    let running = PodRef { dir, uuid: uuid.clone(), state: PodState::Running };
    crate::vm::wait_ready(&running, handler)?;
    tracing::info!(sandbox = %uuid, name = %meta.name, namespace = %meta.namespace, ?network, "sandbox running");
    Ok(uuid)
}

/// StopPodSandbox: stops the pod (its apps first); a stopped or unknown
/// sandbox is no error.
pub fn stop_sandbox(dirs: &Dirs, id: &str) -> Result<(), CriError> {
    let Some(s) = find_sandbox(dirs, id)? else { return Ok(()) };
    if s.pod.state == PodState::Running {
        lifecycle::stop(&s.pod, None)?;
    }
    Ok(())
}

/// RemovePodSandbox: stops it if it runs, then removes the pod; an unknown
/// sandbox is no error.
pub fn remove_sandbox(dirs: &Dirs, id: &str) -> Result<(), CriError> {
    let Some(s) = find_sandbox(dirs, id)? else { return Ok(()) };
    if s.pod.state == PodState::Running {
        lifecycle::stop(&s.pod, None)?;
    }
    let pod = lifecycle::find(&Pods::new(dirs), &s.pod.uuid)?;
    lifecycle::remove(&Pods::new(dirs), &pod)?;
    tracing::info!(sandbox = %s.pod.uuid, "sandbox removed");
    Ok(())
}

/// True if every `selector` label is on `labels` with the same value.
pub fn selects(selector: &HashMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// ListPodSandbox.
pub fn list_sandboxes(
    dirs: &Dirs,
    filter: Option<proto::PodSandboxFilter>,
) -> Result<Vec<proto::PodSandbox>, CriError> {
    let filter = filter.unwrap_or_default();
    Ok(sandboxes(dirs)?
        .iter()
        .filter(|s| filter.id.is_empty() || s.pod.uuid.starts_with(&filter.id))
        .filter(|s| selects(&filter.label_selector, &s.record.labels))
        .map(Sandbox::to_proto)
        .filter(|s| filter.state.as_ref().is_none_or(|want| want.state == s.state))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cri_names_become_app_names() {
        assert_eq!(sanitize("My_Container.v2", "x", 200), "my-container-v2");
        assert_eq!(sanitize("--", "sandbox", 200), "sandbox");
        // Cut to the limit, and no `-` left at the cut.
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(40));
        assert_eq!(sanitize(&long, "sandbox", MAX_POD_NAME), "a".repeat(62));
        assert_eq!(app_name("busybox", 0), "busybox");
        assert_eq!(app_name("busybox", 2), "busybox-2");
        spec::AcName::new(app_name("Über Äpp!", 1)).unwrap();
        assert_eq!(container_id("0f7a", "web"), "0f7a-web");
    }

    #[test]
    fn the_first_named_conflist_is_the_network() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(cni_network(tmp.path()), None);
        fs::write(tmp.path().join("05-unnamed.conflist"), "{}").unwrap();
        fs::write(tmp.path().join("20-b.conflist"), r#"{"name":"b"}"#).unwrap();
        fs::write(tmp.path().join("10-a.conflist"), r#"{"name":"a"}"#).unwrap();
        fs::write(tmp.path().join("00-c.conf"), r#"{"name":"c"}"#).unwrap();
        assert_eq!(cni_network(tmp.path()).as_deref(), Some("a"));
    }

    #[test]
    fn handlers() {
        assert!(check_handler("").is_ok());
        assert!(check_handler("pod").is_ok());
        assert!(check_handler("pod-vm").is_ok());
        assert_eq!(check_handler("runc").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn label_selectors() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(selects(&HashMap::new(), &labels));
        assert!(selects(&HashMap::from([("app".to_owned(), "web".to_owned())]), &labels));
        assert!(!selects(&HashMap::from([("app".to_owned(), "db".to_owned())]), &labels));
    }
}
