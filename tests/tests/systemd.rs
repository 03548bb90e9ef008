//! Pods under a real systemd: one qemu guest with systemd as PID 1 on a pure
//! cgroup v2 kernel (tests/tests/common/sdguest.rs), running this build's
//! pod binaries with their store on a tmpfs in the guest.
//!
//! What a user of such a host notices: `systemctl status pod-<uuid>.scope`
//! shows the pod active under `machine.slice`, delegated, with pod-init and
//! the app in it; `machinectl list` shows the pod (class container, pod-init
//! its leader); `machinectl terminate` ends it and `pod status` shows its
//! app's exit; `machinectl poweroff` stops it gracefully (the app's SIGTERM
//! trap runs and its line is in `pod logs`); after `pod stop` and `pod gc`
//! no unit, no machine and no cgroup is left. `POD_CGROUP_MANAGER=cgroupfs`
//! keeps a pod out of systemd altogether.
//!
//! A VM pod is a machine of class vm led by its monitor, with qemu in its
//! scope, and `machinectl terminate` ends it. Its guest never boots here (a
//! VM inside this TCG guest would be TCG inside TCG, minutes per boot): the
//! scope and the registration are made as qemu starts, which is what this
//! checks.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/sdguest.rs"]
mod sdguest;

use std::collections::BTreeMap;

use common::*;
use sdguest::*;

const BUSYBOX: &str = "example.com/busybox:1.35";

/// A `network: none` pod of one busybox app running `/bin/sh -c script`.
fn pod_yaml(name: &str, script: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "name: {name}\nnetwork: none\napps:\n  - name: app\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, {script}]\n"
    )
}

const SCRIPT: &str = r#"
set -u
export POD_DIR=/var/lib/pod-e2e POD_CONFIG=/run/pod-e2e-config
mkdir -p "$POD_DIR" "$POD_CONFIG"
mount -t tmpfs -o mode=0700 pod-e2e "$POD_DIR"
POD=$(cat pod-bin)
STEPS=""
t() { n=$1; shift; STEPS="$STEPS $n"; "$@" > "$n.out" 2> "$n.err"; echo $? > "$n.rc"; }
# Waits (up to 60 s) until `pod status NAME` says STATE.
until_state() { i=0; while [ $i -lt 120 ]; do
  "$POD" status "$1" --format json 2>/dev/null | grep -q "\"state\": *\"$2\"" && return 0; sleep 0.5; i=$((i+1)); done; return 1; }
# The machine name of pod NAME with uuid U: NAME-<first 8 of U>.
mname() { echo "$1-$(echo "$2" | tr -d - | cut -c1-8)"; }

t trust "$POD" trust add --prefix example.com/ "$(cat key-path)"
t fetch "$POD" fetch "$(cat image-path)"

# 1. A running pod: its scope, its machine; then machinectl terminate.
t run1 timeout 300 "$POD" run -d --net none sleeper.yaml
U=$(cat run1.out); M=$(mname sleeper "$U"); echo "$U $M" > ids1
t up1 until_state sleeper running
t show1 systemctl show "pod-$U.scope" -p ActiveState -p Slice -p ControlGroup -p Delegate -p Description
t status1 systemctl status --no-pager --lines=0 "pod-$U.scope"
t procs1 sh -c "for f in \$(find /sys/fs/cgroup/machine.slice/pod-$U.scope -name cgroup.procs); do \
  for p in \$(cat \$f); do echo \"\${f%/cgroup.procs} \$(cat /proc/\$p/comm)\"; done; done"
t list1 machinectl list --no-pager --no-legend
t mshow1 machinectl show "$M" -p Class -p Leader -p Unit -p Service -p RootDirectory
t leader1 sh -c "cat /proc/\$(machinectl show -p Leader --value $M)/comm"
t terminate1 machinectl terminate "$M"
t down1 until_state sleeper exited
t pstatus1 "$POD" status sleeper --format json
t unit_after1 systemctl show "pod-$U.scope" -p LoadState -p ActiveState
t list_after1 machinectl list --no-pager --no-legend

