//! `pod-escape-probe`: run as root inside a pod, it tries each way out of
//! the pod that pod's isolation must close, and prints one line per vector:
//!
//! ```text
//! <vector>: blocked (<how: errno or reason>)
//! <vector>: ESCAPED (<what worked>)
//! ```
//!
//! It exits 1 if any vector escaped, 2 on a bad command line, else 0.
//! `pod-escape-probe [VECTOR...]` runs only those; `--list` names them all.
//!
//! Every attempt is harmless if it succeeds, so the probe can show a
//! failure of isolation without causing one: the tmpfs is mounted in the
//! pod's own mount namespace and unmounted; a device node is opened
//! read-only and never read; a module buffer is garbage, a reboot's magic
//! wrong, a clock value invalid (each rejected after the permission check
//! the probe is after); /proc/sysrq-trigger is opened and never written;
//! a new user namespace and a ptrace attach happen in a child that exits
//! at once; the rlimit raised is the probe's own, after lowering it.
//!
//! Optional environment, set by the tests: `POD_PROBE_HOST_PID` and
//! `POD_PROBE_HOST_CMDLINE` (a host process and its command line, words
//! joined by spaces, which the pod must not see), `POD_PROBE_BLOCKDEV`
//! (`MAJ:MIN[,MAJ:MIN...]`: block devices to make nodes of besides 8:0, such
//! as the host's root disk) and `POD_PROBE_DIRS` (`:`-separated writable
//! directories to make them in besides /tmp, /dev and /dev/shm: volumes).

mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::Pid;

/// What one attempt came to.
enum Verdict {
    Blocked(String),
    Escaped(String),
}

use Verdict::{Blocked, Escaped};

