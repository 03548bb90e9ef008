//! The pod's filesystems, set up by its PID 1-to-be inside the pod's new
//! mount namespace: an overlay rootfs per app (the rendered tree as the
//! read-only lower, a per-pod upper), /proc with runc's masked and read-only
//! paths, read-only /sys, a minimal /dev, the generated /etc files and the
//! volumes, then the rootfs itself read-only where the app asks
//! (`readOnlyRootFS`); then pivot_root into the pod
//! directory so stage2-init sees `/units`, `/apps/<app>/rootfs`, `/status`
//! and `/logs`. Every mount lives in the pod's mount namespace and vanishes
//! with it, so a killed pod leaks no mount on the host. With a user
//! namespace (`userns: auto`, [`PodIds`]) the lower layer and host volumes
//! are idmapped and what is created is the pod's root's: see userns.rs.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use spec::stage1::{ResolvedPod, VolumeSource};

pub use crate::addapp::Carried;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {what} on {target}: {errno}")]
    Mount { what: String, target: PathBuf, errno: nix::errno::Errno },
    #[error("path {0:?} escapes the app's rootfs")]
    Escape(String),
    #[error(
        "host volume source {expected} changed since the pod was prepared: it is now {found}; refusing to mount it"
    )]
    HostSourceMoved { expected: PathBuf, found: String },
    #[error("{0}")]
    KernelFs(String),
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
}

/// The pod's user namespace, for [`setup_apps`] (`userns: auto`): its fd
/// and the host ids of its root.
#[derive(Debug, Clone, Copy)]
pub struct PodIds<'a> {
    pub userns: BorrowedFd<'a>,
    pub uid: u32,
    pub gid: u32,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io { op, path: path.to_owned(), source }
}

fn do_mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), RootfsError> {
    mount(src, target, fstype, flags, data).map_err(|errno| RootfsError::Mount {
        what: what.to_owned(),
        target: target.to_owned(),
        errno,
    })
}

/// `rel` (absolute inside the app) joined onto `root`, refusing `..`.
/// Symlinks inside the rootfs are not followed by the join; the mount
/// syscalls below resolve the target path, so a rootfs symlink could point a
/// mount elsewhere *within the pod's own mount namespace* only — the host's
/// mounts are unaffected since the namespace is private.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, RootfsError> {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => return Err(RootfsError::Escape(rel.to_owned())),
        }
    }
    Ok(out)
}

pub(crate) fn mkdir_p(p: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(p).map_err(io_err("create directory", p))
}

fn touch(p: &Path) -> Result<(), RootfsError> {
    if let Some(parent) = p.parent() {
        mkdir_p(parent)?;
    }
    if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        // An image's /etc/resolv.conf is often a symlink into /run: replace
        // it in the upper layer with a plain file to bind-mount over.
        fs::remove_file(p).map_err(io_err("remove", p))?;
    }
    fs::OpenOptions::new().create(true).append(true).open(p).map(drop).map_err(io_err("create", p))
}

/// Writes the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf into
/// `<pod>/etc`, bound into every app.
pub fn write_etc(pod_dir: &Path, hostname: &str, ips: &[String], resolv: &str) -> Result<(), RootfsError> {
    let etc = pod_dir.join("etc");
    mkdir_p(&etc)?;
    let mut hosts = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for ip in ips {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for (name, text) in [("hosts", hosts), ("hostname", format!("{hostname}\n")), ("resolv.conf", resolv.to_owned())] {
        let p = etc.join(name);
        fs::write(&p, text).map_err(io_err("write", &p))?;
    }
    Ok(())
}

/// Copies a rendered tree, preserving owners, modes, links and times.
pub(crate) fn copy_tree(tree: &Path, dest: &Path) -> Result<(), RootfsError> {
    let mut src = tree.as_os_str().to_owned();
    src.push("/.");
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&src)
        .arg(dest)
        .output()
        .map_err(io_err("run cp for", tree))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RootfsError::Io {
            op: "copy tree",
            path: tree.to_owned(),
            source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        })
    }
}

