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
