//! The enter agent: runs an [`EnterRequest`]'s command inside a running
//! app, as the app's own processes run ([`crate::become_app`]: its root,
//! user, capabilities, no_new_privs and seccomp filter, its environment),
//! and relays the output and exit status to the host as [`Frame`]s. One
//! request at a time.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{dup2, setsid, Pid};
use spec::name::AcName;
use spec::unit::Unit;
use spec::vm::{EnterRequest, Frame, MAX_FRAME};

use super::agent::Port;
use crate::exit::{Termination, EXIT_LAUNCH_FAILED};
use crate::launch::{self, ChildError};
use crate::plan;
use crate::privs::SeccompProgram;
use crate::sys::{self, Fork};

/// How often a command whose output is quiet is checked for having ended
/// (a background process it left may hold the pipe open).
const CHECK_EXIT: Duration = Duration::from_millis(200);

/// Answers requests from `port` for the pod at `root`, forever.
pub(crate) fn serve(mut port: Port, root: &Path) {
    loop {
        let line = port.read_line();
        if line.trim().is_empty() {
            continue;
        }
        let last = match EnterRequest::decode(&line) {
            None => Frame::Error("not an enter request".into()),
            Some(request) => match start(root, &request) {
                Err(message) => Frame::Error(message),
                Ok(command) => match relay(&mut port, command) {
                    Some(code) => Frame::Exit(code),
                    None => continue, // the host went away
                },
            },
        };
        let _ = port.send(&last.encode());
    }
}

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

/// A started command: its pid and the read end of its output.
#[derive(Debug)]
struct Command {
    pid: Pid,
    output: File,
}

/// Forks the command into the app; `Err` is the message for the host.
fn start(root: &Path, request: &EnterRequest) -> Result<Command, String> {
    let app = &request.app;
    app_pid(&root.join("status"), app)?;
    let name = AcName::new(app).map_err(|_| format!("{app:?} is not an app name"))?;
    let (unit, seccomp) = plan::load_app(root, &name).map_err(|e| e.to_string())?;
    let cgroups = plan::cgroup_procs(root, &unit);
    let rootfs = root.join("apps").join(app).join("rootfs");
    let rootfs = CString::new(rootfs.into_os_string().into_vec()).map_err(|_| "NUL in the pod root".to_owned())?;
    let argv = launch::c_strings(&request.argv)?;
    let null = File::options().read(true).open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let (output, output_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (report, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Fork::Child => {
            drop((output, report));
            let as_app = AsApp { app, unit: &unit, rootfs: &rootfs, cgroups: &cgroups, seccomp: &seccomp };
            let Err(e) = child(&as_app, &null, &output_w, &argv);
            // A message this short fits the empty pipe whole.
            let _ = nix::unistd::write(&report_w, e.message.as_bytes());
            sys::exit_now(e.code)
        }
        Fork::Parent(pid) => {
            drop((output_w, report_w));
            let mut message = String::new();
            // EOF once the child exec'd (the pipe is close-on-exec).
            let _ = File::from(report).read_to_string(&mut message);
            if !message.is_empty() {
                let _ = waitpid(pid, None);
                return Err(message);
            }
            Ok(Command { pid, output: File::from(output) })
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

/// In the forked child: own session, stdio, the app's root and privileges,
/// exec. The terminal-less command gets TERM=dumb.
fn child(a: &AsApp<'_>, null: &File, output: &OwnedFd, argv: &[CString]) -> Result<Infallible, ChildError> {
    let step =
        |what: &'static str| move |e: Errno| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{what}: {e}") };
    // Its own process group, so a host that goes away can kill it whole.
    setsid().map_err(step("setsid"))?;
    dup2(null.as_raw_fd(), 0).map_err(step("stdin"))?;
    dup2(output.as_raw_fd(), 1).map_err(step("stdout"))?;
    dup2(output.as_raw_fd(), 2).map_err(step("stderr"))?;
    let mut env = crate::become_app(a.app, a.unit, a.rootfs, a.cgroups, a.seccomp)?;
    env.push(("TERM".to_owned(), "dumb".to_owned()));
    launch::exec(argv, &env)
}

/// Sends the command's output as it comes; returns its exit status, or
/// `None` if the host went away (the command is killed then).
fn relay(port: &mut Port, mut command: Command) -> Option<i32> {
    let _ = fcntl(command.output.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buf = vec![0u8; MAX_FRAME];
    let mut ended = None;
    loop {
        let mut fds = [PollFd::new(command.output.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(u16::try_from(CHECK_EXIT.as_millis()).unwrap_or(200)));
        // Drain what is there: up to EOF or until the pipe is empty.
        let eof = loop {
            match command.output.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    if port.send(&Frame::Output(buf[..n].to_vec()).encode()).is_err() {
                        let _ = killpg(command.pid, Signal::SIGKILL);
                        let _ = waitpid(command.pid, None);
                        return None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break e.kind() != ErrorKind::WouldBlock,
            }
        };
        if ended.is_some() || eof {
            break;
        }
        // The host went away (a timed out ExecSync killed `pod enter`): so
        // does the command, else it would hold this one-at-a-time agent.
        if port.host_gone() {
            let _ = killpg(command.pid, Signal::SIGKILL);
            let _ = waitpid(command.pid, None);
            return None;
        }
        // Ended with the pipe still held open by something it left behind:
        // one more drain above, then done.
        let status = waitpid(command.pid, Some(WaitPidFlag::WNOHANG));
        ended = status.ok().and_then(Termination::from_wait).map(|(_, end)| end);
    }
    let end = match ended {
        Some(end) => Some(end),
        None => waitpid(command.pid, None).ok().and_then(Termination::from_wait).map(|(_, end)| end),
    };
    Some(end.map_or(EXIT_LAUNCH_FAILED, Termination::exit_code))
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
