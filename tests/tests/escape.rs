//! The escape probe (`pod-escape-probe`, built from `probe/`) inside pods.
//! Run as root with the default privileges it must find every way out
//! blocked: in a namespace pod, through `pod enter`, and in a VM pod. With
//! seccomp off and SYS_ADMIN added, the same probe must report the mount
//! that then works, so a probe blind to escapes fails the test. Needs root;
//! reports a skip without it.
//!
//! Every attempt of the probe is harmless if isolation failed (see
//! probe/src/main.rs): it mounts only in the pod's own mount namespace,
//! opens a block device read-only and never reads it, uses a garbage module
//! buffer, a wrong reboot magic and an invalid time, opens
//! /proc/sysrq-trigger without writing, and raises only its own rlimit.
//! The test prints every line of the probe's report (`--nocapture`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;

const PROBE_IMAGE: &str = "example.com/escape-probe:1";
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Every vector the probe must try (probe/src/main.rs `VECTORS`).
const VECTORS: [&str; 14] = [
    "mount",
    "mknod-block",
    "module-load",
    "reboot",
    "set-clock",
    "sysrq-trigger",
    "kcore",
    "host-proc",
    "leaked-fd",
    "rlimit",
    "userns",
    "ptrace",
    "open-by-handle",
    "seccomp-relax",
];
/// Docker's default set as /proc/self/status prints it.
const DEFAULT_CAPS: &str = "00000000a80425fb";

fn probe_bin() -> PathBuf {
    target_dir().join("debug").join("pod-escape-probe")
}

fn skip_reason_probe() -> Option<String> {
    if let Some(why) = skip_reason(false) {
        return Some(why);
    }
    let bin = probe_bin();
    (!bin.is_file()).then(|| format!("{} is missing: run `cargo build --workspace` first", bin.display()))
}

