//! `pod enter`: run a command inside a running namespace pod, as the app's
//! own processes run (podman exec's contract). Joins the namespaces of the
//! pod's PID 1 (network, uts, ipc, pid, mount), reads the app's unit and
//! seccomp filters from the pod root as pod-init does; then, when the app
//! runs, the namespaces of its main process (its own pid namespace, `[X-Pod]
//! PIDNamespace=own`, and its mount namespace: its root, its /proc, its
//! masked paths), so the command sees exactly what the app sees. Then it
//! takes the app's privileges with pod-init's own code
//! ([`stage2_init::join_app`]; [`stage2_init::become_app`] for an app not
//! running, in a mount namespace of its own pivoted into the app's rootfs):
//! its cgroups, user and groups, bounding and capability sets, working
//! directory and environment, no_new_privs and the seccomp filter. The
//! command runs as a child (the pid namespace applies to children) and
//! inherits all of it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};
use spec::AcName;

pub use crate::enter_tty::enter_tty;
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
    #[error("app {0} is starting: its process has not entered its root yet")]
    Starting(String),
    #[error("in the VM: {0}")]
    Guest(String),
    /// The side of `pod enter -t` that joined the pod failed (exit code
    /// as its error's).
    #[error("{message}")]
    Joined { message: String, code: u8 },
}

impl ExitCodeOf for EnterError {
    fn exit(&self) -> Exit {
        match self {
            Self::NoApp(_) => Exit::NotFound,
            Self::NotRunning | Self::Starting(_) => Exit::Conflict,
            Self::Joined { code, .. } if *code == Exit::NotFound.code() => Exit::NotFound,
            Self::Joined { code, .. } if *code == Exit::Conflict.code() => Exit::Conflict,
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
    enter_on(pid, app, argv, None)
}

/// [`enter`], on a new terminal of the app's devpts when `tty` is given
/// (`pod enter -t`: crate::enter_tty): its master goes over `tty` to the
/// host side, its slave becomes this process's stdin, stdout and stderr
/// before it takes the app's privileges, and the command's controlling
/// terminal.
pub(crate) fn enter_on(
    pid: i32,
    app: &str,
    argv: &[String],
    tty: Option<&std::os::fd::OwnedFd>,
) -> Result<i32, EnterError> {
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
    // A pod with a user namespace of its own (`userns: auto`).
    let user = own_userns(&proc_dir.join("user"))?;
    let pod_mounts = fds
        .iter()
        .find(|(_, flag, _)| *flag == CloneFlags::CLONE_NEWNS)
        .map(|(_, _, f)| f.metadata().map(|m| same_file(&m)))
        .transpose()
        .map_err(|e| EnterError::Io { op: "inspect", path: proc_dir.join("mnt"), source: e })?;
    for (ns, flag, f) in fds {
        setns(f, flag).map_err(|errno| EnterError::Setns { ns, errno })?;
    }
    // In PID 1's mount namespace: `/` is the pod root pod-init reads.
    let root = Path::new("/");
    let rootfs = root.join("apps").join(app).join("rootfs");
    if !rootfs.is_dir() {
        return Err(EnterError::NoApp(app.to_owned()));
    }
    if let Some(sock) = tty {
        crate::enter_tty::open_in(sock, &rootfs)?;
    }
    let (unit, seccomp) = stage2_init::plan::load_app(root, &name)
        .map_err(|e| EnterError::Unit { app: app.to_owned(), message: e.to_string() })?;
    let cgroups = stage2_init::plan::cgroup_procs(root, app, &unit)
        .map_err(|message| EnterError::Unit { app: app.to_owned(), message })?;
    // The app's own namespaces, as host root (they are the pod's or its
    // descendants); its mount namespace comes last, after the cgroups.
    // The pod's /proc (the app's, as stage1 mounted it in the pod's
    // namespaces): the pod root has none.
    let proc = rootfs.join("proc");
    let app_ns = match app_process(root, &proc, app, unit.own_pid)? {
        Some(main) => Some(app_namespaces(&proc.join(main.to_string()).join("ns"), pod_mounts, app)?),
        None => None,
    };
    let mounts = match app_ns {
        Some((others, mounts)) => {
            for (ns, flag, f) in others {
                setns(f, flag).map_err(|errno| EnterError::Setns { ns, errno })?;
            }
            Some(mounts)
        }
        None => None,
    };
    if let Some(user) = user {
        join_userns(user, &cgroups)?;
    }
    let privileges = |source| EnterError::Privileges { app: app.to_owned(), source };
    let env = match mounts {
        Some(mounts) => stage2_init::join_app(app, &unit, mounts.into(), &cgroups, &seccomp).map_err(privileges)?,
        None => {
            // No NUL: an app name under "/".
            let rootfs_c = CString::new(rootfs.into_os_string().into_vec()).unwrap_or_default();
            stage2_init::become_app(app, &unit, &rootfs_c, &cgroups, &seccomp).map_err(privileges)?
        }
    };
    let (prog, args) = match argv.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("/bin/sh", &[][..]),
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().envs(env).env("TERM", term);
    if tty.is_some() {
        stage2_init::term::on_controlling_terminal(&mut cmd);
    }
    let status = cmd.status().map_err(|e| EnterError::Io { op: "run", path: PathBuf::from(prog), source: e })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The pid of app `app`'s main process in the pod's pid namespace (as
/// `proc`, the pod's /proc, shows it), from its status file under the pod
/// root `root`; `None` when the app does not run. With a pid namespace of
/// its own (`own_pid`) the status names the waiter pod-init forked, whose
/// one child is the app.
fn app_process(root: &Path, proc: &Path, app: &str, own_pid: bool) -> Result<Option<i32>, EnterError> {
    let path = root.join("status").join(format!("{app}.json"));
    let status: crate::lifecycle::AppStatus = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| EnterError::Unit { app: app.to_owned(), message: format!("{}: {e}", path.display()) })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EnterError::Io { op: "read", path, source: e }),
    };
    let running = !matches!(status.state.as_str(), "waiting" | "exited" | "failed" | "stopped");
    let Some(pid) = status.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1 && running) else {
        return Ok(None);
    };
    if !own_pid {
        return Ok(Some(pid));
    }
    child_of(proc, pid).map(Some).ok_or_else(|| EnterError::Starting(app.to_owned()))
}

