//! Apps added to and removed from a running pod with a user namespace
//! (`userns: auto`): the added app runs in the pod's user namespace as
//! its root, its image's files root's inside through idmapped layers, a
//! host directory's root-owned files root's too, what it writes landing as
//! the pod's range on the host; it stops and starts again; removed, it
//! leaves no mount, cgroup or file; stop and gc leave nothing of the pod.
//! Needs root; reports a skip without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

/// The mount points under `/apps/<app>/` in the pod's mount namespace.
fn mounts_of_app(pid1: i64, app: &str) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid1}/mountinfo")).unwrap_or_default();
    let needle = format!("/apps/{app}/");
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn app_names(live: &Live, pod: &str) -> Vec<String> {
    let out = live.ok(&["app", "list", pod, "--format", "json"]);
    let Ok(Value::Array(apps)) = serde_json::from_str::<Value>(&out) else { panic!("pod app list printed {out:?}") };
    apps.iter().filter_map(|a| a["app"].as_str().map(str::to_owned)).collect()
}

/// `pod enter --app APP POD sh -c SCRIPT`, its words.
fn enter(live: &Live, pod: &str, app: &str, script: &str) -> Vec<String> {
    live.ok(&["enter", "--app", app, pod, "/bin/sh", "-c", script]).split_whitespace().map(str::to_owned).collect()
}

