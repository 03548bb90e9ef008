//! Generates the unit file of each app from the resolved pod: the contract
//! stage2-init reads (see `spec::unit`), and beside it the app's seccomp
//! filters (`<app>.seccomp.bpf`, `<app>.clone3.seccomp.bpf`; see
//! [`crate::seccomp`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spec::security::{GroupsPolicy, Seccomp};
use spec::stage1::{App, Probe, ResolvedPod, Restart};
use spec::unit::{self, ReadinessCheck, Unit};

/// Who enforces an app's resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcer {
    /// The stage1, in `n` cgroup directories of the host it made, which
    /// the app's processes join (`Cgroup=`).
    Host(usize),
    /// pod-init, in a cgroup of the guest's it makes for the app (the VM
    /// stage1): the unit carries the limits (`MemoryMax=`...).
    Guest,
}

/// The unit for one app; `cgroups` are the paths (inside the pod root) of
/// the cgroup directories its processes join (none: see `guest_limits`);
/// `seccomp_programs`: how many seccomp programs [`write_app`] wrote for
/// it; with `guest_limits`, the unit carries the app's limits for pod-init
/// ([`Enforcer::Guest`]).
pub fn unit_for(app: &App, cgroups: Vec<String>, seccomp_programs: usize, guest_limits: bool) -> Unit {
    let mut u = Unit::new(app.exec.clone());
    u.description = Some(format!("{} ({})", app.name, app.image_name));
    u.after = app.after.clone();
    u.requires = app.requires.clone();
    u.environment = app.env.clone();
    u.working_directory = Some(app.working_directory.clone());
    u.user = Some(app.user.clone());
    // No group: the user's primary group (an OCI image's `User: name`).
    u.group = (!app.group.is_empty()).then(|| app.group.clone());
    // Checked by stage0 when the pod was prepared.
    u.kill_signal = app.stop_signal.as_deref().and_then(spec::unit::signal_number).unwrap_or(spec::unit::SIGTERM);
    u.supplementary_groups =
        app.supplementary_gids.iter().chain(&app.security.supplementary_groups).map(ToString::to_string).collect();
    u.image_groups = app.security.groups_policy == GroupsPolicy::Merge;
    u.no_new_privileges = app.security.no_new_privileges;
    u.own_pid = app.security.own_pid_namespace;
    u.restart = match app.restart {
        Restart::Never => unit::Restart::No,
        Restart::OnFailure => unit::Restart::OnFailure,
        Restart::Always => unit::Restart::Always,
    };
    u.timeout_stop = Duration::from_millis(app.stop_timeout_ms);
    u.exec_start_pre = app.handlers.pre_start.clone();
    u.exec_stop_post = app.handlers.post_stop.clone();
    if u.exec_start_pre.is_some() {
        // A unit's timeouts are positive (a zero one would not parse back).
        u.timeout_start = Duration::from_millis(app.handlers.start_timeout_ms.max(1));
    }
    u.oom_score_adjust = app.resources.oom_score_adj;
    if guest_limits {
        let r = app.resources;
        u.limits = unit::Limits {
            memory_max: r.memory_bytes,
            tasks_max: r.pids,
            cpu_millis: r.cpu_millis,
            cpu_weight: r.cpu_shares.map(crate::cgroups::cpu_weight),
        };
    }
    u.shared_mounts = app
        .mounts
        .iter()
        .filter(|m| m.propagation == spec::stage1::Propagation::Rshared)
        .map(|m| m.path.clone())
        .collect();
    u.readiness = app.readiness.as_ref().map(|r| unit::Readiness {
        check: match &r.probe {
            Probe::Tcp(port) => ReadinessCheck::Tcp(([127, 0, 0, 1], *port).into()),
            Probe::Exec(argv) => ReadinessCheck::Exec(argv.clone()),
        },
        timeout: Duration::from_millis(r.timeout_ms),
    });
    u.cgroups = cgroups;
    u.capabilities = app.capabilities;
    if let Some(log) = &app.log {
        u.log_path = Some(log.path_in_pod());
        u.log_format = log.format;
    }
    u.stdin_fifo = app.stdin;
    u.tty = app.tty;
    u.seccomp_filters = (0..seccomp_programs).map(|i| format!("/units/{}", seccomp_file(app, i))).collect();
    u
}

