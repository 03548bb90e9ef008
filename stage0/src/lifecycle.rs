//! Pod lifecycle operations on pods that already exist: reading their
//! status, stopping, removing and garbage-collecting them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use spec::stage1::ResolvedPod;

use crate::exit::{Exit, ExitCodeOf};
use crate::pods::{self, PodError, PodRef, PodState, Pods};
use crate::prepare::read_resolved;
use crate::run;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod {uuid} is {state}; {what}")]
    State { uuid: String, state: PodState, what: &'static str },
    #[error("pod {0} did not stop after SIGKILL")]
    Unkillable(String),
    #[error("cleaning up pod {uuid}: {why}")]
    Cleanup { uuid: String, why: String },
}

impl ExitCodeOf for LifecycleError {
    fn exit(&self) -> Exit {
        match self {
            Self::Pod(e) => e.exit(),
            Self::State { .. } => Exit::Conflict,
            _ => Exit::Failure,
        }
    }
}

/// An app's status file, as stage2-init writes it.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub restarts: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    /// OOM kills of the app's cgroup, as the kernel counted them.
    #[serde(default)]
    pub oom_kills: Option<u64>,
}

/// The pod's name, from its `pod.json`.
pub fn name_of(dir: &Path) -> Option<String> {
    read_resolved(dir).map(|p| p.name.to_string())
}

pub fn find(pods: &Pods, query: &str) -> Result<PodRef, LifecycleError> {
    Ok(pods.find(query, name_of)?)
}

/// Where app `app`'s log is on the host: `logs/<app>.log` in the pod
/// directory, or the file its `log:` names in one of the pod's volumes.
pub fn app_log_file(dir: &Path, pod: &ResolvedPod, app: &str) -> PathBuf {
    let log = pod.apps.iter().find(|a| a.name.as_str() == app).and_then(|a| a.log.as_ref());
    let volume = log.and_then(|l| pod.volumes.iter().find(|v| v.name == l.volume).map(|v| (l, &v.source)));
    match volume {
        Some((l, spec::stage1::VolumeSource::Host { path, .. })) => path.join(&l.path),
        Some((l, spec::stage1::VolumeSource::Empty)) => dir.join("volumes").join(l.volume.as_str()).join(&l.path),
        None => dir.join("logs").join(format!("{app}.log")),
    }
}

/// Every app's status, in start order; apps not started yet are "waiting".
pub fn app_statuses(dir: &Path, pod: &ResolvedPod) -> Vec<AppStatus> {
    pod.apps
        .iter()
        .map(|a| {
            let p = dir.join("status").join(format!("{}.json", a.name));
            let mut st: AppStatus =
                fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| AppStatus {
                    app: a.name.to_string(),
                    state: "waiting".into(),
                    ..AppStatus::default()
                });
            // stage1 records the kernel's OOM kills of the app's cgroup.
            let oom = fs::read_to_string(dir.join("status").join(format!("{}.oom", a.name)))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if let Some(n) = oom {
                st.oom_kills = Some(n);
                let limit = a.resources.memory_bytes.map(|b| format!(" of {b} bytes")).unwrap_or_default();
                let note = format!("OOM-killed {n} time(s): out of memory (limit{limit})");
                st.message = Some(match st.message.take() {
                    Some(m) if !m.is_empty() => format!("{m}; {note}"),
                    _ => note,
                });
            }
            st
        })
        .collect()
}

/// Apps of a pod that has exited but whose status files still say they
/// live: pod-init never wrote their end because it, its stage1 or the VM was
/// killed (kill -9, the OOM killer). They are reported `lost`, not running.
pub fn mark_lost(apps: &mut [AppStatus]) {
    for a in apps {
        if matches!(a.state.as_str(), "starting" | "running" | "ready" | "restarting" | "stopping") {
            a.state = "lost".into();
            a.pid = None;
            let note = "the pod ended without recording this app's end (its stage1, PID 1 or VM was killed)";
            a.message = Some(match a.message.take() {
                Some(m) if !m.is_empty() => format!("{m}; {note}"),
                _ => note.to_owned(),
            });
        }
    }
}

fn stage1_pid(dir: &Path) -> Option<Pid> {
    fs::read_to_string(dir.join("pid")).ok()?.trim().parse::<i32>().ok().map(Pid::from_raw)
}

