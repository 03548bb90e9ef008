//! User namespaces through the CRI, driven by the real crictl against `pod
//! cri serve`: a sandbox in mode POD with kubelet's mapping runs its
//! containers in a user namespace of exactly that mapping (their root is
//! host uid 1000, the image's files root's inside, the CRI log kubelet
//! reads written as host root); mode NODE is the host's; a user namespace
//! per container or another's, and mappings pod cannot honour, are refused
//! naming the field, with nothing left. Status says which handlers can. As
//! root; SKIPs visibly without crictl or root.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

// runtime.v1 NamespaceMode.
const POD: i32 = 0;
const CONTAINER: i32 = 1;
const NODE: i32 = 2;
const TARGET: i32 = 3;

fn server() -> Option<(Live, CriServer)> {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return None;
    }
    let live = Live::new(&[Example::Busybox]);
    match CriServer::start(&live, &[]) {
        Ok(s) => Some((live, s)),
        Err(Skip(why)) => {
            eprintln!("SKIP: {why}");
            None
        }
    }
}

fn mapping(container: u32, host: u32, length: u32) -> Value {
    json!({"container_id": container, "host_id": host, "length": length})
}

/// A sandbox config file with these user namespace options, logging
/// under `logs`.
fn sandbox_file(live: &Live, name: &str, userns: Value, logs: &std::path::Path) -> PathBuf {
    let f = live.work.join(format!("{name}-sandbox.json"));
    let config = json!({
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "log_directory": logs,
        "linux": {"security_context": {"namespace_options": {"userns_options": userns}}},
    });
    std::fs::write(&f, config.to_string()).unwrap();
    f
}

/// Runs `script` in a container of sandbox `id` until it exits; its id
/// and its output as `crictl logs` reads it from the CRI log.
fn run(live: &Live, s: &CriServer, id: &str, sandbox: &std::path::Path, name: &str, script: &str) -> (String, String) {
    let f = live.work.join(format!("{name}.json"));
    let c = json!({
        "metadata": {"name": name},
        "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh", "-c", script],
        "log_path": format!("{name}.log"),
    });
    std::fs::write(&f, c.to_string()).unwrap();
    let cid = s.ok(&["create", id, p(&f), p(sandbox)]).trim().to_owned();
    s.ok(&["start", &cid]);
    wait_state(s, &cid, "CONTAINER_EXITED");
    let logs = s.ok(&["logs", &cid]);
    (cid, logs)
}