/// A fresh empty volume takes the owner and mode of the directory it is
/// mounted over in the image (as Docker does for new volumes), so an app
/// running as its own user can write to its data directory.
/// `root`: the host ids of the pod's root, owner of a fresh volume.
fn adopt_owner(volume: &Path, target: &Path, root: (u32, u32)) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let vol = fs::symlink_metadata(volume).map_err(io_err("inspect", volume))?;
    let fresh = fs::read_dir(volume).map(|mut d| d.next().is_none()).unwrap_or(false);
    // As stage0 made it; a second app mounting it finds it adopted.
    let untouched = (vol.uid(), vol.gid()) == (0, 0);
    if fresh && untouched && root != (0, 0) {
        std::os::unix::fs::lchown(volume, Some(root.0), Some(root.1)).map_err(io_err("chown", volume))?;
    }
    let Ok(image_dir) = fs::symlink_metadata(target) else { return Ok(()) };
    if !image_dir.is_dir() || !fresh || !untouched {
        return Ok(());
    }
    std::os::unix::fs::lchown(volume, Some(image_dir.uid()), Some(image_dir.gid())).map_err(io_err("chown", volume))?;
    fs::set_permissions(volume, fs::Permissions::from_mode(image_dir.mode() & 0o7777)).map_err(io_err("chmod", volume))
}

/// Makes every mount in this (new) namespace private, so nothing below
/// propagates back to the host.
pub fn make_private() -> Result<(), RootfsError> {
    do_mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None, "private propagation")
}

/// Binds `src` at `target`, then remounts it `nodev` (and read-only if
/// asked), keeping the flags it had: no bind into a pod (rootfs copy,
/// volumes, /etc files) serves a device node an app could open. Apps with
/// CAP_MKNOD could otherwise make one for the host's disk and read it (pods
/// have no device cgroup); the nodes they get are bound one by one by
/// stage2-init's appfs, each its own mount.
fn bind(src: &Path, target: &Path, read_only: bool, what: &str) -> Result<(), RootfsError> {
    do_mount(Some(src), target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None, what)?;
    remount_bind(target, read_only, what)
}

/// The per-mount flags of the mount at `path`, from statvfs: a bind
/// remount sets exactly the flags it names, so one that must not loosen a
/// mount (a host volume from a `noexec` filesystem) names these too.
fn mount_flags(path: &Path) -> Result<MsFlags, RootfsError> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let have = statvfs(path).map_err(|e| io_err("statvfs", path)(e.into()))?.flags();
    let pairs = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    Ok(pairs.into_iter().filter(|(st, _)| have.contains(*st)).fold(MsFlags::empty(), |acc, (_, ms)| acc | ms))
}

/// Whether [`setup_apps`] mounts each app's /proc, /sys and /dev: not for
/// a VM pod, whose guest kernel mounts its own over the shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFs {
    Mount,
    Skip,
}

/// Mounts an app's overlay rootfs, `volatile` where the kernel has it
/// (Linux 5.10): without it, unmounting the overlay when the pod's mount
/// namespace dies runs syncfs on the whole upper filesystem — the host's
/// filesystem holding the pod directory, with whatever else is dirty on it
/// (measured: 2-5 ms per pod exit, 100+ ms while the host is writing). An
/// upper layer is made for one run of one pod and never mounted again (a
/// `volatile` upper refuses a second mount); what an app needs to keep
/// belongs in a volume, and volumes are bind mounts that keep fsync.
fn mount_overlay(rootfs: &Path, opts: &str) -> Result<(), RootfsError> {
    let volatile = format!("{opts},volatile");
    let mount = |data: &str| {
        // nodev: see `bind`.
        do_mount(Some(Path::new("overlay")), rootfs, Some("overlay"), MsFlags::MS_NODEV, Some(data), "overlay rootfs")
    };
    match mount(&volatile) {
        Err(RootfsError::Mount { errno: nix::errno::Errno::EINVAL, .. }) => mount(opts),
        other => other,
    }
}

