//! The pod's systemd scope and its machined registration, for the stage1
//! monitors (this one and the VM stage1's).
//!
//! Where systemd is PID 1 on a pure cgroup v2 host, and `POD_CGROUP_MANAGER`
//! does not say `cgroupfs`, the monitor asks systemd for
//! `machine.slice/pod-<uuid>.scope` holding the pod's PID 1 (namespace
//! pods: the monitor's child, moved into the scope's `init.scope` leaf,
//! then into the pod's own init cgroups) or qemu and the monitor (VM
//! pods), then registers the pod with machined. Elsewhere the cgroupfs
//! path is unchanged and no machine is registered: machined registers the
//! unit of the leader's cgroup, which outside a scope of the pod's own
//! would be the cgroup of whoever ran `pod` (a login session, say).
//!
//! Not on cgroup v1 or hybrid systemd hosts either: there systemd would
//! place the scope in the controllers it manages while the pod's v1
//! cgroups (freezer included) are ours, and the pod's PID 1, forked before
//! the scope exists, would stay in the caller's `name=systemd` cgroup.

use std::fs;
use std::path::Path;

use nix::unistd::Pid;
use spec::stage1::{Invocation, ResolvedPod};

use crate::cgroups::machined::{Class, MachineSpec};
use crate::cgroups::systemd::{self, Bus, ScopeSpec, MANAGER_ENV, SCOPE_FILE};
use crate::cgroups::{Hierarchy, Mode, PodLoc, INIT_CGROUP};
use crate::monitor::Stage1Error;

/// D-Bus errors that mean nobody answers for the name: not an error here.
const UNREACHABLE: [&str; 2] =
    ["org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"];

/// A pod's scope (and machine), stopped and unregistered by [`PodScope::finish`].
#[derive(Debug)]
pub struct PodScope {
    bus: Bus,
    unit: String,
    machine: Option<String>,
}

/// `POD_CGROUP_MANAGER` as stage1 started with it: [`crate::sanitize`]
/// empties the environment first ([`capture`]).
static MANAGER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Keeps `POD_CGROUP_MANAGER` aside before the environment is emptied.
pub fn capture() {
    let _ = MANAGER.set(std::env::var(MANAGER_ENV).ok());
}

/// Whether this pod gets a scope: systemd as PID 1 (`run_systemd`, i.e.
/// `/run/systemd/system`), a cgroup v2 host, no cgroup parent of its own
/// and `POD_CGROUP_MANAGER` not `cgroupfs`.
pub fn wanted(inv: &Invocation, mode: Option<Mode>, run_systemd: &Path) -> Result<bool, Stage1Error> {
    let env = MANAGER.get().cloned().flatten();
    if !systemd::wanted(env.as_deref()).map_err(Stage1Error::Invalid)? {
        return Ok(false);
    }
    if !systemd::booted(run_systemd) {
        tracing::debug!("systemd is not PID 1: cgroupfs");
        return Ok(false);
    }
    if inv.cgroup_parent.is_some() {
        tracing::debug!("the pod has a cgroup parent of its own: cgroupfs");
        return Ok(false);
    }
    if mode.is_some_and(|m| m != Mode::Unified) {
        tracing::debug!(?mode, "systemd scopes need a cgroup v2 host: cgroupfs");
        return Ok(false);
    }
    Ok(true)
}

