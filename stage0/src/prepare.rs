//! Preparing a pod: parse the pod file, order the apps (petgraph), fetch and
//! verify every image, merge each image's app section with the pod file's
//! overrides, and write the pod directory with its frozen `pod.json` and the
//! stage1 invocation. A failure at any step removes the embryo: nothing
//! half-prepared is left behind.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use petgraph::algo::toposort;
use petgraph::graph::DiGraph;
use spec::pod::{self, AppSpec, ImageSource, PodFile, PodFileError, Probe, RestartPolicy, VolumeKind};
use spec::stage1::{self, Invocation, ResolvedPod};

use crate::crashpoint::crashpoint;
use crate::exit::{Exit, ExitCodeOf};
use crate::fetch::{FetchError, Fetcher, ImageRef};
use crate::pods::{LockedPod, PodError, PodState, Pods};
use crate::store;
use crate::userns::{self, SubIds, UsernsError};
use crate::volumes::{HostVolumePolicy, VolumeError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    PodFile(#[from] PodFileError),
    #[error("{file}: app {app}: {why}")]
    App { file: String, app: String, why: String },
    #[error("{file}: apps form a cycle: {cycle}")]
    Cycle { file: String, cycle: String },
    #[error("{file}: app {app}: image {image}: {source}")]
    Image {
        file: String,
        app: String,
        image: String,
        #[source]
        source: Box<FetchError>,
    },
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("{file}: VM pods cannot run on this host: {why}")]
    NoVm { file: String, why: crate::guest::VmUnavailable },
    #[error("{file}: {why}")]
    UsernsConflict { file: String, why: &'static str },
    #[error("{file}: userns: auto: {source}")]
    Userns {
        file: String,
        #[source]
        source: UsernsError,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{file}: {why}")]
    Interactive { file: String, why: String, exit: Exit },
    #[error("{file}: pid: host and ipc: host are for namespace pods with the host's user namespace: {why}")]
    HostNamespaces { file: String, why: &'static str },
    #[error("{file}: {source}")]
    Name {
        file: String,
        #[source]
        source: crate::names::NameError,
    },
}

impl ExitCodeOf for PrepareError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::PodFile(_) | Self::App { .. } | Self::Cycle { .. } => Exit::InvalidInput,
            Self::Image { source, .. } => source.exit(),
            Self::Pod(e) => e.exit(),
            Self::NoVm { why: crate::guest::VmUnavailable::Config(_), .. } => Exit::InvalidInput,
            Self::NoVm { .. } => Exit::NotFound,
            Self::UsernsConflict { .. } | Self::HostNamespaces { .. } => Exit::InvalidInput,
            Self::Userns { source, .. } => source.exit(),
            Self::Volume(e) => e.exit(),
            Self::Interactive { exit, .. } => *exit,
            Self::Name { source, .. } => source.exit(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PrepareError + 'a {
    move |source| PrepareError::Io { op, path: path.to_owned(), source }
}

/// Host settings for the invocation.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub stage2: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_plugin_dirs: Vec<PathBuf>,
    pub netns_dir: PathBuf,
    pub debug: bool,
    /// What VM pods boot, or why this host cannot run them.
    pub vm: Result<stage1::VmHost, crate::guest::VmUnavailable>,
    /// Where `userns: auto` ranges come from.
    pub subids: SubIds,
    /// Which host directories `kind: host` volumes may mount.
    pub volumes: HostVolumePolicy,
    /// The data directory whose metadata service (`crate::metadata`,
    /// started on demand once the pod file and its images are good) the
    /// pod's apps get as `AC_METADATA_URL`. `None`: no metadata service.
    pub metadata: Option<PathBuf>,
}

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub isolation: Option<stage1::Isolation>,
    pub network: Option<stage1::Network>,
    pub accel: Option<stage1::Accel>,
    pub userns: Option<pod::UserNs>,
    /// `pod run --sandbox`: the pod outlives its apps until stopped (as a
    /// pod file with `apps: []` does).
    pub sandbox: bool,
    /// `pod run -i`/`-t`: the app that gets a stdin FIFO and/or a terminal.
    pub interactive: Option<Interactive>,
    /// `pod run --name`: the pod's name instead of the pod file's.
    pub name: Option<spec::AcName>,
    /// Whether a live pod of the same name refuses the new one (`pod run`),
    /// is replaced (`--replace`), or neither (the CRI).
    pub same_name: crate::names::SameName,
}

/// `pod run -i -t [--app A]`: app A (by default the pod's only app) gets
/// a stdin FIFO (`stdin: true`) and a terminal (`terminal: true`).
#[derive(Debug, Clone, Default)]
pub struct Interactive {
    pub app: Option<spec::AcName>,
    pub stdin: bool,
    pub tty: bool,
}

impl Interactive {
    /// The app it names in `pod`, or why there is none.
    pub fn pick(&self, pod: &PodFile, file: &str) -> Result<usize, PrepareError> {
        match &self.app {
            Some(a) => pod.apps.iter().position(|x| &x.name == a).ok_or_else(|| PrepareError::Interactive {
                file: file.to_owned(),
                why: format!("--app {a}: the pod has no such app"),
                exit: Exit::NotFound,
            }),
            None if pod.apps.len() == 1 => Ok(0),
            None => Err(PrepareError::Interactive {
                file: file.to_owned(),
                why: format!("-i/-t: the pod has {} apps; name the interactive one with --app", pod.apps.len()),
                exit: Exit::Conflict,
            }),
        }
    }
}

/// The start order of the apps: dependencies first, ties in file order.
/// The pod file parser already rejects cycles; this is the engine's own
/// check, so a pod built some other way is held to the same rule.
pub fn app_order<'a>(file: &str, pod: &'a PodFile) -> Result<Vec<&'a AppSpec>, PrepareError> {
    let mut g = DiGraph::<usize, ()>::new();
    let nodes: Vec<_> = (0..pod.apps.len()).map(|i| g.add_node(i)).collect();
    let index: BTreeMap<&str, usize> = pod.apps.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
    for (i, app) in pod.apps.iter().enumerate() {
        for dep in app.after.iter().chain(&app.requires) {
            let j = *index.get(dep.as_str()).ok_or_else(|| PrepareError::App {
                file: file.to_owned(),
                app: app.name.to_string(),
                why: format!("depends on unknown app {dep}"),
            })?;
            g.update_edge(nodes[j], nodes[i], ());
        }
    }
    match toposort(&g, None) {
        Ok(_) => Ok(pod.app_order()),
        Err(cycle) => {
            let start = g[cycle.node_id()];
            Err(PrepareError::Cycle {
                file: file.to_owned(),
                cycle: format!("{} is part of one", pod.apps[start].name),
            })
        }
    }
}

