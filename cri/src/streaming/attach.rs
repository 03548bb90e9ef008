//! Attach: a running container's output as it comes, and its stdin.
//! pod-init writes each CRI container's stdout and stderr to the
//! container's log file in the CRI log format (`<RFC3339Nano> <stdout|stderr>
//! <F|P> <text>`, P lines being parts of a longer line), and gives an app
//! created with `stdin: true` a FIFO as stdin at `<pod dir>/stdin/<app>`.
//! So attach follows the log from its end at attach time (no second copy
//! of the output is kept anywhere), and writes the client's stdin into the
//! FIFO. A `tty` container runs on a terminal pod-init holds: its output
//! is logged as stdout as it comes (a prompt too, as a `P` part), the
//! FIFO's input is typed into it, and the client's resize events set its
//! size (pod-init's `resize`).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::remotecommand::{Chan, Io, Outcome, TermSize};

/// How often the log is polled for more.
const POLL: Duration = Duration::from_millis(100);

/// One CRI log line: which stream, whether the line is whole (F) or a
/// part (P), and its text (stage0's parser, shared with `pod attach`).
pub fn parse_line(line: &[u8]) -> Option<(Chan, bool, &[u8])> {
    let (stderr, full, text) = stage0::attach::parse_cri_line(line)?;
    Some((if stderr { Chan::Stderr } else { Chan::Stdout }, full, text))
}

/// Turns log bytes into output, a line at a time; a partial line at the
/// end waits for its rest.
#[derive(Debug, Default)]
pub struct LogSplitter {
    pending: Vec<u8>,
}

impl LogSplitter {
    pub fn push(&mut self, data: &[u8]) -> Vec<(Chan, Bytes)> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + nl];
            if let Some((chan, full, text)) = parse_line(line) {
                let mut t = text.to_vec();
                if full {
                    t.push(b'\n');
                }
                out.push((chan, Bytes::from(t)));
            }
            start += nl + 1;
        }
        self.pending.drain(..start);
        out
    }
}

/// The app's stdin FIFO in its pod directory (shared with `pod attach`).
pub use stage0::attach::stdin_fifo;

/// A blocking call into pod-init, run off the async workers.
pub type Hook = std::sync::Arc<dyn Fn() + Send + Sync>;
/// A blocking call setting the terminal's size: rows, columns.
pub type ResizeHook = std::sync::Arc<dyn Fn(u16, u16) + Send + Sync>;

/// What attach needs of the container.
#[derive(Clone)]
pub struct AttachTarget {
    pub log_path: PathBuf,
    /// The log is the app's raw one (a container created without a
    /// `log_path`: pod-init appends both streams as they come to
    /// `<pod dir>/logs/<app>.log`): it is passed on whole, as stdout.
    pub raw_log: bool,
    pub stdin_fifo: PathBuf,
    /// For a `stdin_once` container: run (blocking) once the client's
    /// stdin ended, to have pod-init let go of the FIFO so the app reads
    /// end-of-file.
    pub stdin_once: Option<Hook>,
    /// For a `tty` container: sets the size of its terminal (pod-init's
    /// `resize`), for each of the client's resize events.
    pub resize: Option<ResizeHook>,
}