/// A vector: its name and its attempt.
type Vector = (&'static str, fn() -> Verdict);

/// Every vector, in the order they run. seccomp-relax is last: it stacks
/// one more (allow-all) filter on the probe.
const VECTORS: &[Vector] = &[
    ("mount", mount),
    ("mknod-block", mknod_block),
    ("module-load", module_load),
    ("reboot", reboot),
    ("set-clock", set_clock),
    ("sysrq-trigger", sysrq_trigger),
    ("kcore", kcore),
    ("host-proc", host_proc),
    ("leaked-fd", leaked_fd),
    ("rlimit", rlimit),
    ("userns", userns),
    ("ptrace", ptrace),
    ("open-by-handle", open_by_handle),
    ("seccomp-relax", seccomp_relax),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in VECTORS {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen = Vec::new();
    for arg in &args {
        match VECTORS.iter().find(|(name, _)| name == arg) {
            Some(v) => chosen.push(v),
            None => {
                eprintln!("pod-escape-probe: no vector {arg:?} (--list names them)");
                return ExitCode::from(2);
            }
        }
    }
    if chosen.is_empty() {
        chosen.extend(VECTORS);
    }
    let mut escaped = 0;
    for (name, attempt) in &chosen {
        match attempt() {
            Blocked(how) => println!("{name}: blocked ({how})"),
            Escaped(what) => {
                escaped += 1;
                println!("{name}: ESCAPED ({what})");
            }
        }
    }
    println!("pod-escape-probe: {} vectors tried, {escaped} escaped", chosen.len());
    if escaped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// An errno's name (`EPERM`), or `ok`.
fn res(r: &Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

/// An I/O error as its errno's name.
fn io_errno(e: &io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string(), |n| format!("{:?}", Errno::from_raw(n)))
}

/// A field of /proc/self/status.
fn status(field: &str) -> String {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let prefix = format!("{field}:");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// A capability set of /proc/self/status (`CapEff`, ...).
fn caps(field: &str) -> u64 {
    u64::from_str_radix(&status(field), 16).unwrap_or(0)
}

/// A call whose only possible refusal is the permission check: EPERM (or
/// EACCES) is blocked, ENOSYS means the kernel lacks it, anything else got
/// past the check.
fn permission(what: &str, r: Result<(), Errno>) -> Result<String, String> {
    match r {
        Err(e @ (Errno::EPERM | Errno::EACCES)) => Ok(format!("{what}: {e:?}")),
        Err(Errno::ENOSYS) => Ok(format!("{what}: ENOSYS (not in this kernel)")),
        Err(e) => Err(format!("{what} got past the permission check ({e:?})")),
        Ok(()) => Err(format!("{what} succeeded")),
    }
}

/// Joins the results of [`permission`]: blocked only if every one was.
fn all_refused(results: Vec<Result<String, String>>) -> Verdict {
    let escaped: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    if escaped.is_empty() {
        Blocked(results.into_iter().filter_map(Result::ok).collect::<Vec<_>>().join("; "))
    } else {
        Escaped(escaped.join("; "))
    }
}

/// A process's command line, word by word.
fn cmdline(pid: &str) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect()
}

// ---------------------------------------------------------------------------
// The vectors.

/// A tmpfs on a directory of the pod's own, with mount(2) and with the new
/// mount API (fsopen).
fn mount() -> Verdict {
    let dir = Path::new("/tmp/.escape-probe-mnt");
    let target = if fs::create_dir_all(dir).is_ok() { dir } else { Path::new("/tmp") };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = nix::mount::mount(Some("escape-probe"), target, Some("tmpfs"), flags, Some("size=4k"));
    if mounted.is_ok() {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir(dir);
    let what = format!("mount(2) of a tmpfs on {}", target.display());
    all_refused(vec![permission(&what, mounted), permission("fsopen(2) of tmpfs", sys::fsopen_tmpfs())])
}

/// A block device node (8:0, and whatever the test names: the host's own
/// disk) made in every writable place, then opened read-only, never read.
fn mknod_block() -> Verdict {
    let mut devices = vec![(8u64, 0u64)];
    for d in std::env::var("POD_PROBE_BLOCKDEV").unwrap_or_default().split(',') {
        if let Some((major, minor)) = d.split_once(':') {
            if let (Ok(major), Ok(minor)) = (major.trim().parse(), minor.trim().parse()) {
                if !devices.contains(&(major, minor)) {
                    devices.push((major, minor));
                }
            }
        }
    }
    let mut dirs: Vec<String> = ["/tmp", "/dev", "/dev/shm"].map(str::to_owned).to_vec();
    let extra = std::env::var("POD_PROBE_DIRS").unwrap_or_default();
    dirs.extend(extra.split(':').filter(|d| !d.is_empty()).map(str::to_owned));
    let (mut how, mut escaped) = (Vec::new(), Vec::new());
    for dir in &dirs {
        for &(major, minor) in &devices {
            let node = Path::new(dir).join(format!(".escape-probe-blk-{major}-{minor}"));
            let _ = fs::remove_file(&node);
            let dev = makedev(major, minor);
            if let Err(e) = mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev) {
                how.push(format!("{dir} {major}:{minor}: mknod {e:?}"));
                continue;
            }
            let opened = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&node);
            match opened {
                Ok(_) => escaped.push(format!("opened block device {major}:{minor} at {}", node.display())),
                Err(e) => how.push(format!("{dir} {major}:{minor}: mknod ok, open {}", io_errno(&e))),
            }
            let _ = fs::remove_file(&node);
        }
    }
    if escaped.is_empty() {
        Blocked(how.join("; "))
    } else {
        Escaped(escaped.join("; "))
    }
}

/// init_module with garbage, finit_module on /dev/null.
fn module_load() -> Verdict {
    let finit = match File::open("/dev/null") {
        Ok(null) => sys::finit_module(null.as_fd()),
        Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF))),
    };
    all_refused(vec![
        permission("init_module(garbage)", sys::init_module_garbage()),
        permission("finit_module(/dev/null)", finit),
    ])
}

/// reboot(2) with a wrong magic number.
fn reboot() -> Verdict {
    all_refused(vec![permission("reboot(wrong magic)", sys::reboot_wrong_magic())])
}

/// Judged by CAP_SYS_TIME, which no set may hold, and shown with what
/// seccomp makes of clock_settime (an invalid value: nothing can be set).
fn set_clock() -> Verdict {
    const CAP_SYS_TIME: u64 = 1 << 25;
    let call = match sys::clock_settime_invalid() {
        Err(Errno::EPERM) => "clock_settime refused by seccomp (EPERM)".to_owned(),
        Err(Errno::EINVAL) => "clock_settime reached the kernel (EINVAL for the invalid time)".to_owned(),
        other => format!("clock_settime(invalid): {}", res(&other)),
    };
    let seccomp = status("Seccomp");
    let held: Vec<&str> = ["CapEff", "CapPrm", "CapBnd"].into_iter().filter(|f| caps(f) & CAP_SYS_TIME != 0).collect();
    if held.is_empty() {
        Blocked(format!("CAP_SYS_TIME in no effective, permitted or bounding set; seccomp mode {seccomp}; {call}"))
    } else {
        Escaped(format!("CAP_SYS_TIME in {}; seccomp mode {seccomp}; {call}", held.join(", ")))
    }
}

