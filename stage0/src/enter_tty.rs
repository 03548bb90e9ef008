//! `pod enter -t` in a namespace pod: the command runs on a new terminal of
//! the app's own devpts (so `tty` names the app's `/dev/pts/<n>`), never on
//! the user's: a host terminal inside a pod could be typed into (TIOCSTI)
//! or its escape sequences abused, so podman allocates one too.
//!
//! `pod enter` forks before it joins anything. The child joins the pod as
//! [`crate::enter::enter`] does; in the pod's mount namespace, still host
//! root, it opens the terminal through the app's `dev/pts/ptmx`, sends the
//! master back over a socket pair (SCM_RIGHTS) and makes the slave its
//! stdin, stdout and stderr, so nothing of the host's terminal remains in
//! the process that then takes the app's privileges. The parent, unchanged
//! on the host, sizes the terminal, then proxies between it and the user's
//! (raw meanwhile, SIGWINCH passed on: [`crate::terminal::proxy`]) and
//! exits with the child's status, the command's.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use stage2_init::term::{fork, Fork};

use crate::enter::EnterError;
use crate::exit::ExitCodeOf;

/// The first byte of the child's message: the master follows, or an error.
const MASTER: u8 = b'T';
const ERROR: u8 = b'E';
/// In the child: the master was sent.
static SENT: AtomicBool = AtomicBool::new(false);

/// Runs `argv` in app `app` of the pod whose PID 1 has host pid `pid`, on
/// a terminal of the app's; returns the command's status. Single-threaded
/// callers only (it forks).
pub fn enter_tty(pid: i32, app: &str, argv: &[String]) -> Result<i32, EnterError> {
    let io = |op| move |e: nix::errno::Errno| EnterError::Io { op, path: "pod enter -t".into(), source: e.into() };
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(io("socketpair"))?;
    match fork().map_err(io("fork"))? {
        Fork::Child => {
            drop(ours);
            let code = match crate::enter::enter_on(pid, app, argv, Some(&theirs)) {
                Ok(code) => code,
                Err(e) => {
                    let code = e.exit().code();
                    let mut msg = vec![ERROR, code];
                    msg.extend_from_slice(e.to_string().as_bytes());
                    // Once the terminal was sent, the parent reads it
                    // and no longer the socket: stderr is the terminal.
                    if SENT.load(Ordering::Relaxed)
                        || sendmsg::<()>(theirs.as_raw_fd(), &[IoSlice::new(&msg)], &[], MsgFlags::empty(), None)
                            .is_err()
                    {
                        eprintln!("pod: {e}\r");
                    }
                    i32::from(code)
                }
            };
            stage2_init::term::exit_now(code)
        }
        Fork::Parent(child) => {
            drop(theirs);
            let master = match receive(&ours) {
                Ok(m) => m,
                Err(e) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    return Err(e);
                }
            };
            // Sized before the command starts: it may ask at once.
            if let Some((cols, rows)) = crate::terminal::term_size() {
                let _ = stage2_init::term::set_window_size(master.as_fd(), rows, cols);
            }
            let _ = nix::unistd::write(&ours, &[1]);
            let code = crate::terminal::proxy(master, child).map_err(|e| EnterError::Io {
                op: "relay",
                path: "the terminal".into(),
                source: e,
            })?;
            // An error after the terminal was made came on it; its code
            // is the status.
            Ok(code)
        }
    }
}

/// The master the child sends, or its error.
fn receive(sock: &OwnedFd) -> Result<OwnedFd, EnterError> {
    let (buf, fd) = stage2_init::term::recv_with_fd(sock.as_fd(), 4096).map_err(|e| EnterError::Io {
        op: "receive the terminal from",
        path: "pod enter's child".into(),
        source: e.into(),
    })?;
    match (buf.first().copied(), fd) {
        (Some(MASTER), Some(fd)) => Ok(fd),
        (Some(ERROR), _) if buf.len() >= 2 => {
            Err(EnterError::Joined { code: buf[1], message: String::from_utf8_lossy(&buf[2..]).into_owned() })
        }
        _ => Err(EnterError::Joined { code: 1, message: "pod enter's child ended before it made a terminal".into() }),
    }
}

/// In the child, in the pod's mount namespace (`rootfs` is the app's
/// root there): a new terminal of the app's devpts; the master goes to
/// the parent over `sock`, the slave becomes stdin, stdout and stderr.
/// Waits until the parent has sized it.
pub(crate) fn open_in(sock: &OwnedFd, rootfs: &Path) -> Result<(), EnterError> {
    let ptmx = rootfs.join("dev/pts/ptmx");
    let (master, slave) = stage2_init::term::open_pty(&ptmx).map_err(|e| EnterError::Io {
        op: "open a terminal at",
        path: ptmx.clone(),
        source: e,
    })?;
    let io = |op| {
        let path = ptmx.clone();
        move |e: nix::errno::Errno| EnterError::Io { op, path, source: e.into() }
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&[MASTER])],
        &[ControlMessage::ScmRights(&[master.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .map_err(io("send the master of"))?;
    SENT.store(true, Ordering::Relaxed);
    drop(master);
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).map_err(io("make stdio the slave of"))?;
    }
    drop(slave);
    let mut ack = [0u8; 1];
    let _ = nix::unistd::read(sock.as_raw_fd(), &mut ack);
    Ok(())
}