#[test]
fn an_app_added_to_a_userns_pod_runs_in_its_user_namespace_and_leaves_nothing() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let before = HostState::take(&[]);
    let shared = live.work.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::write(shared.join("from-host"), "hello\n").unwrap();

    // A sandbox with a declared app, to which a second app is added.
    let yaml = format!(
        "name: box\nnetwork: none\nuserns: auto\napps:\n  - name: first\n    image: {BUSYBOX}\n    \
         exec: [/bin/sh, -c, \"exec sleep 1000\"]\nvolumes:\n  - {{ name: data, kind: empty }}\n"
    );
    let file = live.pod_file("box", &yaml);
    let args = ["run", "-d", "--sandbox", p(&file)];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    live.wait_all_up(&uuid, LIMIT);
    let st = live.status(&uuid);
    let (uid, gid) = (st["userns"]["uid"].as_u64().unwrap(), st["userns"]["gid"].as_u64().unwrap());
    assert!(uid >= 65536 && gid >= 65536, "{st}");
    let dir = live.data.join("pods").join("run").join(&uuid);
    let pid1: i64 = fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();

    let keys = serde_json::json!({"mounts": [{"host": shared, "path": "/shared"}]}).to_string();
    let args = [
        "app",
        "add",
        &uuid,
        "--name",
        "added",
        "--image",
        BUSYBOX,
        "--app-keys",
        &keys,
        "--exec",
        "/bin/sh",
        "-c",
        "exec sleep 1000",
    ];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    live.wait_all_up(&uuid, LIMIT);
    assert_eq!(app_names(&live, &uuid), ["first", "added"]);

    // Inside: the pod's user namespace, as its root; the image's and the
    // host directory's root-owned files root's; /proc shows the pod's
    // processes; /sys read-only.
    let probe = "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; id -g; \
        ls -ln /bin/busybox | awk '{print $3\":\"$4}'; ls -lnd / | awk '{print $3\":\"$4}'; \
        ls -ln /shared/from-host | awk '{print $3\":\"$4}'; \
        echo mine > /written && echo rootfs; echo mine > /shared/written && echo host; \
        cat /proc/1/comm; awk '$2==\"/sys\" {split($4, o, \",\"); print \"sys-\" o[1]}' /proc/mounts";
    let words = enter(&live, &uuid, "added", probe);
    let (u, g) = (uid.to_string(), gid.to_string());
    let want = [
        "0",
        u.as_str(),
        "65536",
        "0",
        g.as_str(),
        "65536",
        "0",
        "0",
        "0:0",
        "0:0",
        "0:0",
        "rootfs",
        "host",
        "pod-init",
        "sys-ro",
    ];
    assert_eq!(words, want, "inside the added app");
    // The declared app sees the same user namespace.
    let first = enter(&live, &uuid, "first", "cat /proc/self/uid_map; readlink /proc/self/ns/user");
    let added = enter(&live, &uuid, "added", "cat /proc/self/uid_map; readlink /proc/self/ns/user");
    assert_eq!(first, added, "one user namespace");

    // On the host: what it wrote is the pod's range's (through the host
    // directory's idmap, host root's); the store is untouched.
    let (uid, gid) = (u32::try_from(uid).unwrap(), u32::try_from(gid).unwrap());
    let upper = dir.join("apps/added/upper");
    assert_eq!(owner(&upper), (uid, gid), "the upper layer is the pod root's");
    assert_eq!(owner(&upper.join("written")), (uid, gid));
    assert_eq!(owner(&shared.join("written")), (0, 0));
    assert_eq!(owner(&live.tree_with("bin/busybox").join("bin/busybox")), (0, 0), "the store is not chowned");
    let app_cgroups: Vec<PathBuf> = cgroup_dirs_of(&uuid).into_iter().map(|d| d.join("added")).collect();
    assert!(!app_cgroups.is_empty() && app_cgroups.iter().all(|d| d.is_dir()), "{app_cgroups:?}");

    // Stop and start again, as the pod's root.
    live.ok(&["app", "stop", &uuid, "added", "--timeout", "2"]);
    assert_eq!(live.app_status(&uuid, "added")["state"], "stopped");
    live.ok(&["app", "start", &uuid, "added"]);
    live.wait_all_up(&uuid, LIMIT);
    assert_eq!(enter(&live, &uuid, "added", "id -u; cat /written"), ["0", "mine"]);

    // Removed: its mounts, cgroups and files gone; the pod and its first
    // app on.
    assert!(!mounts_of_app(pid1, "added").is_empty());
    live.ok(&["app", "rm", &uuid, "added"]);
    assert_eq!(app_names(&live, &uuid), ["first"]);
    assert_eq!(mounts_of_app(pid1, "added"), Vec::<String>::new());
    assert!(app_cgroups.iter().all(|d| !d.exists()), "{app_cgroups:?}");
    assert!(!dir.join("apps/added").exists() && !dir.join("units/added.unit").exists());
    assert!(matches!(live.app_status(&uuid, "first")["state"].as_str(), Some("running" | "ready")));
    // Added again under the same name: a fresh app, with the pod's empty
    // volume, which becomes the pod root's.
    let args = [
        "app",
        "add",
        &uuid,
        "--name",
        "added",
        "--image",
        BUSYBOX,
        "--mount",
        "data:/data",
        "--exec",
        "/bin/sh",
        "-c",
        "exec sleep 1000",
    ];
    let out = live.run_within(&args, LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let probe = "id -u; test -e /written || echo fresh; echo mine > /data/written && echo empty";
    assert_eq!(enter(&live, &uuid, "added", probe), ["0", "fresh", "empty"]);
    assert_eq!(owner(&dir.join("volumes/data/written")), (uid, gid));

    live.ok(&["stop", &uuid]);
    live.ok(&["gc"]);
    assert!(live.listed(&uuid).is_none(), "pod gc left {uuid}");
    let existed = before.entries();
    let left: Vec<String> =
        HostState::take(&[]).entries().into_iter().filter(|e| e.contains(&uuid) && !existed.contains(e)).collect();
    assert!(left.is_empty(), "left behind: {left:#?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = live.root().to_string_lossy().into_owned();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root) || l.contains(&uuid)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn an_app_with_a_pid_namespace_of_its_own_is_refused_in_a_userns_pod() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let yaml = "name: box\nnetwork: none\nuserns: auto\napps: []\n";
    let uuid = live.start(&live.pod_file("box", yaml));
    let dir = live.data.join("pods").join("run").join(&uuid);
    let manifest = fs::read(dir.join("pod.json")).unwrap();
    let args = [
        "app",
        "add",
        &uuid,
        "--name",
        "own",
        "--image",
        BUSYBOX,
        "--app-keys",
        r#"{"pidNamespace": "own"}"#,
        "--exec",
        "/bin/sleep",
        "100",
    ];
    let out = live.run_within(&args, LIMIT);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&args, &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &[&uuid, "own", "pidNamespace", "user namespace"]);
    assert_eq!(fs::read(dir.join("pod.json")).unwrap(), manifest, "pod.json untouched");
    assert!(!dir.join("apps/own").exists());
    live.ok(&["stop", &uuid]);
}
