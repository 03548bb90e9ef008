//! Apps added to a running VM pod (`isolation: vm`, stage1-vm) with `pod
//! app add|list|stop|start|rm`: the same control channel as a namespace
//! pod's, relayed by the VM's monitor over its virtio-serial control port,
//! and the app's rootfs mounted under the VM's 9p share while it runs. One
//! guest for the whole story: under TCG (this host) a boot takes seconds.
//! Needs root, qemu and the guest kernel; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

const BUSYBOX: &str = "example.com/busybox:1.35";
/// A TCG guest is slow; each step gets this long.
const LIMIT: Duration = Duration::from_secs(240);

/// `pod app list POD --format json`.
fn app_list(live: &Live, pod: &str) -> Vec<Value> {
    let out = live.run_within(&["app", "list", pod, "--format", "json"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["app", "list", pod], &out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_ok(live: &Live, args: &[&str]) -> String {
    let out = live.run_within(args, LIMIT);
    assert!(out.status.success(), "{}", describe(args, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The mount points under the pod's `apps/<app>/` in the monitor's mount
/// namespace (where the guest's share gets them).
fn mounts_of_app(monitor: i32, app: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{monitor}/mountinfo")).unwrap_or_default();
    let needle = format!("/apps/{app}/");
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn log_of(live: &Live, pod: &str, app: &str) -> String {
    run_ok(live, &["logs", pod, app])
}

#[test]
fn apps_are_added_stopped_started_and_removed_in_a_running_vm() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("vmbox", "name: vmbox\nisolation: vm\nnetwork: none\napps: []\n");
    let uuid = live.start(&file);
    let dir: PathBuf = live.data.join("pods").join("run").join(&uuid);
    let monitor: i32 = std::fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    // The sandbox VM holds with no app; the control channel answers once
    // the guest is up (the request waits for its boot).
    assert!(app_list(&live, &uuid).is_empty());

    // Added while the VM runs: it runs there, its output in its log, held
    // to its own memory limit in a cgroup of the guest's.
    let script = "echo hello from $(uname -r) in the vm, memory.max $(cat /sys/fs/cgroup/memory.max); exec sleep 1000";
    let keys = r#"{"resources": {"memory": "48Mi"}}"#;
    let add =
        ["app", "add", &uuid, "--name", "hello", "--image", BUSYBOX, "--app-keys", keys, "--exec", "/bin/sh", "-c"];
    run_ok(&live, &[&add[..], &[script]].concat());
    let list = app_list(&live, &uuid);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["app"], "hello");
    assert!(matches!(list[0]["state"].as_str(), Some("running" | "ready")), "{list:?}");
    assert!(mounts_of_app(monitor, "hello").iter().any(|m| m.ends_with("/apps/hello/rootfs")));
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let said = wait_for(Duration::from_secs(60), || log_of(&live, &uuid, "hello").contains("hello from"));
    assert!(said, "no output in the log: {}", log_of(&live, &uuid, "hello"));
    let log = log_of(&live, &uuid, "hello");
    assert!(!log.contains(&format!("from {} in", host_kernel.trim())), "ran on the host's kernel: {log}");
    assert!(log.contains("memory.max 50331648"), "not in a cgroup with its limit: {log}");
    // It runs in the app's own rootfs, with the guest's /proc, in its cgroup.
    let enter = "ls /bin/busybox; ls /proc/1/; cat /sys/fs/cgroup/memory.max";
    let out = run_ok(&live, &["enter", "--app", "hello", &uuid, "/bin/sh", "-c", enter]);
    assert!(out.contains("/bin/busybox") && out.contains("cmdline") && out.contains("50331648"), "{out}");

    // A duplicate name: exit 7, the app untouched.
    let args = ["app", "add", &uuid, "--name", "hello", "--image", BUSYBOX, "--exec", "/bin/sh"];
    assert_eq!(live.run_within(&args, LIMIT).status.code(), Some(7));

    // Stopped: ended by its stop signal, the VM runs on; started again.
    run_ok(&live, &["app", "stop", &uuid, "hello"]);
    let list = app_list(&live, &uuid);
    assert_eq!(list[0]["state"], "stopped", "{list:?}");
    assert_eq!(live.listed(&uuid).unwrap()["state"], "running", "the sandbox VM outlives its app");
    run_ok(&live, &["app", "start", &uuid, "hello"]);
    assert!(matches!(app_list(&live, &uuid)[0]["state"].as_str(), Some("running" | "ready")));
    let twice = wait_for(Duration::from_secs(60), || log_of(&live, &uuid, "hello").matches("hello from").count() == 2);
    assert!(twice, "the restarted app did not run again: {}", log_of(&live, &uuid, "hello"));

    // Removed: gone from the list, its mounts and files gone, the VM on.
    let out = live.run_within(&["app", "rm", &uuid, "hello"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["app", "rm"], &out));
    assert!(app_list(&live, &uuid).is_empty());
    assert_eq!(mounts_of_app(monitor, "hello"), Vec::<String>::new());
    assert!(!dir.join("apps/hello").exists() && !dir.join("units/hello.unit").exists());
    let out = live.run_within(&["app", "rm", &uuid, "hello"], LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&["app", "rm"], &out));
    // The same name again starts afresh.
    run_ok(
        &live,
        &["app", "add", &uuid, "--name", "hello", "--image", BUSYBOX, "--exec", "/bin/sh", "-c", "exec sleep 1000"],
    );
    assert!(matches!(app_list(&live, &uuid)[0]["state"].as_str(), Some("running" | "ready")));

    let out = live.run_within(&["stop", &uuid], LIMIT);
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    assert_eq!(live.status(&uuid)["state"], "exited");
    assert!(processes_with_arg(&format!("pod-{uuid}")).is_empty(), "qemu outlived the pod");
    run_ok(&live, &["gc"]);
    assert!(!dir.exists(), "pod dir left: {}", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&uuid), "mounts of the pod left on the host");
}