/// The file name, in `units/`, of an app's `n`th seccomp program: the
/// default profile's in the order of [`crate::seccomp::default_filters`],
/// or a Localhost profile's ([`crate::seccomp_oci::compile`]).
fn seccomp_file(app: &App, n: usize) -> String {
    let name = app.name.as_str();
    match (&app.seccomp, n) {
        (Seccomp::Localhost { .. }, n) => format!("{name}.profile{n}.seccomp.bpf"),
        (_, 0) => format!("{name}.seccomp.bpf"),
        (_, 1) => format!("{name}.clone3.seccomp.bpf"),
        (_, n) => format!("{name}.{n}.seccomp.bpf"),
    }
}

/// Writes `<pod>/units/<app>.unit` for every app: `cgroups`, the host
/// cgroup directories of each app, or `None` where pod-init enforces the
/// limits ([`Enforcer::Guest`]).
pub fn write_units(
    pod_dir: &Path,
    pod: &ResolvedPod,
    cgroups: Option<&BTreeMap<String, Vec<PathBuf>>>,
) -> Result<(), (PathBuf, io::Error)> {
    let dir = pod_dir.join("units");
    fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
    let mut filters = None;
    for app in &pod.apps {
        let enforcer = match cgroups {
            Some(c) => Enforcer::Host(c.get(app.name.as_str()).map_or(0, Vec::len)),
            None => Enforcer::Guest,
        };
        write_app(pod_dir, app, enforcer, &mut filters)?;
    }
    Ok(())
}

/// Writes one app's unit (its limits enforced by `enforcer`) and, with
/// the default profile, its seccomp filters, compiled once into `filters`
/// for every app that needs them.
pub fn write_app(
    pod_dir: &Path,
    app: &App,
    enforcer: Enforcer,
    filters: &mut Option<Vec<Vec<u8>>>,
) -> Result<(), (PathBuf, io::Error)> {
    let dir = pod_dir.join("units");
    let compile_err = |e: String| (dir.clone(), io::Error::other(e));
    let own;
    let programs: &[Vec<u8>] = match &app.seccomp {
        Seccomp::Default => {
            if filters.is_none() {
                *filters = Some(crate::seccomp::default_filters().map_err(|e| compile_err(e.to_string()))?);
            }
            filters.as_deref().unwrap_or_default()
        }
        Seccomp::Unconfined => &[],
        Seccomp::Localhost { path, profile } => {
            own = crate::seccomp_oci::compile(profile).map_err(|e| compile_err(format!("{path}: {e}")))?;
            &own
        }
    };
    for (i, bytes) in programs.iter().enumerate() {
        let p = dir.join(seccomp_file(app, i));
        fs::write(&p, bytes).map_err(|e| (p.clone(), e))?;
    }
    let p = dir.join(format!("{}.unit", app.name));
    let (cgroups, guest) = match enforcer {
        Enforcer::Host(n) => (n, false),
        Enforcer::Guest => (0, true),
    };
    let paths = (0..cgroups).map(|i| crate::rootfs::cgroup_path_in_pod(app.name.as_str(), i)).collect();
    fs::write(&p, unit_for(app, paths, programs.len(), guest).render()).map_err(|e| (p.clone(), e))
}

/// Whether `file` in `units/` is one [`write_app`] writes for `app`: its
/// unit and its seccomp programs (app names have no dots, so the prefix
/// `<app>.` is the app's alone).
pub fn is_app_file(app: &str, file: &str) -> bool {
    file.strip_prefix(app).and_then(|r| r.strip_prefix('.')).is_some_and(|r| r == "unit" || r.ends_with("seccomp.bpf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_files_are_its_own() {
        for f in ["web.unit", "web.seccomp.bpf", "web.clone3.seccomp.bpf", "web.profile3.seccomp.bpf"] {
            assert!(is_app_file("web", f), "{f}");
        }
        for f in ["web-2.unit", "web-2.seccomp.bpf", "webx.unit", "web.json", "web"] {
            assert!(!is_app_file("web", f), "{f}");
        }
    }
}
