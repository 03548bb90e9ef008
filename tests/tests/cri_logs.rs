//! Container stdio through `pod cri serve`, driven by the real crictl:
//! the CRI log format at the path kubelet gives (`crictl logs`, the file
//! itself, `crictl logs --reopen` after a rename), StopContainer's timeout
//! (`crictl stop --timeout`), and stdin through the app's FIFO. SKIPs
//! visibly without root, crictl or the built binaries.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A sandbox with a log directory, and how to make containers in it.
struct Sandbox<'a> {
    live: &'a Live,
    s: &'a CriServer,
    id: String,
    config: PathBuf,
    logs: PathBuf,
}

impl<'a> Sandbox<'a> {
    fn run(live: &'a Live, s: &'a CriServer, name: &str) -> Self {
        Self::run_with(live, s, name, "pod")
    }

    /// With RuntimeHandler `handler` (`pod`, or `pod-vm` for a VM sandbox).
    fn run_with(live: &'a Live, s: &'a CriServer, name: &str, handler: &str) -> Self {
        let logs = live.work.join("pods-logs").join(name);
        let config = live.work.join(format!("{name}-sandbox.json"));
        let sandbox = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": p(&logs),
            "linux": {}
        });
        std::fs::write(&config, sandbox.to_string()).unwrap();
        let id = s.ok(&["runp", "--runtime", handler, p(&config)]).trim().to_owned();
        Self { live, s, id, config, logs }
    }

    /// Creates and starts a busybox container running `script`; its ID.
    fn container(&self, name: &str, script: &str, extra: serde_json::Value) -> String {
        let mut c = json!({
            "metadata": {"name": name},
            "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", script],
            "log_path": format!("{name}/0.log")
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let file = self.live.work.join(format!("{name}.json"));
        std::fs::write(&file, c.to_string()).unwrap();
        let id = self.s.ok(&["create", &self.id, p(&file), p(&self.config)]).trim().to_owned();
        self.s.ok(&["start", &id]);
        wait_until("the container runs", Duration::from_secs(120), || {
            self.s.json(&["inspect", "-o", "json", &id])["status"]["state"] == "CONTAINER_RUNNING"
        });
        id
    }

    fn remove(self) {
        self.s.ok(&["stopp", &self.id]);
        self.s.ok(&["rmp", &self.id]);
        let left = leftovers_of(self.live, &self.id);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// `(stream, tag, text)` of each line of a CRI log file; panics on a line
/// that is not one, or whose time is not RFC 3339 with nanoseconds.
fn cri_lines(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(f.len(), 4, "not a CRI log line: {l:?}");
            let t = f[0].as_bytes();
            assert!(t.len() == 30 && t[10] == b'T' && t[19] == b'.' && t[29] == b'Z', "time {:?} in {l:?}", f[0]);
            assert!(matches!(f[1], "stdout" | "stderr") && matches!(f[2], "F" | "P"), "{l:?}");
            (f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn container_output_in_the_cri_log_format_and_its_log_reopened() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sb = Sandbox::run(&live, &s, "logs");
    let script =
        "echo hello stdout; echo hello stderr >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    let c = sb.container("talk", script, json!({}));
    let log = sb.logs.join("talk/0.log");
    let st = s.json(&["inspect", "-o", "json", &c]);
    assert_eq!(st["status"]["logPath"], p(&log), "{st}");

    // crictl reads it as kubelet does: both streams.
    wait_until("crictl logs shows both streams", Duration::from_secs(20), || {
        let out = s.crictl(&["logs", &c]);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        all.contains("hello stdout") && all.contains("hello stderr") && all.contains("tick 2")
    });
    // The file itself: one CRI line per line, each stream tagged.
    let lines = cri_lines(&log);
    let has = |lines: &[(String, String, String)], stream: &str, text: &str| {
        lines.iter().any(|(st, tag, t)| st == stream && tag == "F" && t == text)
    };
    assert!(has(&lines, "stdout", "hello stdout") && has(&lines, "stderr", "hello stderr"), "{lines:?}");
    assert!(has(&lines, "stdout", "tick 0"), "{lines:?}");
    // pod's own view of the app's log is the same file.
    assert_mentions(&live.ok(&["logs", &sb.id, "talk"]), &["stdout F hello stdout"]);

    // kubelet's rotation: rename, then ReopenContainerLog; the new file is
    // there when the call returns, and the renamed one stops growing.
    let rotated = sb.logs.join("talk/0.log.20260101-000000");
    std::fs::rename(&log, &rotated).unwrap();
    s.ok(&["logs", "--reopen", "--tail", "0", &c]);
    assert!(log.exists(), "no new log file at {}", log.display());
    wait_until("ticks in the new log", Duration::from_secs(10), || cri_lines(&log).len() >= 3);
    let old = std::fs::read(&rotated).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(&rotated).unwrap(), old, "the rotated log still grows");
    assert!(cri_lines(&rotated).iter().all(|(_, tag, _)| tag == "F"), "a line was cut at the rename");

    // A container that does not run: its log is not reopened (as containerd).
    s.ok(&["stop", "--timeout", "0", &c]);
    wait_state(&s, &c, "CONTAINER_EXITED");
    assert_mentions(&s.fails(&["logs", "--reopen", &c]), &["not running"]);
    sb.remove();
}

#[test]
fn stop_container_kills_after_its_timeout() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sb = Sandbox::run(&live, &s, "stop");
    // Both ignore SIGTERM (and so does their sleep): only SIGKILL ends them.
    let stubborn = "trap '' TERM; echo trapped; while true; do sleep 0.1; done";
    let late = sb.container("late", stubborn, json!({}));
    let now = sb.container("now", stubborn, json!({}));
    wait_until("the traps are set", Duration::from_secs(10), || {
        cri_lines(&sb.logs.join("late/0.log")).len() + cri_lines(&sb.logs.join("now/0.log")).len() == 2
    });

    let start = Instant::now();
    s.ok(&["stop", "--timeout", "2", &late]);
    let took = start.elapsed();
    let st = wait_state(&s, &late, "CONTAINER_EXITED");
    assert_eq!(st["status"]["exitCode"], 137, "killed: {st}");
    // Not the app's own stop timeout (10 s): the one asked for.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "stopped after {took:?}");

    let start = Instant::now();
    s.ok(&["stop", "--timeout", "0", &now]);
    let took = start.elapsed();
    let st = wait_state(&s, &now, "CONTAINER_EXITED");
    assert_eq!(st["status"]["exitCode"], 137, "killed: {st}");
    assert!(took < Duration::from_millis(1500), "timeout 0 is SIGKILL at once; stopped after {took:?}");
    sb.remove();
}

#[test]
fn stdin_reaches_the_container_through_its_fifo() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sb = Sandbox::run(&live, &s, "stdin");
    let c = sb.container("reader", "while read l; do echo got $l; done; echo EOF", json!({"stdin": true}));
    // The contract with the streaming server: `<pod dir>/stdin/<app>`.
    let fifo = live.data.join("pods/run").join(&sb.id).join("stdin/reader");
    for word in ["one", "two"] {
        // Writers come and go; the container reads on.
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        std::io::Write::write_all(&mut w, format!("{word}\n").as_bytes()).unwrap();
        drop(w);
        wait_until(&format!("got {word}"), Duration::from_secs(10), || {
            String::from_utf8_lossy(&s.crictl(&["logs", &c]).stdout).contains(&format!("got {word}"))
        });
    }
    assert!(!String::from_utf8_lossy(&s.crictl(&["logs", &c]).stdout).contains("EOF"));
    sb.remove();
}

