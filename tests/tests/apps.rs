//! Apps in a running namespace pod (`pod app list|stop|start`, through
//! pod-init's control channel) and sandbox pods (`apps: []`, `pod run
//! --sandbox`) that hold until `pod stop`. Needs root; reports a skip
//! without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BUSYBOX: &str = "example.com/busybox:1.35";
const LIMIT: Duration = Duration::from_secs(60);

macro_rules! skip_unless_pods {
    () => {
        if let Some(why) = skip_reason(false) {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// A `network: none` pod of busybox apps, each `(name, script, extra)`.
fn pod_yaml(name: &str, apps: &[(&str, &str, &str)]) -> String {
    let mut y = format!("name: {name}\nnetwork: none\napps:\n");
    for (app, script, extra) in apps {
        let script = serde_json::to_string(script).unwrap();
        y.push_str(&format!("  - name: {app}\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, {script}]\n{extra}"));
    }
    y
}

/// `pod app list POD --format json`.
fn app_list(live: &Live, pod: &str) -> Vec<Value> {
    let out = live.ok(&["app", "list", pod, "--format", "json"]);
    match serde_json::from_str(&out) {
        Ok(Value::Array(v)) => v,
        other => panic!("pod app list --format json printed {out:?}: {other:?}"),
    }
}

fn pod_state(live: &Live, pod: &str) -> String {
    live.listed(pod).map(|e| e["state"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn pod_dir(live: &Live, uuid: &str) -> PathBuf {
    live.data.join("pods").join("run").join(uuid)
}

#[test]
fn an_app_stops_and_starts_again_while_the_pod_runs() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    // `restart: always`: a stopped app must stay stopped all the same.
    let extra = "    restart: always\n    stopTimeout: 3s\n";
    let file = live.pod_file(
        "two",
        &pod_yaml("two", &[("a", "echo a started; exec sleep 1000", extra), ("b", "exec sleep 1000", "")]),
    );
    let uuid = live.start(&file);
    live.wait_all_up(&uuid, LIMIT);
    let first_pid = live.app_status(&uuid, "a")["pid"].as_i64().unwrap();

    // The socket: root's, 0600.
    let sock = std::fs::metadata(pod_dir(&live, &uuid).join("control.sock")).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);
    assert_eq!(sock.uid(), 0);

    let listed = app_list(&live, &uuid);
    let names: Vec<&str> = listed.iter().filter_map(|a| a["app"].as_str()).collect();
    assert_eq!(names, ["a", "b"], "{listed:?}");
    assert_eq!(listed[0]["pid"].as_i64(), Some(first_pid), "{listed:?}");

    let args = ["app", "stop", &uuid, "a"];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert_eq!(live.app_status(&uuid, "a")["state"], "stopped");
    std::thread::sleep(Duration::from_millis(1500));
    let a = live.app_status(&uuid, "a");
    assert_eq!(a["state"], "stopped", "not restarted: {a}");
    assert_eq!(a["pid"], Value::Null, "{a}");
    assert!(matches!(live.app_status(&uuid, "b")["state"].as_str(), Some("ready" | "running")));
    assert_eq!(pod_state(&live, &uuid), "running");
    assert_eq!(app_list(&live, &uuid)[0]["state"], "stopped");

    let args = ["app", "start", &uuid, "a"];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    live.wait_all_up(&uuid, LIMIT);
    let a = live.app_status(&uuid, "a");
    assert_ne!(a["pid"].as_i64(), Some(first_pid), "a new process: {a}");
    assert_eq!(a["restarts"], 1, "{a}");
    // Its log continues: the first run's line, then the second's.
    let ok = wait_for(Duration::from_secs(10), || live.ok(&["logs", &uuid, "a"]).matches("a started").count() == 2);
    assert!(ok, "log of a: {:?}", live.ok(&["logs", &uuid, "a"]));

    // Errors name the pod and the app, with the documented codes.
    let args = ["app", "stop", &uuid, "nope"];
    let out = live.run_within(&args, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&args, &out));
    assert!(err.contains(&uuid) && err.contains("nope"), "{err}");
    let out = live.run_within(&["app", "list", "no-such-pod"], LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&["app", "list", "no-such-pod"], &out));

    let out = live.run_within(&["stop", "--timeout", "10", &uuid], LIMIT);
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    let args = ["app", "start", &uuid, "a"];
    let out = live.run_within(&args, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&args, &out));
    assert!(err.contains(&uuid) && err.contains("not running"), "{err}");
}

#[test]
fn stopping_the_last_app_of_a_pod_ends_it_but_not_a_sandbox() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("one", &pod_yaml("one", &[("only", "exec sleep 1000", "")]));
    // Without --sandbox: today's rule, the pod ends with its apps.
    let plain = live.start(&file);
    live.wait_all_up(&plain, LIMIT);
    let out = live.run_within(&["app", "stop", &plain, "only"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["app", "stop"], &out));
    assert!(wait_for(Duration::from_secs(20), || pod_state(&live, &plain) == "exited"));
    assert_eq!(live.status(&plain)["exitCode"], 0, "a stop by request is a success");

    // With --sandbox: the pod outlives its app; the app starts again.
    let args = ["run", "-d", "--sandbox", p(&file)];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let sandbox = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    live.wait_all_up(&sandbox, LIMIT);
    let out = live.run_within(&["app", "stop", &sandbox, "only"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["app", "stop"], &out));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pod_state(&live, &sandbox), "running");
    let out = live.run_within(&["app", "start", &sandbox, "only"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["app", "start"], &out));
    live.wait_all_up(&sandbox, LIMIT);
}

