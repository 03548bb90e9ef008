//! A pod's cgroups in any mode: create them with limits, put processes in,
//! count OOM kills, kill, destroy, and find leftovers for `pod gc`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::detect::Layout;
use super::systemd::{unit_name, MACHINE_SLICE, SCOPE_FILE};
use super::{fsx, v1, v2, validate_app, validate_uuid, CgroupError, Hierarchy, Limits, Result};

/// The directory under each hierarchy root that holds every pod.
pub const POD_BASE: &str = "pod";

/// The leaf for the pod's PID 1. Not an appc name, so no app can collide.
pub const INIT_CGROUP: &str = "init.scope";

/// How long SIGKILL may take to empty a pod.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one pod's cgroups are below each hierarchy root:
/// `<parent>/<uuid>`, the parent [`POD_BASE`] unless the pod was given one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLoc {
    parent: PathBuf,
    uuid: String,
    /// The pod's directory under the parent: its uuid, or its systemd scope.
    dir: String,
}

impl PodLoc {
    /// The pod `uuid` under `parent` (cgroupfs form, `/kubepods/...`,
    /// checked), or under [`POD_BASE`] for `None`.
    pub fn new(parent: Option<&str>, uuid: &str) -> Result<Self> {
        validate_uuid(uuid)?;
        let parent = match parent {
            None => PathBuf::from(POD_BASE),
            Some(p) => {
                spec::cgroup::check_parent(p).map_err(CgroupError::InvalidParent)?;
                spec::cgroup::relative(p)
            }
        };
        Ok(Self { parent, uuid: uuid.to_owned(), dir: uuid.to_owned() })
    }

    /// The pod `uuid` in its systemd scope, `machine.slice/pod-<uuid>.scope`.
    pub fn scope(uuid: &str) -> Result<Self> {
        validate_uuid(uuid)?;
        Ok(Self { parent: PathBuf::from(MACHINE_SLICE), uuid: uuid.to_owned(), dir: unit_name(uuid) })
    }

    /// Where the pod in `pod_dir` has its cgroups: in its systemd scope if
    /// it was given one (the pod directory's [`SCOPE_FILE`]), else as
    /// [`PodLoc::new`].
    pub fn for_pod(pod_dir: &Path, parent: Option<&str>, uuid: &str) -> Result<Self> {
        if parent.is_none() && pod_dir.join(SCOPE_FILE).exists() {
            Self::scope(uuid)
        } else {
            Self::new(parent, uuid)
        }
    }

