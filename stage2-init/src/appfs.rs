//! Each app's kernel filesystems: /proc and read-only /sys with runc's
//! masked and read-only paths, a minimal /dev, and /tmp. One implementation
//! for both stage1s: stage1-ns calls [`mount_kernel_fs`] with the host's
//! /dev for a namespace pod, and a VM's pod-init with the guest's devtmpfs
//! (the host has mounted the rest there: overlay rootfs, /etc files,
//! volumes, under the share).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use spec::security::{MASKED_PATHS, READONLY_PATHS};

use crate::vm::BootError;

/// The device nodes an app gets, bound from the `dev` directory given
/// (rather than mknod: the same under a user namespace, and exactly these).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The app root filesystems of the pod at `root`: `apps/<app>/rootfs`.
pub(crate) fn app_rootfs_dirs(root: &Path) -> Result<Vec<PathBuf>, BootError> {
    let apps = root.join("apps");
    let entries = std::fs::read_dir(&apps).map_err(|e| BootError::new("read", &apps, e))?;
    let mut dirs = Vec::new();
    for rootfs in entries.flatten().map(|e| e.path().join("rootfs")).filter(|p| p.is_dir()) {
        crate::vm::insert_sorted(&mut dirs, rootfs);
    }
    Ok(dirs)
}

/// Mounts every app's filesystems; `dev` is the guest's devtmpfs.
pub(crate) fn setup_all(root: &Path, dev: &Path) -> Result<(), BootError> {
    for rootfs in app_rootfs_dirs(root)? {
        setup_guest_app(&rootfs, dev)?;
    }
    Ok(())
}

/// One app's filesystems in a VM: its volume mount points (what the host
/// listed in `apps/<app>/mounts`), then /proc, /sys, /dev and /tmp.
pub(crate) fn setup_guest_app(rootfs: &Path, dev: &Path) -> Result<(), BootError> {
    for (target, read_only) in guest_mounts(rootfs)? {
        // The share carries the host's bind as a plain directory: bound
        // onto itself it is a mount point again, as in a namespace pod.
        do_mount(&target, &target, None, MsFlags::MS_BIND, None)?;
        if read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
            do_mount(Path::new("none"), &target, None, flags, None)?;
        }
    }
    mount_kernel_fs(rootfs, dev)
}

/// Undoes [`setup_guest_app`]'s volume binds (lazily), last first.
pub(crate) fn unmount_guest_mounts(rootfs: &Path) {
    for (target, _) in guest_mounts(rootfs).unwrap_or_default().iter().rev() {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The app's volume mount points in its rootfs, parents first, each
/// resolved and checked to stay inside the rootfs (no app runs yet to
/// change them, and a symlink in the image must not lead out).
fn guest_mounts(rootfs: &Path) -> Result<Vec<(PathBuf, bool)>, BootError> {
    let file = rootfs.with_file_name(spec::vm::APP_MOUNTS);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BootError::new("read", &file, e)),
    };
    let mounts = spec::vm::GuestMount::parse(&text).map_err(|e| BootError::new("parse", &file, e))?;
    let root = rootfs.canonicalize().map_err(|e| BootError::new("resolve", rootfs, e))?;
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let path = rootfs.join(m.path.trim_start_matches('/'));
        let target = path.canonicalize().map_err(|e| BootError::new("resolve", &path, e))?;
        if !target.starts_with(&root) {
            return Err(BootError::new("mount", &path, "the volume's mount point leads out of the app's rootfs"));
        }
        out.push((target, m.read_only));
    }
    Ok(out)
}

fn mkdir_p(path: &Path) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|e| BootError::new("create directory", path, e))
}

fn do_mount(
    src: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), BootError> {
    mount(Some(src), target, fstype, flags, data)
        .map_err(|e| BootError::new("mount", target, format!("{} ({}): {e}", src.display(), fstype.unwrap_or("bind"))))
}

fn link(target: &str, path: &Path) -> Result<(), BootError> {
    symlink(target, path).map_err(|e| BootError::new("symlink", path, e))
}

