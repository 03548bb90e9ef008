//! Apps added to and removed from a running namespace pod (`pod app add`,
//! `pod app rm`). stage0 writes the app into `pod.json` first (and drops
//! it from there last); `pod-stage1-ns add-app POD_DIR APP` then makes what
//! the monitor makes for an app at the pod's start — its cgroups, its unit
//! and seccomp filters, its mounts in the pod's mount namespace — and
//! `pod-stage1-ns rm-app POD_DIR APP` undoes all of it, idempotently (it
//! is also the undo of a failed add). stage0 tells pod-init over the
//! control channel.
//!
//! The pod's root is its directory, pivoted into in the pod's own mount
//! namespace: the host's paths (image trees, host volumes, /dev, the
//! cgroup hierarchies) are out of sight there. So the mounts that need
//! them are made here on the host, detached (fsmount, open_tree), and
//! carried in by a child that joins the pod's pid namespace (its /proc),
//! network namespace (its /sys) and mount namespace and attaches them
//! where `rootfs::setup_app` puts them at the pod's start.
//!
//! In a pod with a user namespace (`userns: auto` or an explicit mapping)
//! the added app gets what the declared apps got (see userns.rs): its
//! image layers idmapped (over themselves, in a mount namespace of this
//! process's own, before the overlay is made on them), host volumes
//! idmapped, its upper layer, cgroups and what is created in its rootfs
//! the pod's root's; pod-init, in the user namespace, starts it there. The
//! pod's mount namespace is the user namespace's, where the kernel makes
//! no new /proc or /sys unless a whole one is in sight: the child makes
//! them detached before it joins that namespace. Unlike the declared
//! apps' mounts, which the join locked together, the pod's root could
//! unmount these (the masks over /proc included); what lies beneath is the
//! app's own rootfs, and /proc's files stay guarded by their host owners.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use spec::stage1::{App, IdMap, Invocation, ResolvedPod, VolumeSource};
use spec::AcName;

use crate::cgroups::{self, Limits};
use crate::monitor::{self, Stage1Error};
use crate::rootfs::{self, KernelFs, PodIds, RootfsError};
use crate::{sys, units};

/// Where the host's /dev is attached while an added app's /dev is made,
/// inside its app directory.
const HOST_DEV: &str = "hostdev";

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Stage1Error + 'a {
    move |source| Stage1Error::Io { op, path: path.to_owned(), source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> Stage1Error {
    move |errno| Stage1Error::Sys { what, errno }
}

/// The host pid of the pod's PID 1 (of a VM pod: its monitor), from the
/// pod directory's `pid` file.
pub fn pod_pid(pod_dir: &Path) -> Result<i32, Stage1Error> {
    let p = pod_dir.join("pid");
    let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
    text.trim().parse().map_err(|_| Stage1Error::Invalid(format!("{}: not a pid: {text:?}", p.display())))
}

pub fn open_ns(pid: i32, ns: &str) -> Result<File, Stage1Error> {
    let p = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
    File::open(&p).map_err(io_err("open", &p))
}

/// What an app added to a running pod brings into the pod's mount
/// namespace, made on the host before joining it: there the host's paths
/// (image trees, host volumes, /dev) are out of sight, the pod having
/// pivoted into its directory.
#[derive(Debug)]
pub struct Carried {
    /// The app's rootfs: its overlay, detached.
    pub rootfs: OwnedFd,
    /// Host volumes by name, each a detached clone of the checked source.
    pub host_volumes: BTreeMap<String, OwnedFd>,
    /// Where the host's /dev is attached meanwhile (inside the pod root).
    pub dev: PathBuf,
    /// The app's devices, opened on the host (`devices::open_all`).
    pub devices: Vec<OwnedFd>,
    /// With a user namespace: the app's /proc and /sys, detached.
    pub kernel_fs: Option<KernelFsMounts>,
}

/// A new /proc (of the pod's pid namespace) and /sys (of its network
/// namespace), detached.
#[derive(Debug)]
pub struct KernelFsMounts {
    proc: OwnedFd,
    sys: OwnedFd,
}

impl KernelFsMounts {
    /// Made by a process in the pod's pid and network namespaces, while its
    /// mount namespace is still one the host's user namespace owns.
    /// `privileged`: /sys writable, as at the pod's start.
    fn make(privileged: bool) -> Result<Self, String> {
        let hardened = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;
        let sys_attrs = if privileged { hardened } else { hardened | sys::MOUNT_ATTR_RDONLY };
        let proc = sys::kernel_fs_detached(c"proc", hardened).map_err(|e| format!("a new /proc: {e}"))?;
        let sys = sys::kernel_fs_detached(c"sysfs", sys_attrs).map_err(|e| format!("a new /sys: {e}"))?;
        Ok(Self { proc, sys })
    }
}

/// Attaches [`KernelFsMounts`] at the rootfs's /proc and /sys.
pub(crate) fn attach_kernel_fs(rootfs: &Path, made: &KernelFsMounts) -> Result<(), RootfsError> {
    for (dir, tree) in [("proc", &made.proc), ("sys", &made.sys)] {
        let target = rootfs.join(dir);
        rootfs::mkdir_p(&target)?;
        sys::move_mount_to(tree, &target).map_err(|errno| RootfsError::Mount { what: dir.into(), target, errno })?;
    }
    Ok(())
}

/// `add-app`: sets up app `name` of the running pod at `pod_dir`, as
/// written in its `pod.json`. On failure, undoes what it made.
pub fn add(pod_dir: &Path, name: &AcName) -> Result<(), Stage1Error> {
    let (inv, pod) = monitor::load(pod_dir)?;
    let app = pod
        .apps
        .iter()
        .find(|a| &a.name == name)
        .ok_or_else(|| Stage1Error::Invalid(format!("pod.json has no app {name}")))?;
    let pid = pod_pid(pod_dir)?;
    match add_app(pod_dir, &inv, &pod, app, pid, inv.userns) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(undo) = remove(pod_dir, name) {
                eprintln!("pod-stage1-ns: undoing app {name}: {undo}");
            }
            Err(e)
        }
    }
}