    /// Whether the pod lives in a systemd scope.
    pub fn is_scope(&self) -> bool {
        self.dir != self.uuid
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The parent, relative to a hierarchy root (`pod`, `kubepods/...`).
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// `<parent>/<uuid>` (or `machine.slice/pod-<uuid>.scope`), relative
    /// to a hierarchy root.
    pub fn rel(&self) -> PathBuf {
        self.parent.join(&self.dir)
    }
}

/// A pod under [`POD_BASE`] (checked where it is used).
impl From<&str> for PodLoc {
    fn from(uuid: &str) -> Self {
        Self { parent: PathBuf::from(POD_BASE), uuid: uuid.to_owned(), dir: uuid.to_owned() }
    }
}

impl From<&String> for PodLoc {
    fn from(uuid: &String) -> Self {
        Self::from(uuid.as_str())
    }
}

impl From<&PodLoc> for PodLoc {
    fn from(loc: &PodLoc) -> Self {
        loc.clone()
    }
}

/// The cgroups of one pod: [`PodLoc::rel`] in each hierarchy, with a leaf
/// per app and [`INIT_CGROUP`].
#[derive(Debug, Clone)]
pub struct PodCgroup {
    hierarchy: Hierarchy,
    loc: PodLoc,
    apps: Vec<String>,
}

/// Creates the pod's cgroups and applies each app's limits.
///
/// Idempotent: directories that exist are reused and limits rewritten.
/// Fails before touching the host if a limit needs a controller the host
/// lacks; on a later failure, removes every directory it made (the parent
/// excepted: another pod may be appearing in it, and it may be kubelet's).
pub fn create_pod(h: &Hierarchy, pod: impl Into<PodLoc>, apps: &[(&str, Limits)]) -> Result<PodCgroup> {
    let loc: PodLoc = pod.into();
    validate_uuid(&loc.uuid)?;
    let uuid = loc.uuid.as_str();
    let mut names: Vec<String> = Vec::with_capacity(apps.len());
    let mut required: Vec<&'static str> = Vec::new();
    for (app, limits) in apps {
        validate_app(app)?;
        limits.validate(app)?;
        if names.iter().any(|n| n == app) {
            return Err(CgroupError::DuplicateApp((*app).to_owned()));
        }
        names.push((*app).to_owned());
        required.extend(limits.controllers().filter(|c| !required.contains(c)).collect::<Vec<_>>());
    }
    let enable = match &h.layout {
        Layout::V2 { root } => v2::check_available(root, &required)?,
        Layout::V1 { root, controllers, .. } => {
            v1::check_available(root, controllers, &required)?;
            Vec::new()
        }
    };
    let pod = PodCgroup { hierarchy: h.clone(), loc: loc.clone(), apps: names };
    let mut created = Vec::new();
    match pod.build(apps, &enable, &mut created) {
        Ok(()) => {
            tracing::debug!(uuid, mode = ?h.mode(), apps = pod.apps.len(), "pod cgroups ready");
            Ok(pod)
        }
        Err(e) => {
            for dir in created.iter().rev() {
                if let Err(undo) = fsx::rmdir(dir) {
                    tracing::warn!(error = %undo, "could not undo a half-made pod cgroup");
                }
            }
            Err(e)
        }
    }
}

/// The pod `uuid`'s cgroups if any hierarchy still has them (after a stage1
/// was killed, say). Its apps are the leaves found.
pub fn open_pod(h: &Hierarchy, pod: impl Into<PodLoc>) -> Result<Option<PodCgroup>> {
    let loc: PodLoc = pod.into();
    validate_uuid(&loc.uuid)?;
    let mut found = false;
    let mut apps = BTreeSet::new();
    for root in h.roots() {
        let dir = root.join(loc.rel());
        if dir.is_dir() {
            found = true;
            apps.extend(fsx::subdirs(&dir)?.into_iter().filter(|n| validate_app(n).is_ok()));
        }
    }
    Ok(found.then(|| PodCgroup { hierarchy: h.clone(), loc, apps: apps.into_iter().collect() }))
}

/// The uuids of every pod with a cgroup under [`POD_BASE`] in any
/// hierarchy, sorted (pods given a parent of their own are found through
/// the parent recorded in their `stage1.json`).
pub fn list_pods(h: &Hierarchy) -> Result<Vec<String>> {
    let mut uuids = BTreeSet::new();
    for root in h.roots() {
        uuids.extend(fsx::subdirs(&root.join(POD_BASE))?.into_iter().filter(|n| validate_uuid(n).is_ok()));
    }
    Ok(uuids.into_iter().collect())
}

/// Moves `pid` (all its threads) into every directory of `dirs`, as
/// returned by [`PodCgroup::app_dirs`] or [`PodCgroup::init_dirs`].
pub fn add_pid(dirs: &[PathBuf], pid: Pid) -> Result<()> {
    let value = pid.to_string();
    dirs.iter().try_for_each(|dir| fsx::write(&dir.join("cgroup.procs"), &value))
}

/// Splits `dirs` into the v1 cgroups a single-threaded process can join by
/// itself ([`join_self`]) and the rest (cgroup2), which [`add_pid`] joins.
pub fn self_joinable(dirs: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    dirs.into_iter().partition(|d| d.join("tasks").exists())
}

/// Moves the calling thread into each v1 cgroup of `dirs` by writing `0` to
/// its `tasks`: a thread moving itself is the one migration the kernel
/// makes without write-locking cgroup_threadgroup_rwsem, which waits for an
/// RCU grace period (5-20 ms measured here, where writing a pid to
/// `cgroup.procs` paid it on every pod start). For a single-threaded
/// process only: its other threads would stay behind.
pub fn join_self(dirs: &[PathBuf]) -> Result<()> {
    dirs.iter().try_for_each(|dir| fsx::write(&dir.join("tasks"), "0"))
}

impl PodCgroup {
    pub fn uuid(&self) -> &str {
        &self.loc.uuid
    }

    /// Where the pod's cgroups are.
    pub fn loc(&self) -> &PodLoc {
        &self.loc
    }

    /// App names, in the order given to [`create_pod`] (sorted after
    /// [`open_pod`]).
    pub fn apps(&self) -> &[String] {
        &self.apps
    }

