//! Helpers for the pod-init tests: a fake pod root in a temp dir whose apps
//! are busybox (Debian's static `busybox-static`), the built `pod-init`
//! running against it, status files and logs to look at.
//!
//! Tier (b): these need root (namespaces, pivot_root, setuid); without it
//! a test prints "SKIP: needs root" and returns.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const POD_INIT: &str = env!("CARGO_BIN_EXE_pod-init");
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] =
    &["sh", "sleep", "echo", "id", "pwd", "cat", "httpd", "wget", "true", "false", "kill", "touch", "test", "env"];
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";

/// True if the file is an ELF executable without a program interpreter.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else { return false };
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| usize::try_from(u64::from_le_bytes(elf[o..o + 8].try_into().unwrap())).unwrap();
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false; // not a 64-bit ELF
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != PT_INTERP)
}

/// Names and sizes of the sections of a 64-bit little-endian ELF file.
pub fn elf_sections(path: &Path) -> Vec<(String, u64)> {
    let elf = fs::read(path).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let offset = |o: usize| usize::try_from(u64_at(o)).unwrap();
    let (shoff, shentsize, shnum, shstrndx) = (offset(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = offset(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let start = names + u32_at(header(i));
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            (String::from_utf8_lossy(&elf[start..end]).into_owned(), u64_at(header(i) + 0x20))
        })
        .collect()
}

/// Whether this host can run the tests; prints why not.
pub fn can_run() -> bool {
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("pod-init test").to_owned();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: {test}: needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("note: {BUSYBOX} is missing: installing busybox-static for the pod-init tests");
        let _ = Command::new("apt-get").args(["install", "-y", "busybox-static"]).stdout(Stdio::null()).status();
    }
    if !is_static_elf(Path::new(BUSYBOX)) {
        eprintln!("SKIP: {test}: needs a static {BUSYBOX} (Debian package busybox-static)");
        return false;
    }
    true
}

/// A free TCP port on 127.0.0.1, for an app to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A pod root: `units/`, `apps/<app>/rootfs`, and what pod-init writes.
pub struct Pod {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Pod {
    pub fn new() -> Pod {
        let tmp = tempfile::Builder::new().prefix("pod-init-test").tempdir().unwrap();
        let root = tmp.path().to_owned();
        fs::create_dir(root.join("units")).unwrap();
        Pod { _tmp: tmp, root }
    }

    /// Adds an app: a busybox rootfs and its unit. Returns the rootfs.
    pub fn app(&self, name: &str, unit: &str) -> PathBuf {
        let rootfs = self.root.join("apps").join(name).join("rootfs");
        for dir in ["bin", "etc", "tmp", "www", "home/app"] {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        let busybox = rootfs.join("bin/busybox");
        if fs::hard_link(BUSYBOX, &busybox).is_err() {
            fs::copy(BUSYBOX, &busybox).unwrap();
        }
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        // stage1 gives every app a /dev; these tests only need /dev/null.
        fs::create_dir(rootfs.join("dev")).unwrap();
        let null = nix::sys::stat::makedev(1, 3);
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        nix::sys::stat::mknod(&rootfs.join("dev/null"), nix::sys::stat::SFlag::S_IFCHR, mode, null).unwrap();
        fs::write(rootfs.join("etc/passwd"), PASSWD).unwrap();
        fs::write(rootfs.join("etc/group"), GROUP).unwrap();
        fs::write(rootfs.join("www/index.html"), "hello from db\n").unwrap();
        nix::unistd::chown(&rootfs.join("home/app"), Some(1000.into()), Some(1000.into())).unwrap();
        fs::write(self.root.join("units").join(format!("{name}.unit")), unit).unwrap();
        rootfs
    }

    /// Starts pod-init on this pod; its stderr goes to `stderr.txt`.
    pub fn start(&self) -> Running {
        let stderr = fs::File::create(self.root.join("stderr.txt")).unwrap();
        let child = Command::new(POD_INIT)
            .arg("--root")
            .arg(&self.root)
            .env("LEAK", "from-the-host")
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Running { child, root: self.root.clone() }
    }

    /// `status/<name>.json` (`name` = `pod` for the pod), if written yet.
    pub fn try_status(&self, name: &str) -> Option<Value> {
        let text = fs::read_to_string(self.root.join("status").join(format!("{name}.json"))).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    pub fn status(&self, name: &str) -> Value {
        self.try_status(name).unwrap_or_else(|| panic!("no status for {name}"))
    }

    /// Waits until app `name` is in `state`; panics after 10 s.
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        let mut last = None;
        let found = wait_for(Duration::from_secs(10), || {
            last = self.try_status(name);
            last.as_ref().is_some_and(|s| s["state"] == state)
        });
        assert!(found, "{name} never reached {state}: last status {last:?}\n{}", self.stderr());
        last.unwrap()
    }

    pub fn log(&self, app: &str) -> String {
        fs::read_to_string(self.root.join("logs").join(format!("{app}.log"))).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.root.join("stderr.txt")).unwrap_or_default()
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running pod-init. Dropping it stops it (SIGTERM, then SIGKILL and the
/// apps' process groups), so a failed test leaves no process behind.
pub struct Running {
    pub child: Child,
    root: PathBuf,
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// The exit code, or `None` if still running after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        wait_for(limit, || {
            code = self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code
    }

    /// Waits for the exit code; panics after 10 s.
    pub fn exit_code(&mut self) -> i32 {
        self.wait(Duration::from_secs(10)).expect("pod-init did not exit within 10 s")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        if self.wait(Duration::from_secs(5)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Ok(entries) = fs::read_dir(self.root.join("status")) else { return };
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else { continue };
            let Ok(status) = serde_json::from_str::<Value>(&text) else { continue };
            if let Some(pid) = pid_in(&status).filter(|_| entry.file_name() != "pod.json") {
                let _ = killpg(pid, Signal::SIGKILL);
            }
        }
    }
}

/// The `pid` of a status file, if any.
pub fn pid_in(status: &Value) -> Option<Pid> {
    Some(Pid::from_raw(i32::try_from(status["pid"].as_i64()?).ok()?))
}

/// `(pid, state, ppid)` of every process, from /proc.
pub fn processes() -> Vec<(i32, char, i32)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, state, ppid));
    }
    out
}

/// Milliseconds between two RFC 3339 `...T12:00:00.250Z` stamps of one day.
pub fn millis_between(earlier: &Value, later: &Value) -> i64 {
    let ms = |v: &Value| {
        let s = v.as_str().unwrap();
        let t = &s[s.find('T').unwrap() + 1..s.len() - 1];
        let digits: String = t.chars().filter(char::is_ascii_digit).collect(); // HHMMSSmmm
        let n = |range: std::ops::Range<usize>| digits[range].parse::<i64>().unwrap();
        ((n(0..2) * 60 + n(2..4)) * 60 + n(4..6)) * 1000 + n(6..9)
    };
    let diff = ms(later) - ms(earlier);
    // Across midnight UTC.
    if diff < -43_200_000 {
        diff + 86_400_000
    } else {
        diff
    }
}
