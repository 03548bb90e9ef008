//! pod on a pure cgroup v2 host with systemd as PID 1: one qemu guest
//! (tests/tests/common/sdguest.rs) booted with `cgroup_no_v1=all`, running
//! the pod binaries of this build (through the guest's read-only view of
//! the host's root) with its store on a tmpfs in the guest.
//!
//! What a user of such a host notices: an app reads its memory limit in
//! `/sys/fs/cgroup/memory.max` of a read-only cgroup2 mount; an app over
//! its memory limit is OOM-killed and `pod status` says so; a fork bomb is
//! bounded by its pids limit and `pod stop` ends it; a `userns: auto` pod
//! gets its limits; `pod stats` shows the limit; `pod gc` leaves no cgroup.
//! The guest itself is checked first: v2 only, systemd as PID 1, machined
//! reachable over the system bus (`machinectl list`).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/sdguest.rs"]
mod sdguest;

use std::time::Instant;

use common::*;
use sdguest::*;

const BUSYBOX: &str = "example.com/busybox:1.35";

/// A `network: none` pod of one busybox app running `/bin/sh -c script`.
fn pod_yaml(name: &str, top: &str, script: &str, extra: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "name: {name}\nnetwork: none\n{top}apps:\n  - name: app\n    image: {BUSYBOX}\n    \
         exec: [/bin/sh, -c, {script}]\n{extra}"
    )
}

/// The app's lines of a foreground `pod run`'s stdout.
fn app_lines(step: &Step) -> Vec<String> {
    step.out.lines().filter_map(|l| l.strip_prefix("[app] ")).map(str::to_owned).collect()
}

/// After [`STEPS`]: each `t NAME CMD...` is one step.
const SCRIPT: &str = r#"
set -u
# The store on the guest's scratch ext4 disk: userns: auto needs idmapped
# mounts, which tmpfs lacks before Linux 6.3.
export POD_DIR=/scratch/pod POD_CONFIG=/run/pod-e2e-config
mkdir -p "$POD_DIR" "$POD_CONFIG"
POD=$(cat pod-bin)

t comm cat /proc/1/comm
t fstype stat -f -c %T /sys/fs/cgroup
t cgroups cat /proc/cgroups
t mounts cat /proc/self/mountinfo
t machinectl machinectl list --no-pager --no-legend

t trust "$POD" trust add --prefix example.com/ "$(cat key-path)"
t fetch "$POD" fetch "$(cat image-path)"

t limits timeout 300 "$POD" run --net none limits.yaml
t oom timeout 300 "$POD" run --net none oom.yaml
t oom_status "$POD" status oom --format json
t userns timeout 300 "$POD" run --net none userns.yaml

t bomb_start timeout 300 "$POD" run -d --net none bomb.yaml
sleep 8
t bomb_cgroup sh -c 'for d in $(find /sys/fs/cgroup/pod /sys/fs/cgroup/machine.slice -name pids.max); do d=${d%/pids.max}; \
  echo "$(cat $d/pids.max) $(cat $d/pids.current) $(grep max $d/pids.events | cut -d" " -f2) $d"; done'
t bomb_alive echo the guest still forks
t bomb_stop timeout 120 "$POD" stop --timeout 5 bomb
t bomb_status "$POD" status bomb --format json

t stats_start timeout 300 "$POD" run -d --net none stats.yaml
sleep 3
t stats_json timeout 120 "$POD" stats --no-stream --format json stats
t stats_table timeout 120 "$POD" stats --no-stream stats
t stats_stop timeout 120 "$POD" stop --timeout 5 stats

t list_before "$POD" list --format json
t gc "$POD" gc
t list "$POD" list --format json
t leftover find /sys/fs/cgroup -mindepth 1 -type d
"#;