pub(crate) fn image_ref(spec: &ImageSource, base: &Path) -> ImageRef {
    match spec {
        ImageSource::Name { name, labels } => ImageRef::Name { name: name.clone(), labels: labels.clone() },
        ImageSource::Url(u) => ImageRef::Url(u.clone()),
        ImageSource::Oci(src) => ImageRef::Oci(match src {
            // Local paths in a pod file are relative to the pod file.
            spec::oci::OciSource::Layout { dir, tag } => {
                spec::oci::OciSource::Layout { dir: rebase(base, dir), tag: tag.clone() }
            }
            spec::oci::OciSource::OciArchive { file, tag } => {
                spec::oci::OciSource::OciArchive { file: rebase(base, file), tag: tag.clone() }
            }
            spec::oci::OciSource::DockerArchive { file, name } => {
                spec::oci::OciSource::DockerArchive { file: rebase(base, file), name: name.clone() }
            }
            registry @ spec::oci::OciSource::Registry(_) => registry.clone(),
        }),
        ImageSource::File(p) => {
            let p = p.strip_prefix("file://").unwrap_or(p);
            ImageRef::File(if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) })
        }
    }
}

fn rebase(base: &Path, p: &str) -> String {
    if Path::new(p).is_absolute() {
        p.to_owned()
    } else {
        base.join(p).display().to_string()
    }
}

