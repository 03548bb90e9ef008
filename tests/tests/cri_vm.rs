//! `pod cri serve` with the `pod-vm` RuntimeHandler, driven by the real
//! crictl: the sandbox is a VM pod (stage1-vm, TCG on this host), its
//! containers apps added to the running VM, with the same calls as the
//! namespace handler (cri.rs). Needs root, crictl, qemu and the guest
//! kernel; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

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
    std::fs::write(&sandbox_json, json!({"metadata": meta, "labels": {"app": "vm"}, "linux": {}}).to_string()).unwrap();
    let container_json = live.work.join("container.json");
    std::fs::write(
        &container_json,
        json!({
            "metadata": {"name": "box"},
            "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", "echo \"hello $GREETING from $(uname -r)\"; exec sleep 1000"],
            "envs": [{"key": "GREETING", "value": "vm"}],
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
