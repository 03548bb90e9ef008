//! Commands in a running app of the VM ([`Open::Exec`](spec::vm::mux::Open)):
//! forked by the stream agent (`streams.rs`) and run as the app's own
//! processes run ([`crate::become_app`]: its root, user, capabilities,
//! no_new_privs and seccomp filter, its environment), with a stdin pipe
//! and stdout and stderr pipes, or a terminal from the app's own devpts.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{dup2, setsid, Pid};
use spec::name::AcName;
use spec::unit::Unit;

use crate::exit::EXIT_LAUNCH_FAILED;
use crate::launch::{self, ChildError};
use crate::plan;
use crate::privs::SeccompProgram;
use crate::sys::{self, Fork};

/// The `"pid"` of an app's status JSON (as `status.rs` writes it: `"pid"`
/// is the first key that can hold a number, `null` when not running).
pub(crate) fn status_pid(json: &str) -> Option<i32> {
    let rest = json.split_once("\"pid\":")?.1;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok().filter(|pid| *pid > 1)
}

/// The main process of `app`, from `status_dir/<app>.json`.
pub(crate) fn app_pid(status_dir: &Path, app: &str) -> Result<i32, String> {
    AcName::new(app).map_err(|_| format!("{app:?} is not an app name"))?;
    let json = std::fs::read_to_string(status_dir.join(format!("{app}.json")))
        .map_err(|_| format!("no app {app} in this pod"))?;
    status_pid(&json).ok_or_else(|| format!("app {app} is not running"))
}

/// A started command: its pid (the leader of its own session and process
/// group) and the host's ends of its stdio.
#[derive(Debug)]
pub(crate) struct Command {
    pub pid: Pid,
    pub stdio: Stdio,
}

#[derive(Debug)]
pub(crate) enum Stdio {
    /// stdin's write end, stdout's and stderr's read ends.
    Pipes { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
    /// The terminal's master: stdin, and stdout and stderr merged.
    Tty(OwnedFd),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// Forks `argv` into `app` of the pod at `root`, on a terminal when `tty`
/// is given (sized (cols, rows) if known); `Err` is the message for the
/// host.
pub(crate) fn start(
    root: &Path,
    app: &str,
    argv: &[String],
    tty: Option<Option<(u16, u16)>>,
) -> Result<Command, String> {
    app_pid(&root.join("status"), app)?;
    let name = AcName::new(app).map_err(|_| format!("{app:?} is not an app name"))?;
    let (unit, seccomp) = plan::load_app(root, &name).map_err(|e| e.to_string())?;
    let cgroups = plan::cgroup_procs(root, app, &unit)?;
    let rootfs_path = root.join("apps").join(app).join("rootfs");
    let argv = launch::c_strings(argv)?;
    // The child's ends (given as 0, 1, 2) and ours.
    let (child_fds, ours): ([OwnedFd; 3], Stdio) = if let Some(size) = tty {
        let ptmx = rootfs_path.join("dev").join("pts").join("ptmx");
        let (master, slave) = sys::open_pty(&ptmx).map_err(|e| format!("a terminal from {}: {e}", ptmx.display()))?;
        if let Some((cols, rows)) = size {
            let _ = sys::set_window_size(std::os::fd::AsFd::as_fd(&master), rows, cols);
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        ([dup(&slave)?, dup(&slave)?, slave], Stdio::Tty(master))
    } else {
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        ([stdin_r, stdout_w, stderr_w], Stdio::Pipes { stdin: stdin_w, stdout: stdout_r, stderr: stderr_r })
    };
    let rootfs = CString::new(rootfs_path.into_os_string().into_vec()).map_err(|_| "NUL in the pod root".to_owned())?;
    let (report, report_w) = pipe()?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Fork::Child => {
            drop((report, ours));
            let as_app = AsApp { app, unit: &unit, rootfs: &rootfs, cgroups: &cgroups, seccomp: &seccomp };
            let Err(e) = child(&as_app, &child_fds, tty.is_some(), &argv);
            // A message this short fits the empty pipe whole.
            let _ = nix::unistd::write(&report_w, e.message.as_bytes());
            sys::exit_now(e.code)
        }
        Fork::Parent(pid) => {
            drop((report_w, child_fds));
            let mut message = String::new();
            // EOF once the child exec'd (the pipe is close-on-exec).
            let _ = File::from(report).read_to_string(&mut message);
            if !message.is_empty() {
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(message);
            }
            Ok(Command { pid, stdio: ours })
        }
    }
}

/// What [`crate::become_app`] needs, read by the agent before it forks.
struct AsApp<'a> {
    app: &'a str,
    unit: &'a Unit,
    rootfs: &'a CStr,
    cgroups: &'a [PathBuf],
    seccomp: &'a [SeccompProgram],
}

/// In the forked child: default signal actions (the agent ignores
/// SIGPIPE), its own session (so a client that goes away kills it whole),
/// stdio, the terminal as controlling terminal, the app's root and
/// privileges, exec. TERM is xterm on a terminal, dumb without.
fn child(a: &AsApp<'_>, stdio: &[OwnedFd; 3], tty: bool, argv: &[CString]) -> Result<Infallible, ChildError> {
    let step =
        |what: &'static str| move |e: Errno| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{what}: {e}") };
    sys::reset_signal_dispositions();
    setsid().map_err(step("setsid"))?;
    for (fd, target) in stdio.iter().zip(0..) {
        dup2(fd.as_raw_fd(), target).map_err(step("stdio"))?;
    }
    if tty {
        sys::set_controlling_terminal(std::os::fd::AsFd::as_fd(&std::io::stdin()))
            .map_err(step("controlling terminal"))?;
    }
    let mut env = crate::become_app(a.app, a.unit, a.rootfs, a.cgroups, a.seccomp)?;
    env.push(("TERM".to_owned(), if tty { "xterm" } else { "dumb" }.to_owned()));
    launch::exec(argv, &env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_from_status_json() {
        let running = r#"{"app":"web","state":"running","pid":42,"startedAt":"x","message":"\"pid\":7"}"#;
        assert_eq!(status_pid(running), Some(42));
        assert_eq!(status_pid(r#"{"app":"web","state":"exited","pid":null}"#), None);
        assert_eq!(status_pid(r#"{"app":"web"}"#), None);
        assert_eq!(status_pid(r#"{"pid":1}"#), None, "never PID 1 itself");
    }

    #[test]
    fn app_pid_checks_names_and_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.json"), r#"{"app":"web","state":"running","pid":42}"#).expect("write");
        std::fs::write(dir.path().join("db.json"), r#"{"app":"db","state":"exited","pid":null}"#).expect("write");
        assert_eq!(app_pid(dir.path(), "web"), Ok(42));
        assert_eq!(app_pid(dir.path(), "db"), Err("app db is not running".into()));
        assert_eq!(app_pid(dir.path(), "cache"), Err("no app cache in this pod".into()));
        assert!(app_pid(dir.path(), "../web").is_err_and(|e| e.contains("not an app name")));
    }
}