/// Starts the pod's scope holding `pids`, and records it in the pod
/// directory; with `h`, moves `pids` on into the scope's `init.scope`
/// leaf, where the pod's own cgroups go around it. `None` where systemd
/// does not manage the pod or the bus cannot be reached.
pub fn start(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    h: Option<&Hierarchy>,
    pids: &[Pid],
) -> Result<Option<PodScope>, Stage1Error> {
    if !wanted(inv, h.map(Hierarchy::mode), Path::new("/run/systemd/system"))? {
        return Ok(None);
    }
    let Some(bus) = Bus::system() else { return Ok(None) };
    let pids_u32 = pids.iter().filter_map(|p| u32::try_from(p.as_raw()).ok()).collect();
    let spec = ScopeSpec::for_pod(&pod.uuid, pod.name.as_str(), pids_u32);
    match bus.start_scope(&spec) {
        Ok(()) => {}
        // A system bus without systemd on it (a container, say).
        Err(e) if e.error_name().is_some_and(|n| UNREACHABLE.contains(&n)) => {
            tracing::debug!(error = %e, "systemd is not on the system bus: cgroupfs");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let mut scope = PodScope { bus, unit: spec.unit.clone(), machine: None };
    if let Err(e) = record_and_enter(pod_dir, pod, h, pids, &spec.unit) {
        scope.finish();
        return Err(e);
    }
    Ok(Some(scope))
}

/// Writes the pod directory's [`SCOPE_FILE`] and moves `pids` into the
/// scope's `init.scope` (cgroup v2 `h`).
fn record_and_enter(
    pod_dir: &Path,
    pod: &ResolvedPod,
    h: Option<&Hierarchy>,
    pids: &[Pid],
    unit: &str,
) -> Result<(), Stage1Error> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Stage1Error::Io { op, path, source }
    };
    let marker = pod_dir.join(SCOPE_FILE);
    fs::write(&marker, format!("{unit}\n")).map_err(io("write", &marker))?;
    if let Some(root) = h.and_then(Hierarchy::unified) {
        let leaf = root.join(PodLoc::scope(&pod.uuid)?.rel()).join(INIT_CGROUP);
        fs::create_dir_all(&leaf).map_err(io("mkdir", &leaf))?;
        let procs = leaf.join("cgroup.procs");
        for pid in pids {
            fs::write(&procs, pid.to_string()).map_err(io("write", &procs))?;
        }
    }
    Ok(())
}

impl PodScope {
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Registers the pod with machined, `leader` being the process that
    /// `machinectl poweroff` signals (SIGRTMIN+4). No machined: a debug
    /// line; a refusal: an error naming the machine.
    pub fn register(
        &mut self,
        pod_dir: &Path,
        pod: &ResolvedPod,
        class: Class,
        leader: Pid,
        ifindices: Vec<i32>,
    ) -> Result<(), Stage1Error> {
        let leader = u32::try_from(leader.as_raw()).unwrap_or(0);
        // machined wants an absolute root directory.
        let root = fs::canonicalize(pod_dir).unwrap_or_else(|_| pod_dir.to_owned());
        let spec =
            MachineSpec { ifindices, ..MachineSpec::for_pod(pod.name.as_str(), &pod.uuid, class, leader, &root) };
        if self.bus.register_machine(&spec)? {
            self.machine = Some(spec.name);
        }
        Ok(())
    }

    /// Unregisters the machine and stops the scope (which resets it): no
    /// unit, no machine left. Safe when machined or systemd already did.
    pub fn finish(&mut self) {
        if let Some(name) = self.machine.take() {
            self.bus.unregister_machine(&name);
        }
        self.bus.stop_unit(&self.unit);
    }
}

/// systemd's "power off" signal, SIGRTMIN+4: what `machinectl poweroff`
/// sends a machine's leader (the VM stage1's monitor: a stop request).
pub fn sig_poweroff() -> i32 {
    nix::libc::SIGRTMIN() + 4
}

/// `mask` with [`sig_poweroff`] added (nix's `Signal` has no real-time ones).
pub fn with_poweroff(mask: &nix::sys::signal::SigSet) -> nix::sys::signal::SigSet {
    let mut raw: nix::libc::sigset_t = *mask.as_ref();
    // SAFETY: `raw` is a copy of an initialised sigset_t and the signal
    // number is a valid real-time one; sigaddset only sets its bit.
    unsafe { nix::libc::sigaddset(&mut raw, sig_poweroff()) };
    // SAFETY: `raw` is initialised (copied from a SigSet, then sigaddset).
    unsafe { nix::sys::signal::SigSet::from_sigset_t_unchecked(raw) }
}

/// `pod gc`: stops the scope a dead monitor left, and forgets its machine.
pub fn gc(pod_dir: &Path, pod: &ResolvedPod) {
    let Ok(unit) = fs::read_to_string(pod_dir.join(SCOPE_FILE)) else { return };
    let Some(bus) = Bus::system() else { return };
    bus.unregister_machine(&crate::cgroups::machined::machine_name(pod.name.as_str(), &pod.uuid));
    bus.stop_unit(unit.trim());
}
