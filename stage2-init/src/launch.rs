//! Starting one process of an app (its main program or a readiness probe):
//! fork, then in the child: own session, stdio, then [`become_app`] (the
//! app's cgroups, own mount namespace rooted at the app's rootfs, its
//! bounding set, the app's user and capabilities, a clean environment,
//! no_new_privs and seccomp: privs.rs), execve. `pod enter` runs
//! [`become_app`] too (stage0 for a namespace pod, the VM guest's agent), so
//! an entered command gets exactly the app's privileges.
//!
//! The child reports a failure before exec through a close-on-exec pipe:
//! the parent reads EOF when exec succeeded, or a message, and the child
//! exits 127 (126 when the program cannot be executed).

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{chdir, chroot, dup2, execve, pivot_root, setgid, setgroups, setsid, setuid, Gid, Pid, Uid};
use spec::unit::Unit;

use crate::creds::{self, Creds};
use crate::exit::{EXIT_CANNOT_EXEC, EXIT_LAUNCH_FAILED};
use crate::privs::{self, SeccompProgram};
use crate::sys::{self, Fork};

/// `PATH` for every app unless its unit sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `/etc/passwd` or `/etc/group` larger than this is refused.
const MAX_ACCOUNTS_BYTES: u64 = 4 << 20;

/// What to start, prepared by the parent.
#[derive(Debug)]
pub struct Launch<'a> {
    pub app: &'a str,
    pub unit: &'a Unit,
    /// The app's rootfs, as pod-init sees it.
    pub rootfs: CString,
    /// `cgroup.procs` of each cgroup to join (`Cgroup=`), as pod-init sees them.
    pub cgroups: &'a [PathBuf],
    pub argv: Vec<CString>,
    /// Installed last, after no_new_privs.
    pub seccomp: &'a [SeccompProgram],
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// stdin is a terminal's slave, to be the process's controlling
    /// terminal.
    pub terminal: bool,
}

/// A forked process; `report` is readable (EOF or a message) once it exec'd
/// or failed to.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub report: OwnedFd,
}

/// A failure in the child before exec: its exit code and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChildError {
    pub code: i32,
    pub message: String,
}

fn step(what: &'static str) -> impl Fn(Errno) -> ChildError {
    move |e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{what}: {e}") }
}

/// Converts a command line for execve.
pub fn c_strings(words: &[String]) -> Result<Vec<CString>, String> {
    words.iter().map(|w| CString::new(w.as_bytes()).map_err(|_| format!("NUL byte in {w:?}"))).collect()
}

/// Forks and launches. Errors are the parent's (pipe, fork).
pub fn spawn(launch: &Launch<'_>) -> nix::Result<Spawned> {
    let (report, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    match sys::fork()? {
        Fork::Parent(pid) => Ok(Spawned { pid, report }),
        Fork::Child => {
            drop(report);
            let e = match child(launch, report_w.as_raw_fd()) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            // The pipe is non-blocking; a message this short always fits.
            let _ = nix::unistd::write(&report_w, e.message.as_bytes());
            sys::exit_now(e.code)
        }
    }
}

/// Reads what the child reported so far: `Some(message)` for a failure,
/// `Some("")` for a successful exec (EOF), `None` if it has not got there.
pub fn read_report(fd: &OwnedFd) -> Option<String> {
    let mut buf = [0u8; 1024];
    let mut message = Vec::new();
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&message).into_owned()),
            Ok(n) => message.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            // EAGAIN: the child is still on its way; a message is written
            // whole before the child exits, so a partial one reads as none.
            Err(_) => return (!message.is_empty()).then(|| String::from_utf8_lossy(&message).into_owned()),
        }
    }
}

fn child(l: &Launch<'_>, report: std::os::fd::RawFd) -> Result<Infallible, ChildError> {
    sys::reset_signal_dispositions();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(step("sigprocmask"))?;
    setsid().map_err(step("setsid"))?;
    dup2(l.stdin.as_raw_fd(), 0).map_err(step("stdin"))?;
    dup2(l.stdout.as_raw_fd(), 1).map_err(step("stdout"))?;
    dup2(l.stderr.as_raw_fd(), 2).map_err(step("stderr"))?;
    if l.terminal {
        // A session leader (setsid above) without one: the terminal is
        // its, and its process group the foreground one.
        sys::set_controlling_terminal(std::os::fd::AsFd::as_fd(&std::io::stdin())).map_err(step("TIOCSCTTY"))?;
    }
    if l.unit.own_pid {
        // From here on in the grandchild, PID 1 of a new pid namespace.
        crate::pidns::enter(report)?;
    }
    let env = become_app(l.app, l.unit, &l.rootfs, l.cgroups, l.seccomp)?;
    exec(&l.argv, &env)
}