/// A child of `parent`, from each task's parent in `proc`'s stat files.
fn child_of(proc: &Path, parent: i32) -> Option<i32> {
    fs::read_dir(proc).ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let after = &stat[stat.rfind(')')? + 1..];
        let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// A file's identity (a namespace's, for an ns file).
fn same_file(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// The namespaces in `dir` (`/proc/PID/ns` of the app's main process):
/// network, uts, ipc and pid, then its mount namespace apart. That must not
/// be the pod's (`pod_mounts`): a process still there has not entered the
/// app's root yet.
#[allow(clippy::type_complexity)]
fn app_namespaces(
    dir: &Path,
    pod_mounts: Option<(u64, u64)>,
    app: &str,
) -> Result<(Vec<(&'static str, CloneFlags, File)>, File), EnterError> {
    let open = |name: &str| {
        let p = dir.join(name);
        File::open(&p).map_err(|e| EnterError::Io { op: "open", path: p, source: e })
    };
    let mounts = open("mnt")?;
    let theirs = mounts.metadata().map_err(|e| EnterError::Io { op: "inspect", path: dir.join("mnt"), source: e })?;
    if Some(same_file(&theirs)) == pod_mounts {
        return Err(EnterError::Starting(app.to_owned()));
    }
    let mut others = Vec::new();
    for (name, flag) in NAMESPACES.into_iter().filter(|(_, f)| *f != CloneFlags::CLONE_NEWNS) {
        others.push((name, flag, open(name)?));
    }
    Ok((others, mounts))
}

/// Joins a pod's user namespace (`userns: auto`) as its root, so the
/// command is the pod root's (then the app user's), with capabilities in
/// that namespace only, never host root's. First, still host root, this
/// process moves into the app's cgroups: on cgroup v2 a move needs write
/// access at the common ancestor of both cgroups, here above the pod, which
/// only host root has; become_app's own move is then within the app's
/// cgroup, which is delegated to the pod's root.
fn join_userns(user: File, cgroups: &[PathBuf]) -> Result<(), EnterError> {
    let pid = std::process::id().to_string();
    for file in cgroups {
        fs::write(file, &pid).map_err(|e| EnterError::Io { op: "join cgroup", path: file.clone(), source: e })?;
    }
    setns(user, CloneFlags::CLONE_NEWUSER).map_err(|errno| EnterError::Setns { ns: "user", errno })?;
    let becoming_root = |errno| EnterError::Setns { ns: "user (becoming its root)", errno };
    let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setgroups(&[]).map_err(becoming_root)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(becoming_root)?;
    nix::unistd::setresuid(uid, uid, uid).map_err(becoming_root)
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

/// Runs `argv` in app `app` of a running VM pod through the VM's streams
/// (`crate::vmstream`): stdin, stdout and stderr are the command's, on a
/// terminal of the guest's when `tty`; returns its status.
pub fn enter_vm(pod_dir: &Path, app: &str, argv: &[String], tty: bool) -> Result<i32, EnterError> {
    let socket = pod_dir.join("vm").join("stream.sock");
    let argv = if argv.is_empty() { vec!["/bin/sh".to_owned()] } else { argv.to_vec() };
    crate::vmstream::exec(&socket, app, &argv, tty).map_err(EnterError::from)
}

/// Joins this process's stdin and stdout to TCP `port` on the loopback of
/// the pod whose PID 1 has host pid `pid` (its network namespace), until
/// both ways end. Must be called single-threaded (setns).
pub fn connect_port(pid: i32, port: u16) -> Result<(), EnterError> {
    use std::net::{Ipv4Addr, Shutdown, TcpStream};
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = File::open(&path).map_err(|_| EnterError::NotRunning)?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|errno| EnterError::Setns { ns: "net", errno })?;
    let io = |op| move |source| EnterError::Io { op, path: PathBuf::from(format!("127.0.0.1:{port}")), source };
    let socket = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(io("connect to"))?;
    let mut to_pod = socket.try_clone().map_err(io("clone"))?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut to_pod);
        let _ = to_pod.shutdown(Shutdown::Write);
    });
    let mut from_pod = socket;
    std::io::copy(&mut from_pod, &mut std::io::stdout()).map_err(io("read from"))?;
    Ok(())
}