impl std::fmt::Debug for AttachTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachTarget")
            .field("log_path", &self.log_path)
            .field("raw_log", &self.raw_log)
            .field("stdin_fifo", &self.stdin_fifo)
            .field("stdin_once", &self.stdin_once.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// Follows `log` from its current end, sending output until `running`
/// says the container stopped (and what it wrote last is sent) or the
/// client is gone. With `tty` both streams go out as stdout (a terminal
/// has one). A `raw` log is not CRI lines: it is stdout as it is.
async fn follow(
    (log, raw): (PathBuf, bool),
    out: mpsc::Sender<(Chan, Bytes)>,
    stdout: bool,
    stderr: bool,
    tty: bool,
    running: impl Fn() -> bool + Clone + Send + 'static,
) {
    use std::os::unix::fs::MetadataExt;
    let mut splitter = LogSplitter::default();
    let mut file: Option<(tokio::fs::File, u64)> = None;
    if let Ok(mut f) = tokio::fs::File::open(&log).await {
        if f.seek(std::io::SeekFrom::End(0)).await.is_ok() {
            let ino = f.metadata().await.map(|m| m.ino()).unwrap_or(0);
            file = Some((f, ino));
        }
    }
    let mut buf = vec![0u8; 32 << 10];
    let mut stopped_polls = 0;
    let mut idle_polls = 0u32;
    loop {
        let mut got = 0;
        if let Some((f, _)) = file.as_mut() {
            got = f.read(&mut buf).await.unwrap_or(0);
            let chunks = match raw {
                true if got > 0 => vec![(Chan::Stdout, Bytes::copy_from_slice(&buf[..got]))],
                true => Vec::new(),
                false => splitter.push(&buf[..got]),
            };
            for (chan, data) in chunks {
                let wanted = match chan {
                    Chan::Stdout => stdout,
                    Chan::Stderr => stderr,
                };
                let chan = if tty { Chan::Stdout } else { chan };
                if wanted && out.send((chan, data)).await.is_err() {
                    return;
                }
            }
        }
        if got > 0 {
            continue;
        }
        // The log was rotated (ReopenContainerLog): the new file from its start.
        let now = tokio::fs::metadata(&log).await.map(|m| m.ino()).ok();
        if now.is_some() && now != file.as_ref().map(|(_, ino)| *ino) {
            if let Ok(f) = tokio::fs::File::open(&log).await {
                file = Some((f, now.unwrap_or(0)));
                continue;
            }
        }
        if out.is_closed() {
            return;
        }
        // The container's state is files to read: off the async workers,
        // every few idle polls.
        idle_polls = idle_polls.wrapping_add(1);
        if stopped_polls > 0 || idle_polls.is_multiple_of(5) {
            let r = running.clone();
            if !tokio::task::spawn_blocking(r).await.unwrap_or(false) {
                // Once more after it stopped: its last lines.
                stopped_polls += 1;
                if stopped_polls > 2 {
                    return;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes the client's stdin into the app's FIFO; once it ends, closes our
/// end and runs `once` (a `stdin_once` container's end of input).
async fn feed(fifo: PathBuf, rx: mpsc::Receiver<Bytes>, once: Option<Hook>) {
    if copy_in(fifo, rx).await {
        if let Some(once) = once {
            let _ = tokio::task::spawn_blocking(move || once()).await;
        }
    }
}

/// Copies the client's stdin into the FIFO; `true` when the client ended
/// it (not an error).
async fn copy_in(fifo: PathBuf, mut rx: mpsc::Receiver<Bytes>) -> bool {
    // Opened for writing without blocking: the app holds the read end
    // while it runs (ENXIO otherwise).
    let opened = tokio::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).await;
    let mut w = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(fifo = %fifo.display(), error = %e, "attach: no stdin to write to");
            while rx.recv().await.is_some() {}
            return false;
        }
    };
    while let Some(data) = rx.recv().await {
        let mut rest = &data[..];
        while !rest.is_empty() {
            match w.write(rest).await {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tokio::time::sleep(POLL).await,
                Err(_) => return false,
            }
        }
        // tokio's File writes in the background: done before the next.
        if w.flush().await.is_err() {
            return false;
        }
    }
    true
}

/// Passes the client's terminal sizes on, one at a time, in order.
async fn resize(mut rx: mpsc::Receiver<TermSize>, hook: ResizeHook) {
    while let Some(size) = rx.recv().await {
        let hook = hook.clone();
        let _ = tokio::task::spawn_blocking(move || hook(size.height, size.width)).await;
    }
}

/// Attach: until the container stops.
pub async fn attach(t: AttachTarget, io: Io, running: impl Fn() -> bool + Clone + Send + 'static) -> Outcome {
    let input = io.stdin.map(|rx| tokio::spawn(feed(t.stdin_fifo.clone(), rx, t.stdin_once.clone())));
    let resizer = match (io.resize, t.resize) {
        (Some(rx), Some(hook)) => Some(tokio::spawn(resize(rx, hook))),
        _ => None,
    };
    tokio::select! {
        () = follow((t.log_path, t.raw_log), io.out, io.stdout, io.stderr || io.tty, io.tty, running) => {}
        _ = io.gone => {}
    }
    for h in input.into_iter().chain(resizer) {
        h.abort();
    }
    Outcome::Exited(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn lines_split_by_stream_and_partials_join() {
        let mut s = LogSplitter::default();
        let got = s.push(b"2026-01-01T00:00:00.000000001Z stdout P hel");
        assert!(got.is_empty());
        let got = s.push(
            b"\n2026-01-01T00:00:00.1Z stdout F lo\n2026-01-01T00:00:00.2Z stderr F oops\nbad line\n2026-01-01T00:00:00.3Z stdout F \n",
        );
        let text: Vec<(Chan, &[u8])> = got.iter().map(|(c, b)| (*c, &b[..])).collect();
        assert_eq!(
            text,
            vec![
                (Chan::Stdout, &b"hel"[..]),
                (Chan::Stdout, b"lo\n"),
                (Chan::Stderr, b"oops\n"),
                (Chan::Stdout, b"\n")
            ]
        );
    }

    #[tokio::test]
    async fn follow_starts_at_the_end_and_sees_new_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("c.log");
        std::fs::write(&log, "2026-01-01T00:00:00Z stdout F old\n").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let task = tokio::spawn(follow((log.clone(), false), tx, true, false, false, move || {
            !s2.load(std::sync::atomic::Ordering::SeqCst)
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"2026-01-01T00:00:01Z stderr F skipped\n2026-01-01T00:00:01Z stdout F new\n",
        )
        .unwrap();
        let (chan, data) = rx.recv().await.unwrap();
        assert_eq!((chan, &data[..]), (Chan::Stdout, &b"new\n"[..]));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_raw_log_is_stdout_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("app.log");
        std::fs::write(&log, "before\n").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let task = tokio::spawn(follow((log.clone(), true), tx, true, true, false, move || {
            !s2.load(std::sync::atomic::Ordering::SeqCst)
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"hello\n/ # ").unwrap();
        let (chan, data) = rx.recv().await.unwrap();
        assert_eq!((chan, &data[..]), (Chan::Stdout, &b"hello\n/ # "[..]));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stdin_goes_into_the_fifo() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("app");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The app's end.
        let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let (tx, rx) = mpsc::channel(4);
        // A stdin_once container's hook runs once the client's stdin ended.
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let once: std::sync::Arc<dyn Fn() + Send + Sync> =
            std::sync::Arc::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        let task = tokio::spawn(feed(fifo.clone(), rx, Some(once)));
        tx.send(Bytes::from_static(b"echo hello\n")).await.unwrap();
        assert!(!ended.load(std::sync::atomic::Ordering::SeqCst), "ran before stdin ended");
        drop(tx);
        task.await.unwrap();
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst), "stdin_once hook not run");
        let mut got = String::new();
        let mut r = reader;
        std::io::Read::read_to_string(&mut r, &mut got).unwrap();
        assert_eq!(got, "echo hello\n");
    }
}
