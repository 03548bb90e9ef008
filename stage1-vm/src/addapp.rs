//! Apps added to and removed from a running VM pod (`pod app add`, `pod
//! app rm`, the CRI's containers), the VM stage1's half: `pod-stage1-vm
//! add-app POD_DIR APP` and `rm-app POD_DIR APP`, run by stage0 around its
//! `add` and `remove` requests to the guest's pod-init.
//!
//! The guest sees the pod directory through the monitor's 9p share, and the
//! apps' root filesystems are overlays the monitor mounted there, in its
//! own mount namespace (which qemu shares), from the store's layer trees:
//! host paths, so every layer in the store is within reach, later ones too.
//! Adding an app is then what the boot did for each app, in that namespace:
//! its overlay rootfs, /etc files and volumes under `apps/<app>/rootfs`
//! (joined through the monitor's pid in `pid`) and its unit; the guest's
//! pod-init gives it /proc, /sys and /dev when told to `add` it. Unlike a
//! namespace pod there are no per-app cgroups on the host (the VM is the
//! pod's boundary; pod-init makes the app's cgroup in the guest, as at
//! boot) and no pivoted root to carry
//! mounts into. Removing detaches the rootfs (its volumes and /etc files
//! go along) and removes the app's files, idempotently; it is also the
//! undo of a failed add.

use std::collections::BTreeSet;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use spec::stage1::Isolation;
use spec::AcName;
use stage1_ns::addapp as ns;
use stage1_ns::rootfs::{self, KernelFs};

use crate::VmError;

fn stage1_err(e: stage1_ns::monitor::Stage1Error) -> VmError {
    VmError::Launch(e.to_string())
}

/// `add-app`: sets up app `name` of the running VM pod at `pod_dir`, as
/// written in its `pod.json`. On failure, undoes what it made.
pub fn add(pod_dir: &Path, name: &AcName) -> Result<(), VmError> {
    let (_, pod) = stage1_ns::monitor::read_pod(pod_dir).map_err(stage1_err)?;
    if pod.isolation != Isolation::Vm {
        return Err(VmError::Invalid("this is the VM stage1; the pod asks for namespace isolation".into()));
    }
    let app = pod
        .apps
        .iter()
        .find(|a| &a.name == name)
        .ok_or_else(|| VmError::Invalid(format!("pod.json has no app {name}")))?;
    if let Some(e) = crate::monitor::unsupported(app) {
        return Err(e);
    }
    let made = (|| {
        let mnt_ns = ns::pod_pid(pod_dir).and_then(|pid| ns::open_ns(pid, "mnt")).map_err(stage1_err)?;
        // No cgroups of the host's: pod-init enforces the limits, as at boot.
        stage1_ns::units::write_app(pod_dir, app, stage1_ns::units::Enforcer::Guest, &mut None)
            .map_err(|(p, source)| VmError::Io { op: "write", path: p, source })?;
        crate::monitor::write_guest_mounts(pod_dir, &pod, app)?;
        ns::in_pod(|| {
            setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("setns mnt: {e}"))?;
            rootfs::setup_app(pod_dir, &pod, app, KernelFs::Skip, None, &mut BTreeSet::new(), None)
                .map_err(|e| e.to_string())
        })
        .map_err(stage1_err)
    })();
    if let Err(e) = made {
        if let Err(undo) = remove(pod_dir, name) {
            eprintln!("pod-stage1-vm: undoing app {name}: {undo}");
        }
        return Err(e);
    }
    Ok(())
}

/// `rm-app`: undoes what [`add`] (or the pod's start) made for app `name`:
/// its mounts in the monitor's mount namespace (gone anyway once the pod
/// has ended), its unit, status, log and app directory. The guest's
/// pod-init has dropped it first. Idempotent; `pod.json` is stage0's.
pub fn remove(pod_dir: &Path, name: &AcName) -> Result<(), VmError> {
    if let Ok(mnt_ns) = ns::pod_pid(pod_dir).and_then(|pid| ns::open_ns(pid, "mnt")) {
        let rootfs = pod_dir.join("apps").join(name.as_str()).join("rootfs");
        ns::in_pod(|| {
            setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("setns mnt: {e}"))?;
            // Detaching the rootfs takes every mount below it along.
            ns::unmount(&rootfs)
        })
        .map_err(stage1_err)?;
    }
    ns::remove_files(pod_dir, name).map_err(stage1_err)
}