/// Opened for writing, never written.
fn sysrq_trigger() -> Verdict {
    match OpenOptions::new().write(true).open("/proc/sysrq-trigger") {
        Ok(_) => Escaped("/proc/sysrq-trigger opened for writing (nothing written)".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Blocked("/proc/sysrq-trigger absent".into()),
        Err(e) => Blocked(format!("open O_WRONLY: {}", io_errno(&e))),
    }
}

/// /proc/kcore: absent, refused, or masked (reads nothing).
fn kcore() -> Verdict {
    let mut f = match File::open("/proc/kcore") {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Blocked("/proc/kcore absent".into()),
        Err(e) => return Blocked(format!("open: {}", io_errno(&e))),
    };
    let null = f.metadata().is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == makedev(1, 3));
    let masked = if null { "masked by /dev/null" } else { "opened" };
    let mut buf = [0u8; 4];
    match f.read(&mut buf) {
        Ok(0) => Blocked(format!("{masked}, reads nothing")),
        Ok(n) => Escaped(format!("read {n} bytes of the kernel's memory image ({masked})")),
        Err(e) => Blocked(format!("{masked}, read: {}", io_errno(&e))),
    }
}

/// The host's processes must be out of sight: no /proc entry with the
/// host test's command line, its pid is nobody or a pod process, and
/// /proc/1 is pod-init.
fn host_proc() -> Verdict {
    let (mut how, mut escaped) = (Vec::new(), Vec::new());
    let pids: Vec<String> = fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let pids: Vec<String> = pids.into_iter().filter(|p| p.bytes().all(|b| b.is_ascii_digit())).collect();
    how.push(format!("{} processes in /proc", pids.len()));
    let marker = std::env::var("POD_PROBE_HOST_CMDLINE").unwrap_or_default();
    if !marker.is_empty() {
        match pids.iter().find(|p| cmdline(p).join(" ") == marker) {
            Some(pid) => escaped.push(format!("the host's test process is pid {pid} here")),
            None => how.push("none has the host test's command line".into()),
        }
    }
    if let Ok(pid) = std::env::var("POD_PROBE_HOST_PID").unwrap_or_default().parse::<i32>() {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(e) => how.push(format!("kill({pid}, 0): {e:?}")),
            Ok(()) => {
                let words = cmdline(&pid.to_string());
                if !marker.is_empty() && words.join(" ") == marker {
                    escaped.push(format!("kill({pid}, 0) reached the host's test process"));
                } else {
                    let name = words.first().cloned().unwrap_or_default();
                    how.push(format!("kill({pid}, 0) reached the pod's own pid {pid} ({name})"));
                }
            }
        }
    }
    let init = cmdline("1").first().cloned().unwrap_or_default();
    // pod-init is /init in a VM guest, <pod root>/stage2/pod-init otherwise.
    if init == "/init" || init.ends_with("/pod-init") || init == "pod-init" {
        how.push(format!("/proc/1 is {init}"));
    } else {
        escaped.push(format!("/proc/1 is {init:?}, not pod-init"));
    }
    if escaped.is_empty() {
        Blocked(how.join("; "))
    } else {
        Escaped(escaped.join("; "))
    }
}

/// Whether the object behind `/proc/self/fd/N` (or another magic link) is
/// the one its path names inside this root; `None` for objects without a
/// path (pipes, sockets).
fn reachable(link: &str) -> Option<(String, bool)> {
    let target = fs::read_link(link).ok()?.to_string_lossy().into_owned();
    if !target.starts_with('/') {
        return Some((target, true));
    }
    let object = fs::metadata(link).ok()?;
    let named = fs::metadata(&target).ok();
    let same = named.is_some_and(|m| (m.dev(), m.ino()) == (object.dev(), object.ino()));
    Some((target, same))
}

/// Fds 0, 1 and 2 (and any other) may not be a host file or directory,
/// no fd's `..` may lead out, cwd and root are this root's. The open fds
/// are listed: only 0, 1 and 2 are expected.
fn leaked_fd() -> Verdict {
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let (mut open, mut escaped) = (Vec::new(), Vec::new());
    for fd in fds {
        let link = format!("/proc/self/fd/{fd}");
        // read_dir's own fd is closed by now.
        let Some((target, inside)) = reachable(&link) else { continue };
        let is_dir = fs::metadata(&link).is_ok_and(|m| m.is_dir());
        // A file of the pod's own on fd 3 is no way out; a host path is, and
        // so is any directory (its `..`, openat) on a standard stream.
        if !inside && (is_dir || fd > 2) {
            escaped.push(format!("fd {fd} is {target}, outside this root"));
        }
        open.push(format!("{fd} {target}"));
        // `..` through the fd: ENOTDIR unless it is a directory.
        if let Ok(up) = File::open(format!("{link}/..")) {
            let up_link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&up));
            if let Some((target, false)) = reachable(&up_link) {
                escaped.push(format!("{link}/.. is {target}, outside this root"));
            }
        }
    }
    let cwd = reachable("/proc/self/cwd");
    if let Some((target, false)) = &cwd {
        escaped.push(format!("the working directory {target} is outside this root"));
    }
    let root = fs::read_link("/proc/self/root").map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
    if root != "/" {
        escaped.push(format!("/proc/self/root is {root:?}"));
    }
    if escaped.is_empty() {
        Blocked(format!("open fds: {}; cwd and root inside; no `..` out", open.join(", ")))
    } else {
        Escaped(escaped.join("; "))
    }
}