#[test]
fn a_pod_file_app_logs_into_a_volume_in_the_cri_format() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let host = live.work.join("host-logs");
    std::fs::create_dir_all(&host).unwrap();
    let yaml = format!(
        "name: logging\nnetwork: none\napps:\n  - name: cri\n    image: {img}\n    exec: [/bin/sh, -c, 'echo out; echo err >&2; exec sleep 1000']\n    log: {{ volume: logs, path: cri.log, format: cri }}\n  - name: plain\n    image: {img}\n    exec: [/bin/sh, -c, 'echo plain out; echo plain err >&2; exec sleep 1000']\nvolumes:\n  - {{ name: logs, kind: host, source: {dir} }}\n",
        img = Example::Busybox.reference(),
        dir = p(&host)
    );
    let uuid = live.start(&live.pod_file("logging", &yaml));
    live.wait_all_up(&uuid, Duration::from_secs(60));
    let log = host.join("cri.log");
    wait_until("both streams in the host volume", Duration::from_secs(20), || cri_lines(&log).len() >= 2);
    let lines = cri_lines(&log);
    assert!(lines.contains(&("stdout".into(), "F".into(), "out".into())), "{lines:?}");
    assert!(lines.contains(&("stderr".into(), "F".into(), "err".into())), "{lines:?}");
    // An app without `log:` keeps its raw log in the pod directory.
    let plain = live.data.join("pods/run").join(&uuid).join("logs/plain.log");
    wait_until("the plain log", Duration::from_secs(10), || {
        std::fs::read_to_string(&plain).is_ok_and(|t| t.contains("plain out\n") && t.contains("plain err\n"))
    });
    assert_mentions(&live.ok(&["logs", &uuid, "plain"]), &["plain out", "plain err"]);
    live.ok(&["stop", &uuid]);
    live.ok(&["rm", &uuid]);
    let left = leftovers_of(&live, &uuid);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// VM pods run the same pod-init: the host volume an app logs into is