    /// `<parent>/<uuid>`, relative to a hierarchy root.
    fn rel(&self) -> PathBuf {
        self.loc.rel()
    }

    fn leaf_dirs(&self, leaf: &str) -> Vec<PathBuf> {
        let rel = self.rel().join(leaf);
        self.hierarchy.roots().into_iter().map(|root| root.join(&rel)).collect()
    }

    fn check_app(&self, app: &str) -> Result<()> {
        if self.apps.iter().any(|a| a == app) {
            Ok(())
        } else {
            Err(CgroupError::UnknownApp { uuid: self.loc.uuid.clone(), app: app.to_owned() })
        }
    }

    /// Every directory a process of `app` must be added to: one in Unified,
    /// one per managed v1 hierarchy (plus the cgroup2 one in Hybrid).
    pub fn app_dirs(&self, app: &str) -> Result<Vec<PathBuf>> {
        self.check_app(app)?;
        Ok(self.leaf_dirs(app))
    }

    /// Every directory the pod's PID 1 must be added to.
    pub fn init_dirs(&self) -> Vec<PathBuf> {
        self.leaf_dirs(INIT_CGROUP)
    }

    /// Lets the pod's root (host `uid`:`gid`, `userns: auto`) move its own
    /// processes into the app leaves: pod-init, as that root, places each
    /// app's process itself (launch.rs). Each app leaf and its
    /// `cgroup.procs` change owner; in a cgroup2 tree also the pod's own
    /// `cgroup.procs`, since a move there needs write access at the common
    /// ancestor of both cgroups (`init.scope` and the app's). v1 also wants
    /// the writer's euid to be the moved task's, which it is, and its
    /// `tasks` too, which the app's process writes. Nothing else
    /// is delegated: the limits stay host root's, and `init.scope` too.
    pub fn delegate_apps(&self, uid: u32, gid: u32) -> Result<()> {
        let rel = self.rel();
        let unified = self.hierarchy.unified().map(Path::to_path_buf);
        let chown = |path: &Path| {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| CgroupError::Io {
                op: "chown",
                path: path.to_owned(),
                source,
            })
        };
        for root in self.hierarchy.roots() {
            let pod = root.join(&rel);
            for app in &self.apps {
                chown(&pod.join(app))?;
                chown(&pod.join(app).join("cgroup.procs"))?;
                // v1: an app's process joins by writing 0 to `tasks`
                // (stage2-init's launch.rs says why).
                if unified.as_deref() != Some(root) {
                    chown(&pod.join(app).join("tasks"))?;
                }
            }
            if unified.as_deref() == Some(root) {
                chown(&pod.join("cgroup.procs"))?;
            }
        }
        Ok(())
    }

    /// How many of `app`'s processes the kernel has OOM-killed.
    pub fn oom_kills(&self, app: &str) -> Result<u64> {
        self.check_app(app)?;
        let rel = self.rel().join(app);
        match &self.hierarchy.layout {
            Layout::V2 { root } => v2::oom_kills(&root.join(rel)),
            Layout::V1 { root, controllers, .. } => match controllers.get("memory") {
                Some(mount) => v1::oom_kills(&mount.join(rel)),
                None => Err(CgroupError::ControllerMissing { controller: "memory", path: root.clone() }),
            },
        }
    }

