//! An app's terminal (`[X-Pod] TTY=yes`, a pod file's `tty: true`, the
//! CRI's `tty`): a new pseudo-terminal of the app's own devpts
//! (`<rootfs>/dev/pts`, so the app sees its `/dev/pts/<n>`), whose slave is
//! the app's stdin, stdout and stderr and its controlling terminal (the
//! child's `setsid` and TIOCSCTTY: launch.rs). pod-init holds the master:
//! what the app writes is read there and logged as stdout (output.rs:
//! with a terminal there is one stream), and what comes into the app's
//! stdin FIFO (`Stdin=fifo`: attach) is written into it, as typed. The
//! control verb `resize` sets its window size.
//!
//! The FIFO's end of input (every writer gone after `close-stdin`) is
//! passed on as the terminal's end-of-file character (^D), as a user at
//! the keyboard would: a program reading the terminal reads end-of-file.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::sys;

/// The most input kept for a terminal that does not take it yet (the app
/// does not read): no more is read from the FIFO until it is written.
const INPUT_BUF: usize = 4096;
/// The default VEOF character (^D).
const EOF_CHAR: u8 = 0x04;

/// The master end of an app's terminal, and its input.
#[derive(Debug)]
pub struct Terminal {
    master: OwnedFd,
    /// The read end of the app's stdin FIFO, until its end of input.
    input: Option<OwnedFd>,
    /// Read from the FIFO, not yet taken by the terminal.
    pending: Vec<u8>,
}

/// A new terminal of the devpts at `<rootfs>/dev/pts` (its `ptmx`):
/// pod-init's master (non-blocking) and the app's slave.
pub fn open(rootfs: &Path) -> Result<(Terminal, OwnedFd), String> {
    let ptmx = rootfs.join("dev/pts/ptmx");
    // std adds O_CLOEXEC.
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
        .open(&ptmx)
        .map(OwnedFd::from)
        .map_err(|e| format!("tty: open {}: {e}", ptmx.display()))?;
    let slave = sys::pty_peer(master.as_fd()).map_err(|e| format!("tty: the slave of {}: {e}", ptmx.display()))?;
    Ok((Terminal { master, input: None, pending: Vec::new() }, slave))
}

impl Terminal {
    /// A copy of the master, for the log writer to read.
    pub fn reader(&self) -> Result<OwnedFd, String> {
        self.master.try_clone().map_err(|e| format!("tty: dup: {e}"))
    }

    /// Writes what comes into `fifo` (the stdin FIFO's read end) into the
    /// terminal.
    pub fn set_input(&mut self, fifo: OwnedFd) -> Result<(), String> {
        fcntl(fifo.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("stdin: {e}"))?;
        self.input = Some(fifo);
        Ok(())
    }

    /// What to poll: the FIFO for input (POLLIN) while nothing is
    /// pending, else the master until it takes the rest (POLLOUT).
    pub fn poll_fd(&self) -> Option<(BorrowedFd<'_>, nix::poll::PollFlags)> {
        use nix::poll::PollFlags;
        match (&self.input, self.pending.is_empty()) {
            (_, false) => Some((self.master.as_fd(), PollFlags::POLLOUT)),
            (Some(fifo), true) => Some((fifo.as_fd(), PollFlags::POLLIN)),
            (None, true) => None,
        }
    }

    /// The polled fd is ready: reads input or writes what is pending.
    pub fn pump(&mut self) {
        if self.pending.is_empty() {
            self.read_input();
        }
        self.write_pending();
    }

    fn read_input(&mut self) {
        let Some(fifo) = &self.input else { return };
        let mut buf = [0u8; INPUT_BUF];
        match nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
            Ok(0) => {
                // Every writer is gone, pod-init's keeper included.
                self.input = None;
                self.pending.push(EOF_CHAR);
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => self.input = None,
        }
    }

    fn write_pending(&mut self) {
        while !self.pending.is_empty() {
            match nix::unistd::write(&self.master, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The app is gone (EIO): its input goes with it.
                Err(_) => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// `resize`: the terminal is now `rows` by `cols`.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        sys::set_window_size(self.master.as_fd(), rows, cols).map_err(|e| format!("TIOCSWINSZ: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// A terminal of the host's /dev/pts (the test's "rootfs" is /), or a
    /// visible skip where there is none.
    fn host_terminal() -> Option<(Terminal, OwnedFd)> {
        match open(Path::new("/")) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("SKIP: no pseudo-terminal here: {e}");
                None
            }
        }
    }

    /// Reads the master until `want` shows up (or 5 s pass).
    fn read_until(master: &OwnedFd, want: &str) -> String {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(want) {
            let mut buf = [0u8; 256];
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn fifo_input_reaches_the_slave_and_its_end_is_eof() {
        let Some((mut term, slave)) = host_terminal() else { return };
        // Close-on-exec: the other test's `stty` must not hold the write end.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        term.set_input(r).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"hello\n").unwrap();
        term.pump();
        // The line discipline echoes what was typed: on the master.
        assert!(read_until(&term.master, "hello").contains("hello"));
        let mut slave = std::fs::File::from(slave);
        let mut line = [0u8; 64];
        let n = slave.read(&mut line).unwrap();
        assert_eq!(&line[..n], b"hello\n");
        // The writer leaves: ^D, which a canonical read sees as end-of-file.
        drop(w);
        // A child another test forks holds a copy of the write end until
        // it execs (close-on-exec): the end of input may come a bit later.
        let deadline = Instant::now() + Duration::from_secs(5);
        term.pump();
        while term.input.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            term.pump();
        }
        assert!(term.input.is_none() && term.pending.is_empty(), "{:?} {:?}", term.input, term.pending);
        assert_eq!(slave.read(&mut line).unwrap(), 0, "no end-of-file after the FIFO's end");
        assert!(term.poll_fd().is_none(), "nothing left to poll");
    }

    #[test]
    fn output_and_size() {
        let Some((term, slave)) = host_terminal() else { return };
        let mut s = std::fs::File::from(slave.try_clone().unwrap());
        s.write_all(b"out\n").unwrap();
        // ONLCR: a terminal's newline is CR LF.
        let reader = term.reader().unwrap();
        assert!(read_until(&reader, "out\r\n").contains("out\r\n"));
        term.resize(42, 132).unwrap();
        let size = nix_winsize(&slave);
        assert_eq!(size, (42, 132));
    }

    fn nix_winsize(fd: &OwnedFd) -> (u16, u16) {
        let out = std::process::Command::new("stty")
            .arg("size")
            .stdin(std::process::Stdio::from(fd.try_clone().unwrap()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (r, c) = text.split_once(' ').unwrap_or_else(|| panic!("stty size: {text:?}"));
        (r.parse().unwrap(), c.parse().unwrap())
    }
}
