//! Container logs in the CRI log format, where kubelet reads them, and
//! container stdin. The sandbox's `log_directory` is a host volume of its
//! pod ([`LOG_VOLUME`]), which stage1 binds into the pod root; a
//! container's `log_path` (relative to it, as kubelet gives it) becomes its
//! app's `log: {volume, path, format: cri}`, so pod-init writes the
//! container's stdout and stderr there as CRI log lines, and reopens the
//! file on ReopenContainerLog. A container created with `stdin: true`
//! becomes an app with `stdin: true`: a FIFO at `<pod dir>/stdin/<app>`
//! (the streaming server's Attach writes into it and follows the log).
//! A container created with `tty: true` becomes an app with `tty: true`:
//! pod-init gives it a pseudo-terminal as its controlling terminal and
//! logs what it reads from the master as stdout (each read at once, an
//! unfinished line as a `P` part, so attach shows a prompt), and writes
//! what comes into the FIFO into the master; Attach's resize events reach
//! it through the control verb `resize`. `stdin_once`: once the first
//! attach's stdin ends, pod-init lets go of the FIFO (`close-stdin`). VM
//! sandboxes (`pod-vm`) do not serve stdin yet.

use std::fs;
use std::path::Path;

use spec::AcName;
use stage0::addapp::AddAppError;
use stage0::control;
use stage0::paths::Dirs;
use stage0::prepare::read_resolved;

use crate::container::find_container;
use crate::error::CriError;
use crate::proto;
use crate::sandbox::{io, Sandbox};

/// The sandbox pod's volume of its `log_directory`.
pub const LOG_VOLUME: &str = "cri-logs";

/// The sandbox pod file's `volumes`: its log directory, if it has one
/// (made if kubelet has not yet).
pub fn sandbox_volumes(log_directory: &str) -> Result<serde_json::Value, CriError> {
    if log_directory.is_empty() {
        return Ok(serde_json::json!([]));
    }
    let dir = Path::new(log_directory);
    if !dir.is_absolute() {
        return Err(CriError::InvalidArgument(format!(
            "the sandbox's log_directory {log_directory:?} is not absolute"
        )));
    }
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    Ok(serde_json::json!([{"name": LOG_VOLUME, "kind": "host", "source": log_directory}]))
}

/// A container's `log_path` relative to its sandbox's log directory (where
/// pod can write it), checked; `None` without a log path.
pub fn relative_log_path(sandbox: &Sandbox, log_path: &str) -> Result<Option<String>, CriError> {
    if log_path.is_empty() {
        return Ok(None);
    }
    let dir = &sandbox.record.log_directory;
    let rel = Path::new(log_path)
        .strip_prefix(dir)
        .ok()
        .filter(|_| !dir.is_empty())
        .map(|r| r.display().to_string())
        .ok_or_else(|| {
        CriError::InvalidArgument(format!(
            "the container's log path {log_path} is not inside its sandbox's log_directory {dir:?}: pod writes \
                 container logs only there"
        ))
    })?;
    spec::stdio::check_relative_path(&rel)
        .map_err(|why| CriError::InvalidArgument(format!("the container's log path {log_path}: {why}")))?;
    Ok(Some(rel))
}

/// A VM sandbox cannot give a container a FIFO as stdin (its pod
/// directory is a 9p share in the guest): refused at CreateContainer.
pub fn check_stdin(sandbox: &Sandbox, stdin: bool) -> Result<(), CriError> {
    if stdin && sandbox.record.runtime_handler == crate::vm::VM_HANDLER {
        return Err(CriError::Unimplemented(format!(
            "pod sandbox {}: containers with stdin are not yet served by the {} handler",
            sandbox.pod.uuid,
            crate::vm::VM_HANDLER
        )));
    }
    Ok(())
}