/// Makes the calling process one of app `app`'s: joins its cgroups, takes
/// a mount namespace of its own rooted at `rootfs` (as this process sees
/// it), resolves the unit's user in the app's own /etc/passwd and
/// /etc/group, shrinks the bounding set, takes the user and the app's
/// capabilities, changes to its working directory, sets no_new_privs and
/// installs `seccomp`, in that order. Returns the app's environment; the
/// caller's next step is execve (or a fork that execs): nothing of the
/// caller's privileges is left.
///
/// The process must be single-threaded (unshare of a mount namespace
/// fails otherwise, and the seccomp filters bind only the calling thread).
pub fn become_app(
    app: &str,
    unit: &Unit,
    rootfs: &CStr,
    cgroups: &[PathBuf],
    seccomp: &[SeccompProgram],
) -> Result<Vec<(String, String)>, ChildError> {
    // The hierarchies as pod-init sees them, before the app leaves its view.
    let dirs: Vec<PathBuf> = cgroups.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
    let hierarchies = crate::cgroupfs::hierarchies(&dirs);
    join_cgroups(cgroups)?;
    enter_rootfs(rootfs, &unit.shared_mounts)?;
    crate::cgroupfs::mount_for_app(Path::new("/"), &hierarchies).map_err(step("mount the app's /sys/fs/cgroup"))?;
    // PID 1 of the app's own pid namespace (not a command `pod enter`
    // starts there, which joins the app's mounts): a /proc of that namespace.
    if unit.own_pid && nix::unistd::getpid().as_raw() == 1 {
        crate::pidns::remount_proc()?;
    }
    take_identity(app, unit, seccomp)
}

/// Makes the calling process one of a running app's, as [`become_app`]
/// does, but in the mount namespace of the app's main process, `mounts`
/// (`/proc/PID/ns/mnt`), rather than one of its own: the root, the /proc
/// of the app's own pid namespace, the masked paths and whatever the app
/// mounted since are exactly the app's. `pod enter` joins the other
/// namespaces of that process itself (a pid namespace applies to the
/// children), before this.
///
/// The cgroups are joined first, as `cgroups` names them in the caller's
/// mount namespace. Single-threaded callers only, as [`become_app`].
pub fn join_app(
    app: &str,
    unit: &Unit,
    mounts: OwnedFd,
    cgroups: &[PathBuf],
    seccomp: &[SeccompProgram],
) -> Result<Vec<(String, String)>, ChildError> {
    join_cgroups(cgroups)?;
    // The root and working directory become the namespace's root.
    nix::sched::setns(mounts, CloneFlags::CLONE_NEWNS).map_err(step("join the app's mount namespace"))?;
    take_identity(app, unit, seccomp)
}

/// The part of [`become_app`] after the app's root: oom score, user,
/// groups, bounding and capability sets, working directory, no_new_privs
/// and seccomp; returns the app's environment.
fn take_identity(app: &str, unit: &Unit, seccomp: &[SeccompProgram]) -> Result<Vec<(String, String)>, ChildError> {
    // While still root: lowering it takes CAP_SYS_RESOURCE.
    if let Some(adj) = unit.oom_score_adjust {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("oom_score_adj {adj}: {e}") })?;
    }
    let creds = read_creds(unit)?;
    // The bounding set shrinks while pod-init's CAP_SETPCAP is still held;
    // the caps in effect now (SETUID, SETGID) stay until setuid/capset.
    privs::bound(unit.capabilities)?;
    // Without no_new_privs, installing a filter takes CAP_SYS_ADMIN: now,
    // while pod-init's is held (runc's order too).
    if !unit.no_new_privileges {
        privs::install_filters(seccomp)?;
    }
    setgroups(&creds.groups.iter().map(|&g| Gid::from_raw(g)).collect::<Vec<_>>()).map_err(step("setgroups"))?;
    setgid(Gid::from_raw(creds.gid)).map_err(step("setgid"))?;
    setuid(Uid::from_raw(creds.uid)).map_err(step("setuid"))?;
    privs::set_caps(unit.capabilities, creds.uid)?;
    // As the app's user, so a directory it may not enter fails here.
    let dir = unit.working_directory.as_deref().unwrap_or("/");
    chdir(dir).map_err(|e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("chdir {dir}: {e}") })?;
    let env = environment(app, unit, &creds);
    if unit.no_new_privileges {
        privs::lock_down(seccomp)?;
    }
    Ok(env)
}