    /// Every process in any of the pod's cgroups, sorted, each once.
    pub fn procs(&self) -> Result<Vec<Pid>> {
        let rel = self.rel();
        let mut pids = BTreeSet::new();
        for root in self.hierarchy.roots() {
            for dir in fsx::tree(&root.join(&rel))? {
                pids.extend(fsx::procs(&dir)?);
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// SIGKILLs every process of the pod and waits until none is left.
    ///
    /// Where the pod is in a cgroup2 tree (Unified, and Hybrid's mirror),
    /// `cgroup.kill` does it in one write. Then, for older kernels and for
    /// processes only in v1 hierarchies: freeze (v1 freezer, if mounted) so
    /// nothing forks, SIGKILL each process, thaw so they act on it; repeat.
    pub fn kill_all(&self) -> Result<()> {
        let rel = self.rel();
        let start = Instant::now();
        if let Some(dir) = self.hierarchy.unified().map(|u| u.join(&rel)).filter(|d| d.is_dir()) {
            v2::kill(&dir)?;
        }
        let freezer = self.hierarchy.controller_mount("freezer").map(|m| m.join(&rel)).filter(|d| d.is_dir());
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(CgroupError::KillTimeout {
                    uuid: self.loc.uuid.clone(),
                    left: pids.len(),
                    ms: start.elapsed().as_millis(),
                });
            }
            match &freezer {
                Some(dir) => {
                    v1::freeze(dir)?;
                    // Listed again while frozen: nothing can fork or exit
                    // (and free its pid for reuse) in between.
                    let killed = self.procs().and_then(|pids| sigkill(&pids));
                    v1::thaw(dir)?;
                    killed?;
                }
                None => sigkill(&pids)?,
            }
            thread::sleep(fsx::POLL);
        }
    }

    /// Kills what is left of one app (an app removed from a running pod)
    /// and removes its leaf in every hierarchy. Safe to call again.
    pub fn remove_app(&self, app: &str) -> Result<()> {
        validate_app(app)?;
        let dirs: Vec<PathBuf> = self.leaf_dirs(app).into_iter().filter(|d| d.is_dir()).collect();
        let start = Instant::now();
        loop {
            let mut pids = BTreeSet::new();
            for dir in &dirs {
                pids.extend(fsx::procs(dir)?);
            }
            if pids.is_empty() {
                break;
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(CgroupError::KillTimeout {
                    uuid: self.loc.uuid.clone(),
                    left: pids.len(),
                    ms: start.elapsed().as_millis(),
                });
            }
            sigkill(&pids.into_iter().collect::<Vec<_>>())?;
            thread::sleep(fsx::POLL);
        }
        for dir in &dirs {
            fsx::rmdir(dir)?;
        }
        tracing::debug!(uuid = %self.loc.uuid, app, "app cgroups removed");
        Ok(())
    }

    /// Kills what is left, then removes every directory of the pod in every
    /// hierarchy, leaves first. Safe to call again after a failure.
    pub fn destroy(&self) -> Result<()> {
        self.kill_all()?;
        let rel = self.rel();
        let top = |dir: &Path| self.loc.is_scope() && dir.ends_with(&rel);
        for root in self.hierarchy.roots() {
            // A scope's own cgroup is systemd's to remove, when it stops.
            for dir in fsx::tree(&root.join(&rel))?.into_iter().filter(|d| !top(d)) {
                fsx::rmdir(&dir)?;
            }
        }
        tracing::debug!(uuid = %self.loc.uuid, "pod cgroups removed");
        Ok(())
    }

    /// Makes every directory (recording those it made in `created`), enables
    /// controllers down the path (v2) and writes the limits.
    fn build(&self, apps: &[(&str, Limits)], enable: &[&str], created: &mut Vec<PathBuf>) -> Result<()> {
        let rel = self.rel();
        let parent = self.loc.parent();
        for root in self.hierarchy.roots() {
            // The parent (and its ancestors) are made but never recorded,
            // so never undone: shared, or kubelet's.
            let mut dir = root.to_path_buf();
            for part in parent.components() {
                dir.push(part);
                fsx::mkdir(&dir)?;
            }
            let pod = root.join(&rel);
            let leaves = self.apps.iter().map(String::as_str).chain([INIT_CGROUP]).map(|leaf| pod.join(leaf));
            for dir in [pod.clone()].into_iter().chain(leaves) {
                if fsx::mkdir(&dir)? {
                    created.push(dir);
                }
            }
        }
        match &self.hierarchy.layout {
            Layout::V2 { root } => {
                let mut chain = vec![root.clone()];
                for part in parent.components() {
                    let next = chain[chain.len() - 1].join(part);
                    chain.push(next);
                }
                chain.push(root.join(&rel));
                v2::enable(&chain, enable)?;
                for (app, limits) in apps {
                    v2::apply(&root.join(&rel).join(app), app, limits)?;
                }
            }
            Layout::V1 { controllers, .. } => {
                for (app, limits) in apps {
                    v1::apply(controllers, &rel.join(app), app, limits)?;
                }
            }
        }
        Ok(())
    }
}

fn sigkill(pids: &[Pid]) -> Result<()> {
    for &pid in pids {
        match signal::kill(pid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => return Err(CgroupError::Kill { pid, source }),
        }
    }
    Ok(())
}