/// Stops a running pod: SIGTERM to its PID 1 (which stops the apps in
/// reverse order), SIGKILL after `grace`. Waits until stage1 has released
/// the pod (cleaned up and exited).
pub fn stop(pod: &PodRef, grace: Option<Duration>) -> Result<(), LifecycleError> {
    if pod.state != PodState::Running {
        return Err(LifecycleError::State { uuid: pod.uuid.clone(), state: pod.state, what: "only running pods stop" });
    }
    let resolved = read_resolved(&pod.dir);
    let grace = grace.unwrap_or_else(|| {
        let longest = resolved.as_ref().and_then(|p| p.apps.iter().map(|a| a.stop_timeout_ms).max()).unwrap_or(10_000);
        Duration::from_millis(longest) + Duration::from_secs(5)
    });
    let Some(pid) = stage1_pid(&pod.dir) else {
        return Err(LifecycleError::Cleanup { uuid: pod.uuid.clone(), why: "no pid file".into() });
    };
    let _ = kill(pid, Signal::SIGTERM);
    let released = |limit: Duration| {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !pods::is_locked(&pod.dir) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    if released(grace) {
        return Ok(());
    }
    tracing::warn!(pod = %pod.uuid, "grace period over: SIGKILL");
    let _ = kill(pid, Signal::SIGKILL);
    if released(Duration::from_secs(10)) {
        Ok(())
    } else {
        Err(LifecycleError::Unkillable(pod.uuid.clone()))
    }
}

/// Cleans what a pod's stage1 may have left (after a kill -9): processes,
/// cgroups, network. Runs the stage1's own gc entrypoint, as rkt does.
fn stage1_gc(pod: &PodRef) -> Result<(), LifecycleError> {
    let Some(resolved) = read_resolved(&pod.dir) else { return Ok(()) };
    let stage1 = run::stage1_for(resolved.isolation)
        .map_err(|e| LifecycleError::Cleanup { uuid: pod.uuid.clone(), why: e.to_string() })?;
    let out = Command::new(&stage1).arg("gc").arg(&pod.dir).env_clear().output().map_err(|e| LifecycleError::Io {
        op: "run",
        path: stage1.clone(),
        source: e,
    })?;
    if !out.status.success() {
        return Err(LifecycleError::Cleanup {
            uuid: pod.uuid.clone(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Removes an exited or prepared pod (locking it first, so a pod that is
/// starting or running is refused).
pub fn remove(pods: &Pods, pod: &PodRef) -> Result<(), LifecycleError> {
    if matches!(pod.state, PodState::Running) {
        return Err(LifecycleError::State { uuid: pod.uuid.clone(), state: pod.state, what: "stop it first" });
    }
    // An exited pod's stage1 may still be tearing it down (pods.rs).
    let mut locked = if pod.state == PodState::Exited { pods.lock_exited(pod)? } else { pods.lock(pod)? };
    if pod.state == PodState::Exited {
        stage1_gc(pod)?;
    }
    pods.transition(&mut locked, PodState::Garbage)?;
    crate::crashpoint::crashpoint("gc.garbage");
    fs::remove_dir_all(&locked.dir).map_err(|e| LifecycleError::Io {
        op: "remove",
        path: locked.dir.clone(),
        source: e,
    })
}

/// How many pods `gc` removes at once. Removing one mostly waits on the
/// kernel (the stage1 gc's exec, unmounts, cgroup rmdirs that wait out an
/// RCU grace period, ext4 unlinks), so a few run side by side even on few
/// CPUs: hundreds of pods otherwise take ~70 ms each, one after another.
const GC_WORKERS: usize = 8;

/// Removes every exited pod and abandoned embryo or prepared pod. Returns
/// the uuids removed, in uuid order.
pub fn gc(pods: &Pods) -> Result<Vec<String>, LifecycleError> {
    pods.remove_unnamed()?;
    let doomed: Vec<PodRef> = pods
        .list()?
        .into_iter()
        .filter(|pod| match pod.state {
            PodState::Exited | PodState::Garbage => true,
            // An embryo nobody holds is a prepare that died. So is a
            // prepared pod: `pod run` holds its lock from creation until
            // stage1 takes it over, and nothing else prepares pods.
            PodState::Embryo | PodState::Prepared => !pods::is_locked(&pod.dir),
            PodState::Running => false,
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut removed = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(pod) = doomed.get(i) else { return Ok(removed) };
            match remove(pods, pod) {
                Ok(()) => removed.push(pod.uuid.clone()),
                // Taken by someone else meanwhile: a concurrent `pod gc` or `rm`.
                Err(LifecycleError::Pod(PodError::Locked(_) | PodError::NotFound(_))) => {}
                Err(e) => {
                    // The others stop at their next pod.
                    next.store(doomed.len(), std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let workers = GC_WORKERS.min(doomed.len());
    let results: Vec<Result<Vec<String>, LifecycleError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|_| s.spawn(worker)).collect();
        let mut results = vec![worker()];
        results.extend(handles.into_iter().map(|h| h.join().expect("gc worker panicked")));
        results
    });
    let mut removed = Vec::new();
    for r in results {
        removed.extend(r?);
    }
    removed.sort();
    // The names (`pod run`) of pods that are gone now.
    if let Err(e) = crate::names::prune(pods) {
        tracing::warn!("pruning pod names: {e}");
    }
    Ok(removed)
}

/// Pods not yet exited (prepared or running) that use image `id`, as an app's
/// image or as a layer of an app's tree.
pub fn pods_using(pods: &Pods, id: &spec::ImageId) -> Result<Vec<String>, LifecycleError> {
    let mut users = Vec::new();
    for p in pods.list()? {
        if !matches!(p.state, PodState::Prepared | PodState::Running | PodState::Embryo) {
            continue;
        }
        let Some(resolved) = read_resolved(&p.dir) else { continue };
        let uses = resolved.apps.iter().any(|a| {
            &a.image_id == id
                || a.layers.iter().any(|layer| {
                    layer.parent().is_some_and(|t| {
                        fs::read_to_string(t.join("layers")).is_ok_and(|l| l.lines().any(|x| x == id.as_str()))
                    })
                })
        });
        if uses {
            users.push(format!("{} ({})", p.uuid, resolved.name));
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_of_a_killed_pod_are_lost_not_running() {
        let app =
            |state: &str| AppStatus { app: "a".into(), state: state.into(), pid: Some(7), ..AppStatus::default() };
        let mut apps = vec![app("ready"), app("exited"), app("waiting"), app("restarting")];
        mark_lost(&mut apps);
        let states: Vec<&str> = apps.iter().map(|a| a.state.as_str()).collect();
        assert_eq!(states, ["lost", "exited", "waiting", "lost"]);
        assert_eq!(apps[0].pid, None);
        assert!(apps[0].message.as_deref().is_some_and(|m| m.contains("killed")));
        assert_eq!(apps[1].pid, Some(7), "a recorded end stays as it was");
    }
}
