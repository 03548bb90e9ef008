//! Commands in a running container (ExecSync, Exec): each runs as a child
//! `pod enter --app APP POD -- CMD...`, which joins the pod's namespaces
//! and takes the app's privileges with pod-init's own code. The CRI server
//! is a multi-threaded tokio process and must never setns itself.
//!
//! The command is a child of `pod enter` (in the container's pid
//! namespace, but visible here): on a timeout, or when a client goes away,
//! the whole tree under `pod enter` is killed, not `pod enter` alone: each
//! process stopped first (a stopped process forks no more), then killed;
//! `pod enter` reaps its command, else the command would stay a zombie in
//! the container (reparented to its PID 1, which may reap nothing).

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use stage0::paths::Dirs;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::remotecommand::{Chan, Io, Outcome, TermSize};
use crate::container::Container;

/// ExecSync's output cap per stream (kubelet's, 16 MiB).
pub const MAX_OUTPUT: u64 = 16 << 20;
/// How long output is still read after the command exits (a background
/// child may hold its stdout open forever).
const DRAIN: Duration = Duration::from_secs(2);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a command runs: an app of a pod.
#[derive(Debug, Clone)]
pub struct Target {
    pub dirs: Dirs,
    pub pod: String,
    pub app: String,
}

impl Target {
    pub fn of(c: &Container, dirs: &Dirs) -> Target {
        Target { dirs: dirs.clone(), pod: c.sandbox.pod.uuid.clone(), app: c.record.app.clone() }
    }

    /// `pod enter` for `argv`.
    fn command(&self, argv: &[String], tty: bool) -> Command {
        let mut cmd = Command::new(stage0::run::bin_dir().join("pod"));
        cmd.arg("--dir").arg(&self.dirs.data).arg("--config").arg(&self.dirs.config);
        cmd.arg("enter");
        // On a terminal: `pod enter -t` runs the command on a new one of
        // the app's devpts and proxies it to ours, so no host terminal
        // goes into the pod (and a VM's command gets one of the guest's).
        if tty {
            cmd.arg("-t");
        }
        cmd.args(["--app", &self.app, &self.pod, "--"]).args(argv);
        // Nothing of the server's environment goes in but a PATH; a tty
        // gets the TERM kubelet's runtimes give.
        cmd.env_clear().env("PATH", PATH);
        if tty {
            cmd.env("TERM", "xterm");
        }
        cmd.kill_on_drop(true);
        cmd
    }
}