/// Moves this process into the app's cgroups, before it execs or forks, so
/// nothing of the app ever runs outside them; then the app gets a cgroup
/// namespace rooted there.
///
/// In a v1 hierarchy the process (single-threaded: a fresh fork of
/// pod-init) writes `0` to the cgroup's `tasks`: a thread moving itself is
/// the one migration the kernel does without write-locking
/// cgroup_threadgroup_rwsem, whose every write lock waits for an RCU grace
/// period (5-20 ms measured here, on each app start). cgroup2 has no such
/// path: `cgroup.procs` it is.
fn join_cgroups(procs_files: &[PathBuf]) -> Result<(), ChildError> {
    if procs_files.is_empty() {
        return Ok(());
    }
    let pid = std::process::id().to_string();
    for file in procs_files {
        let tasks = file.with_file_name("tasks");
        let written = if tasks.exists() { std::fs::write(&tasks, "0") } else { std::fs::write(file, &pid) };
        written.map_err(|e| ChildError {
            code: EXIT_LAUNCH_FAILED,
            message: format!("join cgroup {}: {e}", file.display()),
        })?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(step("unshare cgroup namespace"))
}

/// Makes the app's rootfs this process's `/`, in a mount namespace of its
/// own so the pod's mounts are untouched: a slave of the pod's, so nothing
/// the app mounts goes back, while a volume the stage1 made a peer or a
/// slave of a host mount (`propagation: rslave`/`rshared`) still gets the
/// host's new mounts; every other pod mount is private, and stays so.
/// pivot_root detaches the pod root
/// entirely; where it cannot work (the pod root is an initramfs, as in the
/// VM stage1: EINVAL) chroot is the fallback, which is as good here because
/// the namespace is private and the app gets no CAP_SYS_CHROOT-style way
/// back unless it runs as root, which the pod root holds nothing against.
/// `shared`: the app's `rshared` volumes (paths inside its rootfs), put
/// back on top as peers of the pod's, so the app's own mounts there reach
/// the pod's namespace and the host.
fn enter_rootfs(rootfs: &CStr, shared: &[String]) -> Result<(), ChildError> {
    let none = None::<&str>;
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare mount namespace"))?;
    // Cloned while still peers, detached so the slaving below passes them by.
    let c_path = |p: String| {
        std::ffi::CString::new(p)
            .map_err(|_| ChildError { code: EXIT_LAUNCH_FAILED, message: "a NUL in a path".into() })
    };
    let mut peers = Vec::with_capacity(shared.len());
    for path in shared {
        let inside = c_path(format!("{}{path}", rootfs.to_string_lossy().trim_end_matches('/')))?;
        peers.push((c_path(path.clone())?, crate::sys::clone_tree(&inside).map_err(step("clone a shared volume"))?));
    }
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none).map_err(step("make mounts slaves"))?;
    // pivot_root needs the new root to be a mount point; MS_REC keeps the
    // /proc, /dev and volumes stage1 mounted inside it.
    mount(Some(rootfs), rootfs, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(step("bind rootfs"))?;
    chdir(rootfs).map_err(step("chdir rootfs"))?;
    match pivot_root(".", ".") {
        // The old root now sits on top of the new one: detach it.
        Ok(()) => umount2(".", MntFlags::MNT_DETACH).map_err(step("detach old root"))?,
        Err(Errno::EINVAL) => chroot(".").map_err(step("chroot"))?,
        Err(e) => return Err(step("pivot_root")(e)),
    }
    chdir("/").map_err(step("chdir /"))?;
    for (path, tree) in &peers {
        crate::sys::move_mount_to(std::os::fd::AsFd::as_fd(tree), path).map_err(step("attach a shared volume"))?;
    }
    Ok(())
}

fn read_small(path: &str) -> Result<String, ChildError> {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            let read = f.take(MAX_ACCOUNTS_BYTES).read_to_string(&mut text);
            read.map_err(|e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{path}: {e}") })?;
        }
        // Numeric ids need no account files.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{path}: {e}") }),
    }
    Ok(text)
}