fn add_app(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    app: &App,
    pid: i32,
    userns: Option<IdMap>,
) -> Result<(), Stage1Error> {
    let name = app.name.as_str();
    let h = monitor::hierarchy()?;
    let cg = cgroups::create_pod(&h, monitor::pod_loc(pod_dir, inv, pod)?, &[(name, Limits::from(app.resources))])?;
    if let Some(map) = userns {
        // pod-init, the pod's root, moves the app into them.
        cg.delegate_apps(map.uid, map.gid)?;
    }
    let cgroup_dirs = cg.app_dirs(name)?;
    // The pod's PID 1 is in the pod's user namespace.
    let user_ns = userns.map(|_| open_ns(pid, "user")).transpose()?;
    let ids = userns.zip(user_ns.as_ref()).map(|(map, ns)| PodIds { userns: ns.as_fd(), uid: map.uid, gid: map.gid });
    if ids.is_some() {
        // A mount namespace of our own, cut from the host's propagation,
        // where the layers are idmapped over themselves before the overlay
        // is made on them (the overlay keeps them when this one goes).
        unshare(CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mount namespace"))?;
        rootfs::make_private().map_err(|e| Stage1Error::Launch(e.to_string()))?;
    }
    units::write_app(pod_dir, app, units::Enforcer::Host(cgroup_dirs.len()), &mut None)
        .map_err(|(p, e)| io_err("write", &p)(e))?;

    // Everything from the host's side of the mount namespaces, detached.
    let base = pod_dir.join("apps").join(name);
    let host_dev = base.join(HOST_DEV);
    fs::create_dir_all(&host_dev).map_err(io_err("create directory", &host_dev))?;
    let mut carried = Carried {
        rootfs: detached_rootfs(&base, app, ids)?,
        host_volumes: detached_host_volumes(pod, app, ids)?,
        dev: Path::new("/apps").join(name).join(HOST_DEV),
        devices: crate::devices::open_all(app).map_err(|e| Stage1Error::Launch(e.to_string()))?,
        kernel_fs: None,
    };
    let dev = sys::clone_tree(Path::new("/dev"), false, 0).map_err(sys_err("open_tree /dev"))?;
    let cgroup_trees = cgroup_dirs
        .iter()
        .map(|d| sys::clone_tree(d, false, 0).map_err(sys_err("open_tree of an app cgroup")))
        .collect::<Result<Vec<_>, _>>()?;

    let (pid_ns, net_ns, mnt_ns) = (open_ns(pid, "pid")?, open_ns(pid, "net")?, open_ns(pid, "mnt")?);
    // Our next child is born in the pod's pid namespace: the /proc it
    // mounts shows the pod's processes.
    setns(&pid_ns, CloneFlags::CLONE_NEWPID).map_err(sys_err("setns pid"))?;
    in_pod(|| {
        setns(&net_ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns net: {e}"))?;
        if ids.is_some() {
            carried.kernel_fs = Some(KernelFsMounts::make(app.security.privileged)?);
        }
        setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("setns mnt: {e}"))?;
        let root = Path::new("/");
        sys::move_mount_to(&dev, &carried.dev).map_err(|e| format!("attach /dev: {e}"))?;
        let made = rootfs::setup_app(root, pod, app, KernelFs::Mount, ids, &mut BTreeSet::new(), Some(&carried));
        let _ = umount2(&carried.dev, MntFlags::MNT_DETACH);
        made.map_err(|e| e.to_string())?;
        for (i, tree) in cgroup_trees.iter().enumerate() {
            let target = rootfs::cgroup_mount(root, name, i);
            fs::create_dir_all(&target).map_err(|e| format!("create directory {}: {e}", target.display()))?;
            sys::move_mount_to(tree, &target).map_err(|e| format!("attach cgroup on {}: {e}", target.display()))?;
        }
        Ok(())
    })?;
    fs::remove_dir(&host_dev).map_err(io_err("remove", &host_dev))
}

/// The app's rootfs, detached: its overlay (volatile where the kernel has
/// it, as at the pod's start), or, without overlayfs and a user namespace,
/// a private copy of a one-layer tree.
fn detached_rootfs(base: &Path, app: &App, ids: Option<PodIds<'_>>) -> Result<OwnedFd, Stage1Error> {
    if let Some(ids) = ids {
        let top = app.layers.last().ok_or_else(|| Stage1Error::Invalid(format!("app {} has no layers", app.name)))?;
        let attrs = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NODEV;
        for layer in app.layers.iter().collect::<BTreeSet<_>>() {
            crate::userns::idmapped_bind(layer, layer, ids.userns, false, attrs)
                .map_err(|e| Stage1Error::Launch(e.to_string()))?;
        }
        rootfs::own_upper(&base.join("upper"), top, ids).map_err(|e| Stage1Error::Launch(e.to_string()))?;
    }
    let (lower, upper, work) = rootfs::overlay_options(base, app);
    let dirs = [("upperdir", Some(upper.as_str())), ("workdir", Some(work.as_str()))];
    // fsconfig(2) takes string values of at most 256 bytes: three layer
    // paths are longer than that joined. The layers go one by one
    // (`lowerdir+`, top first, Linux 6.8); the joined list only where the
    // kernel lacks `lowerdir+`.
    let layers: Vec<String> = app.layers.iter().rev().map(|l| l.display().to_string()).collect();
    let one_by_one: Vec<_> = layers.iter().map(|l| ("lowerdir+", Some(l.as_str()))).chain(dirs).collect();
    let joined: Vec<_> = std::iter::once(("lowerdir", Some(lower.as_str()))).chain(dirs).collect();
    let mount = |opts: &[(&str, Option<&str>)]| {
        let volatile: Vec<_> = opts.iter().copied().chain([("volatile", None)]).collect();
        sys::overlay_detached(&volatile).or_else(|_| sys::overlay_detached(opts))
    };
    let overlay = mount(&one_by_one).or_else(|_| mount(&joined));
    match overlay {
        Ok(fd) => Ok(fd),
        Err(errno) if app.layers.len() == 1 && ids.is_none() => {
            eprintln!("pod-stage1-ns: overlay rootfs of app {}: {errno}; copying the tree instead", app.name);
            let upper = base.join("upper");
            rootfs::copy_tree(&app.layers[0], &upper).map_err(|e| Stage1Error::Launch(e.to_string()))?;
            sys::clone_tree(&upper, false, sys::MOUNT_ATTR_NODEV).map_err(sys_err("open_tree of the copied rootfs"))
        }
        Err(errno) => Err(Stage1Error::Launch(format!(
            "overlay rootfs of app {}: {errno}: {} needs overlayfs",
            app.name,
            if ids.is_some() { "a pod with a user namespace" } else { "an image of several layers" }
        ))),
    }
}

/// Each host volume the app mounts, opened as at the pod's start (through
/// an fd pinned to the checked path) and cloned, detached, with nodev (and
/// the pod's id mapping, with a user namespace).
fn detached_host_volumes(
    pod: &ResolvedPod,
    app: &App,
    ids: Option<PodIds<'_>>,
) -> Result<BTreeMap<String, OwnedFd>, Stage1Error> {
    let mut trees = BTreeMap::new();
    for m in &app.mounts {
        let Some(vol) = pod.volumes.iter().find(|v| v.name == m.volume) else { continue };
        let VolumeSource::Host { path, .. } = &vol.source else { continue };
        if trees.contains_key(vol.name.as_str()) {
            continue;
        }
        let pinned = rootfs::open_host_source(path, Path::new("/proc/self/fd"))
            .map_err(|e| Stage1Error::Launch(e.to_string()))?;
        let via = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
        let tree = match ids {
            Some(ids) => sys::idmapped_clone(&via, ids.userns, true, sys::MOUNT_ATTR_NODEV),
            None => sys::clone_tree(&via, true, sys::MOUNT_ATTR_NODEV),
        }
        .map_err(sys_err("open_tree of a host volume"))?;
        trees.insert(vol.name.to_string(), tree);
    }
    Ok(trees)
}

/// Runs `f` in a child (single-threaded, so it may join a mount
/// namespace) and returns its error, if any.
pub fn in_pod(f: impl FnOnce() -> Result<(), String>) -> Result<(), Stage1Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    match sys::fork_process().map_err(sys_err("fork"))? {
        ForkResult::Child => {
            drop(r);
            let code = match f() {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&w, e.as_bytes());
                    1
                }
            };
            // A forked child must never return into the parent's code.
            #[allow(clippy::exit)]
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut why = String::new();
            let _ = File::from(r).read_to_string(&mut why);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match status {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                _ if !why.is_empty() => Err(Stage1Error::Launch(why)),
                other => Err(Stage1Error::Launch(format!("the child in the pod's namespaces ended: {other:?}"))),
            }
        }
    }
}

