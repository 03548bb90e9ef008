//! Running one CNI plugin: look it up in the plugin directories, exec it
//! with the spec's environment (and nothing of ours), feed its config on
//! stdin, bound its run time and output, and turn its error document into
//! a typed error that names the plugin.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::result::parse_error;
use super::CniError;
use crate::network::sys;

/// `PATH` for plugins: portmap and the bridge's ipMasq run `iptables`.
pub(crate) const PLUGIN_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// More than any real result or error document; beyond it output is dropped.
const MAX_OUTPUT: u64 = 4 << 20;
/// How long readers may lag behind an exited (or killed) plugin, e.g. when
/// a grandchild still holds its stdout.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The CNI command being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
        }
    }
}

/// Everything but the stdin document.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub verb: Verb,
    pub container_id: &'a str,
    /// `None` when the namespace is gone (DEL only): `CNI_NETNS` is empty.
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub plugin_dirs: &'a [PathBuf],
    pub timeout: Duration,
    pub read_only_sysctls: bool,
    /// `PATH` in the plugin's environment.
    pub path_env: &'a str,
}

/// The programs plugins run that a host may lack: portmap and the bridge's
/// `ipMasq` need iptables (or ip6tables), from Debian's `iptables` package.
const HELPERS: &[&str] = &["iptables", "ip6tables"];

/// The helper plugins need that is on none of `path_env`'s directories
/// (`Some("iptables")` when neither iptables nor ip6tables is).
pub(crate) fn missing_helper(path_env: &str) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    let found = HELPERS.iter().any(|helper| {
        std::env::split_paths(path_env)
            .map(|dir| dir.join(helper))
            .any(|path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    });
    (!found).then_some(HELPERS[0])
}

/// The first executable file named `plugin` in `dirs`.
pub(crate) fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|dir| dir.join(plugin))
        .find(|path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| CniError::PluginNotFound { plugin: plugin.to_owned(), dirs: dirs.to_vec() })
}

/// Runs `plugin` and returns its stdout on success.
pub(crate) fn run(inv: &Invocation<'_>, plugin: &str, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let exe = find_plugin(inv.plugin_dirs, plugin)?;
    let cni_path = std::env::join_paths(inv.plugin_dirs)
        .map_err(|e| CniError::InvalidArgument(format!("plugin directories: {e}")))?;
    let mut cmd = Command::new(&exe);
    cmd.env_clear()
        .env("CNI_COMMAND", inv.verb.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns.map(Path::as_os_str).unwrap_or_default())
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", cni_path)
        .env("PATH", inv.path_env)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also stops what it spawned.
        .process_group(0);
    if inv.read_only_sysctls {
        sys::read_only_proc_sys(&mut cmd);
    }
    let started = Instant::now();
    let spawn_err = |source| CniError::Spawn { plugin: plugin.to_owned(), path: exe.clone(), source };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let outputs = collect_outputs(&mut child, stdin.to_vec());
    let status = match wait_until(&mut child, started + inv.timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_group(&mut child);
            return Err(CniError::Timeout { plugin: plugin.to_owned(), verb: inv.verb, timeout: inv.timeout });
        }
        Err(source) => {
            kill_group(&mut child);
            return Err(CniError::Spawn { plugin: plugin.to_owned(), path: exe, source });
        }
    };
    let (stdout, stderr) = outputs.recv_timeout(OUTPUT_GRACE).unwrap_or_default();
    tracing::debug!(
        plugin,
        verb = inv.verb.as_str(),
        ?status,
        elapsed_ms = started.elapsed().as_millis(),
        "CNI plugin ran"
    );
    if status.success() {
        return Ok(stdout);
    }
    Err(match parse_error(&stdout) {
        Some(doc) => CniError::Plugin {
            plugin: plugin.to_owned(),
            verb: inv.verb,
            code: doc.code,
            msg: doc.msg,
            details: doc.details,
        },
        None => CniError::PluginFailed {
            plugin: plugin.to_owned(),
            verb: inv.verb,
            status,
            output: tail(if stderr.is_empty() { &stdout } else { &stderr }),
        },
    })
}

/// Writes stdin and reads stdout/stderr on helper threads, so a plugin
/// that writes before reading cannot deadlock against us. The receiver
/// yields (stdout, stderr) once both reach EOF.
fn collect_outputs(child: &mut Child, input: Vec<u8>) -> mpsc::Receiver<(Vec<u8>, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let spawned = thread::Builder::new().name("cni-io".into()).spawn(move || {
        let writer = stdin.map(|mut pipe| {
            // A plugin may exit without reading: EPIPE is its business.
            thread::spawn(move || drop(pipe.write_all(&input)))
        });
        let err_reader = stderr.map(|pipe| thread::spawn(move || read_bounded(pipe)));
        let out = stdout.map(read_bounded).unwrap_or_default();
        let err = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        if let Some(h) = writer {
            let _ = h.join();
        }
        let _ = tx.send((out, err));
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the CNI output reader");
    }
    rx
}

fn read_bounded(pipe: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut limited = pipe.take(MAX_OUTPUT);
    let _ = limited.read_to_end(&mut buf);
    // Drain the rest so the writer is never blocked on a full pipe.
    let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
    buf
}

/// Polls for exit until `deadline`; `Ok(None)` means it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SIGKILLs the plugin's process group (ours: it was made for this child)
/// and reaps the plugin.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last few lines of a plugin's output, for an error message.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