/// RLIMIT_NOFILE's hard limit, one above what it is: needs
/// CAP_SYS_RESOURCE. The limit is first lowered below fs.nr_open, so that
/// the kernel's own ceiling is not what refuses.
fn rlimit() -> Verdict {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, mut hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => return Blocked(format!("getrlimit: {e:?}")),
    };
    let nr_open: u64 =
        fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    if hard >= nr_open {
        hard = nr_open - 1;
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard) {
            return Blocked(format!("could not even lower the hard limit to {hard}: {e:?}"));
        }
    }
    match setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard + 1) {
        Err(e) => Blocked(format!("setrlimit(NOFILE) hard {hard} -> {}: {e:?}", hard + 1)),
        Ok(()) => Escaped(format!("raised the NOFILE hard limit from {hard} to {}", hard + 1)),
    }
}

fn new_user_namespace() -> Result<(), Errno> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
}

/// unshare(CLONE_NEWUSER), in a child that exits at once.
fn userns() -> Verdict {
    match sys::in_child(new_user_namespace) {
        Ok(()) => Escaped("unshare(CLONE_NEWUSER) made a user namespace (in a child, gone)".into()),
        Err(e) => Blocked(format!("unshare(CLONE_NEWUSER): {e:?}")),
    }
}

fn seize_pid1() -> Result<(), Errno> {
    nix::sys::ptrace::seize(Pid::from_raw(1), nix::sys::ptrace::Options::empty())
}

/// PTRACE_SEIZE of pod-init: the same permission check as PTRACE_ATTACH,
/// without stopping it; the child tracer exits at once, which detaches.
fn ptrace() -> Verdict {
    match sys::in_child(seize_pid1) {
        Ok(()) => Escaped("PTRACE_SEIZE of pid 1 (pod-init) succeeded (detached)".into()),
        Err(e) => Blocked(format!("PTRACE_SEIZE of pid 1: {e:?}")),
    }
}

/// open_by_handle_at (the "shocker" escape), with an empty handle.
fn open_by_handle() -> Verdict {
    let root = match File::open("/") {
        Ok(f) => f,
        Err(e) => return Blocked(format!("open /: {}", io_errno(&e))),
    };
    all_refused(vec![permission("open_by_handle_at", sys::open_by_handle_empty(root.as_fd()))])
}

/// Ways to loosen seccomp or no_new_privs: SECCOMP_MODE_DISABLED, an
/// allow-all filter stacked on top, clearing no_new_privs. Afterwards the
/// mode must still be 2 and clone3 still refused by the filter.
fn seccomp_relax() -> Verdict {
    let before = status("Seccomp");
    if before != "2" {
        return Escaped(format!("no seccomp filter to begin with (Seccomp: {before})"));
    }
    let clone3_before = sys::clone3_invalid();
    let nnp_before = status("NoNewPrivs");
    let disable = sys::seccomp_disable();
    let allow = sys::install_allow_all_filter();
    let clear = sys::clear_no_new_privs();
    let (after, nnp_after, clone3_after) = (status("Seccomp"), status("NoNewPrivs"), sys::clone3_invalid());
    let mut escaped = Vec::new();
    if disable.is_ok() {
        escaped.push("PR_SET_SECCOMP(SECCOMP_MODE_DISABLED) accepted".to_owned());
    }
    if after != "2" {
        escaped.push(format!("Seccomp is now {after}"));
    }
    if clone3_before == Err(Errno::ENOSYS) && clone3_after != Err(Errno::ENOSYS) {
        escaped.push(format!("clone3 no longer refused by the filter ({})", res(&clone3_after)));
    }
    if clear.is_ok() || nnp_after != nnp_before {
        escaped.push(format!("no_new_privs cleared (NoNewPrivs {nnp_before} -> {nnp_after})"));
    }
    if escaped.is_empty() {
        Blocked(format!(
            "SECCOMP_MODE_DISABLED: {}; allow-all filter stacked ({}): still mode {after}, clone3 still {}; \
             clearing no_new_privs: {}, NoNewPrivs {nnp_after}",
            res(&disable),
            res(&allow),
            res(&clone3_after),
            res(&clear)
        ))
    } else {
        Escaped(escaped.join("; "))
    }
}
