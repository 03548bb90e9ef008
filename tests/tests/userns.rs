//! `userns: auto` as a pod feels it: the pod's root is an unprivileged host
//! range of its own (uid_map `0 <base> 65536`), the image's files are
//! root's inside through idmapped mounts while the shared store stays host
//! root's, what the pod writes lands as `<base>` (rootfs, empty volumes) or,
//! through the idmap, as host root (host volumes), two pods get disjoint
//! ranges, setuid files give nothing on the host, and stop, restart and gc
//! work as without. Needs root; reports a skip without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const BUSYBOX: &str = "example.com/busybox:1.35";
const RUN_LIMIT: Duration = Duration::from_secs(90);

macro_rules! skip_unless_pods {
    () => {
        if let Some(why) = skip_reason(false) {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// A `network: none`, `userns: auto` pod of one busybox app running
/// `script`, with `extra` app lines and `tail` (volumes).
fn userns_pod(name: &str, image: &str, script: &str, extra: &str, tail: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "name: {name}\nnetwork: none\nuserns: auto\napps:\n  - name: app\n    image: {image}\n    \
         exec: [/bin/sh, -c, {script}]\n{extra}{tail}"
    )
}

/// Runs a pod file in the foreground (pod kept, not removed); returns the
/// app's lines and the pod's uuid.
fn run_lines(live: &Live, file: &Path, extra_args: &[&str]) -> (Vec<String>, String) {
    let mut args = vec!["run"];
    args.extend(extra_args);
    args.push(p(file));
    let out = live.run_within(&args, RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("[app] ").map(str::to_owned))
        .collect();
    // `pod run` says `pod <uuid> (<name>)` on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    let uuid = err
        .lines()
        .find_map(|l| l.strip_prefix("pod ").and_then(|r| r.split_whitespace().next()))
        .filter(|u| is_uuid(u))
        .unwrap_or_else(|| panic!("no uuid in {}", describe(&args, &out)))
        .to_owned();
    (lines, uuid)
}

/// `key=value` lines printed by a script.
fn values(lines: &[String]) -> BTreeMap<String, String> {
    lines.iter().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect()
}

/// The pod directory of `uuid` (any state).
fn pod_dir(live: &Live, uuid: &str) -> PathBuf {
    ["run", "prepared", "embryo"]
        .iter()
        .map(|s| live.data.join("pods").join(s).join(uuid))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no directory for pod {uuid}"))
}

/// `(uid, gid)` of the mapping `pod status --format json` shows.
fn mapping(live: &Live, uuid: &str) -> (u32, u32) {
    let st = live.status(uuid);
    let m = &st["userns"];
    assert_eq!(m["size"], 65536, "pod status shows the mapping: {st}");
    (u32::try_from(m["uid"].as_u64().unwrap()).unwrap(), u32::try_from(m["gid"].as_u64().unwrap()).unwrap())
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

#[test]
fn the_pods_root_is_an_unprivileged_range_and_files_land_where_expected() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let host_dir = live.work.join("shared");
    fs::create_dir(&host_dir).unwrap();
    fs::write(host_dir.join("from-host"), "hello\n").unwrap();
    // Owned by an id outside every pod's range: the pod's root may not read
    // it, as host root (without userns) could.
    let secret = host_dir.join("secret");
    fs::write(&secret, "not for pods\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&secret, Some(70_000), Some(70_000)).unwrap();

    let script = "echo map=$(cat /proc/self/uid_map); echo gmap=$(cat /proc/self/gid_map); echo id=$(id -u):$(id -g); \
        echo busybox=$(ls -ln /bin/busybox | awk '{print $3\":\"$4}'); \
        echo root=$(ls -lnd / | awk '{print $3\":\"$4}'); \
        echo mine > /written-rootfs && echo rootfs=ok; \
        echo mine > /data/written-empty && echo empty=ok; \
        echo mine > /shared/written-host && echo host=ok; \
        echo fromhost=$(cat /shared/from-host) owner=$(ls -ln /shared/from-host | awk '{print $3}'); \
        cat /shared/secret >/dev/null 2>&1 && echo secret=read || echo secret=denied; \
        echo hostname=$(hostname)";
    let tail = format!(
        "volumes:\n  - {{ name: data, kind: empty }}\n  - {{ name: shared, kind: host, source: {} }}\n",
        host_dir.display()
    );
    let mounts = "    mounts: [{ volume: data, path: /data }, { volume: shared, path: /shared }]\n";
    let file = live.pod_file("userns", &userns_pod("userns", BUSYBOX, script, mounts, &tail));
    let (lines, uuid) = run_lines(&live, &file, &[]);
    let v = values(&lines);
    let (uid, gid) = mapping(&live, &uuid);
    assert!(uid >= 65536 && gid >= 65536, "the range is not host root's: {uid}:{gid}");

    let map: Vec<&str> = v["map"].split_whitespace().collect();
    assert_eq!(map, ["0", &uid.to_string(), "65536"], "uid_map inside: {lines:?}");
    let gmap: Vec<&str> = v["gmap"].split_whitespace().collect();
    assert_eq!(gmap, ["0", &gid.to_string(), "65536"], "gid_map inside: {lines:?}");
    assert_eq!(v["id"], "0:0", "{lines:?}");
    assert_eq!(v["busybox"], "0:0", "the image's files are root's inside: {lines:?}");
    assert_eq!(v["root"], "0:0", "/ is root's inside: {lines:?}");
    for k in ["rootfs", "empty", "host"] {
        assert_eq!(v.get(k).map(String::as_str), Some("ok"), "writing to the {k} failed: {lines:?}");
    }
    assert_eq!(v["fromhost"], "hello owner=0", "host root's files are the pod root's: {lines:?}");
    assert_eq!(v["secret"], "denied", "the pod's root has no capability over unmapped files: {lines:?}");
    assert_eq!(v["hostname"], "userns");

    // On the host: the store untouched, the pod's writes as its range.
    let tree = live.tree_with("bin/busybox");
    assert_eq!(owner(&tree.join("bin/busybox")), (0, 0), "the shared store is not chowned");
    let dir = pod_dir(&live, &uuid);
    let upper = dir.join("apps/app/upper");
    assert_eq!(owner(&upper), (uid, gid), "the upper layer is the pod root's");
    assert_eq!(owner(&upper.join("written-rootfs")), (uid, gid));
    assert_eq!(owner(&dir.join("volumes/data/written-empty")), (uid, gid));
    assert_eq!(owner(&host_dir.join("written-host")), (0, 0), "through the idmap, the pod's root writes as host root");
    live.ok(&["rm", &uuid]);
}

/// Runs `exe ARGS` as uid/gid 65534 on the host.
fn as_nobody(exe: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(exe)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(args, &out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn setuid_files_grant_nothing_inside_and_nothing_of_root_on_the_host() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    suid_image(&live);
    // A non-root app runs the image's setuid-root binary: no_new_privs
    // keeps its ids, with or without a user namespace.
    let probe = "echo mode=$(ls -ln /suid/busybox | awk '{print $1\":\"$3}'); \
        echo euid=$(/suid/busybox grep '^Uid:' /proc/self/status | awk '{print $3}'); \
        echo nnp=$(grep '^NoNewPrivs:' /proc/self/status | awk '{print $2}')";
    let user = "    user: \"65534\"\n    group: \"65534\"\n";
    for userns in ["auto", "host"] {
        let yaml = userns_pod("suid", "example.com/suid:1", probe, user, "")
            .replace("userns: auto", &format!("userns: {userns}"));
        let (lines, uuid) = run_lines(&live, &live.pod_file(&format!("suid-{userns}"), &yaml), &[]);
        let v = values(&lines);
        assert_eq!(v["mode"], "-rwsr-xr-x:0", "userns {userns}: {lines:?}");
        assert_eq!(v["euid"], "65534", "userns {userns}: the setuid bit gave the app new ids: {lines:?}");
        assert_eq!(v["nnp"], "1", "userns {userns}: {lines:?}");
        live.ok(&["rm", &uuid]);
    }

    // The pod's root makes setuid-root files in its rootfs and in an empty
    // volume: on the host they are the pod range's, so running one as an
    // unprivileged host user gives that unprivileged id, never root.
    let make = "cp /bin/busybox /made-suid && chmod 4755 /made-suid && \
        cp /bin/busybox /data/made-suid && chmod 4755 /data/made-suid && echo made=ok";
    let yaml = userns_pod(
        "make-suid",
        BUSYBOX,
        make,
        "    mounts: [{ volume: data, path: /data }]\n",
        "volumes:\n  - { name: data, kind: empty }\n",
    );
    let (lines, uuid) = run_lines(&live, &live.pod_file("make-suid", &yaml), &[]);
    assert_eq!(values(&lines).get("made").map(String::as_str), Some("ok"), "{lines:?}");
    let (uid, gid) = mapping(&live, &uuid);
    let dir = pod_dir(&live, &uuid);
    let exposed = tempfile::Builder::new().prefix("pod-userns-suid-").tempdir().unwrap();
    fs::set_permissions(exposed.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for made in [dir.join("apps/app/upper/made-suid"), dir.join("volumes/data/made-suid")] {
        let m = fs::metadata(&made).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o4755), "{}", made.display());
        // What running it on the host gives: busybox drops setuid ids by
        // itself, so the host's `id` stands in, with the made file's owner
        // and mode, where an unprivileged user can reach it.
        let copy = exposed.path().join("id");
        fs::copy("/usr/bin/id", &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(m.uid()), Some(m.gid())).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
        assert_eq!(as_nobody(&copy, &["-u"]), uid.to_string(), "setuid gives the pod's range, not root");
        fs::remove_file(&copy).unwrap();
    }
    live.ok(&["rm", &uuid]);
}

#[test]
fn concurrent_pods_get_disjoint_ranges_restart_stop_and_gc_leave_nothing() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let before = HostState::take(&[]);
    // Fails once, then runs: restart works as the pod's root (the marker
    // is in the rootfs's upper layer, kept across restarts); limits make
    // pod-init place the app in cgroups of its own.
    let script = "echo map=$(cat /proc/self/uid_map); echo cgroup=$(cat /proc/self/cgroup | tail -n 1); \
        if [ -f /ran-once ]; then echo second=yes; exec sleep 120; fi; touch /ran-once; exit 3";
    let extra = "    restart: on-failure\n    resources: { memory: 64Mi, pids: 64 }\n    stopTimeout: 2s\n";
    let uuids: Vec<String> = ["one", "two"]
        .iter()
        .map(|name| live.start(&live.pod_file(name, &userns_pod(name, BUSYBOX, script, extra, ""))))
        .collect();
    for uuid in &uuids {
        let ok = wait_for(Duration::from_secs(60), || {
            let st = live.app_status(uuid, "app");
            matches!(st["state"].as_str(), Some("running" | "ready")) && st["restarts"].as_u64().unwrap_or(0) >= 1
        });
        assert!(ok, "pod {uuid} did not restart its app: {}", live.status(uuid));
    }
    let maps: Vec<(u32, u32)> = uuids.iter().map(|u| mapping(&live, u)).collect();
    let disjoint = |a: u32, b: u32| a.abs_diff(b) >= 65536;
    assert!(disjoint(maps[0].0, maps[1].0) && disjoint(maps[0].1, maps[1].1), "overlapping ranges: {maps:?}");
    for (uuid, (uid, _)) in uuids.iter().zip(&maps) {
        let logs = live.ok(&["logs", uuid]);
        let want = format!("map= 0 {uid} 65536");
        assert!(logs.lines().any(|l| l.split_whitespace().eq(want.split_whitespace())), "{logs}");
        assert!(logs.contains("second=yes"), "{logs}");
        // In a cgroup namespace rooted at the app's cgroup.
        assert!(logs.lines().any(|l| l.trim() == "cgroup=0::/"), "{logs}");
        // On the host, the app's process is in the app's cgroup(s).
        let app_dirs: Vec<PathBuf> = cgroup_dirs_of(uuid).into_iter().map(|d| d.join("app")).collect();
        assert!(!app_dirs.is_empty(), "no app cgroup for {uuid}");
        for d in &app_dirs {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            assert!(!procs.trim().is_empty(), "{} is empty", d.display());
        }
    }

    // `pod enter` runs as the pod's root, in its user namespace.
    let entered = live.ok(&["enter", &uuids[0], "--app", "app", "/bin/sh", "-c", "cat /proc/self/uid_map; id -u"]);
    let entered: Vec<&str> = entered.split_whitespace().collect();
    assert_eq!(entered, ["0", &maps[0].0.to_string(), "65536", "0"], "pod enter");

    // The pod's footprint, gone after stop and gc.
    let during = HostState::take(&[]);
    let existed = before.entries();
    let ours = |e: &str| uuids.iter().any(|u| e.contains(u.as_str()));
    let footprint: Vec<String> = during.entries().into_iter().filter(|e| ours(e) && !existed.contains(e)).collect();
    for kind in ["cgroup ", "netns "] {
        assert!(footprint.iter().any(|e| e.starts_with(kind)), "no {kind}of the pods seen: {footprint:#?}");
    }
    for uuid in &uuids {
        live.ok(&["stop", uuid]);
        assert_eq!(live.status(uuid)["state"], "exited");
    }
    live.ok(&["gc"]);
    for uuid in &uuids {
        assert!(live.listed(uuid).is_none(), "pod gc left {uuid}");
    }
    let now = HostState::take(&[]).entries();
    let left: Vec<&String> = footprint.iter().filter(|e| now.contains(e)).collect();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn userns_pods_on_a_cni_network_bind_low_ports() {
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[Example::Busybox]);
    // The network namespace belongs to the pod's user namespace: its root
    // holds NET_BIND_SERVICE there, and sysfs shows its eth0.
    let script = "busybox httpd -p 80 -h / && echo bound=ok; \
        test -e /sys/class/net/eth0 && echo eth0=ok; echo map=$(cat /proc/self/uid_map)";
    let yaml =
        userns_pod("web", BUSYBOX, script, "", "").replace("network: none", &format!("network: {}", live.net_name()));
    let (lines, uuid) = run_lines(&live, &live.pod_file("web", &yaml), &[]);
    let v = values(&lines);
    assert_eq!(v.get("bound").map(String::as_str), Some("ok"), "{lines:?}");
    assert_eq!(v.get("eth0").map(String::as_str), Some("ok"), "{lines:?}");
    assert!(!v["map"].starts_with("0 0 "), "{lines:?}");
    live.ok(&["rm", &uuid]);
}

#[test]
fn overrides_and_refusals() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let yaml = userns_pod("o", BUSYBOX, "echo map=$(cat /proc/self/uid_map)", "", "");
    let file = live.pod_file("o", &yaml);
    // --userns host turns it off...
    let (lines, uuid) = run_lines(&live, &file, &["--userns", "host"]);
    assert_eq!(values(&lines)["map"].split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295"]);
    assert!(live.status(&uuid)["userns"].is_null());
    live.ok(&["rm", &uuid]);
    // ... and --userns auto on for a file without the field.
    let plain = live.pod_file("plain", &yaml.replace("userns: auto\n", ""));
    let (lines, uuid) = run_lines(&live, &plain, &["--userns", "auto"]);
    assert_ne!(values(&lines)["map"].split_whitespace().nth(1), Some("0"), "{lines:?}");
    live.ok(&["rm", &uuid]);

    // A stage1 that cannot honour it is never started: refused up front.
    let err = live.fails(&["run", "--stage1", "vm", p(&file)], EXIT_INVALID);
    assert_mentions(&err, &["userns", "namespace pods"]);
    let err = live.fails(&["run", "--net", "host", p(&file)], EXIT_INVALID);
    assert_mentions(&err, &["userns", "host's network"]);
    let vm = live.pod_file("vm", &yaml.replace("network: none\n", "network: none\nisolation: vm\n"));
    let err = live.fails(&["run", p(&vm)], EXIT_INVALID);
    assert_mentions(&err, &["line", "userns"]);
    assert!(live.pods().is_empty(), "a refused pod left a directory: {:?}", live.pods());
}