fn touch(path: &Path) -> Result<(), BootError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| BootError::new("create", path, e))
}

/// One app's /proc, /sys (read-only), /dev and /tmp; `dev` holds the
/// device nodes to bind (the host's /dev, or a guest's devtmpfs).
pub fn mount_kernel_fs(rootfs: &Path, dev: &Path) -> Result<(), BootError> {
    mount_kernel_fs_as(rootfs, dev, false)?;
    harden(rootfs, &dev.join("null"), &MASKED_PATHS, &READONLY_PATHS)
}

/// [`mount_kernel_fs`] without the masked and read-only paths (the caller
/// applies its own with [`harden`] once the app's volumes are mounted).
/// `privileged`: /sys writable and every device node of `dev` bound, as
/// runc gives a privileged container.
pub fn mount_kernel_fs_as(rootfs: &Path, dev: &Path, privileged: bool) -> Result<(), BootError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = rootfs.join("proc");
    mkdir_p(&proc_dir)?;
    do_mount(Path::new("proc"), &proc_dir, Some("proc"), hardened, None)?;
    let sys = rootfs.join("sys");
    mkdir_p(&sys)?;
    let sys_flags = if privileged { hardened } else { hardened | MsFlags::MS_RDONLY };
    do_mount(Path::new("sysfs"), &sys, Some("sysfs"), sys_flags, None)?;
    mount_dev_as(rootfs, dev, privileged)
}

/// The /dev (and /tmp) of [`mount_kernel_fs_as`], for a caller that
/// attached /proc and /sys itself (an app added to a running pod with a
/// user namespace: see stage1-ns's addapp.rs).
pub fn mount_dev_as(rootfs: &Path, dev: &Path, privileged: bool) -> Result<(), BootError> {
    setup_dev(&rootfs.join("dev"), dev)?;
    if privileged {
        host_devices(&rootfs.join("dev"), dev)?;
    }
    mkdir_p(&rootfs.join("tmp"))
}

/// A privileged app's extra devices: every character and block device
/// directly in `dev` that its /dev lacks, bound one by one (the /dev
/// tmpfs itself stays nodev).
fn host_devices(app_dev: &Path, dev: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::FileTypeExt;
    let entries = std::fs::read_dir(dev).map_err(|e| BootError::new("read", dev, e))?;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if !(kind.is_char_device() || kind.is_block_device()) {
            continue;
        }
        let target = app_dev.join(entry.file_name());
        // ptmx and console are the app's own (devpts, /dev/null).
        if std::fs::symlink_metadata(&target).is_ok() || matches!(entry.file_name().to_str(), Some("ptmx" | "console"))
        {
            continue;
        }
        touch(&target)?;
        do_mount(&entry.path(), &target, None, MsFlags::MS_BIND, None)?;
    }
    Ok(())
}

/// `rel` (a path inside the app) as a path under `rootfs`, with the
/// image's symlinks followed as the app would see them: an absolute link
/// starts again at `rootfs`, `..` never climbs above it (as runc's
/// securejoin). A mount on what comes out stays inside the app's tree,
/// whatever links the image holds. None after 40 links (a loop).
pub fn resolve_in(rootfs: &Path, rel: &str) -> Option<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> =
        Path::new(rel).components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.to_str() {
            Some("/" | "." | "") => continue,
            Some("..") => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = at.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)).join(&part);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&here).ok()?;
                if target.is_absolute() {
                    at.clear();
                }
                todo.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
            }
            _ => at.push(part),
        }
    }
    Some(at.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)))
}