/// The upper layer's root is the rootfs's `/`: the pod's root's, with the
/// tree root's mode.
pub(crate) fn own_upper(upper: &Path, tree: &Path, ids: PodIds<'_>) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(tree).map_err(io_err("inspect", tree))?.permissions().mode() & 0o7777;
    std::os::unix::fs::chown(upper, Some(ids.uid), Some(ids.gid)).map_err(io_err("chown", upper))?;
    fs::set_permissions(upper, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", upper))
}

/// Mounts every app's root filesystem under `<pod>/apps/<app>/rootfs`.
/// Runs in the pod's mount namespace, after the pid namespace exists (so
/// /proc shows the pod's processes).
pub fn setup_apps(
    pod_dir: &Path,
    pod: &ResolvedPod,
    kernel_fs: KernelFs,
    ids: Option<PodIds<'_>>,
) -> Result<(), RootfsError> {
    let mut idmapped = BTreeSet::new();
    for app in &pod.apps {
        setup_app(pod_dir, pod, app, kernel_fs, ids, &mut idmapped, None)?;
    }
    Ok(())
}

/// Mounts one app's root filesystem under `<pod>/apps/<app>/rootfs`, its
/// kernel filesystems, /etc files and volumes. `idmapped`: the layers
/// already idmapped in this namespace (`userns: auto`). `carried`: for an
/// app added to a running pod, where `pod_dir` is the pod root (`/`).
pub fn setup_app(
    pod_dir: &Path,
    pod: &ResolvedPod,
    app: &spec::stage1::App,
    kernel_fs: KernelFs,
    ids: Option<PodIds<'_>>,
    idmapped: &mut BTreeSet<PathBuf>,
    carried: Option<&Carried>,
) -> Result<(), RootfsError> {
    let base = pod_dir.join("apps").join(app.name.as_str());
    let rootfs = base.join("rootfs");
    match carried {
        Some(c) => crate::sys::move_mount_to(&c.rootfs, &rootfs).map_err(|errno| RootfsError::Mount {
            what: "overlay rootfs".into(),
            target: rootfs.clone(),
            errno,
        })?,
        None => mount_rootfs(&base, app, ids, idmapped)?,
    }

    // From here on, what is created inside the rootfs (mount points,
    // /tmp, the tmpfs of /dev) is the pod's root's.
    let _as_pod_root = ids.map(|i| crate::userns::AsPodRoot::new(i.uid, i.gid)).transpose()?;
    let root = ids.map_or((0, 0), |i| (i.uid, i.gid));
    let dev = carried.map_or(Path::new("/dev"), |c| c.dev.as_path());
    if kernel_fs == KernelFs::Mount {
        let privileged = app.security.privileged;
        let mounted = match carried.and_then(|c| c.kernel_fs.as_ref()) {
            Some(made) => {
                crate::addapp::attach_kernel_fs(&rootfs, made)?;
                stage2_init::appfs::mount_dev_as(&rootfs, dev, privileged)
            }
            None => stage2_init::appfs::mount_kernel_fs_as(&rootfs, dev, privileged),
        };
        mounted.map_err(|e| RootfsError::KernelFs(e.to_string()))?;
    }
    match carried {
        Some(c) => crate::devices::bind_all(&rootfs, app, &c.devices)?,
        None => crate::devices::bind_all(&rootfs, app, &crate::devices::open_all(app)?)?,
    }
    let tmp = rootfs.join("tmp");
    mkdir_p(&tmp)?;

    for name in ["hosts", "hostname", "resolv.conf"] {
        let target = rootfs.join("etc").join(name);
        touch(&target)?;
        bind(&pod_dir.join("etc").join(name), &target, true, name)?;
    }
    for m in &app.mounts {
        let Some(vol) = pod.volumes.iter().find(|v| v.name == m.volume) else { continue };
        let target = inside(&rootfs, &m.path)?;
        if let (VolumeSource::Host { read_only, .. }, Some(c)) = (&vol.source, carried) {
            let tree = c
                .host_volumes
                .get(vol.name.as_str())
                .ok_or_else(|| RootfsError::KernelFs(format!("volume {}: its host source was not opened", vol.name)))?;
            mount_point(&target, is_file(tree))?;
            let what = format!("volume {}", vol.name);
            crate::sys::move_mount_to(tree, &target).map_err(|errno| RootfsError::Mount {
                what: what.clone(),
                target: target.clone(),
                errno,
            })?;
            remount_bind(&target, m.read_only || *read_only, &what)?;
            crate::mounts::apply(&target, m, true)?;
            continue;
        }
        // A host source is mounted through an fd pinned to the directory
        // stage0 checked; the fd lives until the bind below is done.
        let (src, vol_ro, _pinned) = match &vol.source {
            VolumeSource::Empty => (pod_dir.join("volumes").join(vol.name.as_str()), false, None),
            VolumeSource::Host { path, read_only } => {
                let fd = open_host_source(path, Path::new("/proc/self/fd"))?;
                (PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())), *read_only, Some(fd))
            }
        };
        if matches!(vol.source, VolumeSource::Empty) {
            adopt_owner(&src, &target, root)?;
        }
        mount_point(&target, _pinned.as_ref().is_some_and(is_file))?;
        let read_only = m.read_only || vol_ro;
        match (&vol.source, ids) {
            // Host root's files are the pod's root's, and the other
            // way round: see SECURITY.md. nodev as every bind (`bind`);
            // the source's own flags (noexec, nosuid) come with the clone.
            (VolumeSource::Host { .. }, Some(ids)) => {
                let ro = if read_only { crate::sys::MOUNT_ATTR_RDONLY } else { 0 };
                let attrs = ro | crate::sys::MOUNT_ATTR_NODEV;
                crate::userns::idmapped_bind(&src, &target, ids.userns, true, attrs)?;
            }
            _ => bind(&src, &target, read_only, &format!("volume {}", vol.name))?,
        }
        crate::mounts::apply(&target, m, false)?;
    }
    if kernel_fs == KernelFs::Mount {
        // Last, so that a masked or read-only path inside a volume is too.
        let (masked, readonly) = (app.security.masked(), app.security.readonly());
        stage2_init::appfs::harden(&rootfs, &dev.join("null"), &masked, &readonly)
            .map_err(|e| RootfsError::KernelFs(e.to_string()))?;
    }
    if app.read_only_root_fs {
        read_only_root(&rootfs)?;
    }
    Ok(())
}

