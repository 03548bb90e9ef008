//! The CRI streaming calls of `pod cri serve` under the real crictl:
//! ExecSync (`crictl exec -s`, with a timeout), Exec over SPDY and over
//! WebSocket (with a tty through `script`, resized), exec in a stopped
//! container, PortForward to a real HTTP server in the pod fetched with
//! curl over loopback (both transports), and Attach (to a container on a
//! terminal too). As root, with the
//! busybox example image; SKIPs visibly without crictl, curl or script.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A server, one sandbox, and a running busybox container running `script`.
struct Fixture {
    live: Live,
    s: CriServer,
    sandbox: String,
    sandbox_json: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if let Some(why) = skip_reason(false) {
            eprintln!("SKIP: {why}");
            return None;
        }
        let live = Live::new(&[Example::Busybox]);
        let s = match CriServer::start(&live, &[]) {
            Ok(s) => s,
            Err(Skip(why)) => {
                eprintln!("SKIP: {why}");
                return None;
            }
        };
        let logs = live.work.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let sandbox_json = live.work.join("sandbox.json");
        let sandbox = json!({"metadata": {"name": "stream", "namespace": "default", "uid": "u-stream"},
            "log_directory": p(&logs), "linux": {}});
        std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
        let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
        Some(Fixture { live, s, sandbox, sandbox_json })
    }

    /// Creates and starts a container running `script` under /bin/sh,
    /// and waits until it runs.
    fn container(&self, name: &str, script: &str, stdin: bool) -> String {
        let id = self.started(name, script, stdin);
        wait_state(&self.s, &id, "CONTAINER_RUNNING");
        id
    }

    /// Creates and starts a container running `script` under /bin/sh.
    fn started(&self, name: &str, script: &str, stdin: bool) -> String {
        let path = self.live.work.join(format!("{name}.json"));
        let c = json!({"metadata": {"name": name}, "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", script], "log_path": format!("{name}.log"), "stdin": stdin});
        std::fs::write(&path, c.to_string()).unwrap();
        let id = self.s.ok(&["create", &self.sandbox, p(&path), p(&self.sandbox_json)]).trim().to_owned();
        self.s.ok(&["start", &id]);
        id
    }

    fn done(self) {
        self.s.ok(&["stopp", &self.sandbox]);
        self.s.ok(&["rmp", &self.sandbox]);
        let left = leftovers_of(&self.live, &self.sandbox);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

fn config_of(s: &CriServer) -> String {
    // CriServer::crictl writes it; one call makes sure it exists.
    s.ok(&["version"]);
    p(&s.socket.with_file_name("crictl.yaml")).to_owned()
}

#[test]
fn exec_sync_and_streamed_exec_over_spdy_and_websocket() {
    let Some(f) = Fixture::new() else { return };
    let c = f.container("main", "exec sleep 1000", false);

    // ExecSync: output, stderr and the exit code come back.
    let out = f.s.crictl(&["exec", "-s", &c, "/bin/sh", "-c", "echo out; echo err >&2"]);
    assert!(out.status.success(), "{}", describe(&["crictl exec -s"], &out));
    // (crictl prints both on its stdout, each with a newline of its own.)
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n\nerr\n\n");
    // crictl reports a non-zero code as an error with the code and stderr.
    let err = f.s.fails(&["exec", "-s", &c, "/bin/sh", "-c", "echo bad >&2; exit 3"]);
    assert_mentions(&err, &["exited with 3", "bad"]);
    // A command that is not there: said so, with its name.
    let err = f.s.fails(&["exec", "-s", &c, "/no/such/command"]);
    assert_mentions(&err, &["/no/such/command"]);
    // It runs in the app: its hostname and root are the container's.
    let out = f.s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; ls /bin/busybox"]);
    assert_mentions(&out, &["/bin/busybox"]);

    // Streamed exec, both transports: stdout, stderr, exit code.
    for transport in ["spdy", "websocket"] {
        let out = f.s.crictl(&[
            "exec",
            "--transport",
            transport,
            &c,
            "/bin/sh",
            "-c",
            "echo streamed; echo oops >&2; exit 4",
        ]);
        let what = format!("crictl exec --transport {transport}");
        assert!(!out.status.success(), "{}\n{}", describe(&[&what], &out), f.s.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "streamed\n", "{transport}");
        assert_mentions(&String::from_utf8_lossy(&out.stderr), &["oops", "exit code 4"]);
        let out = f.s.ok(&["exec", "--transport", transport, &c, "/bin/sh", "-c", "echo ok"]);
        assert_eq!(out, "ok\n", "{transport}");
    }

    // stdin goes in (-i), and its end ends the command.
    let mut child = Command::new(&f.s.crictl)
        .args(["--config", &config_of(&f.s), "exec", "-i", &c, "/bin/sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"shout\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");

    // A tty (-it needs a terminal: `script` gives crictl one, sized 45x123),
    // and its size reaches the command.
    if which("script").is_some() {
        for transport in ["spdy", "websocket"] {
            let cmd = format!(
                "stty rows 45 cols 123; {} --config {} exec -it --transport {transport} {c} /bin/sh -c 'test -t 0 && echo IS-A-TTY; stty size'",
                p(&f.s.crictl),
                config_of(&f.s)
            );
            let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("IS-A-TTY"), "{transport}: {text}\n{}", f.s.log());
            assert!(text.contains("45 123"), "{transport}: the size did not reach the pty: {text}");
        }
    } else {
        eprintln!("SKIP (tty part): no script(1)");
    }
    f.done();
}

#[test]
fn exec_sync_times_out_and_kills_the_command() {
    let Some(f) = Fixture::new() else { return };
    let c = f.container("main", "exec sleep 1000", false);
    let started = Instant::now();
    let err = f.s.fails(&["exec", "-s", "--timeout", "1", &c, "/bin/sh", "-c", "sleep 4321"]);
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout did not cut it short");
    assert_mentions_any(&err, &["timed out", "DeadlineExceeded"]);
    // The command is gone from the pod.
    let ps = f.s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "ps"]);
    assert!(!ps.contains("4321"), "the timed out command still runs:\n{ps}");
    f.done();
}

