//! An app's standard streams, set up anew at each start. By default its
//! stdout and stderr are its log file (`logs/<app>.log`, or `LogPath=`),
//! appended to as they come, and stdin is /dev/null. With `LogFormat=cri`
//! stdout and stderr are a pipe each, which the supervision loop reads
//! (no threads) and writes into the log file as CRI log lines (crilog.rs);
//! the file can then be reopened (`reopen-log`) once it was renamed away.
//! With `Stdin=fifo`, stdin is the FIFO `/stdin/<app>`, opened for reading
//! and writing, so the app sees no end of input when a writer leaves.
//! With `TTY=yes` all three are the slave of a terminal (tty.rs), whose
//! master is read the same way (as stdout, in either format), each read
//! logged at once, an unfinished line as a part (`P`), so a prompt is seen
//! as it is written; the stdin FIFO is then pod-init's to read.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use spec::stdio::LogFormat;
use spec::unit::Unit;

use super::tty::{self, Terminal};
use crate::crilog::{Splitter, Stream, CRI_LINE_MAX};
use crate::log;

/// How much of a pipe one wakeup reads, so a chatty app cannot starve the
/// others (and PID 1's other work).
const READS_PER_WAKEUP: usize = 4;
/// The most one drain reads per pipe: a full pipe of the largest size an
/// unprivileged app may set (1 MiB), and no endless loop when something
/// that escaped the app's process group keeps writing.
const DRAIN_READS: usize = (1 << 20) / CRI_LINE_MAX;

/// The streams of one start of an app, until it is launched.
#[derive(Debug)]
pub struct Stdio {
    /// `None`: /dev/null.
    pub stdin: Option<OwnedFd>,
    /// pod-init's own write end of the stdin FIFO: while it is open the
    /// app never reads end-of-file, whoever comes and goes.
    stdin_keeper: Option<OwnedFd>,
    /// The log file (raw), or the write ends of the pipes (CRI).
    out: OwnedFd,
    err: Option<OwnedFd>,
    /// The log writer, once the app is launched.
    writer: Option<LogWriter>,
    terminal: Option<Terminal>,
}

impl Stdio {
    pub fn stdout(&self) -> BorrowedFd<'_> {
        self.out.as_fd()
    }

    pub fn stderr(&self) -> BorrowedFd<'_> {
        self.err.as_ref().unwrap_or(&self.out).as_fd()
    }

    /// The streams are a terminal's slave: the app's controlling terminal.
    pub fn terminal(&self) -> bool {
        self.terminal.is_some()
    }

    /// The app is launched: our copies of its ends go. What pod-init
    /// keeps: the log writer, the stdin FIFO's keeper, the terminal.
    pub fn launched(self) -> (Option<LogWriter>, Option<OwnedFd>, Option<Terminal>) {
        (self.writer, self.stdin_keeper, self.terminal)
    }
}

/// The log file of an app whose output pod-init reads (`LogFormat=cri`,
/// or a terminal), and the read ends of its stdout and stderr pipes (or
/// of its terminal's master).
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    /// `None` once a reopen failed even after closing the old file.
    file: Option<File>,
    pipes: Vec<(OwnedFd, Splitter)>,
    /// `LogFormat=raw` (a terminal's output): written as read.
    raw: bool,
    /// Each read is written at once, an unfinished line as a part.
    eager: bool,
    write_failed: bool,
}

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("log {}: {e}", path.display()))
}

/// The log file of an app, as pod-init (rooted at `root`) sees it.
pub fn log_path(root: &Path, logs_dir: &Path, app: &str, unit: &Unit) -> PathBuf {
    match &unit.log_path {
        Some(p) => root.join(p.trim_start_matches('/')),
        None => logs_dir.join(format!("{app}.log")),
    }
}

/// Opens what app `app` (its rootfs at `rootfs`) gets as stdin, stdout
/// and stderr for one start; for one of its event handlers (`handler`),
/// its log the same way, but stdin /dev/null and never a terminal.
pub fn open(
    root: &Path,
    logs_dir: &Path,
    app: &str,
    unit: &Unit,
    rootfs: &Path,
    handler: bool,
) -> Result<Stdio, String> {
    let path = log_path(root, logs_dir, app, unit);
    let file = open_log(&path)?;
    let (stdin, stdin_keeper) = match unit.stdin_fifo && !handler {
        true => open_fifo(root, app).map(|(r, w)| (Some(r), Some(w)))?,
        false => (None, None),
    };
    let raw = unit.log_format == LogFormat::Raw;
    if unit.tty && !handler {
        let (mut terminal, slave) = tty::open(rootfs)?;
        if let Some(fifo) = stdin {
            terminal.set_input(fifo)?;
        }
        let master = terminal.reader()?;
        let pipes = vec![(master, Splitter::new(Stream::Stdout))];
        let writer = LogWriter { path, file: Some(file), pipes, raw, eager: true, write_failed: false };
        let stdin = Some(slave.try_clone().map_err(|e| format!("tty: dup: {e}"))?);
        let (writer, terminal) = (Some(writer), Some(terminal));
        return Ok(Stdio { stdin, stdin_keeper, out: slave, err: None, writer, terminal });
    }
    if raw {
        return Ok(Stdio { stdin, stdin_keeper, out: OwnedFd::from(file), err: None, writer: None, terminal: None });
    }
    let pipe = || {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        // Only our end is non-blocking: the app's writes block when we lag.
        nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| format!("pipe: {e}"))?;
        Ok::<_, String>((r, w))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pipes = vec![(out_r, Splitter::new(Stream::Stdout)), (err_r, Splitter::new(Stream::Stderr))];
    let writer = LogWriter { path, file: Some(file), pipes, raw, eager: false, write_failed: false };
    Ok(Stdio { stdin, stdin_keeper, out: out_w, err: Some(err_w), writer: Some(writer), terminal: None })
}

