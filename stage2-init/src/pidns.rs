//! A pid namespace of the app's own (`[X-Pod] PIDNamespace=own`; the CRI's
//! `NamespaceMode_CONTAINER`, Kubernetes' default without
//! `shareProcessNamespace`): the app's program is PID 1 of a new pid
//! namespace and sees only its own processes.
//!
//! The forked child of pod-init unshares the namespace and forks once
//! more; the grandchild is the namespace's PID 1 and goes on to become the
//! app. The child stays as a waiter: pod-init knows its pid, signals reach
//! both through the process group (as for every app), the waiter ignores
//! them and exits with the app's status when it ends, and the app dies
//! with the waiter (PR_SET_PDEATHSIG). As any PID 1, the app only gets the
//! signals it handles, so a stop ends with SIGKILL after the stop timeout
//! unless it handles SIGTERM (as with Docker). In the app's own mount
//! namespace, /proc is mounted again for the new namespace, with the same
//! masked and read-only entries stage1 gave the old one.

use std::os::fd::RawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::exit::EXIT_LAUNCH_FAILED;
use crate::launch::ChildError;
use crate::sys::{self, Fork};

fn failed(what: &'static str) -> impl Fn(Errno) -> ChildError {
    move |e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{what}: {e}") }
}

/// Unshares a pid namespace and forks: returns in the grandchild (PID 1
/// there); the child waits for it and exits with its status. `report` is
/// the launch report pipe, which the waiter closes so that the grandchild's
/// exec is what pod-init sees.
pub(crate) fn enter(report: RawFd) -> Result<(), ChildError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(failed("unshare pid namespace"))?;
    // The waiter holds `alive_w` until it ends: the app, whose parent is
    // out of sight (getppid is 0 for PID 1), learns from a hang-up whether
    // it died before PR_SET_PDEATHSIG was in place.
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(failed("pipe"))?;
    match sys::fork().map_err(failed("fork into the pid namespace"))? {
        Fork::Child => {
            drop(alive_w);
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(failed("PR_SET_PDEATHSIG"))?;
            let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&alive_r), nix::poll::PollFlags::POLLIN)];
            let hung_up = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).map_err(failed("poll"))? > 0;
            if hung_up {
                return Err(ChildError { code: EXIT_LAUNCH_FAILED, message: "the waiter is gone".into() });
            }
            Ok(())
        }
        Fork::Parent(app) => {
            // Nothing of pod-init's stays open here but `alive_w` (as fd 3):
            // not its control connections, and not the report pipe, whose
            // grandchild's copy tells pod-init of the exec.
            let _ = report;
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&alive_w), 3);
            sys::close_fds_from(4);
            std::mem::forget((alive_r, alive_w));
            for s in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGCHLD)) {
                // SAFETY: SIG_IGN runs no code in signal context.
                let _ = unsafe { signal(s, SigHandler::SigIgn) };
            }
            let code = loop {
                match waitpid(app, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Err(Errno::EINTR) | Ok(_) => continue,
                    Err(_) => break EXIT_LAUNCH_FAILED,
                }
            };
            sys::exit_now(code)
        }
    }
}

/// A mount below /proc, as /proc/self/mountinfo lists it.
struct Sub {
    point: String,
    fstype: String,
    read_only: bool,
}

/// Mounts a /proc of this (new) pid namespace over the app's, in the app's
/// own mount namespace, and masks and makes read-only again what was
/// below the old one: tmpfs over directories, /dev/null over files,
/// read-only binds of /proc entries.
pub(crate) fn remount_proc() -> Result<(), ChildError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("read mountinfo: {e}") })?;
    let subs: Vec<Sub> = info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (point, opts) = (*f.get(4)?, *f.get(5)?);
            point.starts_with("/proc/").then(|| Sub {
                point: point.to_owned(),
                fstype: right.split(' ').next().unwrap_or_default().to_owned(),
                read_only: opts.split(',').any(|o| o == "ro"),
            })
        })
        .collect();
    let none = None::<&str>;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    umount2("/proc", MntFlags::MNT_DETACH).map_err(failed("detach the pod's /proc"))?;
    mount(Some("proc"), "/proc", Some("proc"), hardened, none).map_err(failed("mount /proc"))?;
    for sub in subs {
        let point = Path::new(&sub.point);
        if std::fs::symlink_metadata(point).is_err() {
            continue;
        }
        match sub.fstype.as_str() {
            "tmpfs" => mount(Some("tmpfs"), point, Some("tmpfs"), hardened | MsFlags::MS_RDONLY, none)
                .map_err(failed("mask a /proc directory"))?,
            "proc" => {
                mount(Some(point), point, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
                    .map_err(failed("bind a /proc entry"))?;
                if sub.read_only {
                    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened;
                    mount(none, point, none, flags, none).map_err(failed("read-only /proc entry"))?;
                }
            }
            _ => mount(Some("/dev/null"), point, none, MsFlags::MS_BIND, none).map_err(failed("mask a /proc file"))?,
        }
    }
    Ok(())
}
