//! `pod-init` as a virtual machine's `/init` (stage1-vm's guest side; the
//! contract is `spec::vm`): mount the kernel filesystems, load the modules,
//! mount the pod directory over 9p, bring the network up, give each app its
//! guest-kernel /proc, /sys and /dev, start the port agents, run the pod as
//! usual, then sync and reboot, which ends qemu (`-no-reboot`).
//!
//! Every step that can fail before the pod runs ends in one `pod-init:`
//! line naming the step and path, `status/pod.json` if the share is there,
//! and a reboot: a guest that cannot run its pod must not hang.

mod agent;
mod boot;
mod enter;
mod metadata;
mod net;
mod streams;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use spec::vm::relay::GUEST_CONTROL_SOCKET;
use spec::vm::{GuestConfig, GUEST_CONF, GUEST_MARKER, GUEST_POD_ROOT};

use crate::{appfs, log, Options, EXIT_INIT_FAILED};

/// A boot step that failed: what, on which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {reason}", path.display())]
pub struct BootError {
    pub step: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl BootError {
    pub(crate) fn new(step: &'static str, path: impl AsRef<Path>, reason: impl std::fmt::Display) -> Self {
        Self::make(step, path.as_ref(), &reason)
    }

    // One copy of the work, not one per argument type: PID 1's text is its
    // resident memory (see README.md).
    #[inline(never)]
    fn make(step: &'static str, path: &Path, reason: &dyn std::fmt::Display) -> Self {
        Self { step, path: path.to_owned(), reason: reason.to_string() }
    }
}

/// Inserts `item` into sorted `list` in order (a whole sort would add
/// kilobytes of text for a handful of entries).
pub(crate) fn insert_sorted<T: Ord>(list: &mut Vec<T>, item: T) {
    let at = list.partition_point(|x| *x < item);
    list.insert(at, item);
}

/// True when this process is a VM's PID 1 (pid 1 and [`GUEST_MARKER`]).
/// A namespace pod's PID 1 never has the marker in its root.
pub fn is_guest() -> bool {
    std::process::id() == 1 && Path::new(GUEST_MARKER).exists()
}

/// Boots the guest, runs the pod and reboots. Returns the pod's exit code
/// only if reboot(2) failed; PID 1 returning then panics the kernel, which
/// (`panic=-1`, `-no-reboot`) ends qemu as well.
pub fn boot() -> i32 {
    crate::sys::ignore_sigpipe();
    crate::sys::ensure_stdio();
    // Blocked before the agents fork and for good: a `stop` that the ctl
    // agent sends before the supervisor's signalfd exists stays pending (PID
    // 1 would drop a signal it neither blocks nor handles).
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(signal);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        log!("sigprocmask: {e}");
    }
    let root = Path::new(GUEST_POD_ROOT);
    let started_at = SystemTime::now();
    let mut share_mounted = false;
    // The control socket is guest-local: one on the 9p share would reach no
    // one on the host. The ctl agent relays the host's requests to it
    // (`spec::vm::relay`).
    let control = Some(PathBuf::from(GUEST_CONTROL_SOCKET));
    let code = match prepare(root, &mut share_mounted) {
        Ok(conf) => {
            match crate::run(&Options { root: root.to_owned(), sandbox: conf.sandbox, control, control_fd: None }) {
                Ok(code) => i32::from(code),
                Err(e) => {
                    log!("{e}");
                    i32::from(EXIT_INIT_FAILED)
                }
            }
        }
        Err(e) => {
            log!("guest boot failed: {e}");
            if share_mounted {
                let _ = std::fs::create_dir(root.join("status"));
                crate::record_failure(root, started_at, &format!("guest boot failed: {e}"));
            }
            i32::from(EXIT_INIT_FAILED)
        }
    };
    log!("pod exit code {code}; powering off");
    shutdown();
    code
}

