//! A VM pod on a host where systemd is PID 1: a scope for qemu and the
//! monitor, and a machined registration (see stage1-ns's `scope.rs`).

use std::path::Path;
use std::process::Child;

use nix::unistd::Pid;
use spec::stage1::ResolvedPod;

use crate::VmError;

/// Where systemd is PID 1: qemu and this monitor in the pod's scope, and
/// the pod registered with machined as a `vm` led by the monitor, which
/// takes `machinectl poweroff` as a stop request to the guest.
pub(crate) fn start(
    pod_dir: &Path,
    inv: &spec::stage1::Invocation,
    pod: &ResolvedPod,
    qemu: &Child,
) -> Result<Option<stage1_ns::scope::PodScope>, VmError> {
    let me = Pid::this();
    let qemu = Pid::from_raw(i32::try_from(qemu.id()).unwrap_or(0));
    let err = |e: stage1_ns::monitor::Stage1Error| VmError::Invalid(e.to_string());
    let mut scope = stage1_ns::scope::start(pod_dir, inv, pod, None, &[me, qemu]).map_err(err)?;
    if let Some(s) = scope.as_mut() {
        if let Err(e) = s.register(pod_dir, pod, stage1_ns::cgroups::machined::Class::Vm, me, Vec::new()) {
            s.finish();
            return Err(err(e));
        }
    }
    Ok(scope)
}