/// Merges an image's app section with the pod file's overrides; `volumes`
/// names the pod's volumes (which fill the image's mount points by name).
pub(crate) fn resolve_app(
    file: &str,
    app: &AppSpec,
    meta: &store::ImageMeta,
    image_app: Option<&spec::App>,
    layers: Vec<PathBuf>,
    volumes: &[spec::AcName],
) -> Result<stage1::App, PrepareError> {
    let err = |why: String| PrepareError::App { file: file.to_owned(), app: app.name.to_string(), why };
    let exec = match (&app.exec, image_app.map(|a| &a.exec)) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) if !e.is_empty() => e.clone(),
        _ => return Err(err(format!("image {} has no exec; give `exec` in the pod file", meta.name))),
    };
    let mut env: Vec<(String, String)> = image_app
        .map(|a| a.environment.iter().map(|l| (l.name.clone(), l.value.clone())).collect())
        .unwrap_or_default();
    for (k, v) in &app.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    let mut ports = Vec::new();
    for (i, p) in app.ports.iter().enumerate() {
        // By name, or (OCI images: `80-tcp`) by number and protocol.
        let by_number = |ip: &&spec::manifest::Port| {
            p.name.as_str().parse::<u16>().is_ok_and(|n| n == ip.port) && ip.protocol == p.protocol.to_string()
        };
        let decl = image_app
            .and_then(|a| a.ports.iter().find(|ip| ip.name == p.name).or_else(|| a.ports.iter().find(by_number)))
            .ok_or_else(|| {
                err(format!("ports[{i}]: image {} declares no port named {:?}", meta.name, p.name.as_str()))
            })?;
        if decl.protocol != p.protocol.to_string() {
            return Err(err(format!(
                "ports[{i}]: port {} is {} in the image, not {}",
                p.name, decl.protocol, p.protocol
            )));
        }
        ports.push(stage1::Port {
            name: p.name.clone(),
            protocol: decl.protocol.clone(),
            container_port: decl.port,
            host_port: p.host_port,
            host_ip: p.host_ip.to_string(),
        });
    }
    Ok(stage1::App {
        name: app.name.clone(),
        image_name: meta.name.clone(),
        image_id: meta.id.clone(),
        layers,
        exec,
        user: app.user.clone().or_else(|| image_app.map(|a| a.user.clone())).unwrap_or_else(|| "0".into()),
        // A user given without a group runs with its primary group, as
        // `docker run --user`: the image's group goes with the image's user.
        group: match (&app.group, &app.user) {
            (Some(g), _) => g.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => image_app.map_or_else(|| "0".into(), |a| a.group.clone()),
        },
        supplementary_gids: image_app.map(|a| a.supplementary_gids.clone()).unwrap_or_default(),
        working_directory: app
            .working_directory
            .clone()
            .or_else(|| image_app.and_then(|a| a.working_directory.clone()))
            .unwrap_or_else(|| "/".into()),
        env,
        after: app.after.clone(),
        requires: app.requires.clone(),
        readiness: app.readiness.as_ref().map(|r| stage1::Readiness {
            probe: match &r.probe {
                Probe::Tcp(p) => stage1::Probe::Tcp(*p),
                Probe::Exec(argv) => stage1::Probe::Exec(argv.clone()),
            },
            timeout_ms: u64::try_from(r.timeout.as_millis()).unwrap_or(u64::MAX),
        }),
        restart: match app.restart {
            RestartPolicy::Never => stage1::Restart::Never,
            RestartPolicy::OnFailure => stage1::Restart::OnFailure,
            RestartPolicy::Always => stage1::Restart::Always,
        },
        stop_timeout_ms: u64::try_from(app.stop_timeout.as_millis()).unwrap_or(u64::MAX),
        stop_signal: match meta.oci.as_ref().and_then(|o| o.stop_signal.clone()) {
            Some(sig) if spec::unit::signal_number(&sig).is_none() => {
                return Err(err(format!("image {} has StopSignal {sig:?}, which is not a signal", meta.name)))
            }
            other => other,
        },
        resources: stage1::Resources {
            memory_bytes: app.resources.memory_bytes,
            cpu_millis: app.resources.cpu_millis,
            pids: app.resources.pids,
            cpu_shares: app.resources.cpu_shares,
            oom_score_adj: app.resources.oom_score_adj,
        },
        ports,
        mounts: mounts_of(file, app, meta, image_app, volumes)?,
        capabilities: app.capabilities,
        seccomp: crate::secprofile::resolve(&app.seccomp).map_err(err)?,
        read_only_root_fs: app.read_only_root_fs,
        security: app.security.clone(),
        log: app.log.clone(),
        stdin: app.stdin,
        tty: app.tty,
        devices: devices_of(app).map_err(err)?,
        handlers: handlers_of(image_app, app),
    })
}

