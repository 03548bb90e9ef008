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
        mount_kernel_fs(&rootfs, dev)?;
    }
    Ok(())
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
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = rootfs.join("proc");
    mkdir_p(&proc_dir)?;
    do_mount(Path::new("proc"), &proc_dir, Some("proc"), hardened, None)?;
    let sys = rootfs.join("sys");
    mkdir_p(&sys)?;
    do_mount(Path::new("sysfs"), &sys, Some("sysfs"), hardened | MsFlags::MS_RDONLY, None)?;
    harden_kernel_fs(rootfs, &dev.join("null"))?;
    setup_dev(&rootfs.join("dev"), dev)?;
    mkdir_p(&rootfs.join("tmp"))
}

/// runc's masked and read-only paths in the app's /proc and /sys: `null`
/// over masked files, an empty read-only tmpfs over masked directories,
/// read-only binds; paths this kernel lacks are skipped.
fn harden_kernel_fs(rootfs: &Path, null: &Path) -> Result<(), BootError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in MASKED_PATHS {
        let target = rootfs.join(rel.trim_start_matches('/'));
        match std::fs::metadata(&target) {
            Err(_) => {}
            Ok(m) if m.is_dir() => {
                let flags = hardened | MsFlags::MS_RDONLY;
                do_mount(Path::new("tmpfs"), &target, Some("tmpfs"), flags, None)?;
            }
            Ok(_) => do_mount(null, &target, None, MsFlags::MS_BIND, None)?,
        }
    }
    for rel in READONLY_PATHS {
        let target = rootfs.join(rel.trim_start_matches('/'));
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        do_mount(&target, &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened;
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