/// bound where the guest sees the pod directory.
#[test]
fn a_vm_pod_app_logs_into_a_volume_in_the_cri_format() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let host = live.work.join("vm-logs");
    std::fs::create_dir_all(&host).unwrap();
    let yaml = format!(
        "name: vmlog\nisolation: vm\nnetwork: none\napps:\n  - name: cri\n    image: {img}\n    exec: [/bin/sh, -c, 'echo out; echo err >&2']\n    log: {{ volume: logs, path: cri.log, format: cri }}\nvolumes:\n  - {{ name: logs, kind: host, source: {dir} }}\n",
        img = Example::Busybox.reference(),
        dir = p(&host)
    );
    let file = live.pod_file("vmlog", &yaml);
    let out = live.run_within(&["run", p(&file)], Duration::from_secs(240));
    assert!(out.status.success(), "{}", describe(&["run"], &out));
    let lines = cri_lines(&host.join("cri.log"));
    assert!(lines.contains(&("stdout".into(), "F".into(), "out".into())), "{lines:?}");
    assert!(lines.contains(&("stderr".into(), "F".into(), "err".into())), "{lines:?}");
}

/// A VM sandbox (`pod-vm`) runs the same pod-init: the container's log is
/// written through the share into the log directory, and reopened over
/// the relayed control channel.
#[test]
fn a_vm_sandbox_container_logs_in_the_cri_format_and_reopens() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sb = Sandbox::run_with(&live, &s, "vmlogs", "pod-vm");
    let script = "echo vm stdout; echo vm stderr >&2; while true; do echo tick; sleep 0.2; done";
    let c = sb.container("talk", script, json!({}));
    let log = sb.logs.join("talk/0.log");
    wait_until("both streams in the log", Duration::from_secs(60), || {
        let lines = cri_lines(&log);
        lines.iter().any(|l| l.0 == "stdout" && l.2 == "vm stdout")
            && lines.iter().any(|l| l.0 == "stderr" && l.2 == "vm stderr")
    });
    assert_mentions(&s.ok(&["logs", &c]), &["vm stdout"]);
    let rotated = sb.logs.join("talk/0.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    s.ok(&["logs", "--reopen", "--tail", "0", &c]);
    assert!(log.exists(), "no new log file at {}", log.display());
    wait_until("ticks in the new log", Duration::from_secs(30), || !cri_lines(&log).is_empty());

    // No FIFO can be made on the guest's share: stdin is refused, not dropped.
    let file = live.work.join("vm-stdin.json");
    let c = json!({"metadata": {"name": "reader"}, "image": {"image": Example::Busybox.reference()}, "stdin": true});
    std::fs::write(&file, c.to_string()).unwrap();
    assert_mentions(&s.fails(&["create", &sb.id, p(&file), p(&sb.config)]), &["Unimplemented", "stdin"]);
    sb.remove();
}
