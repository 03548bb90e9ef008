//! An app's `devices`: each host device node bound at its path in the app.
//!
//! The node is opened on the host (following links, as runc stats it),
//! checked to be a character or block device, and cloned as a detached
//! bind mount of that very inode (`open_tree`), which is then moved onto
//! the app's path. The same two steps serve an app started with its pod
//! and one added to a running pod (opened on the host, moved in inside the
//! pod's mount namespace). The app's /dev tmpfs stays `nodev`: a bind mount
//! keeps the flags of the mount it came from, so only the nodes given here
//! (and the default ones) open.
//!
//! No device cgroup is made (pods have none: see the README), so the
//! `permissions` are recorded, not enforced: what the app may do with the
//! node is what its file mode allows the app's user.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::rootfs::RootfsError;
use crate::sys;

/// Opens `host` and clones it as a detached bind mount, refusing anything
/// that is not a character or block device.
pub fn open_device(host: &str) -> Result<OwnedFd, RootfsError> {
    let bad = |why: String| RootfsError::KernelFs(format!("device {host}: {why}"));
    let fd = open(host, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| bad(e.to_string()))?;
    let kind = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| bad(e.to_string()))?.file_type();
    if !(kind.is_char_device() || kind.is_block_device()) {
        return Err(bad("not a character or block device".into()));
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    sys::clone_tree(&via, false, 0).map_err(|e| bad(format!("open_tree: {e}")))
}

/// Opens every device of `app` ([`open_device`]), in order.
pub fn open_all(app: &spec::stage1::App) -> Result<Vec<OwnedFd>, RootfsError> {
    app.devices.iter().map(|d| open_device(&d.host)).collect()
}

/// Moves each of `trees` (from [`open_all`]) onto its device's path in the
/// app at `rootfs`. The path resolves inside the app (its links followed
/// as the app sees them); a missing node is made as an empty file to
/// mount over, a directory there is refused.
pub fn bind_all(rootfs: &Path, app: &spec::stage1::App, trees: &[OwnedFd]) -> Result<(), RootfsError> {
    for (d, tree) in app.devices.iter().zip(trees) {
        let target = stage2_init::appfs::resolve_in(rootfs, &d.path)
            .ok_or_else(|| RootfsError::KernelFs(format!("device path {}: too many symbolic links", d.path)))?;
        if !target.starts_with(rootfs) {
            return Err(RootfsError::Escape(d.path.clone()));
        }
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                return Err(RootfsError::KernelFs(format!("device path {}: a directory is there", d.path)))
            }
            Ok(_) => {}
            Err(_) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|source| RootfsError::Io {
                        op: "create directory",
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                fs::File::create(&target).map(drop).map_err(|source| RootfsError::Io {
                    op: "create",
                    path: target.clone(),
                    source,
                })?;
            }
        }
        sys::move_mount_to(tree, &target).map_err(|errno| RootfsError::Mount {
            what: format!("device {}", d.host),
            target: target.clone(),
            errno,
        })?;
    }
    Ok(())
}
