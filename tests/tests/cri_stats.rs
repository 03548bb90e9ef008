//! `pod cri serve`'s stats, metrics and resource updates under the real
//! crictl: `crictl stats` / `statsp` / `metricsp` on a container burning
//! CPU in a sandbox on its own CNI network (a peer sandbox knocking on it), `crictl update` read back from
//! the app's cgroup files on the host and from `crictl inspect`, and
//! `crictl update-runtime-config`. As root with the busybox example; SKIPs
//! visibly without root, crictl or the CNI plugins.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A protojson UInt64Value (`{"value": "123"}`), 0 when absent.
fn num(v: &Value) -> u64 {
    match &v["value"] {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        _ => 0,
    }
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

fn container_json(dir: &Path, name: &str, script: &str) -> PathBuf {
    let c = json!({
        "metadata": {"name": name},
        "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh", "-c", script],
        "labels": {"role": name}
    });
    write_json(dir, name, &c)
}

/// The app's control file `name` in whichever host hierarchy has it
/// (v1: one of the controller mounts; v2: the one tree).
fn cgroup_file(uuid: &str, app: &str, name: &str) -> Option<PathBuf> {
    cgroup_dirs_of(uuid).into_iter().map(|d| d.join(app).join(name)).find(|f| f.exists())
}

fn read_cgroup(uuid: &str, app: &str, names: &[&str]) -> String {
    let file = names
        .iter()
        .find_map(|n| cgroup_file(uuid, app, n))
        .unwrap_or_else(|| panic!("no {names:?} for app {app} of pod {uuid}: {:?}", cgroup_dirs_of(uuid)));
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

fn unified_host() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Pressure stall information in a cgroup2 tree (the whole one, or
/// Hybrid's mirror).
fn host_psi() -> bool {
    ["/sys/fs/cgroup/cpu.pressure", "/sys/fs/cgroup/unified/cpu.pressure"].iter().any(|f| Path::new(f).exists())
}

fn stats_of<'a>(list: &'a Value, id: &str) -> &'a Value {
    let all = list["stats"].as_array().unwrap();
    all.iter().find(|s| s["attributes"]["id"] == id).unwrap_or_else(|| panic!("no stats for {id}: {list}"))
}

