//! pod-init's app streams beyond the defaults, against fake pod roots:
//! the CRI log format (`LogPath=`, `LogFormat=cri`), `reopen-log`, a stop
//! timeout over the control channel, a FIFO as stdin (`Stdin=fifo`), and a
//! terminal (`TTY=yes`).
//! Tier (b): each test needs root and says SKIP without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{can_run, wait_for, Pod};

/// Sends one control request line; returns the answer's head line.
fn control(pod: &Pod, line: &str) -> String {
    let mut s = UnixStream::connect(pod.root.join("control.sock")).unwrap();
    s.write_all(format!("pod-control 1 {line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// `(stream, tag, text)` of each line of a CRI log; panics on a line that
/// is not one, or whose time is not RFC 3339 UTC with nanoseconds.
fn cri_lines(path: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(f.len(), 4, "not a CRI log line: {l:?}");
            let t = f[0].as_bytes();
            assert!(t.len() == 30 && t[10] == b'T' && t[19] == b'.' && t[29] == b'Z', "time {:?} in {l:?}", f[0]);
            assert!(f[0][20..29].bytes().all(|b| b.is_ascii_digit()), "nanoseconds in {l:?}");
            (f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect()
}

fn has(lines: &[(String, String, String)], stream: &str, tag: &str, text: &str) -> bool {
    lines.iter().any(|(s, g, t)| s == stream && g == tag && t == text)
}

/// A pod root with a `volumes/logs` directory; the log's path in it.
fn pod_with_log_volume() -> (Pod, PathBuf) {
    let pod = Pod::new();
    fs::create_dir_all(pod.root.join("volumes/logs")).unwrap();
    let log = pod.root.join("volumes/logs/talk.log");
    (pod, log)
}

const CRI: &str = "[X-Pod]\nLogPath=/volumes/logs/talk.log\nLogFormat=cri\n";

#[test]
fn cri_log_has_both_streams_and_reopens_after_a_rename() {
    if !can_run() {
        return;
    }
    let (pod, log) = pod_with_log_volume();
    let script = "echo out1; echo err1 >&2; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done";
    pod.app("talk", &format!("[Service]\nExecStart=sh -c '{script}'\n{CRI}"));
    let _running = pod.start();
    assert!(wait_for(Duration::from_secs(10), || has(&cri_lines(&log), "stdout", "F", "tick2")), "{}", pod.stderr());
    let lines = cri_lines(&log);
    assert!(has(&lines, "stdout", "F", "out1") && has(&lines, "stderr", "F", "err1"), "{lines:?}");
    assert_eq!(mode(&log), 0o640);
    assert!(pod.log("talk").is_empty(), "nothing goes to logs/talk.log");

    // kubelet's rotation: rename, then reopen; the new file is there at once.
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    assert_eq!(control(&pod, "reopen-log talk"), "pod-control 1 ok");
    assert!(log.exists(), "reopen-log answered before the new file was made");
    assert!(wait_for(Duration::from_secs(5), || cri_lines(&log).len() >= 3), "new log: {:?}", cri_lines(&log));
    let old = fs::read(&rotated).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs::read(&rotated).unwrap(), old, "the renamed log still grows");

    // Refusals: an unknown app, a raw-format app is not reopened.
    assert!(control(&pod, "reopen-log nope").contains("error no-such-app"));
}

#[test]
fn a_line_without_newline_at_the_end_is_a_part() {
    if !can_run() {
        return;
    }
    let (pod, log) = pod_with_log_volume();
    pod.app("talk", &format!("[Service]\nExecStart=sh -c 'echo whole; printf \"no newline\"'\n{CRI}"));
    let mut running = pod.start();
    pod.wait_state("talk", "exited");
    // Complete once the app is seen to have exited.
    let lines = cri_lines(&log);
    assert!(has(&lines, "stdout", "F", "whole") && has(&lines, "stdout", "P", "no newline"), "{lines:?}");
    assert_eq!(running.exit_code(), 0);
}

#[test]
fn stop_with_a_timeout_kills_after_it_not_after_timeout_stop_sec() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    // Ignores SIGTERM; its unit would wait 60 s before SIGKILL.
    let unit = "[Service]\nExecStart=sh -c \"trap '' TERM; while true; do sleep 0.1; done\"\nTimeoutStopSec=60\n";
    pod.app("stubborn", unit);
    pod.app("zero", unit);
    pod.app("idle", "[Service]\nExecStart=sleep 1000\n");
    let _running = pod.start();
    for app in ["stubborn", "zero", "idle"] {
        pod.wait_state(app, "ready");
    }
    let start = Instant::now();
    assert_eq!(control(&pod, "stop stubborn 1"), "pod-control 1 ok");
    let st = pod.wait_state("stubborn", "stopped");
    let took = start.elapsed();
    assert_eq!(st["signal"], 9, "{st}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "killed after {took:?}");

    // 0: SIGKILL at once, not even the stop signal first.
    let start = Instant::now();
    assert_eq!(control(&pod, "stop zero 0"), "pod-control 1 ok");
    let st = pod.wait_state("zero", "stopped");
    assert_eq!(st["signal"], 9, "{st}");
    assert!(start.elapsed() < Duration::from_millis(800), "killed after {:?}", start.elapsed());

    // Not running: its log cannot be reopened; a raw-format log neither.
    assert!(control(&pod, "reopen-log zero").contains("error conflict"), "a stopped app");
    assert!(control(&pod, "reopen-log idle").contains("raw format"));
}

#[test]
fn stdin_fifo_outlives_its_writers() {
    if !can_run() {
        return;
    }
    let (pod, log) = pod_with_log_volume();
    pod.app(
        "talk",
        &format!("[Service]\nExecStart=sh -c 'while read l; do echo got:$l; done; echo EOF'\n{CRI}Stdin=fifo\n"),
    );
    let _running = pod.start();
    pod.wait_state("talk", "ready");
    let fifo = pod.root.join("stdin/talk");
    let meta = fs::symlink_metadata(&fifo).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(mode(&fifo), 0o600);
    for word in ["hello", "again"] {
        // One writer after another, each closing: the app reads on.
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(format!("{word}\n").as_bytes()).unwrap();
        drop(w);
        let want = format!("got:{word}");
        assert!(wait_for(Duration::from_secs(5), || has(&cri_lines(&log), "stdout", "F", &want)), "{want}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!has(&cri_lines(&log), "stdout", "F", "EOF"), "the app saw the end of its input");
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A devpts of its own at `<rootfs>/dev/pts`, as stage1 gives every app;
/// unmounted on drop.
struct Devpts(PathBuf);

impl Devpts {
    fn mount(rootfs: &Path) -> Devpts {
        let pts = rootfs.join("dev/pts");
        fs::create_dir_all(&pts).unwrap();
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NOEXEC;
        let opts = Some("newinstance,ptmxmode=0666,mode=0620");
        nix::mount::mount(Some("devpts"), &pts, Some("devpts"), flags, opts).unwrap();
        Devpts(pts)
    }
}

impl Drop for Devpts {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The text of a CRI log's stdout, its parts joined.
fn cri_stdout(path: &Path) -> String {
    let mut text = String::new();
    for (stream, tag, line) in cri_lines(path) {
        assert_eq!(stream, "stdout", "a terminal has one stream");
        text.push_str(&line);
        if tag == "F" {
            text.push('\n');
        }
    }
    text
}

#[test]
fn tty_app_runs_on_a_terminal_pod_init_holds() {
    if !can_run() {
        return;
    }
    let (pod, log) = pod_with_log_volume();
    let rootfs = pod.app("term", &format!("[Service]\nExecStart=sh\n{CRI}Stdin=fifo\nTTY=yes\n"));
    for applet in ["tty", "stty"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    // Keeps the pod up once the shell has ended.
    pod.app("idle", "[Service]\nExecStart=sleep 1000\n");
    let _pts = Devpts::mount(&rootfs);
    let _running = pod.start();
    pod.wait_state("term", "ready");
    let fifo = pod.root.join("stdin/term");
    let type_in = |line: &str| {
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(line.as_bytes()).unwrap();
    };
    // An interactive shell: its prompt is logged before any newline.
    assert!(wait_for(Duration::from_secs(5), || cri_stdout(&log).contains("# ")), "no prompt: {}", cri_stdout(&log));
    type_in("echo hi; tty\n");
    let pts = |text: &str| text.lines().any(|l| l.trim_end_matches('\r') == "/dev/pts/0");
    assert!(wait_for(Duration::from_secs(5), || pts(&cri_stdout(&log))), "no terminal: {}", cri_stdout(&log));
    let text = cri_stdout(&log);
    // (`lines()` took the terminal's CRs off.)
    assert!(text.contains("echo hi; tty\n"), "the terminal echoes what is typed: {text:?}");
    assert!(text.contains("\nhi\n"), "{text:?}");
    // Resized: the shell's terminal has the new size.
    assert!(control(&pod, "resize term 33 101").ends_with(" ok"), "{}", pod.stderr());
    type_in("stty size\n");
    assert!(wait_for(Duration::from_secs(5), || cri_stdout(&log).contains("\n33 101\n")), "{}", cri_stdout(&log));
    assert!(control(&pod, "resize nope 1 1").contains("no-such-app"));
    assert!(control(&pod, "resize idle 1 1").contains("has no terminal"));
    // End of input (close-stdin, no writer left): ^D, and the shell exits.
    assert!(control(&pod, "close-stdin term").ends_with(" ok"));
    let status = pod.wait_state("term", "exited");
    assert_eq!(status["exitCode"], 0, "{status}");
    assert!(control(&pod, "resize term 24 80").contains("not running"), "resize after the end");
}

#[test]
fn tty_without_stdin_logs_raw_output() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    let rootfs = pod.app(
        "raw",
        "[Service]\nExecStart=sh -c 'test -t 0 && test -t 1 && test -t 2 && echo all-tty'\n[X-Pod]\nTTY=yes\n",
    );
    let _pts = Devpts::mount(&rootfs);
    let _running = pod.start();
    let status = pod.wait_state("raw", "exited");
    assert_eq!(status["exitCode"], 0, "{status}\n{}", pod.stderr());
    assert_eq!(pod.log("raw"), "all-tty\r\n", "raw: the terminal's bytes as written");
}