#[test]
fn a_sandbox_without_apps_holds_until_stopped() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("empty", "name: empty\nnetwork: none\napps: []\n");
    let uuid = live.start(&file);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod_state(&live, &uuid), "running");
    assert!(app_list(&live, &uuid).is_empty());
    let args = ["app", "start", &uuid, "x"];
    let out = live.run_within(&args, LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&args, &out));
    let out = live.run_within(&["stop", &uuid], LIMIT);
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    assert_eq!(pod_state(&live, &uuid), "exited");
    assert_eq!(live.status(&uuid)["exitCode"], 0);
}

/// The mount points under `/apps/<app>/` in the pod's mount namespace.
fn mounts_of_app(pid1: i64, app: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid1}/mountinfo")).unwrap_or_default();
    let needle = format!("/apps/{app}/");
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn app_names(live: &Live, pod: &str) -> Vec<String> {
    app_list(live, pod).iter().filter_map(|a| a["app"].as_str().map(str::to_owned)).collect()
}

#[test]
fn apps_are_added_to_and_removed_from_a_running_sandbox() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("box", "name: box\nnetwork: none\napps: []\n");
    let uuid = live.start(&file);
    let dir = pod_dir(&live, &uuid);
    let pid1: i64 = std::fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    let manifest = || std::fs::read(dir.join("pod.json")).unwrap();
    let empty = manifest();

    // An unsigned image: refused (exit 3), the pod untouched.
    let unsigned = live.root().join("unsigned.aci");
    std::fs::copy(example_image(Example::Busybox), &unsigned).unwrap();
    let args = ["app", "add", &uuid, "--name", "bad", "--image", p(&unsigned), "--exec", "/bin/sleep", "100"];
    let out = live.run_within(&args, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&uuid) && err.contains("bad"), "{err}");
    assert_eq!(manifest(), empty, "pod.json untouched");
    assert!(!dir.join("apps").join("bad").exists());
    assert!(cgroup_dirs_of(&uuid).iter().all(|d| !d.join("bad").exists()));

    // A server and a client, added while the pod runs.
    let server = "while true; do echo hi | nc -l -p 7000; done";
    for (name, script) in [("srv", server), ("cli", "exec sleep 1000")] {
        let args = ["app", "add", &uuid, "--name", name, "--image", BUSYBOX, "--exec", "/bin/sh", "-c", script];
        let out = live.run_within(&args, LIMIT);
        assert!(out.status.success(), "{}", describe(&args, &out));
    }
    live.wait_all_up(&uuid, LIMIT);
    assert_eq!(app_names(&live, &uuid), ["srv", "cli"]);
    let status = live.status(&uuid);
    assert_eq!(status["apps"].as_array().map(Vec::len), Some(2), "{status}");
    assert!(cgroup_dirs_of(&uuid).iter().all(|d| d.join("srv").is_dir()), "{:?}", cgroup_dirs_of(&uuid));
    assert!(mounts_of_app(pid1, "srv").iter().any(|m| m.ends_with("/apps/srv/rootfs")));
    // One network namespace: the client reaches the server on loopback.
    let reached = wait_for(Duration::from_secs(15), || {
        let args = ["enter", "--app", "cli", &uuid, "/bin/sh", "-c", "nc -w 2 127.0.0.1 7000 </dev/null"];
        live.run_within(&args, LIMIT).stdout.starts_with(b"hi")
    });
    assert!(reached, "cli did not reach srv on 127.0.0.1:7000");

    // A duplicate name: exit 7.
    let args = ["app", "add", &uuid, "--name", "srv", "--image", BUSYBOX, "--exec", "/bin/true"];
    let out = live.run_within(&args, LIMIT);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&args, &out));

    // Removed: gone from the lists, its mounts and cgroups gone, the pod on.
    let args = ["app", "rm", &uuid, "srv"];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert_eq!(app_names(&live, &uuid), ["cli"]);
    assert_eq!(live.status(&uuid)["apps"].as_array().map(Vec::len), Some(1));
    assert_eq!(mounts_of_app(pid1, "srv"), Vec::<String>::new());
    assert!(cgroup_dirs_of(&uuid).iter().all(|d| !d.join("srv").exists()));
    assert!(!dir.join("apps").join("srv").exists() && !dir.join("units").join("srv.unit").exists());
    assert_eq!(pod_state(&live, &uuid), "running");
    assert!(matches!(live.app_status(&uuid, "cli")["state"].as_str(), Some("ready" | "running")));
    let out = live.run_within(&["app", "rm", &uuid, "srv"], LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&["app", "rm"], &out));

    let out = live.run_within(&["stop", &uuid], LIMIT);
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    let out = live.run_within(&["gc"], LIMIT);
    assert!(out.status.success(), "{}", describe(&["gc"], &out));
    // Nothing of the pod left on the host (other tests' pods run meanwhile).
    assert_eq!(cgroup_dirs_of(&uuid), Vec::<PathBuf>::new());
    let root = live.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root) || l.contains(&uuid)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(!dir.exists(), "pod dir left: {}", dir.display());
}

#[test]
fn app_stop_with_a_timeout_kills_after_it() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    // Ignores SIGTERM; its own stop timeout would be a minute.
    let stubborn = "trap '' TERM; while true; do sleep 0.1; done";
    let file = live.pod_file(
        "stubborn",
        &pod_yaml("stubborn", &[("a", stubborn, "    stopTimeout: 60s\n"), ("b", "exec sleep 1000", "")]),
    );
    let uuid = live.start(&file);
    live.wait_all_up(&uuid, LIMIT);
    let start = Instant::now();
    live.ok(&["app", "stop", &uuid, "a", "--timeout", "1"]);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "stopped after {took:?}");
    let a = live.app_status(&uuid, "a");
    assert_eq!((a["state"].as_str(), a["signal"].as_i64()), (Some("stopped"), Some(9)), "{a}");
    live.ok(&["stop", &uuid]);
}