# 2. machinectl poweroff: SIGRTMIN+4 to pod-init, a graceful stop.
t run2 timeout 300 "$POD" run -d --net none trapper.yaml
U2=$(cat run2.out); M2=$(mname trapper "$U2"); echo "$U2 $M2" > ids2
t up2 until_state trapper running
sleep 2
t poweroff2 machinectl poweroff "$M2"
t down2 until_state trapper exited
t pstatus2 "$POD" status trapper --format json
t logs2 "$POD" logs trapper

# 3. pod stop, then pod gc: nothing left behind.
t run3 timeout 300 "$POD" run -d --net none stopped.yaml
U3=$(cat run3.out); echo "$U3" > ids3
t up3 until_state stopped running
t scope3 systemctl is-active "pod-$U3.scope"
t stop3 timeout 120 "$POD" stop --timeout 5 stopped

# 4. POD_CGROUP_MANAGER=cgroupfs: no scope, no machine; a typo is refused.
t run4 env POD_CGROUP_MANAGER=cgroupfs timeout 300 "$POD" run -d --net none plain.yaml
U4=$(cat run4.out); echo "$U4" > ids4
t up4 until_state plain running
t ls4 sh -c "ls -d /sys/fs/cgroup/pod/$U4/app || { find /sys/fs/cgroup -name '*$U4*'; \"$POD\" status plain --format json; \
  find \"$POD_DIR\" -name stage1.log -path '*$U4*' -exec cat {} +; find \"$POD_DIR\" -name systemd-scope; \
  for p in \$(pgrep -f pod-stage1-ns); do echo \$p; tr '\\0' ' ' < /proc/\$p/environ; cat /proc/\$p/cmdline /proc/\$p/cgroup; done; exit 1; }"
t unit4 systemctl is-active "pod-$U4.scope"
t list4 machinectl list --no-pager --no-legend
t stop4 timeout 120 "$POD" stop --timeout 5 plain
t bad4 env POD_CGROUP_MANAGER=nonsense timeout 300 "$POD" run --net none plain.yaml

# 5. A VM pod: a machine of class vm led by the monitor, qemu in its scope.
t run5 timeout 300 "$POD" run -d --accel tcg vmpod.yaml
U5=$(cat run5.out); M5=$(mname vmpod "$U5"); echo "$U5 $M5" > ids5
t reg5 sh -c "i=0; until machinectl show '$M5' >/dev/null 2>&1; do i=\$((i+1)); [ \$i -gt 150 ] && exit 1; sleep 0.2; done"
t mshow5 machinectl show "$M5" -p Class -p Unit -p Service
t leader5 sh -c "cat /proc/\$(machinectl show -p Leader --value $M5)/comm"
t procs5 sh -c "for f in \$(find /sys/fs/cgroup/machine.slice/pod-$U5.scope -name cgroup.procs); do \
  for p in \$(cat \$f); do cat /proc/\$p/comm; done; done"
t terminate5 machinectl terminate "$M5"
t down5 sh -c "i=0; while \"$POD\" status vmpod --format json | grep -q '\"state\": *\"running\"'; do \
  i=\$((i+1)); [ \$i -gt 120 ] && exit 1; sleep 0.5; done"
t unit_after5 systemctl is-active "pod-$U5.scope"

t gc "$POD" gc
t units_left systemctl list-units --all --no-pager --no-legend 'pod-*.scope'
t machines_left machinectl list --no-pager --no-legend
t cgroups_left find /sys/fs/cgroup/machine.slice /sys/fs/cgroup/pod -mindepth 1 -maxdepth 1 -type d
echo "$STEPS" > steps
"#;

#[derive(Debug)]
struct Step {
    name: String,
    rc: i32,
    out: String,
    err: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: exit {}\n--- stdout\n{}\n--- stderr\n{}", self.name, self.rc, self.out, self.err)
    }
}

