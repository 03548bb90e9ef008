//! `pod cri serve` with the `pod-vm` RuntimeHandler, driven by the real
//! crictl: the sandbox is a VM pod (stage1-vm, TCG on this host), its
//! containers apps added to the running VM, with the same calls as the
//! namespace handler (cri.rs, cri_streaming.rs, cri_podcfg.rs): exec
//! (sync, streamed, stdin, tty, timeout), port-forward and a host port to
//! a server in the guest, a sysctl set in the guest's kernel. One VM boot
//! for all of it (each costs seconds under TCG). Needs root, crictl, qemu
//! and the guest kernel; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn a_vm_sandbox_runs_containers_with_crictl() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = live.work.join("sandbox.json");
    let meta = json!({"name": "vm-sandbox", "namespace": "default", "uid": "uid-vm", "attempt": 0});
    // A host port on loopback, forwarded by qemu into the guest; a sysctl
    // the guest's pod-init sets in the guest's own kernel.
    let host_port = free_port();
    let sandbox = json!({"metadata": meta, "labels": {"app": "vm"},
        "port_mappings": [{"container_port": 8080, "host_port": host_port, "host_ip": "127.0.0.1"}],
        "linux": {"sysctls": {"kernel.shm_rmid_forced": "1"}}});
    std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
    let container_json = live.work.join("container.json");
    std::fs::write(
        &container_json,
        json!({
            "metadata": {"name": "box"},
            "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", "echo \"hello $GREETING from $(uname -r)\"; exec sleep 1000"],
            "envs": [{"key": "GREETING", "value": "vm"}],
            "linux": {"resources": {"memory_limit_in_bytes": 100_663_296_u64}},
        })
        .to_string(),
    )
    .unwrap();

    // Status lists the handlers; an unknown one is refused, naming them.
    let info = s.json(&["info"]);
    // (The default handler, named "", shows without a name.)
    let handlers: Vec<&str> =
        info["runtimeHandlers"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap_or("")).collect();
    assert_eq!(handlers, ["", "pod", "pod-vm"], "{info}");
    assert_mentions(&s.fails(&["runp", "--runtime", "runc", p(&sandbox_json)]), &["InvalidArgument", "pod-vm"]);

    // runp returns once the guest runs its pod-init: the sandbox is ready.
    let sandbox = s.ok(&["runp", "--runtime", "pod-vm", p(&sandbox_json)]).trim().to_owned();
    assert!(is_uuid(&sandbox), "runp printed {sandbox:?}");
    let st = s.json(&["inspectp", "-o", "json", &sandbox]);
    assert_eq!(st["status"]["state"], "SANDBOX_READY", "{st}");
    assert_eq!(st["status"]["runtimeHandler"], "pod-vm", "{st}");
    let listed = live.listed(&sandbox).unwrap();
    assert!(listed["isolation"].as_str().unwrap_or_default().starts_with("vm/"), "a VM pod: {listed}");
    assert_eq!(processes_with_arg(&format!("pod-{sandbox}")).len(), 1, "one qemu for the sandbox");

    let container = s.ok(&["create", &sandbox, p(&container_json), p(&sandbox_json)]).trim().to_owned();
    assert_eq!(s.json(&["inspect", "-o", "json", &container])["status"]["state"], "CONTAINER_CREATED");
    s.ok(&["start", &container]);
    wait_state(&s, &container, "CONTAINER_RUNNING");
    let ps = s.json(&["ps", "-o", "json", "-p", &sandbox]);
    assert_eq!(ps["containers"].as_array().unwrap().len(), 1, "{ps}");
    // It runs in the guest: its kernel is not the host's.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let said =
        wait_for(std::time::Duration::from_secs(60), || live.ok(&["logs", &sandbox, "box"]).contains("hello vm"));
    let log = live.ok(&["logs", &sandbox, "box"]);
    assert!(said, "no output in the log: {log}");
    assert!(!log.contains(host_kernel.trim()), "ran on the host's kernel: {log}");
    // A timed out ExecSync's command is killed in the guest, whose enter
    // agent (one command at a time) then serves the next one at once.
    let err = s.fails(&["exec", "-s", "--timeout", "1", &container, "/bin/sh", "-c", "sleep 4321"]);
    assert_mentions_any(&err, &["timed out", "DeadlineExceeded"]);
    let started = std::time::Instant::now();
    let ps = s.ok(&["exec", "-s", "--timeout", "30", &container, "/bin/sh", "-c", "ps"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the next exec waited");
    assert!(!ps.contains("4321"), "the timed out command still runs in the guest:\n{ps}");

    exec_in_the_guest(&s, &container, host_kernel.trim());
    // Its memory limit holds in the guest, in a cgroup of its own there; an
    // update is refused, saying why (the guest holds the limits).
    let limit = s.ok(&["exec", "-s", &container, "/bin/sh", "-c", "read v </sys/fs/cgroup/memory.max; echo $v"]);
    assert_eq!(limit.trim(), "100663296", "the container's cgroup in the guest");
    assert_mentions(&s.fails(&["update", "--memory", "67108864", &container]), &["FailedPrecondition", "pod-vm"]);
    serve_from_the_guest(&s, &live, &sandbox, &sandbox_json, host_port);
    // A container with stdin is refused, saying why.
    let with_stdin = live.work.join("stdin.json");
    let c = json!({"metadata": {"name": "in"}, "image": {"image": Example::Busybox.reference()},
        "command": ["cat"], "stdin": true});
    std::fs::write(&with_stdin, c.to_string()).unwrap();
    assert_mentions(&s.fails(&["create", &sandbox, p(&with_stdin), p(&sandbox_json)]), &["stdin", "pod-vm"]);

    s.ok(&["stop", "--timeout", "5", &container]);
    let st = wait_state(&s, &container, "CONTAINER_EXITED");
    assert_ne!(st["status"]["finishedAt"], "0", "{st}");
    assert_eq!(s.json(&["inspectp", "-o", "json", &sandbox])["status"]["state"], "SANDBOX_READY");
    s.ok(&["rm", &container]);
    assert!(s.json(&["ps", "-a", "-o", "json"])["containers"].as_array().unwrap().is_empty());

    // One left running is stopped with its sandbox.
    let last = s.ok(&["create", &sandbox, p(&container_json), p(&sandbox_json)]).trim().to_owned();
    s.ok(&["start", &last]);
    wait_state(&s, &last, "CONTAINER_RUNNING");
    s.ok(&["stopp", &sandbox]);
    assert_eq!(s.json(&["inspectp", "-o", "json", &sandbox])["status"]["state"], "SANDBOX_NOTREADY");
    assert_eq!(s.json(&["inspect", "-o", "json", &last])["status"]["state"], "CONTAINER_EXITED");
    assert!(processes_with_arg(&format!("pod-{sandbox}")).is_empty(), "qemu outlived the sandbox");
    s.ok(&["rmp", &sandbox]);
    assert!(s.json(&["pods", "-o", "json"])["items"].as_array().unwrap().is_empty());
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// ExecSync and Exec in the guest, through the VM's stream port: output,
/// stderr, exit codes, stdin, a terminal with its size, and a timeout that
/// kills the command in the guest.
fn exec_in_the_guest(s: &CriServer, c: &str, host_kernel: &str) {
    let out = s.crictl(&["exec", "-s", c, "/bin/sh", "-c", "echo out; echo err >&2; uname -r"]);
    assert!(out.status.success(), "{}\n{}", describe(&["crictl exec -s"], &out), s.log());
    let text = String::from_utf8_lossy(&out.stdout);
    // (crictl prints the stdout, then the stderr.)
    assert!(text.starts_with("out\n") && text.contains("\nerr\n"), "{text}");
    assert!(!text.contains(host_kernel), "exec ran on the host's kernel: {text}");
    assert_mentions(&s.fails(&["exec", "-s", c, "/bin/sh", "-c", "echo bad >&2; exit 3"]), &["exited with 3", "bad"]);
    assert_mentions(&s.fails(&["exec", "-s", c, "/no/such/command"]), &["/no/such/command"]);
    // The sandbox's sysctl, in the guest's kernel.
    let sysctl = s.ok(&["exec", "-s", c, "/bin/sh", "-c", "read v </proc/sys/kernel/shm_rmid_forced; echo $v"]);
    assert_eq!(sysctl.trim(), "1");

    let out = s.crictl(&["exec", c, "/bin/sh", "-c", "echo streamed; echo oops >&2; exit 4"]);
    assert!(!out.status.success(), "{}", describe(&["crictl exec"], &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streamed\n");
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["oops", "exit code 4"]);

    let config = config_of(s);
    let mut child = Command::new(&s.crictl)
        .args(["--config", &config, "exec", "-i", c, "/bin/sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"shout\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n", "{}", s.log());

    if which("script").is_some() {
        let cmd = format!(
            "stty rows 45 cols 123; {} --config {config} exec -it {c} /bin/sh -c 'test -t 0 && echo IS-A-TTY; stty size'",
            p(&s.crictl)
        );
        let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("IS-A-TTY"), "{text}\n{}", s.log());
        assert!(text.contains("45 123"), "the size did not reach the guest's terminal: {text}");
    } else {
        eprintln!("SKIP (tty part): no script(1)");
    }

    let started = Instant::now();
    let err = s.fails(&["exec", "-s", "--timeout", "2", c, "/bin/sh", "-c", "sleep 4321"]);
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout did not cut it short");
    assert_mentions_any(&err, &["timed out", "DeadlineExceeded"]);
    // Killed in the guest, and the stream port still serves.
    let gone = wait_for(Duration::from_secs(10), || !s.ok(&["exec", "-s", c, "/bin/sh", "-c", "ps"]).contains("4321"));
    assert!(gone, "the timed out command still runs in the guest");
}

/// busybox httpd in a second container, reached from the host with
/// `crictl port-forward` (the guest's loopback, through the stream port)
/// and through the sandbox's host port (qemu's forward).
fn serve_from_the_guest(s: &CriServer, live: &Live, sandbox: &str, sandbox_json: &std::path::Path, host_port: u16) {
    if which("curl").is_none() {
        eprintln!("SKIP (port-forward part): no curl");
        return;
    }
    let path = live.work.join("web.json");
    let script =
        "mkdir -p /tmp/www && echo served-from-the-vm > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
    let c = json!({"metadata": {"name": "web"}, "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh", "-c", script]});
    std::fs::write(&path, c.to_string()).unwrap();
    let web = s.ok(&["create", sandbox, p(&path), p(sandbox_json)]).trim().to_owned();
    s.ok(&["start", &web]);
    wait_state(s, &web, "CONTAINER_RUNNING");

    // The host port first: it also waits for httpd to listen (a
    // port-forward whose first connection is refused ends, as kubectl's).
    let body = curl_until_served(&format!("http://127.0.0.1:{host_port}/"));
    assert_eq!(body.as_deref(), Ok("served-from-the-vm\n"), "host port\n{}", s.log());

    let local = free_port();
    let mut child = Command::new(&s.crictl)
        .args(["--config", &config_of(s), "port-forward", sandbox])
        .arg(format!("{local}:8080"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let _fwd = Forward(child);
    assert_mentions(&line, &["Forwarding from"]);
    for what in ["port-forward", "port-forward again"] {
        let body = curl_until_served(&format!("http://127.0.0.1:{local}/"));
        assert_eq!(body.as_deref(), Ok("served-from-the-vm\n"), "{what}\n{}", s.log());
    }
    s.ok(&["stop", "--timeout", "2", &web]);
    s.ok(&["rm", &web]);
}

/// curl's body once the server answers (it may take a moment to listen).
fn curl_until_served(url: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl").args(["-sf", "--max-time", "10", url]).output().unwrap();
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            return Err(describe(&["curl", url], &out));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `crictl port-forward` in the background until dropped.
struct Forward(std::process::Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config_of(s: &CriServer) -> String {
    // CriServer::crictl writes it; one call makes sure it exists.
    s.ok(&["version"]);
    p(&s.socket.with_file_name("crictl.yaml")).to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