/// The host pids of `root`'s descendants (from /proc: each task's parent).
fn descendants(proc_dir: &std::path::Path, root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir(proc_dir).into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// How long `pod enter` has to reap its killed command before it is
/// killed too.
const REAP: Duration = Duration::from_secs(2);

/// Kills everything under `child` (stopped first, until no new process
/// shows up, so none escapes by forking meanwhile), then waits a little for
/// `child` to reap its command and exit, then kills it.
async fn kill_tree(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    let signal = |pids: &[u32], s: Signal| {
        for p in pids.iter().filter_map(|p| i32::try_from(*p).ok()) {
            let _ = kill(nix::unistd::Pid::from_raw(p), s);
        }
    };
    if let Some(pid) = child.id() {
        let mut stopped: Vec<u32> = Vec::new();
        for _ in 0..100 {
            let found = descendants(std::path::Path::new("/proc"), pid);
            let new: Vec<u32> = found.into_iter().filter(|p| !stopped.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            signal(&new, Signal::SIGSTOP);
            stopped.extend(new);
        }
        signal(&stopped, Signal::SIGKILL);
        if tokio::time::timeout(REAP, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What ExecSync returns.
#[derive(Debug)]
pub struct SyncOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("running pod enter: {0}")]
    Spawn(std::io::Error),
    #[error("command {argv:?} timed out after {secs}s (killed)")]
    Timeout { argv: Vec<String>, secs: u64 },
}

async fn read_capped(r: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(r) = r {
        let _ = r.take(MAX_OUTPUT).read_to_end(&mut out).await;
    }
    out
}

/// ExecSync: runs `argv`, captures its output; `timeout` (if any) kills it.
pub async fn exec_sync(t: &Target, argv: &[String], timeout: Option<Duration>) -> Result<SyncOutput, ExecError> {
    let mut child = t
        .command(argv, false)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ExecError::Spawn)?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (stdout, stderr) = tokio::join!(read_capped(out), read_capped(err));
        (stdout, stderr)
    };
    let limit = timeout.unwrap_or(Duration::MAX);
    let waited = tokio::time::timeout(limit, async {
        let (stdout, stderr) = run.await;
        let status = child.wait().await;
        (stdout, stderr, status)
    })
    .await;
    match waited {
        Ok((stdout, stderr, status)) => {
            Ok(SyncOutput { stdout, stderr, exit_code: status.map(code_of).map_err(ExecError::Spawn)? })
        }
        Err(_) => {
            kill_tree(&mut child).await;
            let _ = child.wait().await;
            Err(ExecError::Timeout { argv: argv.to_vec(), secs: limit.as_secs() })
        }
    }
}

/// Copies `r` to the client's `chan` until EOF (or EIO: a pty whose last
/// slave closed).
async fn pump_out(mut r: impl AsyncRead + Unpin, out: mpsc::Sender<(Chan, Bytes)>, chan: Chan) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send((chan, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Copies the client's stdin into `w`; closes `w` at its end.
async fn pump_in(mut rx: mpsc::Receiver<Bytes>, mut w: impl tokio::io::AsyncWrite + Unpin) {
    while let Some(data) = rx.recv().await {
        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Exec: runs `argv` with the client's streams (a pty with `tty`).
pub async fn exec(t: Target, argv: Vec<String>, io: Io) -> Outcome {
    let result = if io.tty { exec_tty(&t, &argv, io).await } else { exec_pipes(&t, &argv, io).await };
    result.unwrap_or_else(|e| Outcome::Failed(format!("exec in container {}-{}: {e}", t.pod, t.app)))
}

async fn finish(
    mut child: Child,
    output: Vec<tokio::task::JoinHandle<()>>,
    input: Option<tokio::task::JoinHandle<()>>,
    gone: tokio::sync::oneshot::Receiver<()>,
) -> Outcome {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = gone => {
            // The client went away: nobody reads this command any more.
            tracing::debug!("exec: the client is gone; killing the command");
            kill_tree(&mut child).await;
            child.wait().await
        }
    };
    let drain = async {
        for h in output {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(DRAIN, drain).await.is_err() {
        tracing::debug!("exec: output still open after the command exited; dropped");
    }
    if let Some(h) = input {
        h.abort();
    }
    match status {
        Ok(s) => Outcome::Exited(code_of(s)),
        Err(e) => Outcome::Failed(format!("waiting for the command: {e}")),
    }
}

async fn exec_pipes(t: &Target, argv: &[String], io: Io) -> std::io::Result<Outcome> {
    let mut cmd = t.command(argv, false);
    cmd.stdin(if io.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(if io.stdout { Stdio::piped() } else { Stdio::null() });
    cmd.stderr(if io.stderr { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn()?;
    let mut output = Vec::new();
    if let Some(r) = child.stdout.take() {
        output.push(tokio::spawn(pump_out(r, io.out.clone(), Chan::Stdout)));
    }
    if let Some(r) = child.stderr.take() {
        output.push(tokio::spawn(pump_out(r, io.out.clone(), Chan::Stderr)));
    }
    let input = match (io.stdin, child.stdin.take()) {
        (Some(rx), Some(w)) => Some(tokio::spawn(pump_in(rx, w))),
        _ => None,
    };
    Ok(finish(child, output, input, io.gone).await)
}

/// Sets a pty's window size.
fn set_size(master: &OwnedFd, size: TermSize) {
    let ws = libc::winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the fd is
    // an open pty master.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

async fn exec_tty(t: &Target, argv: &[String], io: Io) -> std::io::Result<Outcome> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let master = pty.master;
    let slave = pty.slave;
    let mut resize = io.resize;
    // The first size, if the client sent one already, before the command
    // draws anything.
    if let Some(rx) = resize.as_mut() {
        if let Ok(Some(size)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            set_size(&master, size);
        }
    }
    let mut cmd = t.command(argv, true);
    cmd.stdin(Stdio::from(slave.try_clone()?));
    cmd.stdout(Stdio::from(slave.try_clone()?));
    cmd.stderr(Stdio::from(slave));
    // SAFETY: between fork and exec only async-signal-safe calls: setsid
    // and ioctl. The pty slave is stdin (0) by then; it becomes the
    // session's controlling terminal, so the command gets job control and
    // ^C as a terminal gives them.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Our copies of the slave went with `cmd`: the master reads EIO once
    // the command's side is closed.
    drop(cmd);
    let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let output = vec![tokio::spawn(pump_out(reader, io.out.clone(), Chan::Stdout))];
    let input = io.stdin.map(|rx| tokio::spawn(pump_in(rx, writer)));
    let resizer = resize.map(|mut rx| {
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                set_size(&master, size);
            }
        })
    });
    let outcome = finish(child, output, input, io.gone).await;
    if let Some(h) = resizer {
        h.abort();
    }
    Ok(outcome)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_parent_links() {
        let tmp = tempfile::tempdir().unwrap();
        for (pid, ppid, comm) in [(10, 1, "pod"), (11, 10, "sh) x"), (12, 11, "sleep"), (13, 1, "other")] {
            let d = tmp.path().join(pid.to_string());
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} 1 1 0")).unwrap();
        }
        let mut got = descendants(tmp.path(), 10);
        got.sort_unstable();
        assert_eq!(got, vec![11, 12]);
    }
}