#[test]
fn stats_and_metrics_of_a_busy_container_and_its_sandbox() {
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write_json(
        &live.work,
        "sandbox",
        &json!({"metadata": {"name": "stats", "namespace": "default", "uid": "u-stats"}, "linux": {}}),
    );
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let busy_json = container_json(&live.work, "busy", "while :; do :; done");
    let busy = s.ok(&["create", &sandbox, p(&busy_json), p(&sandbox_json)]).trim().to_owned();
    let idle_json = container_json(&live.work, "idle", "exec sleep 1000");
    let idle = s.ok(&["create", &sandbox, p(&idle_json), p(&sandbox_json)]).trim().to_owned();

    // Created, not started: listed, with zero figures.
    let list = s.json(&["stats", "-o", "json"]);
    assert_eq!(list["stats"].as_array().unwrap().len(), 2, "{list}");
    let st = stats_of(&list, &idle);
    assert_eq!(num(&st["cpu"]["usageCoreNanoSeconds"]), 0, "{st}");
    assert_eq!(num(&st["memory"]["workingSetBytes"]), 0, "{st}");

    s.ok(&["start", &busy]);
    wait_state(&s, &busy, "CONTAINER_RUNNING");
    std::thread::sleep(Duration::from_millis(1500));
    let first = s.json(&["stats", "-o", "json", "--id", &busy]);
    assert_eq!(first["stats"].as_array().unwrap().len(), 1, "filter by id: {first}");
    std::thread::sleep(Duration::from_millis(1000));
    let second = s.json(&["stats", "-o", "json", "--id", &busy]);
    let (a, b) = (stats_of(&first, &busy), stats_of(&second, &busy));
    let cpu = num(&b["cpu"]["usageCoreNanoSeconds"]);
    assert!(cpu > num(&a["cpu"]["usageCoreNanoSeconds"]) && cpu > 100_000_000, "a busy loop uses CPU: {a}\n{b}");
    // The rate from the previous sample: a loop busy the whole second.
    assert!(num(&b["cpu"]["usageNanoCores"]) > 10_000_000, "usage_nano_cores: {b}");
    assert!(num(&b["memory"]["workingSetBytes"]) > 0, "{b}");
    assert!(num(&b["memory"]["usageBytes"]) >= num(&b["memory"]["workingSetBytes"]), "{b}");
    assert!(num(&b["writableLayer"]["inodesUsed"]) >= 1, "the upper dir itself: {b}");
    assert_eq!(b["attributes"]["metadata"]["name"], "busy", "{b}");
    if host_psi() {
        // A loop alone on its cgroup waits little, but the figures are there.
        assert!(b["cpu"]["psi"]["Some"].is_object() && b["memory"]["psi"]["Full"].is_object(), "{b}");
    }
    // Filters: by sandbox, by label.
    assert_eq!(s.json(&["stats", "-o", "json", "-p", &sandbox])["stats"].as_array().unwrap().len(), 2);
    let by_label = s.json(&["stats", "-o", "json", "--label", "role=busy"]);
    assert_eq!(by_label["stats"].as_array().unwrap().len(), 1, "{by_label}");
    // crictl's own table, from two samples a second apart.
    let table = s.ok(&["stats"]);
    assert_mentions(&table, &["busy", &busy[..13]]);

    // The sandbox: its traffic, its processes, its containers. A peer
    // sandbox on the same network knocks on a closed port of this one's
    // address: a SYN in, a RST out, each time.
    let ip = s.json(&["inspectp", "-o", "json", &sandbox])["status"]["network"]["ip"].as_str().unwrap().to_owned();
    let peer_json = write_json(
        &live.work,
        "peer",
        &json!({"metadata": {"name": "peer", "namespace": "default", "uid": "u-peer"}, "linux": {}}),
    );
    let peer = s.ok(&["runp", p(&peer_json)]).trim().to_owned();
    let knock = format!("while :; do wget -q -T 1 -O /dev/null http://{ip}:9/; sleep 0.2; done");
    let knocker_json = container_json(&live.work, "knocker", &knock);
    let knocker = s.ok(&["create", &peer, p(&knocker_json), p(&peer_json)]).trim().to_owned();
    s.ok(&["start", &knocker]);
    wait_state(&s, &knocker, "CONTAINER_RUNNING");
    std::thread::sleep(Duration::from_millis(1000));
    let pods = s.json(&["statsp", "-o", "json", "--id", &sandbox]);
    let ps = &pods["stats"][0];
    assert_eq!(ps["attributes"]["id"], sandbox.as_str(), "{pods}");
    let linux = &ps["linux"];
    assert!(num(&linux["cpu"]["usageCoreNanoSeconds"]) >= cpu, "the pod's CPU holds its app's: {linux}");
    assert!(num(&linux["memory"]["workingSetBytes"]) > 0, "{linux}");
    assert!(num(&linux["process"]["processCount"]) >= 2, "pod-init and the loop: {linux}");
    let net = &linux["network"]["defaultInterface"];
    assert_eq!(net["name"], "eth0", "{linux}");
    assert!(num(&net["rxBytes"]) > 0 && num(&net["txBytes"]) > 0, "traffic counted: {net}");
    assert_eq!(linux["containers"].as_array().unwrap().len(), 2, "{linux}");
    assert_mentions(&s.ok(&["statsp"]), &["stats", &sandbox[..13]]);

    // Metrics, as kubelet's /metrics/cadvisor serves them.
    let descs = s.ok(&["metricdescs"]);
    assert_mentions(&descs, &["container_cpu_usage_seconds_total", "container_memory_working_set_bytes"]);
    let metrics = s.json(&["metricsp", "-o", "json"]);
    let pod_metrics = metrics["podMetrics"].as_array().unwrap();
    let mine = pod_metrics.iter().find(|m| m["podSandboxId"] == sandbox.as_str()).unwrap();
    let containers = mine["containerMetrics"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "only the started one has figures: {mine}");
    let busy_metrics = containers[0]["metrics"].as_array().unwrap();
    let metric = |name: &str| busy_metrics.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name}"));
    let ws = metric("container_memory_working_set_bytes");
    assert!(num(&ws["value"]) > 0, "{ws}");
    assert_eq!(ws["labelValues"], json!(["stats", "default", "busy", busy, Example::Busybox.reference()]));
    let rx = mine["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "container_network_receive_bytes_total");
    assert!(rx.is_some_and(|m| num(&m["value"]) > 0), "{mine}");
    // critest's check ("listing pod sandbox metrics"): every descriptor
    // has a value with as many labels as it has keys, but for block I/O
    // (optional there) and a CPU quota (this container has none).
    let descs = s.json(&["metricdescs", "-o", "json"]);
    let all: Vec<&Value> = mine["metrics"].as_array().unwrap().iter().chain(busy_metrics).collect();
    for d in descs["descriptors"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        if name.starts_with("container_fs_reads") || name.starts_with("container_fs_writes") || name.contains("blkio") {
            continue;
        }
        if name == "container_spec_cpu_quota" || (name.contains("pressure") && !host_psi()) {
            continue;
        }
        let m = all.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no value for {name}"));
        assert_eq!(m["labelValues"].as_array().unwrap().len(), d["labelKeys"].as_array().unwrap().len(), "{name}");
    }

    for sb in [&sandbox, &peer] {
        s.ok(&["stopp", sb]);
        s.ok(&["rmp", sb]);
        let left = leftovers_of(&live, sb);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

#[test]
fn update_changes_the_apps_cgroup_and_shows_in_inspect() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write_json(
        &live.work,
        "sandbox",
        &json!({"metadata": {"name": "upd", "namespace": "default", "uid": "u-upd"}, "linux": {}}),
    );
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let app_json = container_json(&live.work, "app", "exec sleep 1000");
    let app = s.ok(&["create", &sandbox, p(&app_json), p(&sandbox_json)]).trim().to_owned();
    // Not started: refused, and says why.
    let err = s.fails(&["update", "--memory", "67108864", &app]);
    assert_mentions(&err, &["FailedPrecondition", "not running"]);
    s.ok(&["start", &app]);
    wait_state(&s, &app, "CONTAINER_RUNNING");

    let mib64 = (64u64 << 20).to_string();
    s.ok(&["update", "--memory", &mib64, "--cpu-quota", "20000", "--cpu-period", "100000", "--cpu-share", "512", &app]);
    let (memory, cpu) = if unified_host() {
        (read_cgroup(&sandbox, "app", &["memory.max"]), read_cgroup(&sandbox, "app", &["cpu.max"]))
    } else {
        let quota = read_cgroup(&sandbox, "app", &["cpu.cfs_quota_us"]);
        let period = read_cgroup(&sandbox, "app", &["cpu.cfs_period_us"]);
        assert_eq!(read_cgroup(&sandbox, "app", &["cpu.shares"]), "512");
        (read_cgroup(&sandbox, "app", &["memory.limit_in_bytes"]), format!("{quota} {period}"))
    };
    assert_eq!(memory, mib64);
    assert_eq!(cpu, "20000 100000");
    let st = s.json(&["inspect", "-o", "json", &app]);
    let res = &st["status"]["resources"]["linux"];
    assert_eq!(res["memoryLimitInBytes"], mib64.as_str(), "{st}");
    assert_eq!(res["cpuQuota"], "20000", "{st}");
    assert_eq!(res["cpuPeriod"], "100000", "{st}");
    assert_eq!(res["cpuShares"], "512", "{st}");
    // pod's own record of the app follows (what an OOM kill is told against).
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(live.data.join("pods/run").join(&sandbox).join("pod.json")).unwrap())
            .unwrap();
    let resources = &manifest["apps"].as_array().unwrap().iter().find(|a| a["name"] == "app").unwrap()["resources"];
    assert_eq!(resources["memoryBytes"], json!(64u64 << 20), "{resources}");
    assert_eq!(resources["cpuMillis"], json!(200), "{resources}");
    // The stats know the limit now.
    let stats = s.json(&["stats", "-o", "json", "--id", &app]);
    assert!(num(&stats_of(&stats, &app)["memory"]["availableBytes"]) > 0, "{stats}");

    // Bad values: refused, naming the field; the limits stay.
    assert_mentions(&s.fails(&["update", "--cpu-quota", "5", &app]), &["InvalidArgument", "cpu quota"]);
    assert_mentions(&s.fails(&["update", "--memory", "-5", &app]), &["InvalidArgument", "memory_limit_in_bytes"]);
    if !unified_host() {
        // v1 refuses a limit below what the app uses (v2 would reclaim,
        // then OOM-kill, as it does under runc).
        let err = s.fails(&["update", "--memory", "4096", &app]);
        assert_mentions(&err, &["FailedPrecondition", "old limits are kept"]);
        assert_eq!(read_cgroup(&sandbox, "app", &["memory.limit_in_bytes"]), mib64);
    }
    assert_eq!(s.json(&["inspect", "-o", "json", &app])["status"]["resources"]["linux"]["cpuQuota"], "20000");

    // Stopped: refused, and the last limits still show.
    s.ok(&["stop", "--timeout", "5", &app]);
    wait_state(&s, &app, "CONTAINER_EXITED");
    let err = s.fails(&["update", "--memory", &mib64, &app]);
    assert_mentions(&err, &["FailedPrecondition", "not running", "CONTAINER_EXITED"]);
    s.ok(&["stopp", &sandbox]);
    let st = s.json(&["inspect", "-o", "json", &app]);
    assert_eq!(st["status"]["resources"]["linux"]["memoryLimitInBytes"], mib64.as_str(), "recorded: {st}");
    s.ok(&["rmp", &sandbox]);
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn runtime_config_pod_cidr_shows_in_info() {
    let pod = Pod::new();
    let s = or_skip!(CriServer::start(&pod, &[]));
    s.ok(&["update-runtime-config", "--pod-cidr", "10.88.0.0/16"]);
    let info = s.json(&["info"]);
    assert_eq!(info["config"]["podCIDR"], "10.88.0.0/16", "{info}");
}