/// Whether a host source (a pinned fd, or a detached tree of one) is a
/// regular file: a CRI file mount, bound on a file.
fn is_file(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG)
}

/// The mount point of a volume: a directory, or a file for a file.
fn mount_point(target: &Path, file: bool) -> Result<(), RootfsError> {
    if file {
        touch(target)
    } else {
        mkdir_p(target)
    }
}

/// The overlay options of an app's rootfs (host paths), top layer first.
pub fn overlay_options(base: &Path, app: &spec::stage1::App) -> (String, String, String) {
    // overlayfs lists lower layers top first.
    let lower: Vec<String> = app.layers.iter().rev().map(|l| l.display().to_string()).collect();
    (lower.join(":"), base.join("upper").display().to_string(), base.join("work").display().to_string())
}

/// Mounts the app's overlay rootfs (or, without overlayfs, a private copy
/// of its one-layer tree) at `<base>/rootfs`.
fn mount_rootfs(
    base: &Path,
    app: &spec::stage1::App,
    ids: Option<PodIds<'_>>,
    idmapped: &mut BTreeSet<PathBuf>,
) -> Result<(), RootfsError> {
    let rootfs = base.join("rootfs");
    let top = app.layers.last().ok_or_else(|| RootfsError::KernelFs(format!("app {} has no layers", app.name)))?;
    if let Some(ids) = ids {
        // Over itself, in this mount namespace only: the overlay's
        // lower layers are then the trees seen through the pod's mapping.
        for layer in &app.layers {
            if idmapped.insert(layer.clone()) {
                let attrs = crate::sys::MOUNT_ATTR_RDONLY | crate::sys::MOUNT_ATTR_NODEV;
                crate::userns::idmapped_bind(layer, layer, ids.userns, false, attrs)?;
            }
        }
        own_upper(&base.join("upper"), top, ids)?;
    }
    let (lower, upper, work) = overlay_options(base, app);
    let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    let overlay = mount_overlay(&rootfs, &opts);
    if let (Err(overlay), Some(_)) = (&overlay, ids) {
        // A copy would need a chown of every file: not done (see SECURITY.md).
        return Err(RootfsError::KernelFs(format!("{overlay}: userns: auto needs overlayfs")));
    }
    if let Err(overlay) = overlay {
        if app.layers.len() > 1 {
            // Layers carry overlayfs whiteouts: only overlayfs reads them.
            return Err(RootfsError::KernelFs(format!("{overlay}: an image of several layers needs overlayfs")));
        }
        // No overlayfs here (or not on this filesystem): fall back to a
        // private copy of the tree, the slow path rkt also had.
        eprintln!("pod-stage1-ns: {overlay}; copying the tree instead");
        copy_tree(top, &base.join("upper"))?;
        bind(&base.join("upper"), &rootfs, false, "copied rootfs")?;
    }
    Ok(())
}