/// Makes `/stdin/<app>` (a FIFO, mode 0600, in a directory only root may
/// enter) unless it is there, and opens it: the app's read end (blocking,
/// as a stdin is) and pod-init's keeper write end. The app's end is
/// read-only so that it reads end-of-file once every writer, the keeper
/// included (`close-stdin`), has closed.
fn open_fifo(root: &Path, app: &str) -> Result<(OwnedFd, OwnedFd), String> {
    let dir = root.join("stdin");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(format!("stdin {}: {e}", dir.display())),
        _ => {}
    }
    let path = dir.join(app);
    match nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(format!("stdin {}: mkfifo: {e}", path.display())),
    }
    let is_fifo = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        return Err(format!("stdin {}: not a FIFO", path.display()));
    }
    let err = |e: std::io::Error| format!("stdin {}: {e}", path.display());
    // Non-blocking, or opening the read end would wait for a writer.
    let read = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(&path)
        .map_err(err)?;
    let keeper = OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(&path)
        .map_err(err)?;
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| format!("stdin {}: {e}", path.display()))?;
    Ok((OwnedFd::from(read), OwnedFd::from(keeper)))
}

impl LogWriter {
    /// The pipes still open, for poll(2).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pipes.iter().map(|(fd, _)| fd.as_fd())
    }

    /// Reads pipe `k` (in [`LogWriter::fds`] order), a few buffers at most,
    /// and writes the lines; at its end, the last part and it is closed.
    pub fn read(&mut self, k: usize) {
        self.pump(k, READS_PER_WAKEUP);
    }

    /// Reads every pipe until nothing is waiting in it: the app ended, and
    /// what it wrote belongs in the log before its end is published.
    pub fn drain(&mut self) {
        for k in (0..self.pipes.len()).rev() {
            self.pump(k, DRAIN_READS);
        }
    }

    /// The last word: drains, writes every unfinished line as a part and
    /// closes the pipes (the pod ends).
    pub fn close(&mut self) {
        self.drain();
        let now = SystemTime::now();
        for (_, splitter) in &mut self.pipes {
            if let Err(e) = splitter.finish(now, &mut Sink(self.file.as_mut())) {
                note(&mut self.write_failed, &self.path, &e);
            }
        }
        self.pipes.clear();
    }

    fn pump(&mut self, k: usize, reads: usize) {
        let mut buf = [0u8; CRI_LINE_MAX];
        for _ in 0..reads {
            let Some((fd, splitter)) = self.pipes.get_mut(k) else { return };
            let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => 0,
            };
            let now = SystemTime::now();
            let sink = &mut Sink(self.file.as_mut());
            let written = match (n, self.raw) {
                (0, true) => Ok(()),
                (_, true) => sink.write_all(&buf[..n]),
                (0, false) => splitter.finish(now, sink),
                (_, false) if self.eager => {
                    splitter.feed(&buf[..n], now, sink).and_then(|()| splitter.finish(now, sink))
                }
                (_, false) => splitter.feed(&buf[..n], now, sink),
            };
            if let Err(e) = written {
                note(&mut self.write_failed, &self.path, &e);
            }
            if n == 0 {
                self.pipes.remove(k);
                return;
            }
        }
    }

    /// `reopen-log`: opens the log's path anew (a new file if the old one
    /// was renamed away); the old file is closed. Where that fails while
    /// the old file is open, it is closed first and the path opened again:
    /// on a VM's 9p share the open file pins the old name (the guest
    /// kernel keeps its dentry, qemu's fid the host path the host renamed),
    /// so the new file can only be made once the old one is let go. If
    /// that fails too, output is dropped until the next reopen.
    pub fn reopen(&mut self) -> Result<(), String> {
        let file = match open_log(&self.path) {
            Ok(f) => f,
            Err(_) => {
                self.file = None;
                open_log(&self.path)?
            }
        };
        self.file = Some(file);
        self.write_failed = false;
        Ok(())
    }
}

/// The log file, or nowhere when there is none (a failed reopen): lines
/// are then dropped, and the write error says so once.
struct Sink<'a>(Option<&'a mut File>);

impl std::io::Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.as_mut() {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::new(ErrorKind::NotFound, "the log could not be reopened")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// A log that cannot be written is said once; the pipes are read on, so
/// the app never blocks on its output.
fn note(failed: &mut bool, path: &Path, e: &std::io::Error) {
    if !*failed {
        *failed = true;
        log!("log {}: {e} (output is dropped until the log is reopened)", path.display());
    }
}