fn finish(live: &Live, s: &CriServer, id: &str) {
    s.ok(&["stopp", id]);
    s.ok(&["rmp", id]);
    let left = leftovers_of(live, id);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn mode_pod_runs_containers_in_a_user_namespace_of_kubelets_mapping() {
    let Some((live, s)) = server() else { return };
    // Status: the namespace handlers give user namespaces, the VM one
    // does not; the state directory critest probes for idmapped mounts.
    let info = s.json(&["info", "-o", "json"]);
    let handlers = info["runtimeHandlers"].as_array().unwrap_or_else(|| panic!("no runtimeHandlers: {info}"));
    let userns_of = |name: &str| {
        let h = handlers
            .iter()
            .find(|h| h["name"].as_str().unwrap_or_default() == name)
            .unwrap_or_else(|| panic!("no handler {name:?}: {info}"));
        h["features"]["user_namespaces"].as_bool().unwrap_or(false)
    };
    assert!(userns_of("") && userns_of("pod") && !userns_of("pod-vm"), "{info}");
    // crictl shows the info's `config` JSON as an object.
    let config = match &info["config"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        other => other.clone(),
    };
    assert_eq!(config["stateDir"].as_str(), Some(p(&live.data.join("pods"))), "{info}");

    let logs = live.work.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let userns = json!({"mode": POD, "uids": [mapping(0, 1000, 100_000)], "gids": [mapping(0, 1000, 100_000)]});
    let sandbox = sandbox_file(&live, "userns-pod", userns, &logs);
    let id = s.ok(&["runp", p(&sandbox)]).trim().to_owned();
    let script = "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; \
        ls -ln /bin/busybox | awk '{print $3\":\"$4}'; echo mine > /written && echo wrote";
    let (_, log) = run(&live, &s, &id, &sandbox, "probe", script);
    let words: Vec<&str> = log.split_whitespace().collect();
    assert_eq!(words, ["0", "1000", "100000", "0", "1000", "100000", "0", "0:0", "wrote"], "{log}");
    // The CRI log, where kubelet reads it, is host root's (written through
    // the log directory's idmap); what the container wrote is host 1000's.
    let log_file = logs.join("probe.log");
    assert_eq!(std::fs::metadata(&log_file).unwrap().uid(), 0, "{}", log_file.display());
    let upper = live.data.join("pods/run").join(&id).join("apps");
    let written =
        std::fs::read_dir(&upper).unwrap().flatten().map(|e| e.path().join("upper/written")).find(|w| w.exists());
    let written = written.unwrap_or_else(|| panic!("no upper layer holds /written under {}", upper.display()));
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), 1000);

    // A second container, and exec into a running one: the same namespace.
    let (_, second) = run(&live, &s, &id, &sandbox, "second", "readlink /proc/self/ns/user; cat /proc/self/uid_map");
    let f = live.work.join("sleeper.json");
    let c = json!({"metadata": {"name": "sleeper"}, "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh", "-c", "exec sleep 1000"], "log_path": "sleeper.log"});
    std::fs::write(&f, c.to_string()).unwrap();
    let sleeper = s.ok(&["create", &id, p(&f), p(&sandbox)]).trim().to_owned();
    s.ok(&["start", &sleeper]);
    let exec = s.ok(&["exec", &sleeper, "/bin/sh", "-c", "readlink /proc/self/ns/user; cat /proc/self/uid_map"]);
    assert_eq!(exec.split_whitespace().collect::<Vec<_>>(), second.split_whitespace().collect::<Vec<_>>());
    s.ok(&["rm", "-f", &sleeper]);
    finish(&live, &s, &id);
}

#[test]
fn mode_node_is_the_hosts_and_the_rest_is_refused() {
    let Some((live, s)) = server() else { return };
    let logs = live.work.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let sandbox = sandbox_file(&live, "userns-node", json!({"mode": NODE}), &logs);
    let id = s.ok(&["runp", p(&sandbox)]).trim().to_owned();
    let (_, log) = run(&live, &s, &id, &sandbox, "node", "cat /proc/self/uid_map");
    let host = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(log.split_whitespace().collect::<Vec<_>>(), host.split_whitespace().collect::<Vec<_>>());
    finish(&live, &s, &id);

    let pods_before = live.pods();
    let one = || json!([mapping(0, 1000, 100_000)]);
    for (name, userns, says) in [
        ("container", json!({"mode": CONTAINER}), vec!["InvalidArgument", "userns_options", "CONTAINER"]),
        ("target", json!({"mode": TARGET}), vec!["InvalidArgument", "userns_options", "TARGET"]),
        (
            "two",
            json!({"mode": POD, "uids": [mapping(0, 1000, 100_000), mapping(0, 2000, 100_000)], "gids": one()}),
            vec!["InvalidArgument", "userns_options.uids", "exactly one mapping"],
        ),
        (
            "not-zero",
            json!({"mode": POD, "uids": [mapping(1, 1000, 100_000)], "gids": [mapping(1, 1000, 100_000)]}),
            vec!["InvalidArgument", "userns_options.uids", "container ID 0"],
        ),
        (
            "lopsided",
            json!({"mode": POD, "uids": one(), "gids": [mapping(0, 1000, 65536)]}),
            vec!["InvalidArgument", "userns_options.gids", "length"],
        ),
        (
            "root",
            json!({"mode": POD, "uids": [mapping(0, 0, 100_000)], "gids": [mapping(0, 0, 100_000)]}),
            vec!["InvalidArgument", "userns_options.uids", "host_id 0"],
        ),
    ] {
        let f = sandbox_file(&live, name, userns, &logs);
        let err = s.fails(&["runp", p(&f)]);
        assert_mentions(&err, &says);
    }
    assert_eq!(live.pods(), pods_before, "a refused sandbox left a pod");
}
