//! Terminals as a user sees them: `pod run -it`, `pod enter -t` and `pod
//! attach`, driven through a real pseudo-terminal the test holds (the
//! user's terminal: `pod` runs on its slave as its controlling terminal,
//! the test types into and reads the master). Checked: `tty` names the
//! pod's own /dev/pts, the window size and its changes, ^C interrupts a
//! command and the shell goes on, ^D and `exit N` end it with `pod`'s exit
//! code the shell's, the detach keys leave the app running, and the user's
//! terminal is cooked again afterwards. Needs root; reports a skip
//! without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::pty::{openpty, Winsize};
use nix::sys::termios::{tcgetattr, LocalFlags};

const BUSYBOX: &str = "example.com/busybox:1.35";
const LIMIT: Duration = Duration::from_secs(30);

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

/// `pod ARGS` on the slave of a new pseudo-terminal of `rows` x `cols`.
struct Term {
    master: std::fs::File,
    slave: OwnedFd,
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Where the next `expect` starts looking.
    mark: usize,
}

impl Term {
    fn spawn(live: &Live, args: &[&str], rows: u16, cols: u16) -> Term {
        let size = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = openpty(Some(&size), None).unwrap();
        let mut cmd = live.cmd(args);
        cmd.stdin(pty.slave.try_clone().unwrap())
            .stdout(pty.slave.try_clone().unwrap())
            .stderr(pty.slave.try_clone().unwrap())
            .env("TERM", "xterm");
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; nothing is
        // allocated between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term { master, slave: pty.slave, child, seen, mark: 0 }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until `want` shows after the mark; moves the mark past it.
    fn expect(&mut self, want: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let all = self.seen.lock().unwrap().clone();
            let tail = String::from_utf8_lossy(&all[self.mark.min(all.len())..]).into_owned();
            if let Some(i) = tail.find(want) {
                self.mark += tail[..i + want.len()].len();
                return;
            }
            assert!(start.elapsed() < limit, "no {want:?} within {limit:?}; the terminal showed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_(&mut self, s: &[u8]) {
        self.master.write_all(s).unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize through a pointer to a live
        // local; the kernel then signals the foreground process group.
        unsafe { set_winsize(self.master.as_raw_fd(), &size) }.unwrap();
    }

    /// `pod`'s exit code, within `limit`.
    fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("pod did not exit within {limit:?}; the terminal showed:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The user's terminal is cooked again: canonical, echoing.
    fn assert_cooked(&self) {
        let t = tcgetattr(self.slave.as_fd()).unwrap();
        assert!(
            t.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG),
            "the terminal was left raw: {:?}",
            t.local_flags
        );
    }

    /// The st_dev of the user's terminal (its devpts instance).
    fn devpts(&self) -> u64 {
        nix::sys::stat::fstat(self.slave.as_raw_fd()).unwrap().st_dev
    }
}

fn shell_pod(live: &Live, name: &str, extra: &str) -> std::path::PathBuf {
    live.pod_file(
        name,
        &format!(
            "name: {name}\nnetwork: none\napps:\n  - name: sh\n    image: {BUSYBOX}\n    exec: [/bin/sh]\n{extra}"
        ),
    )
}

/// Interrupts `sleep 100` with ^C; the shell goes on.
fn ctrl_c_interrupts(t: &mut Term, tag: &str) {
    t.type_(b"sleep 100\r");
    t.expect("sleep 100", LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    t.type_(&[0x03]);
    t.type_(format!("echo {tag}$((40+2))\r").as_bytes());
    t.expect(&format!("{tag}42"), LIMIT);
    assert!(start.elapsed() < Duration::from_secs(20), "^C did not interrupt sleep 100");
}

#[test]
fn run_it_enter_t_and_attach_on_a_terminal() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);

    // pod run -it: the app's own terminal, sized as the user's.
    let file = shell_pod(&live, "it", "");
    let mut t = Term::spawn(&live, &["run", "-it", p(&file)], 24, 80);
    t.expect("# ", LIMIT * 4);
    t.type_(b"tty; stty size\r");
    t.expect("/dev/pts/", LIMIT);
    t.expect("24 80", LIMIT);
    // A new size: SIGWINCH from the kernel to pod, then pod-init's resize.
    t.resize(30, 100);
    let start = Instant::now();
    loop {
        t.type_(b"stty size\r");
        std::thread::sleep(Duration::from_millis(300));
        if t.text()[t.mark..].contains("30 100") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the new size did not reach the app:\n{}", t.text());
    }
    t.mark = t.text().len();
    ctrl_c_interrupts(&mut t, "run");
    // ^D ends the shell, the pod with it; pod run exits with its status.
    t.type_(&[0x04]);
    assert_eq!(t.wait(LIMIT), 0, "{}", t.text());
    t.assert_cooked();

    // A pod in the background with a terminal app, for enter and attach.
    let file = shell_pod(&live, "bg", "    terminal: true\n    stdin: true\n");
    let uuid = live.start(&file);
    live.wait_all_up(&uuid, LIMIT);

    // pod enter -t: a terminal of the app's devpts, not the user's.
    let mut e = Term::spawn(&live, &["enter", "-t", &uuid], 24, 80);
    e.expect("# ", LIMIT);
    e.type_(b"readlink /proc/self/fd/0; stat -L -c de''v=%d /proc/self/fd/0; stty size\r");
    e.expect("/dev/pts/", LIMIT);
    e.expect("dev=", LIMIT);
    let dev: String = e.text()[e.mark..].chars().take_while(char::is_ascii_digit).collect();
    assert_ne!(dev.parse::<u64>().unwrap(), e.devpts(), "the command runs on the user's terminal:\n{}", e.text());
    e.expect("24 80", LIMIT);
    e.resize(40, 120);
    std::thread::sleep(Duration::from_millis(500));
    e.type_(b"stty size\r");
    e.expect("40 120", LIMIT);
    ctrl_c_interrupts(&mut e, "enter");
    e.type_(b"exit 3\r");
    assert_eq!(e.wait(LIMIT), 3, "{}", e.text());
    e.assert_cooked();

    // pod attach: type, see the output, detach with ctrl-p ctrl-q.
    let mut a = Term::spawn(&live, &["attach", &uuid, "--app", "sh"], 24, 80);
    std::thread::sleep(Duration::from_secs(1));
    a.type_(b"echo attached$((2+3))\r");
    a.expect("attached5", LIMIT);
    a.type_(&[0x10, 0x11]);
    assert_eq!(a.wait(LIMIT), 0, "{}", a.text());
    a.assert_cooked();
    let state = live.app_status(&uuid, "sh")["state"].clone();
    assert!(matches!(state.as_str(), Some("running" | "ready")), "detaching stopped the app: {state}");
    // Again; the app's `exit 4` ends it and attach with its status.
    let mut a = Term::spawn(&live, &["attach", &uuid], 24, 80);
    std::thread::sleep(Duration::from_secs(1));
    a.type_(b"echo ag$((1))ain\r");
    a.expect("ag1ain", LIMIT);
    a.type_(b"exit 4\r");
    assert_eq!(a.wait(LIMIT), 4, "{}", a.text());
    a.assert_cooked();

    // Errors: unknown pod and app (4), an ended pod (7), input to an app
    // without stdin (7), ambiguous -it (7).
    live.fails(&["attach", "no-such-pod"], EXIT_NOT_FOUND);
    wait_for(LIMIT, || live.status(&uuid)["state"] == "exited");
    let out = live.fails(&["attach", &uuid], EXIT_CONFLICT);
    assert_mentions(&out, &["not running"]);
    let file = live.pod_file(
        "two",
        &format!(
            "name: two\nnetwork: none\napps:\n  - name: a\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, 'exec sleep 1000']\n  - name: b\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, 'exec sleep 1000']\n"
        ),
    );
    let out = live.fails(&["run", "-it", p(&file)], EXIT_CONFLICT);
    assert_mentions(&out, &["--app"]);
    live.fails(&["run", "-it", "--app", "c", p(&file)], EXIT_NOT_FOUND);
    let two = live.start(&file);
    live.fails(&["attach", &two, "--app", "nope"], EXIT_NOT_FOUND);
    let out = live.fails(&["attach", "-i", &two, "--app", "b"], EXIT_CONFLICT);
    assert_mentions(&out, &["stdin"]);
    live.ok(&["stop", &two]);
}

/// A VM pod (one boot under TCG): `pod run -it` gives the app a terminal
/// of the guest's (its stdin FIFO on the guest's tmpfs, written through a
/// stream), sized and resized as the user's, ^C reaching the app; the
/// detach keys leave it running; `pod enter -t` runs on a terminal of the
/// guest's as in a namespace pod; `pod attach` types into the app again
/// and exits with its status.
#[test]
fn run_it_enter_t_and_attach_in_a_vm_pod() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file(
        "vmtty",
        &format!("name: vmtty\nisolation: vm\nnetwork: none\napps:\n  - name: sh\n    image: {BUSYBOX}\n    exec: [/bin/sh]\n"),
    );
    let boot = Duration::from_secs(300);
    let mut t = Term::spawn(&live, &["run", "-it", p(&file)], 24, 80);
    t.expect("# ", boot);
    t.type_(b"tty; stty size\r");
    t.expect("/dev/pts/", LIMIT * 4);
    t.expect("24 80", LIMIT * 4);
    t.resize(31, 101);
    let start = Instant::now();
    loop {
        t.type_(b"stty size\r");
        std::thread::sleep(Duration::from_secs(1));
        if t.text()[t.mark..].contains("31 101") {
            break;
        }
        assert!(start.elapsed() < LIMIT * 4, "the new size did not reach the app:\n{}", t.text());
    }
    t.mark = t.text().len();
    ctrl_c_interrupts(&mut t, "vmrun");
    t.type_(&[0x10, 0x11]);
    assert_eq!(t.wait(LIMIT * 4), 0, "{}", t.text());
    t.assert_cooked();
    let pods = live.pods();
    let uuid =
        pods.iter().find(|p| p["name"] == "vmtty").expect("the pod is listed")["uuid"].as_str().unwrap().to_owned();
    let state = live.app_status(&uuid, "sh")["state"].clone();
    assert!(matches!(state.as_str(), Some("running" | "ready")), "detaching stopped the app: {state}");

    let mut e = Term::spawn(&live, &["enter", "-t", &uuid], 24, 80);
    e.expect("# ", boot);
    e.type_(b"tty; stty size\r");
    e.expect("/dev/pts/", LIMIT * 4);
    e.expect("24 80", LIMIT * 4);
    e.resize(33, 99);
    std::thread::sleep(Duration::from_secs(1));
    e.type_(b"stty size\r");
    e.expect("33 99", LIMIT * 4);
    ctrl_c_interrupts(&mut e, "vm");
    e.type_(b"exit 3\r");
    assert_eq!(e.wait(LIMIT * 4), 3, "{}", e.text());
    e.assert_cooked();

    // pod attach: the app's terminal again; its `exit 4` ends the pod.
    let mut a = Term::spawn(&live, &["attach", &uuid], 24, 80);
    std::thread::sleep(Duration::from_secs(2));
    a.type_(b"echo vm$((6*7))attached\r");
    a.expect("vm42attached", LIMIT * 4);
    a.type_(b"exit 4\r");
    assert_eq!(a.wait(LIMIT * 4), 4, "{}", a.text());
    a.assert_cooked();
    wait_for(LIMIT * 4, || live.status(&uuid)["state"] == "exited");
}
