//! `pod enter`: run a command inside a running namespace pod, as the app's
//! own processes run (podman exec's contract). Joins the namespaces of the
//! pod's PID 1 (network, uts, ipc, pid, mount), reads the app's unit and
//! seccomp filters from the pod root as pod-init does, then takes the
//! app's privileges with pod-init's own code ([`stage2_init::become_app`]):
//! its cgroups, a mount namespace of its own pivoted into the app's rootfs
//! (no chroot a root command could climb out of), the app's user and
//! groups, bounding and capability sets, working directory and
//! environment, no_new_privs and the seccomp filter. The command runs as a
//! child (the pid namespace applies to children) and inherits all of it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};
use spec::AcName;

use crate::exit::{Exit, ExitCodeOf};

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("joining the pod's {ns} namespace: {errno}")]
    Setns { ns: &'static str, errno: nix::errno::Errno },
    #[error("pod has no app {0}")]
    NoApp(String),
    #[error("app {app}: {message}")]
    Unit { app: String, message: String },
    #[error("taking app {app}'s privileges: {source}")]
    Privileges {
        app: String,
        #[source]
        source: stage2_init::ChildError,
    },
    #[error("the pod's PID 1 is gone; is the pod running?")]
    NotRunning,
    #[error("in the VM: {0}")]
    Guest(String),
}

impl ExitCodeOf for EnterError {
    fn exit(&self) -> Exit {
        match self {
            Self::NoApp(_) => Exit::NotFound,
            Self::NotRunning => Exit::Conflict,
            _ => Exit::Failure,
        }
    }
}

const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("pid", CloneFlags::CLONE_NEWPID),
    // Last: after it, host paths are gone.
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs `argv` in app `app` of the pod whose PID 1 has host pid `pid`;
/// returns the command's exit status (128+signal if killed).
///
/// This process becomes the app's (user, capabilities, seccomp) before it
/// spawns the command, so `pod enter` must call it last, and only from a
/// single-threaded process (setns of a mount namespace requires it too).
pub fn enter(pid: i32, app: &str, argv: &[String]) -> Result<i32, EnterError> {
    let name = AcName::new(app).map_err(|_| EnterError::NoApp(app.to_owned()))?;
    // Nothing the caller left open (a directory of the host's, say) may
    // reach the command: only stdin, stdout and stderr go in.
    stage2_init::cloexec_inherited_fds();
    let proc_dir = PathBuf::from(format!("/proc/{pid}/ns"));
    if !proc_dir.exists() {
        return Err(EnterError::NotRunning);
    }
    // Open every namespace first: /proc is the host's until the mount one.
    let mut fds = Vec::new();
    for (name, flag) in NAMESPACES {
        let p = proc_dir.join(name);
        let f = File::open(&p).map_err(|e| EnterError::Io { op: "open", path: p.clone(), source: e })?;
        fds.push((name, flag, f));
    }
    for (ns, flag, f) in fds {
        setns(f, flag).map_err(|errno| EnterError::Setns { ns, errno })?;
    }
    // In PID 1's mount namespace: `/` is the pod root pod-init reads.
    let root = Path::new("/");
    let rootfs = root.join("apps").join(app).join("rootfs");
    if !rootfs.is_dir() {
        return Err(EnterError::NoApp(app.to_owned()));
    }
    let (unit, seccomp) = stage2_init::plan::load_app(root, &name)
        .map_err(|e| EnterError::Unit { app: app.to_owned(), message: e.to_string() })?;
    let cgroups = stage2_init::plan::cgroup_procs(root, &unit);
    // No NUL: an app name under "/".
    let rootfs_c = CString::new(rootfs.into_os_string().into_vec()).unwrap_or_default();
    let env = stage2_init::become_app(app, &unit, &rootfs_c, &cgroups, &seccomp)
        .map_err(|source| EnterError::Privileges { app: app.to_owned(), source })?;
    let (prog, args) = match argv.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("/bin/sh", &[][..]),
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let status =
        Command::new(prog).args(args).env_clear().envs(env).env("TERM", term).status().map_err(|e| EnterError::Io {
            op: "run",
            path: PathBuf::from(prog),
            source: e,
        })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Runs `argv` in app `app` of a running VM pod through the guest's enter
/// port (`spec::vm`): its output is copied to stdout; returns its status.
/// No stdin and no terminal: the channel carries output only.
pub fn enter_vm(pod_dir: &Path, app: &str, argv: &[String]) -> Result<i32, EnterError> {
    use spec::vm::{EnterRequest, Frame};
    use std::io::{BufReader, Write};
    let socket = pod_dir.join("vm").join("enter.sock");
    let io = |op, e| EnterError::Io { op, path: socket.clone(), source: e };
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| io("connect to", e))?;
    let argv = if argv.is_empty() { vec!["/bin/sh".to_owned()] } else { argv.to_vec() };
    let request = EnterRequest { app: app.to_owned(), argv };
    stream.write_all(request.encode().as_bytes()).map_err(|e| io("write to", e))?;
    let mut reader = BufReader::new(stream);
    let mut out = std::io::stdout();
    loop {
        match Frame::read(&mut reader).map_err(|e| io("read from", e))? {
            Some(Frame::Output(bytes)) => {
                let _ = out.write_all(&bytes).and_then(|()| out.flush());
            }
            Some(Frame::Exit(code)) => return Ok(code),
            Some(Frame::Error(why)) => return Err(EnterError::Guest(why)),
            None => return Err(EnterError::Guest("the guest closed the enter channel".into())),
        }
    }
}

/// The host pid of a running pod's PID 1, from its directory.
pub fn init_pid(pod_dir: &Path) -> Option<i32> {
    fs::read_to_string(pod_dir.join("pid")).ok()?.trim().parse().ok()
}