macro_rules! skip_unless_probe {
    () => {
        if let Some(why) = skip_reason_probe() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// An environment holding busybox and the probe image: busybox as its
/// dependency, `/bin/pod-escape-probe` (static) as its app.
fn live_with_probe() -> Live {
    let live = Live::new(&[Example::Busybox]);
    let dir = live.work.join("probe-image");
    let bin_dir = dir.join("files").join("bin");
    fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("pod-escape-probe");
    fs::copy(probe_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let recipe = json!({
        "name": "example.com/escape-probe",
        "labels": { "version": "1" },
        "app": { "exec": ["/bin/pod-escape-probe"], "user": "0", "group": "0" },
        "rootfs": { "dir": "files" },
        "dependencies": [{ "imageName": "example.com/busybox", "labels": { "version": "1.35" } }],
    });
    let recipe_path = dir.join("recipe.yaml");
    fs::write(&recipe_path, serde_json::to_string_pretty(&recipe).unwrap()).unwrap();
    let aci = live.images.join("escape-probe-1.aci");
    live.ok(&["image", "build", p(&recipe_path), "-o", p(&aci)]);
    live.ok(&["image", "sign", "--key", p(&e2e_key().secret), p(&aci)]);
    live.ok(&["fetch", p(&aci)]);
    live
}

/// The whole disks of this host (`/proc/partitions` entries whose name
/// ends in a letter), as `MAJ:MIN`: the probe makes nodes of them.
fn host_disks() -> Vec<String> {
    let text = fs::read_to_string("/proc/partitions").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let whole = f.get(3)?.ends_with(|c: char| c.is_ascii_alphabetic());
            (f.len() == 4 && whole && f[0].parse::<u32>().is_ok()).then(|| format!("{}:{}", f[0], f[1]))
        })
        .take(4)
        .collect()
}

/// This test process's command line as the probe joins it: the host
/// process the pod must not see.
fn own_cmdline() -> String {
    let raw = fs::read("/proc/self/cmdline").unwrap();
    let words: Vec<String> =
        raw.split(|&b| b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    words.join(" ")
}

/// The YAML lines of the probe's environment and its scratch volume, for
/// an app entry (4-space indent).
fn probe_env() -> String {
    let env = json!({
        "POD_PROBE_HOST_PID": std::process::id().to_string(),
        "POD_PROBE_HOST_CMDLINE": own_cmdline(),
        "POD_PROBE_BLOCKDEV": host_disks().join(","),
        "POD_PROBE_DIRS": "/data",
    });
    format!("    env: {env}\n    mounts: [{{ volume: scratch, path: /data }}]\n")
}

/// A pod of one app `probe` from the probe image running `exec`, with
/// `extra` YAML lines for the app.
fn probe_pod(name: &str, isolation: &str, exec: &[&str], extra: &str) -> String {
    format!(
        "name: {name}\nisolation: {isolation}\nnetwork: none\napps:\n  - name: probe\n    image: {PROBE_IMAGE}\n    \
         exec: {}\n{}{extra}volumes:\n  - {{ name: scratch, kind: empty }}\n",
        json!(exec),
        probe_env()
    )
}

/// The probe's report: vector → (escaped, detail). Prints every line.
fn report(what: &str, stdout: &str) -> BTreeMap<String, (bool, String)> {
    println!("--- {what}");
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.strip_prefix("[probe] ").unwrap_or(line);
        if line.starts_with("pod-escape-probe:") {
            println!("{line}");
        }
        for (mark, escaped) in [(": blocked (", false), (": ESCAPED (", true)] {
            if let Some((name, rest)) = line.split_once(mark) {
                println!("{line}");
                out.insert(name.to_owned(), (escaped, rest.trim_end_matches(')').to_owned()));
            }
        }
    }
    out
}

/// Asserts every vector was tried and blocked, with the reasons that show
/// each layer did its part.
fn assert_all_blocked(report: &BTreeMap<String, (bool, String)>, output: &str) {
    for v in VECTORS {
        let (escaped, detail) = report.get(v).unwrap_or_else(|| panic!("the probe reported no {v}:\n{output}"));
        assert!(!escaped, "{v} ESCAPED: {detail}\n{output}");
    }
    let detail = |v: &str| report[v].1.as_str();
    assert_mentions(detail("set-clock"), &["seccomp mode 2", "refused by seccomp"]);
    assert_mentions(detail("seccomp-relax"), &["still mode 2", "clone3 still ENOSYS"]);
    assert_mentions(detail("reboot"), &["EPERM"]);
    // Nothing beyond stdin, stdout and stderr is open in the pod.
    let fds = detail("leaked-fd").strip_prefix("open fds: ").and_then(|d| d.split(';').next()).unwrap_or_default();
    let numbers: Vec<&str> = fds.split(", ").filter_map(|f| f.split(' ').next()).collect();
    assert_eq!(numbers, ["0", "1", "2"], "fds open in the pod: {fds}\n{output}");
    assert_mentions(detail("module-load"), &["init_module(garbage): EPERM", "finit_module(/dev/null): EPERM"]);
    // Each node must be refused by the pod itself: mknod by the filter,
    // capabilities or a VM's 9p server, open by a nodev mount (EACCES). Not
    // by luck: an absent device (ENXIO on open), or a device cgroup of the
    // host's (EPERM on open).
    for disk in host_disks() {
        assert_mentions(detail("mknod-block"), &[&format!("/tmp {disk}"), &format!("/data {disk}")]);
    }
    for attempt in detail("mknod-block").split("; ") {
        assert!(
            (attempt.contains(": mknod E") && !attempt.contains("open")) || attempt.ends_with("mknod ok, open EACCES"),
            "not refused by the pod's own mounts: {attempt}\n{output}"
        );
    }
}

#[test]
fn the_probe_finds_every_way_out_of_a_namespace_pod_blocked() {
    skip_unless_probe!();
    let live = live_with_probe();
    let file = live.pod_file("escape", &probe_pod("escape", "namespace", &["/bin/pod-escape-probe"], ""));
    let args = ["run", "--net", "none", p(&file)];
    let out = live.run_within(&args, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = report("namespace pod, default privileges", &stdout);
    assert_all_blocked(&lines, &describe(&args, &out));
    assert!(out.status.success(), "the probe exits 0 when nothing escaped\n{}", describe(&args, &out));
    let host = lines["host-proc"].1.as_str();
    assert_mentions(host, &["none has the host test's command line", "/proc/1 is", "pod-init"]);
}

#[test]
fn the_probe_finds_every_way_out_of_a_userns_pod_blocked() {
    skip_unless_probe!();
    let live = live_with_probe();
    let file = live.pod_file("escape-userns", &probe_pod("escape-userns", "namespace", &["/bin/pod-escape-probe"], ""));
    let args = ["run", "--net", "none", "--userns", "auto", p(&file)];
    let out = live.run_within(&args, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = report("namespace pod, userns: auto, default privileges", &stdout);
    assert_all_blocked(&lines, &describe(&args, &out));
    assert!(out.status.success(), "the probe exits 0 when nothing escaped\n{}", describe(&args, &out));
}

#[test]
fn without_seccomp_and_with_sys_admin_the_probe_sees_the_mount_escape() {
    skip_unless_probe!();
    let live = live_with_probe();
    // Only vectors whose success is harmless: a tmpfs in the pod's own
    // mount namespace, a user namespace in a child that exits, an
    // allow-all filter on the probe itself.
    let exec = ["/bin/pod-escape-probe", "mount", "userns", "seccomp-relax", "reboot"];
    let extra = "    seccomp: unconfined\n    capabilities: { add: [SYS_ADMIN] }\n";
    let file = live.pod_file("weak", &probe_pod("weak", "namespace", &exec, extra));
    let args = ["run", "--net", "none", p(&file)];
    let out = live.run_within(&args, RUN_LIMIT);
    let lines = report("namespace pod, seccomp unconfined + SYS_ADMIN", &String::from_utf8_lossy(&out.stdout));
    let output = describe(&args, &out);
    assert_eq!(out.status.code(), Some(1), "the probe exits 1 when something escaped\n{output}");
    let escaped = |v: &str| lines.get(v).unwrap_or_else(|| panic!("no {v}:\n{output}")).0;
    assert!(escaped("mount"), "with SYS_ADMIN and no filter the mount works\n{output}");
    assert!(escaped("seccomp-relax"), "there is no filter\n{output}");
    // Capabilities still hold where the filter is gone: no CAP_SYS_BOOT.
    assert!(!escaped("reboot"), "{output}");
}

/// `pod enter POD --app APP ARGV...` within a minute.
fn enter(live: &Live, uuid: &str, app: &str, argv: &[&str]) -> std::process::Output {
    let mut args = vec!["enter", "--app", app, uuid];
    args.extend(argv);
    live.run_within(&args, Duration::from_secs(60))
}

/// The `Field:` values of /proc/self/status lines.
fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

const STATUS: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status";

#[test]
fn pod_enter_runs_commands_with_the_apps_privileges() {
    skip_unless_probe!();
    let live = live_with_probe();
    let sleep = json!(["/bin/sh", "-c", "exec sleep 600"]);
    let yaml = format!(
        "name: entered\nnetwork: none\napps:\n\
         - name: main\n    image: {PROBE_IMAGE}\n    exec: {sleep}\n{env}\
         \x20 - name: user\n    image: {PROBE_IMAGE}\n    exec: {sleep}\n    user: \"1000\"\n    group: \"1000\"\n\
         \x20   capabilities: {{ add: [NET_ADMIN], drop: [MKNOD] }}\n\
         volumes:\n  - {{ name: scratch, kind: empty }}\n",
        env = probe_env()
    )
    .replace("apps:\n- name: main", "apps:\n  - name: main");
    let uuid = live.start(&live.pod_file("entered", &yaml));
    live.wait_all_up(&uuid, Duration::from_secs(60));

    // Root in the app: the app's set as bounding and effective set, the filter, no_new_privs.
    let out = enter(&live, &uuid, "main", &["/bin/sh", "-c", STATUS]);
    assert!(out.status.success(), "{}", describe(&["enter", "main"], &out));
    let root = status_fields(&String::from_utf8_lossy(&out.stdout));
    println!("--- pod enter --app main: {root:?}");
    for f in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(root[f], DEFAULT_CAPS, "{f}: {root:?}");
    }
    assert_eq!(
        (root["CapAmb"].as_str(), root["Seccomp"].as_str(), root["NoNewPrivs"].as_str()),
        ("0000000000000000", "2", "1")
    );

    // Another user: its uid and gid, no capabilities, its own bounding set
    // (+ NET_ADMIN, bit 12; - MKNOD, bit 27).
    let script = format!("id -u; id -g; {STATUS}");
    let out = enter(&live, &uuid, "user", &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&["enter", "user"], &out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("--- pod enter --app user:\n{text}");
    let ids: Vec<&str> = text.lines().take(2).collect();
    assert_eq!(ids, ["1000", "1000"], "{text}");
    let user = status_fields(&text);
    assert_eq!(user["CapBnd"], "00000000a00435fb", "{text}");
    for f in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(user[f], "0000000000000000", "{f}: {text}");
    }
    assert_eq!((user["Seccomp"].as_str(), user["NoNewPrivs"].as_str()), ("2", "1"), "{text}");

    // A mount through enter is refused, as in the app.
    // (busybox's sh runs its applets: the image has no /bin/mount.)
    let out = enter(&live, &uuid, "main", &["/bin/sh", "-c", "mount -t tmpfs x /tmp"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- pod enter --app main mount -t tmpfs x /tmp: {:?}, {}", out.status.code(), text.trim());
    assert!(!out.status.success(), "{}", describe(&["enter", "mount"], &out));
    assert_mentions_any(&text, &["not permitted", "permission denied"]);

    // In the app's cgroups: the same view of them as the app's own process.
    let pid = live.app_status(&uuid, "main")["pid"].as_i64().unwrap();
    let script = format!("cat /proc/self/cgroup; echo ---; cat /proc/{pid}/cgroup");
    let out = enter(&live, &uuid, "main", &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&["enter", "cgroup"], &out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (own, app) = text.split_once("---\n").unwrap_or_else(|| panic!("{text}"));
    assert!(!own.trim().is_empty() && own == app, "enter's cgroups are not the app's:\n{text}");

    // And the whole probe, entered: nothing escapes either.
    let out = enter(&live, &uuid, "main", &["/bin/pod-escape-probe"]);
    let lines = report("pod enter --app main /bin/pod-escape-probe", &String::from_utf8_lossy(&out.stdout));
    assert_all_blocked(&lines, &describe(&["enter", "probe"], &out));
    assert!(out.status.success(), "{}", describe(&["enter", "probe"], &out));
}

#[test]
fn the_probe_finds_every_way_out_of_a_vm_pod_blocked_too() {
    skip_unless_probe!();
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = live_with_probe();
    let file = live.pod_file("escape-vm", &probe_pod("escape-vm", "vm", &["/bin/pod-escape-probe"], ""));
    let args = ["run", "--net", "none", p(&file)];
    // Booting the guest under TCG takes seconds.
    let out = live.run_within(&args, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = report("VM pod (guest kernel), default privileges", &stdout);
    assert_all_blocked(&lines, &describe(&args, &out));
    assert!(out.status.success(), "the probe exits 0 when nothing escaped\n{}", describe(&args, &out));
    assert_mentions(&lines["host-proc"].1, &["none has the host test's command line", "/proc/1 is /init"]);
}

#[test]
fn pod_enter_into_a_vm_pod_runs_with_the_apps_privileges() {
    skip_unless_probe!();
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = live_with_probe();
    let sleep = json!(["/bin/sh", "-c", "exec sleep 600"]);
    let yaml = format!(
        "name: entered-vm\nisolation: vm\nnetwork: none\napps:\n  - name: main\n    image: {PROBE_IMAGE}\n    \
         exec: {sleep}\n    user: \"1000\"\n{}volumes:\n  - {{ name: scratch, kind: empty }}\n",
        probe_env()
    );
    let uuid = live.start(&live.pod_file("entered-vm", &yaml));
    live.wait_all_up(&uuid, Duration::from_secs(240));

    let script = format!("id -u; {STATUS}; mount -t tmpfs x /tmp 2>&1 || echo REFUSED");
    let out = enter(&live, &uuid, "main", &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&["enter", "main"], &out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("--- pod enter (VM) --app main:\n{text}");
    assert_eq!(text.lines().next(), Some("1000"), "{text}");
    let fields = status_fields(&text);
    assert_eq!(fields["CapBnd"], DEFAULT_CAPS, "{text}");
    assert_eq!(fields["CapEff"], "0000000000000000", "{text}");
    assert_eq!((fields["Seccomp"].as_str(), fields["NoNewPrivs"].as_str()), ("2", "1"), "{text}");
    assert_eq!(text.lines().last(), Some("REFUSED"), "{text}");
}