/// Masked and read-only paths in the app (runc's `maskedPaths` and
/// `readonlyPaths`; [`MASKED_PATHS`] and [`READONLY_PATHS`] by default):
/// `null` over masked files, an empty read-only tmpfs over masked
/// directories, read-only binds; paths the app lacks are skipped.
/// Symlinks in the path resolve inside the app ([`resolve_in`]).
pub fn harden<S: AsRef<str>>(rootfs: &Path, null: &Path, masked: &[S], readonly: &[S]) -> Result<(), BootError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in masked.iter().map(AsRef::as_ref) {
        let Some(target) = resolve_in(rootfs, rel) else { continue };
        match std::fs::metadata(&target) {
            Err(_) => {}
            Ok(m) if m.is_dir() => {
                let flags = hardened | MsFlags::MS_RDONLY;
                do_mount(Path::new("tmpfs"), &target, Some("tmpfs"), flags, None)?;
            }
            Ok(_) => do_mount(null, &target, None, MsFlags::MS_BIND, None)?,
        }
    }
    for rel in readonly.iter().map(AsRef::as_ref) {
        let Some(target) = resolve_in(rootfs, rel) else { continue };
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        do_mount(&target, &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        // noexec only in the kernel's filesystems: a read-only /usr still runs.
        let kernel = rel.starts_with("/proc/") || rel.starts_with("/sys/");
        let extra = if kernel { hardened } else { MsFlags::MS_NOSUID | MsFlags::MS_NODEV };
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra;
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .map_err(|e| BootError::new("mount", &target, format!("read-only remount: {e}")))?;
    }
    Ok(())
}

/// A tmpfs /dev with the nodes of [`DEVICES`], devpts, /dev/shm, the
/// fd links, and /dev/console as /dev/null (the guest console is not the
/// app's).
fn setup_dev(app_dev: &Path, dev: &Path) -> Result<(), BootError> {
    mkdir_p(app_dev)?;
    // nodev: a node an app makes here (CAP_MKNOD) opens nothing; the
    // devices below are bind mounts, which keep their own flags.
    let tmpfs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    do_mount(Path::new("tmpfs"), app_dev, Some("tmpfs"), tmpfs, Some("mode=755,size=65536k"))?;
    for name in DEVICES {
        let target = app_dev.join(name);
        touch(&target)?;
        do_mount(&dev.join(name), &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = app_dev.join("pts");
    mkdir_p(&pts)?;
    let pts_opts = Some("newinstance,ptmxmode=0666,mode=0620");
    do_mount(Path::new("devpts"), &pts, Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, pts_opts)?;
    link("pts/ptmx", &app_dev.join("ptmx"))?;
    let console = app_dev.join("console");
    touch(&console)?;
    do_mount(&dev.join("null"), &console, None, MsFlags::MS_BIND, None)?;
    let shm = app_dev.join("shm");
    mkdir_p(&shm)?;
    let shm_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(Path::new("shm"), &shm, Some("tmpfs"), shm_flags, Some("mode=1777,size=65536k"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        link(target, &app_dev.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_app() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/busybox"), "").expect("write");
        symlink("busybox", root.join("usr/bin/ls")).expect("link");
        symlink("/usr/bin", root.join("bin")).expect("link");
        symlink("/etc/shadow", root.join("evil")).expect("link");
        symlink("../../../../../etc", root.join("usr/up")).expect("link");
        symlink("loop", root.join("loop")).expect("link");
        assert_eq!(resolve_in(root, "/bin/ls"), Some(root.join("usr/bin/busybox")));
        assert_eq!(resolve_in(root, "/evil"), Some(root.join("etc/shadow")), "absolute links stay inside");
        assert_eq!(resolve_in(root, "/usr/up/passwd"), Some(root.join("etc/passwd")), ".. stops at the root");
        assert_eq!(resolve_in(root, "/tmp/../proc/kcore"), Some(root.join("proc/kcore")));
        assert_eq!(resolve_in(root, "/loop"), None);
    }

    #[test]
    fn app_rootfs_dirs_lists_apps_with_a_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(app_rootfs_dirs(dir.path()).is_err(), "no apps/");
        for app in ["web", "db", "half"] {
            std::fs::create_dir_all(dir.path().join("apps").join(app)).expect("mkdir");
        }
        for app in ["web", "db"] {
            std::fs::create_dir(dir.path().join("apps").join(app).join("rootfs")).expect("mkdir");
        }
        let apps = dir.path().join("apps");
        assert_eq!(app_rootfs_dirs(dir.path()).expect("list"), [apps.join("db/rootfs"), apps.join("web/rootfs")]);
    }
}