/// Adds the app keys (`NewApp::extra`) of a container's log (`log_path`:
/// the host path), stdin and terminal, checked, at CreateContainer.
pub fn app_keys(
    sandbox: &Sandbox,
    log_path: &str,
    stdin: bool,
    tty: bool,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), CriError> {
    if let Some(rel) = relative_log_path(sandbox, log_path)? {
        let has_volume =
            read_resolved(&sandbox.pod.dir).is_some_and(|r| r.volumes.iter().any(|v| v.name.as_str() == LOG_VOLUME));
        if has_volume {
            // kubelet makes the container's directory; made here if not.
            if let Some(parent) = Path::new(log_path).parent() {
                fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            extra.insert("log".into(), serde_json::json!({"volume": LOG_VOLUME, "path": rel, "format": "cri"}));
        } else {
            tracing::warn!(sandbox = %sandbox.pod.uuid, "the sandbox predates CRI logs: the container's log is not written");
        }
    }
    if stdin {
        extra.insert("stdin".into(), serde_json::Value::Bool(true));
    }
    if tty {
        extra.insert("terminal".into(), serde_json::Value::Bool(true));
    }
    Ok(())
}

/// ReopenContainerLog: pod-init closes the container's log and opens its
/// path anew. As containerd, a container that is not running is an error.
pub fn reopen_container_log(dirs: &Dirs, id: &str) -> Result<(), CriError> {
    let c = find_container(dirs, id)?;
    if c.status().state != proto::ContainerState::ContainerRunning as i32 {
        return Err(CriError::FailedPrecondition(format!("container {id} is not running")));
    }
    if c.record.log_path.is_empty() {
        return Ok(());
    }
    let name = AcName::new(c.record.app.clone()).map_err(|e| CriError::InvalidArgument(e.to_string()))?;
    control::reopen_log(&c.sandbox.pod, &name).map_err(AddAppError::from)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxRecord;
    use stage0::pods::{PodRef, PodState};

    fn sandbox(log_directory: &str) -> Sandbox {
        let pod = PodRef { uuid: "u".into(), state: PodState::Running, dir: "/nonexistent".into() };
        Sandbox { pod, record: SandboxRecord { log_directory: log_directory.into(), ..SandboxRecord::default() } }
    }

    #[test]
    fn log_paths_must_be_in_the_log_directory() {
        let s = sandbox("/var/log/pods/ns_p_uid");
        assert_eq!(relative_log_path(&s, "").unwrap(), None);
        assert_eq!(relative_log_path(&s, "/var/log/pods/ns_p_uid/c/0.log").unwrap().as_deref(), Some("c/0.log"));
        for bad in ["/var/log/other/c/0.log", "/var/log/pods/ns_p_uid/../x.log", "/var/log/pods/ns_p_uid"] {
            let e = relative_log_path(&s, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e}");
        }
        let e = relative_log_path(&sandbox(""), "/tmp/c.log").unwrap_err();
        assert!(e.to_string().contains("log_directory"), "{e}");
    }

    #[test]
    fn vm_sandboxes_refuse_stdin() {
        let mut vm = sandbox("/l");
        vm.record.runtime_handler = crate::vm::VM_HANDLER.into();
        assert_eq!(check_stdin(&vm, true).unwrap_err().code(), tonic::Code::Unimplemented);
        assert!(check_stdin(&vm, false).is_ok());
        assert!(check_stdin(&sandbox("/l"), true).is_ok());
    }

    #[test]
    fn sandbox_volume_of_the_log_directory() {
        assert_eq!(sandbox_volumes("").unwrap(), serde_json::json!([]));
        assert_eq!(sandbox_volumes("rel").unwrap_err().code(), tonic::Code::InvalidArgument);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns_p_uid");
        let v = sandbox_volumes(dir.to_str().unwrap()).unwrap();
        assert_eq!(v[0]["name"], LOG_VOLUME);
        assert_eq!(v[0]["source"], dir.to_str().unwrap());
        assert!(dir.is_dir(), "made when kubelet has not");
    }
}