/// Remounts a bind `nodev` (and read-only if asked), keeping its flags.
fn remount_bind(target: &Path, read_only: bool, what: &str) -> Result<(), RootfsError> {
    let mut flags = mount_flags(target)? | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    do_mount(None, target, None, flags, None, what)
}

/// Opens a host volume's source, as stage0 resolved and checked it (an
/// absolute path without symlinks), as an `O_PATH` fd, and makes sure the
/// fd is that path: `O_NOFOLLOW` refuses a symlink as the last component,
/// and the fd's own path (`proc_fd/N`) must equal `path`, which it does not
/// if a directory on the way was swapped for a symlink since the check.
/// Mounting `/proc/self/fd/N` then binds exactly that directory, whatever
/// is renamed afterwards (runc mounts through such fds too). Only root can
/// move a directory into an allowed place, so what the fd pins passed the
/// check. `proc_fd` is a parameter for tests.
pub fn open_host_source(path: &Path, proc_fd: &Path) -> Result<OwnedFd, RootfsError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW).bits())
        .open(path)
        .map_err(|e| RootfsError::HostSourceMoved { expected: path.to_owned(), found: e.to_string() })?;
    // O_PATH with O_NOFOLLOW opens a symlink itself: only a directory or
    // (a CRI file mount) a regular file is a source.
    let kind = file.metadata().map_err(io_err("inspect", path))?.file_type();
    if !(kind.is_dir() || kind.is_file()) {
        let found = format!("{kind:?}, not a directory or a regular file");
        return Err(RootfsError::HostSourceMoved { expected: path.to_owned(), found });
    }
    let fd = OwnedFd::from(file);
    let link = proc_fd.join(fd.as_raw_fd().to_string());
    let now = fs::read_link(&link).map_err(io_err("read link", &link))?;
    if now != path {
        return Err(RootfsError::HostSourceMoved { expected: path.to_owned(), found: now.display().to_string() });
    }
    Ok(fd)
}

/// `readOnlyRootFS`: the rootfs mount itself becomes read-only, as with
/// Docker's `--read-only`. Only that mount: the volumes, /proc, /dev (and
/// /dev/shm) and the /etc files stay as they were mounted; /tmp is part of
/// the rootfs and so read-only too. The mount points a VM guest mounts on
/// are made first, while the rootfs can still take them.
fn read_only_root(rootfs: &Path) -> Result<(), RootfsError> {
    for dir in ["proc", "sys", "dev", "tmp"] {
        mkdir_p(&rootfs.join(dir))?;
    }
    // Keeping nodev and the rest: a remount sets exactly what it names.
    let flags = mount_flags(rootfs)? | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    do_mount(None, rootfs, None, flags, None, "read-only rootfs")
}

/// Binds host volumes at `<pod>/volumes/<name>`, where empty volumes
/// are, so pod-init can write an app's log into them (`log.volume`): the
/// ones an app logs into, and every one of a sandbox, whose apps come
/// later. With a user namespace, idmapped as the apps' binds of them, so
/// pod-init (the pod's root) writes there as host root.
pub fn bind_host_volumes(pod_dir: &Path, pod: &ResolvedPod, ids: Option<PodIds<'_>>) -> Result<(), RootfsError> {
    for vol in &pod.volumes {
        let VolumeSource::Host { path, read_only } = &vol.source else { continue };
        if !pod.sandbox && !pod.apps.iter().any(|a| a.log.as_ref().is_some_and(|l| l.volume == vol.name)) {
            continue;
        }
        let pinned = open_host_source(path, Path::new("/proc/self/fd"))?;
        let target = pod_dir.join("volumes").join(vol.name.as_str());
        mkdir_p(&target)?;
        let src = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
        match ids {
            Some(ids) => {
                let ro = if *read_only { crate::sys::MOUNT_ATTR_RDONLY } else { 0 };
                crate::userns::idmapped_bind(&src, &target, ids.userns, true, ro | crate::sys::MOUNT_ATTR_NODEV)?;
            }
            None => bind(&src, &target, *read_only, &format!("volume {} for pod-init", vol.name))?,
        }
    }
    Ok(())
}