/// Steps 1–5 of the boot, then the agents; returns the guest's
/// configuration. With `pod.debug` on the kernel command line (`pod
/// --debug`), each step logs the guest's uptime.
fn prepare(root: &Path, share_mounted: &mut bool) -> Result<GuestConfig, BootError> {
    let started = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME);
    boot::mount_kernel_filesystems()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debug = cmdline.split_whitespace().any(|w| w == "pod.debug");
    if debug {
        // From here on every log line, the supervisor's too, carries the uptime.
        crate::log_uptime();
        if let Ok(t) = started {
            log!("pod-init started at {}.{:03}", t.tv_sec(), t.tv_nsec() / 1_000_000);
        }
    }
    let step = crate::log_debug;
    step("kernel filesystems mounted");
    if let Err(e) = boot::mount_cgroup2() {
        log!("{e} (apps with limits will not start)");
    }
    boot::load_modules(Path::new(spec::vm::MODULES_DIR), &boot::blacklist(&cmdline), &|m| step(&format!("module {m}")));
    step("modules loaded");
    boot::mount_share(root)?;
    *share_mounted = true;
    step("share mounted");
    boot::mount_stdin_dir(root)?;
    let conf_path = root.join(GUEST_CONF);
    let text = std::fs::read_to_string(&conf_path).map_err(|e| BootError::new("read", &conf_path, e))?;
    let conf = GuestConfig::parse(&text).map_err(|e| BootError::new("parse", &conf_path, e))?;
    net::configure(&conf, Path::new("/sys/class/net"))?;
    step("network configured");
    write_sysctls(&conf.sysctls, Path::new("/proc/sys"))?;
    appfs::setup_all(root, Path::new("/dev"))?;
    step("app filesystems mounted");
    if let Some(dir) = Path::new(GUEST_CONTROL_SOCKET).parent() {
        std::fs::create_dir_all(dir).map_err(|e| BootError::new("create directory", dir, e))?;
    }
    // Bound here, before the apps can take the port, for the agent.
    let metadata = match conf.metadata {
        true => {
            Some(std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, spec::metadata::PORT)).map_err(|e| {
                BootError::new("listen for the metadata service on", format!("127.0.0.1:{}", spec::metadata::PORT), e)
            })?)
        }
        false => None,
    };
    agent::start_all(root, metadata);
    step("agents started");
    Ok(conf)
}

/// Writes the pod's sysctls (`GuestConfig::sysctls`) under `proc_sys`:
/// the guest's kernel is the pod's own, so each is the pod's alone. One the
/// kernel lacks or refuses fails the boot, naming it, as it fails a
/// namespace pod's start.
pub(crate) fn write_sysctls(sysctls: &[(String, String)], proc_sys: &Path) -> Result<(), BootError> {
    for (key, value) in sysctls {
        let path = proc_sys.join(key.replace('.', "/"));
        // No create: a sysctl is a file the kernel made, or not one at all.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()));
        written.map_err(|e| BootError::new("write sysctl", &path, format!("{key}={value:?}: {e}")))?;
    }
    Ok(())
}

/// An app added to the running pod (`add` on the control channel): the
/// host has mounted its rootfs under the share; give it the guest-kernel
/// /proc, /sys and /dev the apps of the boot got from [`appfs::setup_all`].
/// Nothing to do outside a VM.
pub(crate) fn app_added(root: &Path, app: &spec::AcName) -> Result<(), BootError> {
    if !is_guest() {
        return Ok(());
    }
    appfs::setup_guest_app(&root.join("apps").join(app.as_str()).join("rootfs"), Path::new("/dev"))
}

/// An app removed from the running pod: detaches what [`app_added`] (or
/// the boot) mounted in its rootfs, so the host can unmount that and a
/// later app of the same name starts afresh. Nothing to do outside a VM.
pub(crate) fn app_removed(root: &Path, app: &spec::AcName) {
    if !is_guest() {
        return;
    }
    let rootfs = root.join("apps").join(app.as_str()).join("rootfs");
    for dir in ["dev", "sys", "proc"] {
        // Lazily: the masked paths and device binds below go along.
        match nix::mount::umount2(&rootfs.join(dir), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => log!("{app}: unmount {}: {e}", rootfs.join(dir).display()),
        }
    }
    appfs::unmount_guest_mounts(&rootfs);
    // Its cgroup of the guest's, if it had limits (empty now: it ended).
    let cgroup = Path::new(crate::cgroupfs::GUEST_ROOT).join(app.as_str());
    match std::fs::remove_dir(&cgroup) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log!("{app}: remove {}: {e}", cgroup.display()),
    }
}

/// Ends every other process (agents, orphans, `pod enter` sessions),
/// syncs and reboots; returns only if reboot(2) failed. Nothing waits for
/// the killed to be reaped or unmounts the share: the share is written
/// through (`cache=mmap`), so what stays to write is an app's shared
/// writable mappings, which `sync` writes; qemu ends with the guest, and
/// with it every fid. (Reaping with sleeps and the lazy unmount were 30-50
/// ms of a TCG guest's shutdown.)
fn shutdown() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log!("reboot: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_written_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("kernel")).expect("mkdir");
        std::fs::write(dir.path().join("kernel/shm_rmid_forced"), "0").expect("write");
        write_sysctls(&[("kernel.shm_rmid_forced".into(), "1".into())], dir.path()).expect("written");
        assert_eq!(std::fs::read_to_string(dir.path().join("kernel/shm_rmid_forced")).expect("read"), "1");
        let e = write_sysctls(&[("net.nope.x".into(), "1".into())], dir.path()).expect_err("no such sysctl");
        assert!(e.to_string().contains("net.nope.x=\"1\""), "{e}");
        assert!(!dir.path().join("net").exists(), "nothing is created");
    }
}