/// The image's `pre-start` and `post-stop` event handlers, which run
/// whatever `exec` the pod file gives the app (as rkt ran them).
fn handlers_of(image_app: Option<&spec::manifest::App>, app: &AppSpec) -> stage1::EventHandlers {
    let handler =
        |name: &str| image_app.and_then(|a| a.event_handlers.iter().find(|h| h.name == name)).map(|h| h.exec.clone());
    stage1::EventHandlers {
        pre_start: handler("pre-start"),
        post_stop: handler("post-stop"),
        start_timeout_ms: u64::try_from(app.start_timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The app's devices, each host path checked to be a character or block
/// device now (stage1 checks again when it binds it).
fn devices_of(app: &AppSpec) -> Result<Vec<stage1::Device>, String> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::with_capacity(app.devices.len());
    for (i, d) in app.devices.iter().enumerate() {
        let kind = std::fs::metadata(&d.host).map_err(|e| format!("devices[{i}].host: {}: {e}", d.host))?.file_type();
        if !(kind.is_char_device() || kind.is_block_device()) {
            return Err(format!("devices[{i}].host: {} is not a character or block device", d.host));
        }
        out.push(stage1::Device::from(d.clone()));
    }
    Ok(out)
}

/// The app's mounts: the pod file's, then one on each of the image's
/// mount points the pod file mounts nothing on. A pod volume named as the
/// mount point fills it (as rkt filled them); otherwise an empty volume
/// `<app>-<mount point>` does, made for the app and removed with the pod:
/// docker's and podman's anonymous volume for an OCI image's `Volumes`,
/// rkt's implicit empty volume for an ACI's mount point (said on stderr:
/// an ACI's mount points are the data it expects to be given). A mount
/// point's `readOnly` makes whatever fills it read-only.
fn mounts_of(
    file: &str,
    app: &AppSpec,
    meta: &store::ImageMeta,
    image_app: Option<&spec::App>,
    volumes: &[spec::AcName],
) -> Result<Vec<stage1::Mount>, PrepareError> {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let points = image_app.map(|a| a.mount_points.as_slice()).unwrap_or_default();
    let mut mounts: Vec<stage1::Mount> = app
        .mounts
        .iter()
        .map(|m| stage1::Mount {
            volume: m.volume.clone(),
            path: m.path.clone(),
            read_only: m.read_only || points.iter().any(|mp| mp.read_only && same(&mp.path, &m.path)),
            propagation: m.propagation.into(),
            recursive_read_only: m.recursive_read_only,
        })
        .collect();
    for mp in points {
        if mounts.iter().any(|m| same(&m.path, &mp.path)) {
            continue;
        }
        let volume = if volumes.contains(&mp.name) {
            mp.name.clone()
        } else {
            let name = format!("{}-{}", app.name, mp.name);
            let volume = spec::AcName::new(&name).map_err(|e| PrepareError::App {
                file: file.to_owned(),
                app: app.name.to_string(),
                why: format!("volume {name:?} for the image's mount point {}: {e}", mp.path),
            })?;
            if meta.oci.is_none() {
                tracing::warn!(
                    "{file}: app {}: image {} has mount point {} ({}) and the pod has no volume of that name: \
                     it gets an empty volume {name}, removed with the pod",
                    app.name,
                    meta.name,
                    mp.name,
                    mp.path
                );
            }
            volume
        };
        mounts.push(stage1::Mount {
            volume,
            path: mp.path.clone(),
            read_only: mp.read_only,
            propagation: stage1::Propagation::Private,
            recursive_read_only: false,
        });
    }
    Ok(mounts)
}

/// The pod file's pod-level `ports`, each named by its container port.
fn pod_ports(file: &str, pod_file: &PodFile) -> Result<Vec<stage1::Port>, PrepareError> {
    pod_file
        .ports
        .iter()
        .map(|p| {
            let name = spec::AcName::new(p.container_port.to_string()).map_err(|e| PrepareError::App {
                file: file.to_owned(),
                app: String::new(),
                why: format!("port {}: {e}", p.container_port),
            })?;
            Ok(stage1::Port {
                name,
                protocol: p.protocol.to_string(),
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.to_string(),
            })
        })
        .collect()
}

/// A prepared pod, still locked by us.
#[derive(Debug)]
pub struct Prepared {
    pub pod: LockedPod,
    pub resolved: ResolvedPod,
}

/// Prepares the pod file at `path`: everything short of running it.
pub fn prepare(
    pods: &Pods,
    fetcher: &mut Fetcher<'_>,
    path: &Path,
    overrides: &Overrides,
    host: &HostConfig,
) -> Result<Prepared, PrepareError> {
    let file = path.display().to_string();
    let bytes = fs::read(path).map_err(io_err("read pod file", path))?;
    let mut pod_file = PodFile::parse(&bytes, &file)?;
    if let Some(name) = &overrides.name {
        pod_file.name = name.clone();
    }
    if let Some(it) = &overrides.interactive {
        let i = it.pick(&pod_file, &file)?;
        pod_file.apps[i].stdin |= it.stdin;
        pod_file.apps[i].tty |= it.tty;
    }
    let order = app_order(&file, &pod_file)?;
    // Before anything is fetched or written: a refused host volume leaves
    // the store and the pods as they were.
    let host_sources = host.volumes.check(&pod_file, &file)?;
    let vm = runs_in_vm(&pod_file, overrides);
    if overrides.userns.unwrap_or(pod_file.userns).own() {
        let host_net = match &overrides.network {
            Some(n) => *n == stage1::Network::Host,
            None => pod_file.network == pod::Network::Host,
        };
        if let Some(why) = pod::userns_conflict(vm, host_net) {
            return Err(PrepareError::UsernsConflict { file, why });
        }
    }
    let own_pid = pod_file.apps.iter().any(|a| a.security.own_pid_namespace);
    if own_pid && overrides.userns.is_some_and(|u| u.own()) {
        return Err(PrepareError::UsernsConflict {
            file,
            why: "pidNamespace: own cannot go with userns: auto (not yet)",
        });
    }
    if pod_file.host_pid || pod_file.host_ipc {
        let auto = overrides.userns.unwrap_or(pod_file.userns).own();
        if vm || auto {
            let why =
                if vm { "a VM pod has its own kernel" } else { "userns: auto does not own the host's namespaces" };
            return Err(PrepareError::HostNamespaces { file, why });
        }
    }
    if let (true, Err(why)) = (vm, &host.vm) {
        return Err(PrepareError::NoVm { file, why: why.clone() });
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    // Fetch (and verify) every image before creating anything on disk.
    let mut apps = Vec::new();
    let metadata = host.metadata.as_ref();
    let mut images = Vec::new();
    let volume_names: Vec<spec::AcName> = pod_file.volumes.iter().map(|v| v.name.clone()).collect();
    for app in order {
        let r = image_ref(&app.image.source, &base);
        let image_err = |source| PrepareError::Image {
            file: file.clone(),
            app: app.name.to_string(),
            image: app.image.reference.clone(),
            source: Box::new(source),
        };
        let fetched = fetcher.fetch(&r).map_err(image_err)?;
        let image_app = if fetched.meta.oci.is_some() {
            Some(crate::oci::pull::app_of(fetcher.store(), &fetched.meta.id).map_err(|e| image_err(e.into()))?.0)
        } else {
            fetcher.store().manifest(&fetched.meta.id).map_err(|e| image_err(e.into()))?.app
        };
        if metadata.is_some() {
            let facts = crate::metadata::ImageFacts::of(fetcher.store(), &fetched.meta, image_app.as_ref());
            images.push(facts.map_err(|why| PrepareError::App {
                file: file.clone(),
                app: app.name.to_string(),
                why,
            })?);
        }
        apps.push(resolve_app(&file, app, &fetched.meta, image_app.as_ref(), fetched.lower, &volume_names)?);
    }
    // Only now that the pod file and its images are good: a refused pod
    // starts nothing.
    let metadata = match metadata.map(|data| crate::metadata::ensure(data)) {
        Some(Ok(socket)) => Some((socket, images)),
        Some(Err(e)) => {
            tracing::warn!("the metadata service is not running ({e}): the pod's apps get no AC_METADATA_URL");
            None
        }
        None => None,
    };

    let mut locked = crate::names::create_named(pods, &pod_file.name, overrides.same_name)
        .map_err(|source| PrepareError::Name { file: file.clone(), source })?;
    crashpoint("prepare.embryo");
    match write_pod(pods, &locked, &pod_file, &file, &host_sources, apps, overrides, host, metadata) {
        Ok(resolved) => {
            pods.transition(&mut locked, PodState::Prepared)?;
            crashpoint("prepare.prepared");
            Ok(Prepared { pod: locked, resolved })
        }
        Err(e) => {
            // Best effort: an embryo left by a failure here is also found
            // and removed by `pod gc`.
            let _ = fs::remove_dir_all(&locked.dir);
            Err(e)
        }
    }
}

/// Whether the pod runs in a VM (the command line's choice, or the file's).
fn runs_in_vm(pod_file: &PodFile, overrides: &Overrides) -> bool {
    overrides.isolation.map_or(pod_file.isolation == pod::Isolation::Vm, |i| i == stage1::Isolation::Vm)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), PrepareError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| io_err("serialize", path)(e.into()))?;
    fs::write(path, json).map_err(io_err("write", path))
}

/// `host_sources`: per volume, the resolved source of a host volume, as
/// checked by [`HostVolumePolicy::check`].
// `pods` is for the userns allocation, which must be recorded in the
// stage1.json written here while its lock is held.
#[allow(clippy::too_many_arguments)]
fn write_pod(
    pods: &Pods,
    pod: &LockedPod,
    pod_file: &PodFile,
    file: &str,
    host_sources: &[Option<PathBuf>],
    mut apps: Vec<stage1::App>,
    overrides: &Overrides,
    host: &HostConfig,
    metadata: Option<(PathBuf, Vec<crate::metadata::ImageFacts>)>,
) -> Result<ResolvedPod, PrepareError> {
    let dir = &pod.dir;
    let secrets = match &metadata {
        Some(_) => Some(crate::metadata::new_secrets().map_err(|e| io_err("read random bytes for", dir)(e.into()))?),
        None => None,
    };
    if let Some((token, _)) = &secrets {
        for app in &mut apps {
            crate::metadata::give_url(app, token);
        }
    }
    // Only what every pod uses: `volumes/` comes with its first empty
    // volume, and stage1 makes `net/` (its CNI cache) for a CNI network.
    // Each directory is a journalled inode allocation on the host's disk.
    for sub in ["units", "status", "logs"] {
        let d = dir.join(sub);
        fs::create_dir(&d).map_err(io_err("create directory", &d))?;
    }
    for app in &apps {
        for sub in ["rootfs", "upper", "work"] {
            let d = dir.join("apps").join(app.name.as_str()).join(sub);
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
    }
    crashpoint("prepare.dirs");
    let mut volumes = Vec::new();
    for (v, resolved) in pod_file.volumes.iter().zip(host_sources) {
        let source = match (&v.kind, resolved) {
            (VolumeKind::Host { read_only, .. }, Some(path)) => {
                stage1::VolumeSource::Host { path: path.clone(), read_only: *read_only }
            }
            (VolumeKind::Host { source, .. }, None) => {
                let e = io::Error::new(io::ErrorKind::InvalidInput, "host volume source was not checked");
                return Err(io_err("mount", Path::new(source))(e));
            }
            (VolumeKind::Empty, _) => {
                let d = dir.join("volumes").join(v.name.as_str());
                fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
                stage1::VolumeSource::Empty
            }
        };
        volumes.push(stage1::Volume { name: v.name.clone(), source });
    }
    // The empty volumes of images' mount points the pod file left (see `mounts_of`).
    for m in apps.iter().flat_map(|a| &a.mounts) {
        if !volumes.iter().any(|v| v.name == m.volume) {
            let d = dir.join("volumes").join(m.volume.as_str());
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
            volumes.push(stage1::Volume { name: m.volume.clone(), source: stage1::VolumeSource::Empty });
        }
    }
    crashpoint("prepare.volumes");
    let network = overrides.network.clone().unwrap_or(match &pod_file.network {
        pod::Network::None => stage1::Network::None,
        pod::Network::Host => stage1::Network::Host,
        pod::Network::Default => stage1::Network::Cni { name: "default".into() },
        pod::Network::Named(n) => stage1::Network::Cni { name: n.clone() },
    });
    let resolved = ResolvedPod {
        uuid: pod.uuid.clone(),
        name: pod_file.name.clone(),
        source: file.to_owned(),
        isolation: overrides.isolation.unwrap_or(match pod_file.isolation {
            pod::Isolation::Namespace => stage1::Isolation::Namespace,
            pod::Isolation::Vm => stage1::Isolation::Vm,
        }),
        accel: overrides.accel.unwrap_or(match pod_file.accel {
            pod::Accel::Auto => stage1::Accel::Auto,
            pod::Accel::Kvm => stage1::Accel::Kvm,
            pod::Accel::Tcg => stage1::Accel::Tcg,
        }),
        network,
        apps,
        volumes,
        created_at: store::now_rfc3339(),
        sandbox: overrides.sandbox || pod_file.apps.is_empty(),
        hostname: pod_file.hostname.clone(),
        dns: pod_file.dns.as_ref().map(|d| stage1::Dns {
            servers: d.servers.iter().map(ToString::to_string).collect(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        sysctls: pod_file.sysctls.clone(),
        ports: pod_ports(file, pod_file)?,
        host_pid: pod_file.host_pid,
        host_ipc: pod_file.host_ipc,
    };
    write_json(&dir.join(stage1::POD_MANIFEST_FILE), &resolved)?;
    crashpoint("prepare.manifest");
    if let (Some((_, images)), Some(secrets)) = (&metadata, secrets) {
        let annotations: Vec<spec::metadata::Annotation> = pod_file
            .annotations
            .iter()
            .map(|(k, v)| spec::metadata::Annotation { name: k.to_string(), value: v.clone() })
            .collect();
        let record = crate::metadata::record(&resolved, images, &annotations, secrets);
        let path = dir.join(spec::metadata::POD_FILE);
        crate::metadata::write_record(dir, &record).map_err(io_err("write", &path))?;
    }
    // Held until stage1.json records the range: see userns.rs.
    let allocation = match overrides.userns.unwrap_or(pod_file.userns) {
        pod::UserNs::Host => None,
        pod::UserNs::Auto => Some(
            userns::allocate(pods, &host.subids)
                .map_err(|source| PrepareError::Userns { file: file.to_owned(), source })?,
        ),
        pod::UserNs::Map(map) => {
            Some(userns::reserve(pods, map).map_err(|source| PrepareError::Userns { file: file.to_owned(), source })?)
        }
    };
    let invocation = Invocation {
        version: stage1::INVOCATION_VERSION,
        stage2: host.stage2.clone(),
        cni_conf_dir: host.cni_conf_dir.clone(),
        cni_plugin_dirs: host.cni_plugin_dirs.clone(),
        netns_dir: host.netns_dir.clone(),
        debug: host.debug,
        vm: host.vm.clone().ok(),
        userns: allocation.as_ref().map(|a| a.map),
        cgroup_parent: pod_file.cgroup_parent.clone(),
        metadata_socket: metadata.map(|(socket, _)| socket),
    };
    write_json(&dir.join(stage1::INVOCATION_FILE), &invocation)?;
    drop(allocation);
    crashpoint("prepare.invocation");
    Ok(resolved)
}

/// Reads a pod's `pod.json`.
pub fn read_resolved(dir: &Path) -> Option<ResolvedPod> {
    fs::read(dir.join(stage1::POD_MANIFEST_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
name: web-db
apps:
  - name: db
    image: example.com/redis:7.0
  - name: web
    image: example.com/web:1.0
    after: [db]
    env: { B: "pod" }
    ports: [{ name: http, host: 8080 }]
"#;

    const IMAGE: &str = r#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/web",
        "app":{"exec":["/usr/bin/web"],"user":"www","group":"www",
               "environment":[{"name":"A","value":"image"},{"name":"B","value":"image"}],
               "ports":[{"name":"http","protocol":"tcp","port":80}]}}"#;

    fn meta() -> store::ImageMeta {
        store::ImageMeta {
            id: spec::ImageId::from_digest(&[7; 64]),
            name: spec::AcIdentifier::new("example.com/web").unwrap_or_else(|e| panic!("{e}")).into(),
            labels: BTreeMap::new(),
            size: 1,
            uncompressed_size: 1,
            signer: None,
            imported_at: String::new(),
            source: String::new(),
            oci: None,
            other_names: Vec::new(),
        }
    }

    #[test]
    fn order_and_merge() {
        let pod = PodFile::parse(POD.as_bytes(), "p.yaml").unwrap_or_else(|e| panic!("{e}"));
        let order: Vec<_> = app_order("p.yaml", &pod).unwrap_or_default().iter().map(|a| a.name.to_string()).collect();
        assert_eq!(order, ["db", "web"]);
        let manifest = spec::ImageManifest::parse(IMAGE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let web = &pod.apps[1];
        let app = resolve_app("p.yaml", web, &meta(), manifest.app.as_ref(), vec![PathBuf::from("/t")], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app.exec, ["/usr/bin/web"]);
        assert_eq!(app.user, "www");
        assert_eq!(app.env, [("A".to_owned(), "image".to_owned()), ("B".to_owned(), "pod".to_owned())]);
        assert_eq!((app.ports[0].container_port, app.ports[0].host_port), (80, 8080));

        let mut bad = web.clone();
        bad.ports[0].name = spec::AcName::new("https").unwrap_or_else(|e| panic!("{e}"));
        let err = resolve_app("p.yaml", &bad, &meta(), manifest.app.as_ref(), vec![PathBuf::new()], &[])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("p.yaml: app web: ports[0]: image example.com/web declares no port named \"https\"")
        );
    }

    #[test]
    fn a_user_alone_takes_its_primary_group_and_security_is_carried() {
        let pod = PodFile::parse(POD.as_bytes(), "p.yaml").unwrap_or_else(|e| panic!("{e}"));
        let manifest = spec::ImageManifest::parse(IMAGE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let resolve = |app: &AppSpec| {
            resolve_app("p.yaml", app, &meta(), manifest.app.as_ref(), vec![PathBuf::from("/t")], &[])
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(resolve(&pod.apps[1]).group, "www", "the image's user and group");
        let mut web = pod.apps[1].clone();
        web.user = Some("1001".into());
        assert_eq!(resolve(&web).group, "", "the user's primary group, not the image's");
        web.group = Some("1002".into());
        assert_eq!(resolve(&web).group, "1002");
        web.security.supplementary_groups = vec![1234];
        web.security.no_new_privileges = false;
        assert_eq!(resolve(&web).security, web.security);
        web.seccomp = spec::security::SeccompSpec::Localhost("/no/such/profile.json".into());
        let err = resolve_app("p.yaml", &web, &meta(), manifest.app.as_ref(), vec![], &[]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("seccomp profile /no/such/profile.json")));
    }
}
