//! A sandbox's `linux.cgroup_parent` and a container's `devices` under the
//! real crictl: the pod's cgroups made under kubelet's parent in every
//! hierarchy (the app's process in `<parent>/<uuid>/<app>`), stats and
//! updates reading and writing them there, `rmp` and `pod gc` (after
//! its stage1 was killed) removing them and never the parent; a systemd slice refused; a container given /dev/null and
//! /dev/zero under names of its own reading and writing them; bad devices
//! refused naming the field. As root, with the busybox example image.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use serde_json::json;

/// The cgroup hierarchies mounted on this host (v1 controllers, the
/// cgroup2 tree), from mountinfo.
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .filter(|p| p.starts_with("/sys/fs/cgroup"))
        .collect()
}

/// kubelet's QoS cgroups made in every hierarchy, as kubelet makes them
/// before a sandbox; removed (leaves first) on drop.
struct Parent {
    rel: String,
    made: Vec<PathBuf>,
}

impl Parent {
    fn new(rel: &str) -> Self {
        let mut made = Vec::new();
        for root in cgroup_roots() {
            let mut dir = root.clone();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                dir.push(part);
                if fs::create_dir(&dir).is_ok() {
                    made.push(dir.clone());
                }
            }
        }
        Parent { rel: rel.to_owned(), made }
    }

    /// `<root>/<parent>` in every hierarchy.
    fn dirs(&self) -> Vec<PathBuf> {
        cgroup_roots().into_iter().map(|r| r.join(self.rel.trim_start_matches('/'))).collect()
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn write(live: &Live, name: &str, v: &serde_json::Value) -> String {
    let f = live.work.join(name);
    fs::write(&f, v.to_string()).unwrap();
    p(&f).to_owned()
}

#[test]
fn a_sandbox_under_kubelets_cgroup_parent() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    // As kubelet's cgroupfs driver names a burstable pod's cgroup. Made
    // first, so dropped last: after the pods in it are gone.
    let parent = Parent::new(&format!("/podtest{}/burstable/pod-u-cg", std::process::id()));
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));

    // A systemd slice is refused, naming the field, and leaves no pod.
    let slice = write(
        &live,
        "slice.json",
        &json!({"metadata": {"name": "slice", "namespace": "d", "uid": "u-sl"},
        "linux": {"cgroup_parent": "/kubepods.slice/kubepods-burstable.slice"}}),
    );
    assert_mentions(&s.fails(&["runp", &slice]), &["linux.cgroup_parent", "systemd slice"]);
    assert!(s.json(&["pods", "-o", "json"])["items"].as_array().unwrap().is_empty());

    let sandbox_json = write(
        &live,
        "sandbox.json",
        &json!({"metadata": {"name": "cg", "namespace": "d", "uid": "u-cg"},
        "linux": {"cgroup_parent": parent.rel}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    let container_json = write(
        &live,
        "c.json",
        &json!({"metadata": {"name": "c"},
        "image": {"image": Example::Busybox.reference()}, "command": ["/bin/sh", "-c", "exec sleep 1000"]}),
    );
    let c = s.ok(&["create", &sandbox, &container_json, &sandbox_json]).trim().to_owned();
    s.ok(&["start", &c]);
    wait_state(&s, &c, "CONTAINER_RUNNING");

    // The app's process is in <parent>/<uuid>/c in every hierarchy pod
    // manages, and nothing of the pod is under pod/.
    let rel = format!("{}/{sandbox}/c", parent.rel);
    let mut checked = 0;
    for dir in parent.dirs().iter().map(|d| d.join(&sandbox).join("c")).filter(|d| d.is_dir()) {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let pids: Vec<&str> = procs.split_whitespace().collect();
        assert!(!pids.is_empty(), "no process in {}", dir.display());
        for pid in pids {
            let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(cgroups.lines().any(|l| l.ends_with(&rel)), "pid {pid} not in {rel}: {cgroups}");
        }
        checked += 1;
    }
    assert!(checked > 0, "no hierarchy has {rel}");
    assert!(cgroup_dirs_of(&sandbox).is_empty(), "pod/{sandbox} made: {:?}", cgroup_dirs_of(&sandbox));

    // Stats and updates find it there.
    let stats = s.json(&["stats", "-o", "json", "--id", &c]);
    let ws = &stats["stats"][0]["memory"]["workingSetBytes"]["value"];
    assert!(ws.as_str().and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > 0), "{stats}");
    let statsp = s.json(&["statsp", "-o", "json", "--id", &sandbox]);
    assert!(statsp["stats"][0]["linux"]["memory"]["workingSetBytes"]["value"].is_string(), "{statsp}");
    s.ok(&["update", "--memory", "67108864", &c]);
    let limits: Vec<String> = parent
        .dirs()
        .iter()
        .map(|d| d.join(&sandbox).join("c"))
        .filter_map(|d| {
            fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .collect();
    assert!(limits.iter().any(|l| l.trim() == "67108864"), "{limits:?}");

    // rmp removes the pod's cgroups, never the parent it did not make.
    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    for dir in parent.dirs() {
        assert!(dir.is_dir(), "the parent {} went", dir.display());
        assert!(!dir.join(&sandbox).exists(), "{} left", dir.join(&sandbox).display());
    }
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");

    // A sandbox whose stage1 is killed: `pod gc` finds its cgroups under
    // the parent (recorded in stage1.json) and removes them, not the parent.
    let other = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    let pod_dirs: Vec<PathBuf> = parent.dirs().iter().map(|d| d.join(&other)).filter(|d| d.is_dir()).collect();
    assert!(!pod_dirs.is_empty(), "no cgroup of {other} under {}", parent.rel);
    let monitors: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("pod-stage1-ns") && cmdline.contains(&other)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!monitors.is_empty(), "no stage1 of {other}");
    for pid in &monitors {
        let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = live.run_within(&["gc"], std::time::Duration::from_secs(60));
        assert!(out.status.success(), "{}", describe(&["gc"], &out));
        if pod_dirs.iter().all(|d| !d.exists()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "pod gc left {pod_dirs:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for dir in parent.dirs() {
        assert!(dir.is_dir(), "gc removed the parent {}", dir.display());
    }
}

#[test]
fn a_container_reads_and_writes_the_devices_it_is_given() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write(
        &live,
        "sandbox.json",
        &json!({"metadata": {"name": "dev", "namespace": "d", "uid": "u-dev"},
        "linux": {}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    let container = |name: &str, devices: serde_json::Value| {
        let c = json!({"metadata": {"name": name}, "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", "exec sleep 1000"], "devices": devices});
        write(&live, &format!("{name}.json"), &c)
    };

    // A host path that is no device, a relative container path: refused
    // at create, naming the field.
    let bad =
        container("bad", json!([{"host_path": "/etc/hostname", "container_path": "/dev/x", "permissions": "rwm"}]));
    assert_mentions(
        &s.fails(&["create", &sandbox, &bad, &sandbox_json]),
        &["devices[0].host_path", "not a character or block device"],
    );
    let rel = container("rel", json!([{"host_path": "/dev/null", "container_path": "dev/x", "permissions": "rwm"}]));
    assert_mentions(&s.fails(&["create", &sandbox, &rel, &sandbox_json]), &["devices[0].container_path"]);

    let good = container(
        "dev",
        json!([
            {"host_path": "/dev/null", "container_path": "/dev/mynull", "permissions": "rwm"},
            {"host_path": "/dev/zero", "container_path": "/dev/myzero", "permissions": "r"}
        ]),
    );
    let c = s.ok(&["create", &sandbox, &good, &sandbox_json]).trim().to_owned();
    s.ok(&["start", &c]);
    wait_state(&s, &c, "CONTAINER_RUNNING");
    let out = s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "head -c 4 /dev/myzero | od -An -tx1"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["00", "00", "00", "00"], "{out}");
    let out = s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "echo gone > /dev/mynull && wc -c < /dev/mynull"]);
    assert_eq!(out.trim(), "0", "{out}");
    // The same nodes as the host's (char 1:3 and 1:5), not copies.
    let out = s.ok(&["exec", "-s", &c, "/bin/sh", "-c", "stat -c '%F %t:%T' /dev/mynull /dev/myzero"]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["character special file 1:3", "character special file 1:5"], "{out}");

    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