fn read_creds(unit: &Unit) -> Result<Creds, ChildError> {
    let (passwd, group) = (read_small("/etc/passwd")?, read_small("/etc/group")?);
    let (user, group_name) = (unit.user.as_deref(), unit.group.as_deref());
    creds::resolve_with(user, group_name, &unit.supplementary_groups, &passwd, &group, unit.image_groups)
        .map_err(|e| ChildError { code: EXIT_LAUNCH_FAILED, message: e.to_string() })
}

/// The app's environment: nothing from pod-init's, then the unit's on top.
/// appc's ace.md wants `PATH`, `AC_APP_NAME` and `container` (the
/// executor's name, as rkt's `container=rkt` and podman's
/// `container=podman`: what systemd in an app reads to know it is in a
/// container); `AC_METADATA_URL` comes with the unit's.
pub fn environment(app: &str, unit: &Unit, creds: &Creds) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("AC_APP_NAME".to_owned(), app.to_owned()),
        ("container".to_owned(), "pod".to_owned()),
        ("HOME".to_owned(), creds.home.clone()),
    ];
    if let Some(name) = &creds.name {
        env.push(("USER".to_owned(), name.clone()));
        env.push(("LOGNAME".to_owned(), name.clone()));
    }
    for (name, value) in &unit.environment {
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1.clone_from(value),
            None => env.push((name.clone(), value.clone())),
        }
    }
    env
}

/// execve, looking a bare program name up in the app's `PATH` as execvp
/// does: a directory where it is missing is skipped, EACCES is remembered.
pub(crate) fn exec(argv: &[CString], env: &[(String, String)]) -> Result<Infallible, ChildError> {
    let envp: Vec<CString> = env.iter().filter_map(|(n, v)| CString::new(format!("{n}={v}")).ok()).collect();
    let program = argv.first().ok_or(ChildError { code: EXIT_LAUNCH_FAILED, message: "empty command".into() })?;
    let name = program.to_string_lossy();
    let failed = |e: Errno, what: &str| ChildError {
        code: if matches!(e, Errno::EACCES | Errno::ENOEXEC) { EXIT_CANNOT_EXEC } else { EXIT_LAUNCH_FAILED },
        message: format!("exec failed: {e} ({what})"),
    };
    if name.contains('/') {
        return match execve(program, argv, &envp) {
            Ok(never) => match never {},
            Err(e) => Err(failed(e, &name)),
        };
    }
    let path = env.iter().find(|(n, _)| n == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let mut denied = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let Ok(candidate) = CString::new(format!("{dir}/{name}")) else { continue };
        match execve(&candidate, argv, &envp) {
            Err(Errno::EACCES) => denied = true,
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(e) => return Err(failed(e, &candidate.to_string_lossy())),
        }
    }
    let e = if denied { Errno::EACCES } else { Errno::ENOENT };
    Err(failed(e, &format!("{name} in PATH={path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_clean_and_unit_wins() {
        let mut unit = Unit::new(vec!["x".into()]);
        unit.environment = vec![("PATH".into(), "/opt/bin".into()), ("A".into(), "1".into())];
        let creds = Creds { uid: 5, gid: 5, groups: vec![5], name: Some("app".into()), home: "/home/app".into() };
        let env = environment("web", &unit, &creds);
        let pairs: Vec<String> = env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            pairs,
            ["PATH=/opt/bin", "AC_APP_NAME=web", "container=pod", "HOME=/home/app", "USER=app", "LOGNAME=app", "A=1"]
        );
        let anonymous = Creds { name: None, home: "/".into(), ..creds };
        assert_eq!(environment("web", &Unit::new(vec!["x".into()]), &anonymous).len(), 4);
    }
}
