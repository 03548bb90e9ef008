//! The user's terminal under `pod run -it`, `pod enter -t` and `pod
//! attach`: raw while a pod's terminal is on it (the pod's line discipline
//! does the echo, line editing and ^C), restored on every way out; its
//! size; the detach keys; and the proxy between it and the master of a
//! terminal `pod enter -t` opened in an app's devpts.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// podman's default detach keys: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// The terminal on stdin, raw while this lives, restored after (also on
/// SIGTERM, SIGHUP and SIGINT: see [`Signals`]).
#[derive(Debug)]
pub struct RawMode(rustix::termios::Termios);

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is no terminal.
    pub fn enter() -> Option<RawMode> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }

    fn restore(&self) {
        let _ = rustix::termios::tcsetattr(io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The size of the terminal on stdin: (cols, rows).
pub fn term_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(io::stdin()).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    rustix::termios::isatty(io::stdin())
}

/// Parses detach keys as podman writes them: comma-separated `ctrl-X`
/// (X a letter or one of `@[\]^_`) or single characters; empty: none.
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|k| {
            let bad = || format!("detach keys {s:?}: {k:?} is not ctrl-<letter or @[\\]^_> or one character");
            match k.strip_prefix("ctrl-") {
                Some(c) if c.len() == 1 => {
                    let b = c.as_bytes()[0].to_ascii_uppercase();
                    if (b'@'..=b'_').contains(&b) {
                        Ok(b & 0x1f)
                    } else {
                        Err(bad())
                    }
                }
                Some(_) => Err(bad()),
                None if k.len() == 1 && k.is_ascii() => Ok(k.as_bytes()[0]),
                None => Err(bad()),
            }
        })
        .collect()
}

/// Finds the detach sequence in the input as it comes, across reads: what
/// may be its start is held back until the next bytes say.
#[derive(Debug, Default)]
pub struct DetachKeys {
    seq: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    pub fn new(seq: Vec<u8>) -> Self {
        DetachKeys { seq, matched: 0 }
    }

    /// The bytes to pass on, and whether the sequence was typed (what
    /// follows it is dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        if self.seq.is_empty() {
            out.extend_from_slice(input);
            return (out, false);
        }
        for &b in input {
            if b == self.seq[self.matched] {
                self.matched += 1;
                if self.matched == self.seq.len() {
                    return (out, true);
                }
            } else {
                // Not the sequence after all: what was held goes on.
                out.extend_from_slice(&self.seq[..self.matched]);
                self.matched = 0;
                if b == self.seq[0] {
                    self.matched = 1;
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

/// SIGWINCH, SIGTERM, SIGHUP and SIGINT, blocked and read from a signalfd
/// while a terminal session lasts.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

/// What a read of [`Signals`] asks for.
#[derive(Debug)]
pub enum Signalled {
    Resized,
    /// Leave: 128 + the signal.
    Quit(i32),
}

/// Blocks the signals [`Signals`] reads, in this thread and so in the
/// threads it starts after: call it before any thread starts, or one of
/// them would take them (SIGWINCH lost, SIGTERM fatal with the terminal
/// left raw). Children have them unblocked again (std resets the mask).
pub fn block_signals() -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGWINCH, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block().map_err(io::Error::from)?;
    Ok(set)
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        let set = block_signals()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)?;
        Ok(Signals { fd })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The signals that came.
    pub fn read(&mut self) -> Vec<Signalled> {
        let mut got = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            got.push(if signo == Signal::SIGWINCH as i32 { Signalled::Resized } else { Signalled::Quit(128 + signo) });
        }
        got
    }
}

/// Writes all of `data` to a non-blocking fd, waiting while it is full.
pub fn write_all_nb(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::from(100u16));
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK));
    }
}

fn set_size(master: BorrowedFd<'_>) {
    if let Some((cols, rows)) = term_size() {
        let _ = stage2_init::term::set_window_size(master, rows, cols);
    }
}

/// `pod enter -t`: joins this process's stdin and stdout to `master`, the
/// terminal the command of process `child` runs on, until `child` ends;
/// returns its status (128+signal if killed). The user's terminal is raw
/// meanwhile and its size follows along; stdin's end (not a terminal) is
/// typed as ^D.
pub fn proxy(master: OwnedFd, child: Pid) -> io::Result<i32> {
    let mut signals = Signals::new()?;
    let raw = RawMode::enter();
    set_nonblocking(master.as_fd());
    if raw.is_some() {
        set_size(master.as_fd());
    }
    let stdin = io::stdin();
    let mut stdin_open = true;
    let mut master_open = true;
    let mut out = io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if master_open {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let stdin_at = if master_open { 2 } else { 1 };
        if ready[0] {
            for s in signals.read() {
                match s {
                    Signalled::Resized => set_size(master.as_fd()),
                    // The command is the pod's: it goes on.
                    Signalled::Quit(code) => return Ok(code),
                }
            }
        }
        if master_open && ready[1] {
            master_open = copy_out(master.as_fd(), &mut out, &mut buf);
        }
        if stdin_open && ready.get(stdin_at).copied().unwrap_or(false) {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    stdin_open = false;
                    let _ = write_all_nb(master.as_fd(), &[0x04]);
                }
                Ok(n) => {
                    let _ = write_all_nb(master.as_fd(), &buf[..n]);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => stdin_open = false,
            }
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status) => {
                // What it wrote last.
                while master_open && copy_out(master.as_fd(), &mut out, &mut buf) {}
                drop(raw);
                return Ok(match status {
                    WaitStatus::Exited(_, code) => code,
                    WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
                    _ => 1,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies what the master has to `out`; `false` once it has no more to
/// give (every slave closed: EIO) or for now (EAGAIN, only after a read).
fn copy_out(master: BorrowedFd<'_>, out: &mut impl Write, buf: &mut [u8]) -> bool {
    match nix::unistd::read(master.as_raw_fd(), buf) {
        Ok(0) | Err(Errno::EIO) => false,
        Ok(n) => {
            let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
            true
        }
        Err(Errno::EAGAIN | Errno::EINTR) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_podman_writes_them() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![0x10, 0x11]);
        assert_eq!(parse_detach_keys("ctrl-@,a,ctrl-_").unwrap(), vec![0, b'a', 0x1f]);
        assert!(parse_detach_keys("").unwrap().is_empty());
        for bad in ["ctrl-", "ctrl-pq", "alt-x", "ab", "ctrl-1"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_detach_sequence_is_found_across_reads_and_held_back() {
        let mut d = DetachKeys::new(vec![0x10, 0x11]);
        assert_eq!(d.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // ^P alone waits for what follows; ^P then x goes on as typed.
        assert_eq!(d.feed(&[0x10]), (Vec::new(), false));
        assert_eq!(d.feed(b"x"), (vec![0x10, b'x'], false));
        assert_eq!(d.feed(&[0x10, 0x10]), (vec![0x10], false));
        assert_eq!(d.feed(&[0x11, b'z']), (Vec::new(), true));
        let mut none = DetachKeys::new(Vec::new());
        assert_eq!(none.feed(&[0x10, 0x11]), (vec![0x10, 0x11], false));
    }
}