#[test]
fn exec_in_a_stopped_container_fails_clearly() {
    let Some(f) = Fixture::new() else { return };
    let c = f.container("short", "exec sleep 1000", false);
    f.s.ok(&["stop", &c]);
    wait_state(&f.s, &c, "CONTAINER_EXITED");
    for args in [vec!["exec", "-s", &c, "true"], vec!["exec", &c, "true"]] {
        let err = f.s.fails(&args);
        assert_mentions(&err, &["not running"]);
    }
    let err = f.s.fails(&["exec", "-s", "no-such-container", "true"]);
    assert_mentions(&err, &["not found"]);
    f.done();
}

/// `crictl port-forward` in the background until dropped.
struct Forward(std::process::Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn port_forward_reaches_a_server_in_the_pod() {
    let Some(f) = Fixture::new() else { return };
    if which("curl").is_none() {
        eprintln!("SKIP: no curl");
        return f.done();
    }
    f.container(
        "web",
        "mkdir -p /tmp/www && echo served-from-the-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        false,
    );
    for transport in ["spdy", "websocket"] {
        let local = free_port();
        let mut child = Command::new(&f.s.crictl)
            .args(["--config", &config_of(&f.s), "port-forward", "--transport", transport, &f.sandbox])
            .arg(format!("{local}:8080"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        // Kept open: crictl writes a line per connection (SIGPIPE otherwise).
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let _fwd = Forward(child);
        assert_mentions(&line, &["Forwarding from"]);
        // The server may take a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "5"])
                .arg(format!("http://127.0.0.1:{local}/"))
                .output()
                .unwrap();
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{transport}: curl failed: {}\n{}",
                describe(&["curl"], &out),
                f.s.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(body, "served-from-the-pod\n", "{transport}");
        // Twice: each connection is a new stream pair on the same session.
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{local}/"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "served-from-the-pod\n", "{transport}");
    }
    f.done();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Attach follows the container's CRI log and writes into its stdin FIFO:
/// it needs pod-init to write both (SKIPs, saying so, where it does not).
#[test]
fn attach_shows_output_and_takes_stdin() {
    let Some(f) = Fixture::new() else { return };
    let c = f.started("shell", "while read line; do echo \"got $line\"; done", true);
    let fifo = f.live.data.join("pods/run").join(&f.sandbox).join("stdin/shell");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fifo.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !fifo.exists() {
        eprintln!("SKIP: pod-init gave the container no stdin FIFO ({}): attach has no stdin to write", fifo.display());
        return f.done();
    }
    wait_state(&f.s, &c, "CONTAINER_RUNNING");
    let mut child = Command::new(&f.s.crictl)
        .args(["--config", &config_of(&f.s), "attach", "-i", &c])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hello\n").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line, "got hello\n", "{}", f.s.log());
    f.done();
}

/// A streamed exec whose client goes away takes its command with it.
#[test]
fn an_exec_whose_client_is_killed_ends() {
    let Some(f) = Fixture::new() else { return };
    let c = f.container("main", "exec sleep 1000", false);
    let mut child = Command::new(&f.s.crictl)
        .args(["--config", &config_of(&f.s), "exec", &c, "/bin/sh", "-c", "exec sleep 4322"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ps = || f.s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "ps"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ps().contains("4322") {
        assert!(Instant::now() < deadline, "the exec never started:\n{}", f.s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ps().contains("4322") {
        assert!(Instant::now() < deadline, "the command outlived its client:\n{}", ps());
        std::thread::sleep(Duration::from_millis(200));
    }
    f.done();
}

/// Attach's output path on both transports: what lands in the container's
/// CRI log after the attach shows, by stream; the attach ends when the
/// container stops. The lines are appended by the test, standing in for
/// pod-init's log writer (attach_shows_output_and_takes_stdin drives the
/// real one).
#[test]
fn attach_follows_the_cri_log() {
    let Some(f) = Fixture::new() else { return };
    for transport in ["spdy", "websocket"] {
        let name = format!("follow-{transport}");
        let c = f.container(&name, "exec sleep 1000", false);
        let log = f.live.work.join("logs").join(format!("{name}.log"));
        let child = Command::new(&f.s.crictl)
            .args(["--config", &config_of(&f.s), "attach", "--transport", transport, &c])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut w,
            b"2026-01-01T00:00:00.000000000Z stdout P par\n2026-01-01T00:00:00.1Z stdout F ts\n2026-01-01T00:00:00.2Z stderr F to-stderr\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        f.s.ok(&["stop", &c]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = rx.recv_timeout(Duration::from_secs(30)).expect("attach did not end with its container").unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "parts\n", "{transport}\n{}", f.s.log());
        assert_mentions(&String::from_utf8_lossy(&out.stderr), &["to-stderr"]);
    }
    f.done();
}

/// A `tty` container: its shell runs on a terminal pod-init holds.
/// `crictl attach -it` (under `script`, which gives crictl a terminal
/// sized 30x99) shows the prompt, takes what is typed, and the client's
/// size reaches the container's terminal; `exit` ends the shell, the
/// container and the attach.
#[test]
fn attach_with_a_tty_is_interactive() {
    if which("script").is_none() {
        eprintln!("SKIP: no script(1) to give crictl attach -it a terminal");
        return;
    }
    let Some(f) = Fixture::new() else { return };
    let path = f.live.work.join("term.json");
    let c = json!({"metadata": {"name": "term"}, "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh"], "log_path": "term.log", "stdin": true, "tty": true});
    std::fs::write(&path, c.to_string()).unwrap();
    let c = f.s.ok(&["create", &f.sandbox, p(&path), p(&f.sandbox_json)]).trim().to_owned();
    f.s.ok(&["start", &c]);
    wait_state(&f.s, &c, "CONTAINER_RUNNING");
    let cmd = format!("stty rows 30 cols 99; {} --config {} attach -it {c}", p(&f.s.crictl), config_of(&f.s));
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
    let wait_text = |what: &str, limit: u64| {
        let deadline = Instant::now() + Duration::from_secs(limit);
        while Instant::now() < deadline && !text().contains(what) {
            std::thread::sleep(Duration::from_millis(100));
        }
        text().contains(what)
    };
    let mut input = child.stdin.take().unwrap();
    let mut type_in = |line: &str| std::io::Write::write_all(&mut input, line.as_bytes()).unwrap();
    // The attach is up once the shell answers; until then, Enter again.
    let mut answered = false;
    for _ in 0..20 {
        type_in("\n");
        if wait_text("# ", 1) {
            answered = true;
            break;
        }
    }
    assert!(answered, "no prompt through attach -it: {:?}\n{}", text(), f.s.log());
    type_in("echo h''i; tty; stty size\n");
    assert!(wait_text("\nhi\n", 20), "no output: {:?}\n{}", text(), f.s.log());
    assert!(wait_text("\n/dev/pts/0\n", 5), "not on a terminal: {:?}", text());
    assert!(wait_text("\n30 99\n", 5), "the client's size did not reach the terminal: {:?}", text());
    // The shell ends: so do the container and the attach.
    type_in("exit 0\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ended, "attach -it did not end with its container: {:?}", text());
    wait_state(&f.s, &c, "CONTAINER_EXITED");
    // The log has it all, as stdout.
    let log = std::fs::read_to_string(f.live.work.join("logs/term.log")).unwrap();
    assert!(log.lines().all(|l| l.split(' ').nth(1) == Some("stdout")), "{log}");
    assert!(log.contains("/dev/pts/0"), "{log}");
    f.done();
}