/// Joins stdin and stdout to TCP `port` on a running VM pod's loopback,
/// inside the guest.
pub fn connect_port_vm(pod_dir: &Path, port: u16) -> Result<(), EnterError> {
    crate::vmstream::connect_port(&pod_dir.join("vm").join("stream.sock"), port).map_err(EnterError::from)
}

impl From<crate::vmstream::StreamError> for EnterError {
    fn from(e: crate::vmstream::StreamError) -> Self {
        match e {
            crate::vmstream::StreamError::Io { op, path, source } => EnterError::Io { op, path, source },
            crate::vmstream::StreamError::Guest(why) => EnterError::Guest(why),
        }
    }
}

/// The host pid of a running pod's PID 1, from its directory.
pub fn init_pid(pod_dir: &Path) -> Option<i32> {
    fs::read_to_string(pod_dir.join("pid")).ok()?.trim().parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pod root with `status/web.json` saying `status`, and a /proc with
    /// `(pid, ppid)` tasks.
    fn fixture(status: &str, tasks: &[(i32, i32)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("status")).unwrap();
        fs::write(tmp.path().join("status/web.json"), status).unwrap();
        for (pid, ppid) in tasks {
            let d = tmp.path().join("proc").join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("stat"), format!("{pid} (a) b) S {ppid} 1 1 0")).unwrap();
        }
        tmp
    }

    #[test]
    fn the_app_process_is_the_status_pid_or_the_waiters_child() {
        let running = r#"{"app":"web","state":"running","pid":7}"#;
        let t = fixture(running, &[(1, 0), (7, 1), (8, 7), (9, 1)]);
        let proc = t.path().join("proc");
        assert_eq!(app_process(t.path(), &proc, "web", false).unwrap(), Some(7));
        // Its own pid namespace: the waiter (7) forked the app (8).
        assert_eq!(app_process(t.path(), &proc, "web", true).unwrap(), Some(8));
        let t = fixture(running, &[(1, 0), (7, 1)]);
        let proc = t.path().join("proc");
        assert!(matches!(app_process(t.path(), &proc, "web", true), Err(EnterError::Starting(_))));
        // Not running: no process to join.
        for status in [r#"{"app":"web","state":"exited","pid":7}"#, r#"{"app":"web","state":"running","pid":null}"#] {
            let t = fixture(status, &[(1, 0), (7, 1)]);
            assert_eq!(app_process(t.path(), &t.path().join("proc"), "web", false).unwrap(), None);
        }
        assert_eq!(app_process(t.path(), &t.path().join("proc"), "db", false).unwrap(), None);
    }
}