/// Binds each app's cgroup directories at `<pod>/cgroup/<app>/<n>`, where
/// stage2-init's child for that app joins them (the units' `Cgroup=`).
pub fn bind_cgroups(
    pod_dir: &Path,
    apps: &std::collections::BTreeMap<String, Vec<PathBuf>>,
) -> Result<(), RootfsError> {
    // The mount points live on a small tmpfs of the pod's own: a directory
    // on the host filesystem per hierarchy and app costs a journalled mkdir
    // each (~0.2-0.4 ms here) and would outlive the pod as clutter.
    let base = pod_dir.join("cgroup");
    mkdir_p(&base)?;
    do_mount(
        Some(Path::new("tmpfs")),
        &base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
        "tmpfs for cgroup mount points",
    )?;
    for (app, dirs) in apps {
        for (i, dir) in dirs.iter().enumerate() {
            let target = cgroup_mount(pod_dir, app, i);
            mkdir_p(&target)?;
            bind(dir, &target, false, "app cgroup")?;
        }
    }
    Ok(())
}

/// Where app `app`'s `n`th cgroup directory is bound, as seen from the pod root.
pub fn cgroup_path_in_pod(app: &str, n: usize) -> String {
    format!("/cgroup/{app}/{n}")
}

pub fn cgroup_mount(pod_dir: &Path, app: &str, n: usize) -> PathBuf {
    pod_dir.join("cgroup").join(app).join(n.to_string())
}

/// Binds the host's stage2 binary into the pod root; returns its path there.
pub fn bind_stage2(pod_dir: &Path, stage2: &Path) -> Result<String, RootfsError> {
    let target = pod_dir.join("stage2").join("pod-init");
    touch(&target)?;
    bind(stage2, &target, true, "stage2")?;
    Ok("/stage2/pod-init".to_owned())
}

/// Makes `pod_dir` the root: bind it onto itself (pivot_root needs a mount
/// point), pivot, and detach the host's root. `pivot_root(".", ".")` stacks
/// the old root on the new one, so no `.oldroot` directory is made and
/// removed on the host filesystem for it.
pub fn pivot_into(pod_dir: &Path) -> Result<(), RootfsError> {
    bind(pod_dir, pod_dir, false, "pod root")?;
    nix::unistd::chdir(pod_dir).map_err(|e| io_err("chdir", pod_dir)(e.into()))?;
    nix::unistd::pivot_root(".", ".").map_err(|errno| RootfsError::Mount {
        what: "pivot_root".into(),
        target: pod_dir.to_owned(),
        errno,
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|errno| RootfsError::Mount {
        what: "detach old root".into(),
        target: pod_dir.to_owned(),
        errno,
    })?;
    nix::unistd::chdir("/").map_err(|e| io_err("chdir", Path::new("/"))(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sources_are_opened_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let proc_fd = Path::new("/proc/self/fd");
        let real = root.join("srv/data");
        fs::create_dir_all(&real).unwrap_or_else(|e| panic!("{e}"));
        assert!(open_host_source(&real, proc_fd).is_ok());

        // The last component swapped for a symlink.
        let swapped = root.join("srv/swapped");
        std::os::unix::fs::symlink("/etc", &swapped).unwrap_or_else(|e| panic!("{e}"));
        let err = open_host_source(&swapped, proc_fd).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("changed since the pod was prepared"), "{err}");

        // A directory on the way swapped for a symlink.
        fs::rename(root.join("srv"), root.join("moved")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.join("moved"), root.join("srv")).unwrap_or_else(|e| panic!("{e}"));
        let err = open_host_source(&real, proc_fd).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("moved/data"), "{err}");
    }

    #[test]
    fn inside_refuses_escapes() {
        let r = Path::new("/pod/apps/web/rootfs");
        assert_eq!(inside(r, "/data/x").ok(), Some(PathBuf::from("/pod/apps/web/rootfs/data/x")));
        assert!(inside(r, "/data/../../etc").is_err());
    }
}