/// `rm-app`: undoes what [`add`] (or the pod's start) made for app
/// `name`: its mounts in the pod's mount namespace, its cgroups (killing
/// what is left in them), its unit and seccomp filters, status, log, stdin
/// FIFO and app directory. Idempotent; the pod's `pod.json` is stage0's.
pub fn remove(pod_dir: &Path, name: &AcName) -> Result<(), Stage1Error> {
    let (inv, pod) = monitor::load(pod_dir)?;
    let app = name.as_str();
    // A pod that has ended took its mount namespace along.
    if let Ok(mnt_ns) = pod_pid(pod_dir).and_then(|pid| open_ns(pid, "mnt")) {
        in_pod(|| {
            setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("setns mnt: {e}"))?;
            let base = Path::new("/apps").join(app);
            // Detaching the rootfs takes every mount below it along.
            for target in [base.join("rootfs"), base.join(HOST_DEV)] {
                unmount(&target)?;
            }
            let cgroups = rootfs::cgroup_mount(Path::new("/"), app, 0);
            let dir = cgroups.parent().unwrap_or(Path::new("/cgroup"));
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    unmount(&entry.path())?;
                    let _ = fs::remove_dir(entry.path());
                }
                let _ = fs::remove_dir(dir);
            }
            Ok(())
        })?;
    }
    let h = monitor::hierarchy()?;
    if let Some(cg) = cgroups::open_pod(&h, monitor::pod_loc(pod_dir, &inv, &pod)?)? {
        cg.remove_app(app)?;
    }
    remove_files(pod_dir, name)
}

/// Removes what an app has in the pod directory: its unit and seccomp
/// filters, status, log and app directory (its mounts undone first).
/// Idempotent. The VM stage1's `rm-app` too.
pub fn remove_files(pod_dir: &Path, name: &AcName) -> Result<(), Stage1Error> {
    let app = name.as_str();
    let units_dir = pod_dir.join("units");
    let unit_files: Vec<PathBuf> = fs::read_dir(&units_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|f| units::is_app_file(app, f)))
        .map(|e| e.path())
        .collect();
    let files = unit_files
        .into_iter()
        .chain([format!("{app}.json"), format!("{app}.oom")].map(|f| pod_dir.join("status").join(f)))
        .chain([pod_dir.join("logs").join(format!("{app}.log")), pod_dir.join("stdin").join(app)]);
    for p in files {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &p)(e)),
            _ => {}
        }
    }
    let dir = pod_dir.join("apps").join(app);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &dir)(e)),
        _ => Ok(()),
    }
}

/// Detaches the mount on `target`, if there is one.
pub fn unmount(target: &Path) -> Result<(), String> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmount {}: {e}", target.display())),
    }
}