/// `key=value` lines (systemctl show, machinectl show).
fn props(s: &str) -> BTreeMap<String, String> {
    s.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

// One boot for everything: under TCG the guest's boot is the costly part.
#[test]
fn pods_are_scopes_and_machines_under_a_real_systemd() {
    if let Some(why) = skip_reason_sdguest().or_else(|| skip_reason(false)) {
        eprintln!("SKIP: {why}");
        return;
    }
    let image = example_image(Example::Busybox);
    let spec = GuestSpec::new(SCRIPT)
        .file("pod-bin", p(&pod_bin()))
        .file("key-path", p(&e2e_key().public))
        .file("image-path", p(&image))
        .file("sleeper.yaml", pod_yaml("sleeper", "exec sleep 1000"))
        .file(
            "trapper.yaml",
            pod_yaml("trapper", "trap 'echo got SIGTERM; exit 3' TERM; echo trap set; while :; do sleep 0.2; done"),
        )
        .file("stopped.yaml", pod_yaml("stopped", "exec sleep 1000"))
        .file("plain.yaml", pod_yaml("plain", "exec sleep 1000"))
        .file(
            "vmpod.yaml",
            pod_yaml("vmpod", "exec sleep 1000").replace("network: none\n", "network: none\nisolation: vm\n"),
        );
    let mut guest = Guest::boot(&spec);
    let run = guest.wait();
    assert_eq!(run.rc, 0, "the guest script failed:\n{}\n{}", run.log, guest.console());
    let steps: BTreeMap<String, Step> = guest
        .read("steps")
        .split_whitespace()
        .map(|n| {
            let rc = guest.read(&format!("{n}.rc")).trim().parse().unwrap_or(-1);
            let step = Step {
                name: n.to_owned(),
                rc,
                out: guest.read(&format!("{n}.out")),
                err: guest.read(&format!("{n}.err")),
            };
            (n.to_owned(), step)
        })
        .collect();
    let step = |n: &str| steps.get(n).unwrap_or_else(|| panic!("no step {n} ran:\n{}\n{}", run.log, guest.console()));
    let ok = |n: &str| {
        let s = step(n);
        assert_eq!(s.rc, 0, "{s}\n{}", guest.console());
        s
    };
    ok("trust");
    ok("fetch");

    // 1. The pod's scope: active, in machine.slice, delegated, holding
    // pod-init (in its init.scope leaf) and the app (in its own).
    let ids = guest.read("ids1");
    let (uuid, machine) = ids.trim().split_once(' ').unwrap();
    assert!(is_uuid(uuid), "pod run -d printed {:?}", ok("run1").out);
    ok("up1");
    let show = props(&ok("show1").out);
    assert_eq!(show["ActiveState"], "active", "{}", step("show1"));
    assert_eq!(show["Slice"], "machine.slice", "{}", step("show1"));
    assert_eq!(show["Delegate"], "yes", "{}", step("show1"));
    let scope_cg = format!("/machine.slice/pod-{uuid}.scope");
    assert_eq!(show["ControlGroup"], scope_cg, "{}", step("show1"));
    assert_mentions(&show["Description"], &["sleeper", uuid]);
    assert_mentions(&ok("status1").out, &[&format!("pod-{uuid}.scope"), "active (running)"]);
    let procs = ok("procs1").out.clone();
    let in_leaf =
        |leaf: &str, comm: &str| procs.lines().any(|l| l == format!("/sys/fs/cgroup{scope_cg}/{leaf} {comm}"));
    assert!(in_leaf("init.scope", "pod-init"), "pod-init not in the scope's init.scope:\n{procs}");
    assert!(in_leaf("app", "sleep"), "the app not in the scope's app leaf:\n{procs}");
    assert!(
        !procs.lines().any(|l| l.starts_with(&format!("/sys/fs/cgroup{scope_cg} "))),
        "a process in the scope's own cgroup:\n{procs}"
    );

    // Its machine: listed, class container, pod-init leads, the scope is its unit.
    let list = ok("list1").out.clone();
    assert!(list.lines().any(|l| l.split_whitespace().take(2).eq([machine, "container"])), "machinectl list:\n{list}");
    let m = props(&ok("mshow1").out);
    assert_eq!(m["Class"], "container", "{}", step("mshow1"));
    assert_eq!(m["Service"], "pod", "{}", step("mshow1"));
    assert_eq!(m["Unit"], format!("pod-{uuid}.scope"), "{}", step("mshow1"));
    assert_eq!(ok("leader1").out.trim(), "pod-init", "the machine's leader");

    // machinectl terminate: the pod ends, its app's exit is recorded, and
    // neither unit nor machine stays.
    ok("terminate1");
    ok("down1");
    let st: serde_json::Value = serde_json::from_str(&ok("pstatus1").out).unwrap();
    assert_eq!(st["state"], "exited", "{st}");
    let app = &st["apps"][0];
    // systemd's SIGTERM reached the app (and pod-init, which stops the
    // rest): "stopped", or "failed" when the signal beat pod-init's request.
    assert!(app["state"] == "stopped" || app["state"] == "failed", "{st}");
    assert_eq!((&app["signal"], &app["exitCode"]), (&15.into(), &143.into()), "{st}");
    let after = props(&ok("unit_after1").out);
    assert!(
        after.get("LoadState").map(String::as_str) == Some("not-found") || after["ActiveState"] == "inactive",
        "{}",
        step("unit_after1")
    );
    assert!(!ok("list_after1").out.contains(machine), "{}", step("list_after1"));

    // 2. machinectl poweroff: the app's SIGTERM trap ran.
    ok("up2");
    ok("poweroff2");
    ok("down2");
    let logs = ok("logs2").out.clone();
    assert_mentions(&logs, &["trap set", "got SIGTERM"]);
    let st: serde_json::Value = serde_json::from_str(&ok("pstatus2").out).unwrap();
    assert_eq!(st["apps"][0]["exitCode"], 3, "the trap's exit code: {st}");

    // 3. pod stop then gc; 4. cgroupfs forced.
    ok("up3");
    assert_eq!(ok("scope3").out.trim(), "active");
    ok("stop3");
    ok("up4");
    ok("ls4");
    assert_ne!(step("unit4").rc, 0, "a cgroupfs pod has a scope: {}", step("unit4"));
    assert!(!ok("list4").out.contains("plain-"), "a cgroupfs pod is a machine: {}", step("list4"));
    ok("stop4");
    let bad = step("bad4");
    assert_eq!(bad.rc, 2, "{bad}");
    assert_mentions(&bad.err, &["POD_CGROUP_MANAGER", "nonsense"]);

    // 5. The VM pod: class vm, led by its monitor, qemu in the scope;
    // terminate ends it.
    let ids5 = guest.read("ids5");
    let (uuid5, machine5) = ids5.trim().split_once(' ').unwrap();
    ok("reg5");
    let m = props(&ok("mshow5").out);
    assert_eq!(m["Class"], "vm", "{}", step("mshow5"));
    assert_eq!(m["Unit"], format!("pod-{uuid5}.scope"), "{}", step("mshow5"));
    assert_eq!(ok("leader5").out.trim(), "pod-stage1-vm", "the VM machine's leader");
    let procs = ok("procs5").out.clone();
    assert!(procs.lines().any(|l| l.starts_with("qemu")), "qemu is in the scope:\n{procs}");
    ok("terminate5");
    ok("down5");
    assert_ne!(step("unit_after5").out.trim(), "active", "{machine5}'s scope is still active");

    // Nothing left: no pod unit, no machine, no pod cgroup.
    ok("gc");
    assert_eq!(ok("units_left").out.trim(), "", "units left");
    assert_eq!(ok("machines_left").out.trim(), "", "machines left");
    let left = &step("cgroups_left").out;
    assert!(!left.lines().any(|l| l.contains("pod-") || l.contains("/pod/")), "cgroups left:\n{left}");
}
