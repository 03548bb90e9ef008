//! Least privilege as an app in a namespace pod feels it: the default
//! capability set, `capabilities` add/drop, non-root apps with none,
//! no_new_privs, the seccomp filter (and `seccomp: unconfined`), masked and
//! read-only kernel files, `readOnlyRootFS`. Needs root; reports a skip
//! without it.
//!
//! Every probe is harmless if isolation failed: mounts go on a directory
//! of the app's own rootfs in its own mount namespace, and the kernel
//! files that must be read-only are opened for appending with nothing
//! written, so even a writable /proc/sysrq-trigger triggers nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const BUSYBOX: &str = "example.com/busybox:1.35";
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Docker's default set as /proc/self/status prints it.
const DEFAULT_CAPS: &str = "00000000a80425fb";

macro_rules! skip_unless_pods {
    () => {
        if let Some(why) = skip_reason(false) {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// A `network: none` pod of busybox apps `(name, script, extra YAML lines)`.
fn busybox_pod(name: &str, apps: &[(&str, &str, &str)], tail: &str) -> String {
    let mut y = format!("name: {name}\nnetwork: none\napps:\n");
    for (app, script, extra) in apps {
        let script = serde_json::to_string(script).unwrap();
        y.push_str(&format!("  - name: {app}\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, {script}]\n{extra}"));
    }
    y.push_str(tail);
    y
}

/// Runs the pod in the foreground; returns each app's lines, by app.
fn run_lines(live: &Live, name: &str, yaml: &str) -> BTreeMap<String, Vec<String>> {
    let file = live.pod_file(name, yaml);
    let args = ["run", "--net", "none", p(&file)];
    let out = live.run_within(&args, RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((app, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            lines.entry(app.to_owned()).or_default().push(rest.to_owned());
        }
    }
    lines
}

/// The value of `field` in an app's printed /proc/self/status lines.
fn field<'a>(lines: &'a BTreeMap<String, Vec<String>>, app: &str, field: &str) -> &'a str {
    let all = lines.get(app).unwrap_or_else(|| panic!("no output from {app}: {lines:?}"));
    let prefix = format!("{field}:");
    all.iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{app} printed no {field}: {all:?}"))
}

const STATUS: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status";

#[test]
fn apps_get_the_default_caps_no_new_privs_and_seccomp_and_changes_apply() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let yaml = busybox_pod(
        "caps",
        &[
            ("plain", STATUS, ""),
            ("tuned", STATUS, "    capabilities: { add: [NET_ADMIN], drop: [CAP_MKNOD] }\n"),
            ("only", STATUS, "    capabilities: { drop: [ALL], add: [net_bind_service] }\n"),
            ("user", STATUS, "    user: \"1000\"\n    group: \"1000\"\n"),
            ("free", STATUS, "    seccomp: unconfined\n"),
        ],
        "",
    );
    let lines = run_lines(&live, "caps", &yaml);

    for f in ["CapBnd", "CapEff", "CapPrm", "CapInh"] {
        assert_eq!(field(&lines, "plain", f), DEFAULT_CAPS, "{f}");
    }
    assert_eq!(field(&lines, "plain", "CapAmb"), "0000000000000000");
    assert_eq!(field(&lines, "plain", "NoNewPrivs"), "1");
    assert_eq!(field(&lines, "plain", "Seccomp"), "2", "filter mode");

    // + NET_ADMIN (bit 12), - MKNOD (bit 27).
    assert_eq!(field(&lines, "tuned", "CapBnd"), "00000000a00435fb");
    assert_eq!(field(&lines, "tuned", "CapEff"), "00000000a00435fb");
    // NET_BIND_SERVICE alone: bit 10.
    assert_eq!(field(&lines, "only", "CapEff"), "0000000000000400");
    assert_eq!(field(&lines, "only", "CapBnd"), "0000000000000400");

    // Another user holds nothing; its bounding set is still the app's set.
    for f in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(field(&lines, "user", f), "0000000000000000", "{f}");
    }
    assert_eq!(field(&lines, "user", "CapBnd"), DEFAULT_CAPS);
    assert_eq!(field(&lines, "user", "NoNewPrivs"), "1");

    assert_eq!(field(&lines, "free", "Seccomp"), "0", "seccomp: unconfined");
    assert_eq!(field(&lines, "free", "NoNewPrivs"), "1");
    assert_eq!(field(&lines, "free", "CapEff"), DEFAULT_CAPS);
}