// One boot for everything: under TCG the guest's boot is the costly part.
#[test]
fn a_pure_cgroup_v2_host_with_systemd_runs_pods_with_their_limits() {
    if let Some(why) = skip_reason_sdguest().or_else(|| skip_reason(false)) {
        eprintln!("SKIP: {why}");
        return;
    }
    let image = example_image(Example::Busybox);
    let key = &e2e_key().public;
    let spec = GuestSpec::new(&format!("{STEPS}{SCRIPT}"))
        .file("pod-bin", p(&pod_bin()))
        .file("key-path", p(key))
        .file("image-path", p(&image))
        .file(
            "limits.yaml",
            pod_yaml(
                "limits",
                "",
                "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; echo mounts:; \
                 grep ' /sys/fs/cgroup ' /proc/self/mountinfo",
                "    resources: { memory: 64Mi, pids: 100 }\n",
            ),
        )
        .file(
            "oom.yaml",
            pod_yaml(
                "oom",
                "",
                "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo holding ${#x} bytes",
                "    resources: { memory: 32Mi }\n",
            ),
        )
        .file(
            "userns.yaml",
            pod_yaml(
                "userns",
                "userns: auto\n",
                "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; cat /proc/self/uid_map",
                "    resources: { memory: 64Mi, pids: 64 }\n",
            ),
        )
        .file("bomb.yaml", pod_yaml("bomb", "", "b() { b | b & }; b; exec sleep 1000", "    resources: { pids: 32 }\n"))
        .file("stats.yaml", pod_yaml("stats", "", "exec sleep 1000", "    resources: { memory: 64Mi }\n"));
    let spec = GuestSpec { scratch_mib: 1024, ..spec };
    let started = Instant::now();
    let mut guest = Guest::boot(&spec);
    let run = guest.wait();
    eprintln!(
        "systemd guest: booted in {:.1} s (guest uptime when the script started), script {:.1} s, {:.1?} from \
         qemu's start to its poweroff",
        run.boot_secs,
        run.script_secs,
        started.elapsed()
    );
    assert_eq!(run.rc, 0, "the guest script failed:\n{}\n{}", run.log, guest.console());
    let steps = guest.steps();
    let step = |n: &str| steps.get(n).unwrap_or_else(|| panic!("no step {n} ran:\n{}\n{}", run.log, guest.console()));
    let ok = |n: &str| {
        let s = step(n);
        assert_eq!(s.rc, 0, "{s}");
        s
    };
    for s in steps.values().filter(|s| s.rc != 0) {
        eprintln!("(step {} exited {}: {})", s.name, s.rc, s.err.lines().last().unwrap_or_default());
    }

    // The guest: systemd is PID 1, cgroup2 alone, machined answers.
    assert_eq!(ok("comm").out.trim(), "systemd", "PID 1");
    assert_eq!(ok("fstype").out.trim(), "cgroup2fs", "/sys/fs/cgroup");
    let hierarchies: Vec<&str> =
        ok("cgroups").out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert!(!hierarchies.is_empty() && hierarchies.iter().all(|h| *h == "0"), "v1 hierarchies:\n{}", step("cgroups"));
    assert!(!ok("mounts").out.contains(" - cgroup "), "a v1 cgroup is mounted:\n{}", step("mounts"));
    ok("machinectl");

    ok("trust");
    ok("fetch");

    // The app's own limits, in a read-only cgroup2 at /sys/fs/cgroup.
    let limits = ok("limits");
    let lines = app_lines(limits);
    assert_eq!(lines.first().map(String::as_str), Some("67108864"), "memory.max:\n{limits}");
    assert_eq!(lines.get(1).map(String::as_str), Some("100"), "pids.max:\n{limits}");
    let mounts: Vec<&String> = lines.iter().skip_while(|l| *l != "mounts:").skip(1).collect();
    assert!(!mounts.is_empty(), "no /sys/fs/cgroup mount:\n{limits}");
    for m in &mounts {
        let (head, tail) = m.split_once(" - ").unwrap_or_else(|| panic!("mountinfo line {m:?}"));
        assert!(tail.starts_with("cgroup2 "), "not cgroup2: {m}");
        assert!(head.split_whitespace().nth(5).unwrap_or_default().split(',').any(|o| o == "ro"), "not ro: {m}");
    }

    // OOM: the hog is killed and status says why.
    let oom = step("oom");
    assert_eq!(oom.rc, 137, "{oom}");
    assert!(!oom.out.contains("holding"), "the hog got its memory:\n{oom}");
    let st: serde_json::Value = serde_json::from_str(&ok("oom_status").out).unwrap();
    let app = st["apps"].as_array().and_then(|a| a.iter().find(|x| x["app"] == "app")).cloned().unwrap_or_default();
    assert_eq!(app["signal"], 9, "{st}");
    assert!(app["oomKills"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(app["message"].as_str().unwrap_or("").contains("OOM"), "{st}");

    // userns: auto, with its limits.
    let userns = ok("userns");
    let lines = app_lines(userns);
    assert_eq!(lines.first().map(String::as_str), Some("67108864"), "{userns}");
    assert_eq!(lines.get(1).map(String::as_str), Some("64"), "{userns}");
    let map: Vec<&str> = lines.get(2).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert!(map.len() == 3 && map[0] == "0" && map[1] != "0", "the app's root is not an unprivileged uid: {userns}");

    // The fork bomb: bounded by pids.max, and stopped.
    ok("bomb_start");
    let cg = ok("bomb_cgroup");
    // pids.max, pids.current, and the forks refused at this limit.
    let bounded: Vec<(u64, u64, u64)> = cg
        .out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    assert!(
        bounded.iter().any(|&(max, cur, refused)| max == 32 && (1..=32).contains(&cur) && refused > 0),
        "the bomb's cgroup (pids.max pids.current refused-forks dir):\n{cg}"
    );
    eprintln!("the fork bomb's cgroups (pids.max pids.current refused-forks dir):\n{}", cg.out.trim_end());
    ok("bomb_alive");
    ok("bomb_stop");
    let st: serde_json::Value = serde_json::from_str(&ok("bomb_status").out).unwrap();
    assert_eq!(st["state"], "exited", "{st}");

    // pod stats shows the limit.
    ok("stats_start");
    let stats = ok("stats_json");
    let rows: serde_json::Value = serde_json::from_str(&stats.out).unwrap_or_else(|e| panic!("{e}: {stats}"));
    assert_eq!(rows[0]["memLimit"], 64 << 20, "{rows}");
    let table = ok("stats_table");
    assert!(table.out.contains("/ 67.109MB"), "{table}");
    ok("stats_stop");

    // gc: no pod and no cgroup of any pod left.
    let before: serde_json::Value = serde_json::from_str(&ok("list_before").out).unwrap();
    let uuids: Vec<String> =
        before.as_array().unwrap().iter().map(|e| e["uuid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(uuids.len(), 5, "{before}");
    ok("gc");
    assert_eq!(ok("list").out.trim(), "[]", "{}", step("list"));
    let left = ok("leftover");
    eprintln!(
        "after gc, under /sys/fs/cgroup: {:?}",
        left.out.lines().filter(|l| l.contains("/pod")).collect::<Vec<_>>()
    );
    for dir in left.out.lines() {
        let flat = dir.replace('-', "");
        assert!(!uuids.iter().any(|u| flat.contains(&u.replace('-', ""))), "a pod's cgroup is left after gc: {dir}");
        assert!(!dir.starts_with("/sys/fs/cgroup/pod/"), "a pod's cgroup is left after gc: {dir}");
        assert!(!dir.starts_with("/sys/fs/cgroup/machine.slice/pod-"), "a pod's scope is left after gc: {dir}");
    }
}
