//! The `pod-vm` RuntimeHandler: sandboxes that are VM pods (stage1-vm,
//! qemu), as RuntimeClass picks them, served by the same sandbox and
//! container calls as the namespace handler. A container is an app added
//! to the running VM (stage0::addapp: its rootfs mounted under the VM's
//! share by `pod-stage1-vm add-app`, then `add` over the VM's control
//! port), so nothing here differs but the stage1, what it boots, and the
//! wait for the guest: a sandbox is ready once the guest's pod-init runs,
//! which under TCG takes seconds.

use std::time::Duration;

use spec::stage1::{Isolation, VmHost};
use stage0::pods::PodRef;

use crate::error::CriError;
use crate::proto;
use crate::sandbox::NS_HANDLERS;

/// The VM handler's name.
pub const VM_HANDLER: &str = "pod-vm";
/// How long RunPodSandbox waits for a VM's guest to start its pod-init
/// (a TCG guest on a busy host takes tens of seconds).
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The stage1 a (checked) handler picks.
pub fn isolation(handler: &str) -> Isolation {
    if handler == VM_HANDLER {
        Isolation::Vm
    } else {
        Isolation::Namespace
    }
}

/// What the sandbox's VM boots, for `HostConfig::vm`: the host's guest
/// kernel and qemu for `pod-vm` (FailedPrecondition naming what is
/// missing, before any pod is made), nothing for the namespace handler.
pub fn host_vm(
    handler: &str,
    config_dir: &std::path::Path,
) -> Result<Result<VmHost, stage0::guest::VmUnavailable>, CriError> {
    if isolation(handler) != Isolation::Vm {
        return Ok(Err(stage0::guest::VmUnavailable::Missing("a namespace sandbox boots no VM".into())));
    }
    stage0::guest::vm_host(config_dir)
        .map(Ok)
        .map_err(|why| CriError::FailedPrecondition(format!("runtime handler {VM_HANDLER}: {why}")))
}

/// Waits until a VM sandbox's guest runs its pod-init (the control channel
/// answers); a namespace sandbox is ready as it starts. A VM that does not
/// get there is stopped: no sandbox is left half-made.
pub fn wait_ready(pod: &PodRef, handler: &str) -> Result<(), CriError> {
    if isolation(handler) != Isolation::Vm {
        return Ok(());
    }
    stage0::control::wait_guest(pod, BOOT_LIMIT).map_err(|e| {
        if let Err(stop) = stage0::lifecycle::stop(pod, None) {
            tracing::warn!(sandbox = %pod.uuid, error = %stop, "stopping a VM sandbox that did not boot");
        }
        CriError::Failed(format!("VM sandbox {}: {e}", pod.uuid))
    })
}

/// The handlers `Status` lists: every name served, with its features
/// (neither recursive read-only mounts nor Kubernetes user namespaces yet).
pub fn runtime_handlers() -> Vec<proto::RuntimeHandler> {
    NS_HANDLERS
        .iter()
        .chain([&VM_HANDLER])
        .map(|name| proto::RuntimeHandler {
            name: (*name).to_owned(),
            features: Some(proto::RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn handlers_pick_their_stage1() {
        assert_eq!(isolation(VM_HANDLER), Isolation::Vm);
        assert_eq!(isolation(""), Isolation::Namespace);
        assert_eq!(isolation("pod"), Isolation::Namespace);
        assert!(
            host_vm("pod", std::path::Path::new("/nonexistent")).unwrap().is_err(),
            "no VM for a namespace sandbox"
        );
        let names: Vec<String> = runtime_handlers().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["", "pod", "pod-vm"]);
    }
}
