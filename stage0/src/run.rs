//! Starting a prepared pod: pick the stage1 for its isolation, hand it the
//! pod's lock, and either become it (foreground) or start it detached.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use spec::stage1::{Isolation, LOCK_FD_ENV};

use crate::exit::{Exit, ExitCodeOf};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stage1 {0} not found (it is installed beside the pod binary)")]
    NoStage1(PathBuf),
    #[error("pod {uuid} failed to start: {why}")]
    Start { uuid: String, why: String },
}

impl ExitCodeOf for RunError {
    fn exit(&self) -> Exit {
        match self {
            Self::NoStage1(_) => Exit::NotFound,
            _ => Exit::Failure,
        }
    }
}

/// The directory holding `pod` and its stage binaries.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// The stage1 binary for an isolation.
pub fn stage1_for(isolation: Isolation) -> Result<PathBuf, RunError> {
    let name = match isolation {
        Isolation::Namespace => "pod-stage1-ns",
        Isolation::Vm => "pod-stage1-vm",
    };
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(RunError::NoStage1(p))
    }
}

/// Picks the cgroup manager of the pods `pod run` starts: `systemd` (the
/// default: a scope per pod where systemd is PID 1) or `cgroupfs`, as
/// podman's `--cgroup-manager`. Passed on to stage1.
pub const CGROUP_MANAGER_ENV: &str = "POD_CGROUP_MANAGER";

/// The stage2 binary (`pod-init`).
pub fn stage2() -> PathBuf {
    bin_dir().join("pod-init")
}

fn stage1_command(stage1: &Path, pod_dir: &Path, lock: &OwnedFd, stream_logs: bool) -> Result<Command, RunError> {
    // The lock must survive exec: clear close-on-exec on it.
    fcntl(lock.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| RunError::Io {
        op: "clear FD_CLOEXEC on the lock of",
        path: pod_dir.to_owned(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(stage1);
    if stream_logs {
        cmd.arg("--stream-logs");
    }
    cmd.arg(pod_dir).env_clear().env(LOCK_FD_ENV, lock.as_raw_fd().to_string());
    // The cgroup manager a user picked (stage1-ns/src/cgroups/systemd.rs):
    // `cgroupfs` keeps a pod out of systemd where systemd is PID 1.
    if let Some(manager) = std::env::var_os(CGROUP_MANAGER_ENV) {
        cmd.env(CGROUP_MANAGER_ENV, manager);
    }
    // Debug builds pass a stage1 kill point on (see crashpoint.rs).
    #[cfg(debug_assertions)]
    if let Some(step) = std::env::var_os(crate::crashpoint::ENV).filter(|s| s.to_string_lossy().starts_with("stage1")) {
        cmd.env(crate::crashpoint::ENV, step);
    }
    Ok(cmd)
}

/// Becomes stage1: returns only on failure to exec. stage1 is then the
/// process systemd started, so systemd's `NOTIFY_SOCKET` goes on to it
/// (`Type=notify` units: stage1-ns/src/notify.rs).
pub fn exec_foreground(stage1: &Path, pod_dir: &Path, lock: OwnedFd) -> RunError {
    match stage1_command(stage1, pod_dir, &lock, true) {
        Ok(mut cmd) => {
            if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
                cmd.env("NOTIFY_SOCKET", socket);
            }
            let e = cmd.exec();
            RunError::Io { op: "exec", path: stage1.to_owned(), source: e }
        }
        Err(e) => e,
    }
}

/// Starts stage1 detached (own process group, output to `stage1.log`) and
/// waits until the pod's PID 1 exists or stage1 fails.
pub fn start_detached(stage1: &Path, pod_dir: &Path, uuid: &str, lock: OwnedFd) -> Result<(), RunError> {
    let log_path = pod_dir.join("stage1.log");
    let log = File::create(&log_path).map_err(|e| RunError::Io { op: "create", path: log_path.clone(), source: e })?;
    let log2 = log.try_clone().map_err(|e| RunError::Io { op: "dup", path: log_path.clone(), source: e })?;
    let mut cmd = stage1_command(stage1, pod_dir, &lock, false)?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
    let mut child = cmd.spawn().map_err(|e| RunError::Io { op: "start", path: stage1.to_owned(), source: e })?;
    // stage1 holds the lock now (inherited); ours goes.
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let why = fs::read_to_string(&log_path).unwrap_or_default();
            let why = why.lines().last().unwrap_or("").to_owned();
            if status.success() {
                return Ok(());
            }
            return Err(RunError::Start { uuid: uuid.to_owned(), why: format!("{why} ({status})") });
        }
        if pod_dir.join("pid").is_file() {
            // The stage1 stays our child: a caller that lives on (`pod cri
            // serve`) would keep it as a zombie once the pod ends, one per
            // sandbox. A thread reaps it; `pod run -d` exits first and
            // leaves that to init.
            let _ = std::thread::Builder::new().name("reap-stage1".into()).spawn(move || child.wait());
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(RunError::Start {
                uuid: uuid.to_owned(),
                why: "stage1 did not start the pod within 120 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
