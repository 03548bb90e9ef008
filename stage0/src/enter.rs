//! `pod enter`: run a command inside a running namespace pod, in one app's
//! root filesystem. Joins the namespaces of the pod's PID 1 (network, uts,
//! ipc, pid, mount), chroots into the app's rootfs as PID 1 sees it, and
//! runs the command as a child (the pid namespace applies to children).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

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
pub fn enter(pid: i32, app: &str, argv: &[String]) -> Result<i32, EnterError> {
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
    // A pod with a user namespace of its own (`userns: auto`).
    let user = own_userns(&proc_dir.join("user"))?;
    for (ns, flag, f) in fds {
        setns(f, flag).map_err(|errno| EnterError::Setns { ns, errno })?;
    }
    if let Some(user) = user {
        // Last, while still host root (which may join any of the pod's
        // namespaces): the command runs as the pod's root, with
        // capabilities in its user namespace only, never as host root.
        setns(user, CloneFlags::CLONE_NEWUSER).map_err(|errno| EnterError::Setns { ns: "user", errno })?;
        let setns_err = |errno| EnterError::Setns { ns: "user (becoming its root)", errno };
        let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setgroups(&[]).map_err(setns_err)?;
        nix::unistd::setresgid(gid, gid, gid).map_err(setns_err)?;
        nix::unistd::setresuid(uid, uid, uid).map_err(setns_err)?;
    }
    let rootfs = Path::new("/apps").join(app).join("rootfs");
    if !rootfs.is_dir() {
        return Err(EnterError::NoApp(app.to_owned()));
    }
    nix::unistd::chroot(&rootfs).map_err(|e| EnterError::Io {
        op: "chroot",
        path: rootfs.clone(),
        source: e.into(),
    })?;
    nix::unistd::chdir("/").map_err(|e| EnterError::Io { op: "chdir", path: "/".into(), source: e.into() })?;
    let (prog, args) = match argv.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("/bin/sh", &[][..]),
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let status = Command::new(prog)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("TERM", term)
        .env("AC_APP_NAME", app)
        .status()
        .map_err(|e| EnterError::Io { op: "run", path: PathBuf::from(prog), source: e })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The user namespace at `path` if it is not ours.
fn own_userns(path: &Path) -> Result<Option<File>, EnterError> {
    use std::os::unix::fs::MetadataExt;
    let io = |op| move |source| EnterError::Io { op, path: path.to_owned(), source };
    let theirs = fs::metadata(path).map_err(io("inspect"))?;
    let ours = fs::metadata("/proc/self/ns/user").map_err(io("inspect"))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(None);
    }
    File::open(path).map(Some).map_err(io("open"))
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
