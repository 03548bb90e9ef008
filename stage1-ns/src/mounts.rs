//! A volume mount's `propagation` and `recursiveReadOnly`, applied on its
//! target once it is mounted in the pod's mount namespace.
//!
//! The pod's mount namespace is private (`rootfs::make_private`), so a
//! volume bound at the pod's start has no way to the host's mounts: such
//! apps get private mounts only, and ask for more in vain (refused). An app
//! added to a running pod gets its host volumes as clones made on the host
//! (`open_tree`), which stay peers of the host's mount when that mount is
//! shared: `rshared` keeps that, `rslave` makes it a slave (the host's new
//! mounts come in, none go out), `private` cuts it. pod-init makes each
//! app's own mount namespace a slave of the pod's (stage2-init's
//! launch.rs), so what reaches the pod's copy reaches the app, and puts an
//! `rshared` volume back on top as a peer (the unit's `SharedMounts=`), so
//! the app's own mounts there reach the host too (it needs CAP_SYS_ADMIN
//! to make any).

use std::path::Path;

use nix::mount::{mount, MsFlags};
use spec::stage1::{Mount, Propagation};

use crate::rootfs::RootfsError;

/// Applies `m`'s propagation and recursive read-only to the volume mounted
/// at `target`. `carried`: the volume is a clone from the host (an app
/// added to a running pod), the only case where propagation has a source.
pub fn apply(target: &Path, m: &Mount, carried: bool) -> Result<(), RootfsError> {
    let fail = |what: &str, errno| RootfsError::Mount {
        what: format!("volume {} ({what})", m.volume),
        target: target.to_owned(),
        errno,
    };
    let flags = match (m.propagation, carried) {
        (Propagation::Private, _) => Some(MsFlags::MS_PRIVATE),
        (Propagation::Rslave, true) => Some(MsFlags::MS_SLAVE),
        (Propagation::Rshared, true) => None,
        (p, false) => {
            return Err(RootfsError::KernelFs(format!(
                "volume {} on {}: propagation {} needs a host volume of an app added to a running pod \
                 (pod app add, CRI containers); an app started with the pod, or an empty volume, is private",
                m.volume,
                m.path,
                serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            )))
        }
    };
    if let Some(flags) = flags {
        mount(None::<&str>, target, None::<&str>, MsFlags::MS_REC | flags, None::<&str>)
            .map_err(|e| fail("propagation", e))?;
    }
    if m.recursive_read_only {
        crate::sys::setattr_recursive(target, crate::sys::MOUNT_ATTR_RDONLY)
            .map_err(|e| fail("recursively read-only", e))?;
    }
    Ok(())
}

/// Whether this kernel has `mount_setattr` (Linux 5.12), which recursive
/// read-only mounts need: asked with an fd that cannot be a mount, which a
/// kernel with the call refuses with EBADF, one without with ENOSYS.
pub fn recursive_read_only_supported() -> bool {
    crate::sys::mount_setattr_exists()
}