#[test]
fn mounts_are_refused_and_kernel_files_are_masked_or_read_only() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let mount = "mkdir -p /tmp/m; if mount -t tmpfs none /tmp/m 2>&1; then echo MOUNTED; else echo REFUSED; fi";
    // A kernel may lack some of these files (no /proc/kcore without
    // CONFIG_PROC_KCORE): each is reported absent, empty or its size.
    let kernel = "for f in /proc/kcore /proc/timer_list /proc/keys; do \
                    if [ -e $f ]; then echo $f $(wc -c < $f); else echo $f absent; fi; done; \
                  for f in /proc/sysrq-trigger /proc/sys/kernel/hostname; do \
                    if [ ! -e $f ]; then echo $f absent; \
                    elif ( : >> $f ); then echo $f WRITABLE; else echo $f refused; fi; done 2>&1";
    let yaml = busybox_pod(
        "masked",
        &[
            ("plain", mount, ""),
            // CAP_SYS_ADMIN alone: the filter still refuses mount.
            ("admin", mount, "    capabilities: { add: [SYS_ADMIN] }\n"),
            // The control: without the filter the same mount works (in the
            // app's own mount namespace).
            ("control", mount, "    capabilities: { add: [SYS_ADMIN] }\n    seccomp: unconfined\n"),
            ("kernel", kernel, ""),
        ],
        "",
    );
    let lines = run_lines(&live, "masked", &yaml);
    let last = |app: &str| lines.get(app).and_then(|l| l.last()).cloned().unwrap_or_default();
    assert_eq!(last("plain"), "REFUSED", "{lines:?}");
    assert_eq!(last("admin"), "REFUSED", "{lines:?}");
    assert_eq!(last("control"), "MOUNTED", "{lines:?}");
    let admin = lines["admin"].join("\n");
    assert_mentions_any(&admin, &["not permitted", "permission denied"]);

    let kernel = &lines["kernel"];
    let present = |path: &str| !kernel.iter().any(|l| l == &format!("{path} absent"));
    assert!(present("/proc/keys") && present("/proc/sys/kernel/hostname"), "{kernel:?}");
    for path in ["/proc/kcore", "/proc/timer_list", "/proc/keys"] {
        if present(path) {
            assert!(kernel.iter().any(|l| l == &format!("{path} 0")), "{path} is not masked: {kernel:?}");
        }
    }
    for path in ["/proc/sysrq-trigger", "/proc/sys/kernel/hostname"] {
        if present(path) {
            assert!(kernel.iter().any(|l| l == &format!("{path} refused")), "{path} is writable: {kernel:?}");
        }
    }
    let text = kernel.join("\n");
    assert!(text.contains("Read-only file system"), "{text}");
}

#[test]
fn a_read_only_rootfs_keeps_volumes_writable() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let script = "for f in /x /tmp/x /data/x /dev/shm/x; do \
                    if touch $f 2>/dev/null; then echo $f written; else echo $f refused; fi; done; \
                  touch /x 2>&1; true";
    let extra = "    readOnlyRootFS: true\n    mounts: [{ volume: scratch, path: /data }]\n";
    let yaml = busybox_pod(
        "rofs",
        &[("ro", script, extra), ("rw", script, "    mounts: [{ volume: scratch, path: /data }]\n")],
        "volumes:\n  - { name: scratch, kind: empty }\n",
    );
    let lines = run_lines(&live, "rofs", &yaml);
    let ro = &lines["ro"];
    for want in ["/x refused", "/tmp/x refused", "/data/x written", "/dev/shm/x written"] {
        assert!(ro.iter().any(|l| l == want), "{want:?} missing: {ro:?}");
    }
    assert!(ro.join("\n").contains("Read-only file system"), "{ro:?}");
    let rw = &lines["rw"];
    assert!(rw.iter().any(|l| l == "/x written"), "without readOnlyRootFS the rootfs is writable: {rw:?}");
}

#[test]
fn an_unknown_capability_is_refused_naming_line_and_field() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let yaml = busybox_pod("badcap", &[("a", "true", "    capabilities: { add: [NET_ADMIN, CAP_FLY] }\n")], "");
    let file = live.pod_file("badcap", &yaml);
    let err = live.fails(&["run", p(&file)], EXIT_INVALID);
    assert_mentions(&err, &["badcap.yaml", "line 7", "apps[0].capabilities.add[1]", "CAP_FLY"]);
}
