//! VM pods (`isolation: vm`, stage1-vm): the same signed images and pod
//! files run inside a qemu virtual machine whose PID 1 is pod-init. Under
//! TCG on hosts without hardware virtualisation (this one), KVM elsewhere.
//! The guest's network is qemu's user-mode networking, restricted for
//! `network: none` (only the host forwards come in, nothing goes out), so
//! no test traffic leaves loopback. Every test shares one cached vmlinux and
//! initramfs (under /var/cache/pod). Needs root, qemu and the guest kernel
//! that scripts/install-deps.sh installs; reports a skip without them.
//!
//! What a VM pod could leave on the host is a qemu process, its sockets and
//! the monitor's mounts (which live in a mount namespace of its own): the
//! tests count those. Cgroups, links and netns are not a VM pod's, and other
//! engines on a shared host change them, so they are not compared here.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

/// Booting the guest under TCG takes seconds; python and redis in it more.
const UP_WITHIN: Duration = Duration::from_secs(240);
const RUN_LIMIT: Duration = Duration::from_secs(240);

macro_rules! skip_unless_vms {
    () => {
        if let Some(why) = skip_reason_vm() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// Whether this host's CPU offers hardware virtualisation (KVM can boot).
fn hardware_virt() -> bool {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// `manifests/web-db.yaml` as shipped, made a VM pod on host port `port`.
fn web_db_vm(live: &Live, port: u16) -> std::path::PathBuf {
    let example = fs::read_to_string(workspace().join("manifests/web-db.yaml")).unwrap();
    let yaml: String = example
        .lines()
        .map(|l| {
            if l.starts_with("isolation:") {
                "isolation: vm".to_owned()
            } else {
                l.replace("host: 8080", &format!("host: {port}, hostIP: 127.0.0.1"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(yaml.contains("isolation: vm") && yaml.contains(&format!("host: {port}")), "web-db.yaml changed:\n{yaml}");
    live.pod_file("web-db-vm", &(yaml + "\n"))
}

#[test]
fn web_db_in_a_vm_counts_visits_enters_stops_and_leaves_nothing() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Redis, Example::Web]);
    let before = HostState::take(&[]);
    let port = free_port();
    let file = web_db_vm(&live, port);
    // network none: the guest's user-mode network is restricted to the host
    // forward of web's port; nothing leaves the machine.
    let args = ["run", "-d", "--net", "none", p(&file)];
    let out = live.run_within(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", describe(&args, &out));
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(is_uuid(&uuid), "{}", describe(&args, &out));
    let qemu = processes_with_arg(&format!("pod-{uuid}"));
    assert_eq!(qemu.len(), 1, "one qemu for the pod: {qemu:?}");

    // The counter answers through the host port and counts: state in redis,
    // web reaching it on the guest's 127.0.0.1.
    http_answering(port, UP_WITHIN);
    assert_eq!(http_get_ok(port, UP_WITHIN), "visits: 1\n");
    assert_eq!(http_get(port), Ok((200, "visits: 2\n".into())));

    let entry = live.listed(&uuid).unwrap();
    let isolation = entry["isolation"].as_str().unwrap_or_default();
    let expected = if hardware_virt() { "vm/kvm" } else { "vm/tcg" };
    assert_eq!(isolation, expected, "pod list shows the isolation and accelerator: {entry}");
    assert_eq!(live.app_status(&uuid, "db")["state"], "ready");

    // pod enter runs a command in an app through the guest channel.
    let out = live.run_within(&["enter", "--app", "db", &uuid, "redis-cli", "get", "visits"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&["enter"], &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let exit7 = ["enter", "--app", "web", &uuid, "python3", "-c", "raise SystemExit(7)"];
    let out = live.run_within(&exit7, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&["enter"], &out));
    // network none: the guest's NIC (port forwards, the metadata service)
    // has no route beyond its subnet, so a connection out fails in the
    // guest's kernel (ENETUNREACH) and sends nothing.
    let probe = "import socket,errno\ns=socket.socket()\ns.settimeout(5)\ntry:\n s.connect(('192.0.2.1',80))\nexcept OSError as e:\n print(errno.errorcode.get(e.errno,e))";
    let out = live.run_within(&["enter", "--app", "web", &uuid, "python3", "-c", probe], Duration::from_secs(60));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ENETUNREACH", "{}", describe(&["enter"], &out));

    // pod stats: the VM is one row, its RAM the limit, qemu's threads.
    let out = live.run_within(&["stats", "--no-stream", "--format", "json", &uuid], Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&["stats"], &out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = &rows[0];
    assert_eq!((rows.as_array().map(Vec::len), &vm["app"]), (Some(1), &serde_json::json!("vm")), "{rows}");
    let (usage, limit) = (vm["memUsage"].as_u64().unwrap(), vm["memLimit"].as_u64().unwrap());
    assert!(usage > 32 << 20 && limit >= 128 << 20, "qemu's resident memory and the guest's RAM: {rows}");
    assert!(vm["cpuPercent"].is_f64() && vm["pids"].as_u64().unwrap() > 1, "{rows}");

    // Stop: the guest stops its apps (SIGTERM) within the grace period.
    let started = Instant::now();
    let out = live.run_within(&["stop", &uuid], Duration::from_secs(120));
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(25), "stop took {took:?} (stopTimeout 10s)");
    let st = live.status(&uuid);
    assert_eq!(st["state"], "exited", "{st}");
    for app in ["db", "web"] {
        let a = live.app_status(&uuid, app);
        assert!(a["signal"] == 15 || a["exitCode"] == 0, "{app} ended by the stop: {a}");
    }
    assert!(processes_with_arg(&format!("pod-{uuid}")).is_empty(), "qemu outlived the pod");

    live.ok(&["gc"]);
    assert!(live.listed(&uuid).is_none(), "gc removed the pod");
    assert_eq!(HostState::take(&[]).mounts, before.mounts, "the host's mounts are as before the pod");
}

#[test]
fn a_vm_pod_exits_with_its_apps_status_and_streams_their_output() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file(
        "codes",
        "name: codes\nisolation: vm\nnetwork: none\napps:\n\
         - name: fine\n  image: example.com/busybox:1.35\n  exec: [/bin/sh, -c, \"echo fine says hi from $(hostname)\"]\n\
         - name: five\n  image: example.com/busybox:1.35\n  exec: [/bin/sh, -c, \"echo five says bye; exit 5\"]\n  after: [fine]\n",
    );
    let out = live.run_within(&["run", p(&file)], RUN_LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&["run"], &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[fine] fine says hi from codes"), "{}", describe(&["run"], &out));
    assert!(stdout.contains("[five] five says bye"), "{}", describe(&["run"], &out));
    let uuid = live.pods().first().and_then(|e| e["uuid"].as_str().map(str::to_owned)).unwrap();
    assert_eq!(live.app_status(&uuid, "five")["exitCode"], 5);
    assert!(processes_with_arg(&format!("pod-{uuid}")).is_empty(), "qemu outlived the pod");
}

/// Each app's limits hold inside the VM, as in a namespace pod (and as
/// Kata's agent gives each container a cgroup in its guest): pod-init
/// makes the app a cgroup of the guest's with them, which the app sees as
/// its /sys/fs/cgroup. The VM has room for both apps' 64 MiB; only the one
/// limited to 32 MiB is OOM-killed, and status says so.
#[test]
fn each_app_of_a_vm_pod_is_held_to_its_own_limits() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo $0 holds ${#x} bytes";
    let small = format!("echo $(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max); {hog}");
    let (small, large) = (serde_json::to_string(&small).unwrap(), serde_json::to_string(hog).unwrap());
    let file = live.pod_file(
        "limits",
        &format!(
            "name: limits\nisolation: vm\nnetwork: none\napps:\n\
             - name: small\n  image: example.com/busybox:1.35\n  resources: {{ memory: 32Mi, pids: 64, cpu: 500m }}\n  \
             exec: [/bin/sh, -c, {small}, small]\n\
             - name: large\n  image: example.com/busybox:1.35\n  resources: {{ memory: 256Mi }}\n  \
             exec: [/bin/sh, -c, {large}, large]\n"
        ),
    );
    let out = live.run_within(&["run", p(&file)], RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(137), "{}", describe(&["run"], &out));
    assert!(stdout.contains("[small] 33554432 64 50000 100000"), "the app's own cgroup: {}", describe(&["run"], &out));
    assert!(!stdout.contains("small holds"), "the small app got its memory: {}", describe(&["run"], &out));
    assert!(stdout.contains("[large] large holds 67108864 bytes"), "{}", describe(&["run"], &out));
    let uuid = live.pods().first().and_then(|e| e["uuid"].as_str().map(str::to_owned)).unwrap();
    let small = live.app_status(&uuid, "small");
    assert_eq!(small["signal"], 9, "{small}");
    assert!(small["oomKills"].as_u64().unwrap_or(0) >= 1, "{small}");
    assert!(small["message"].as_str().unwrap_or("").contains("OOM"), "{small}");
    assert_eq!(live.app_status(&uuid, "large")["exitCode"], 0);
}

#[test]
fn forcing_kvm_where_it_cannot_boot_fails_fast_and_clearly() {
    skip_unless_vms!();
    if hardware_virt() {
        eprintln!("SKIP: this host has hardware virtualisation: KVM works here, nothing to refuse");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file(
        "kvm",
        "name: kvm\nisolation: vm\naccel: kvm\nnetwork: none\napps:\n\
         - name: t\n  image: example.com/busybox:1.35\n  exec: [/bin/busybox, \"true\"]\n",
    );
    let started = Instant::now();
    let out = live.run_within(&["run", p(&file)], Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&["run"], &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(&stderr, &["kvm", "vmx/svm", "--accel tcg"]);
    assert!(took < Duration::from_secs(30), "refusing kvm took {took:?}");
    let uuid = live.pods().first().and_then(|e| e["uuid"].as_str().map(str::to_owned)).unwrap();
    assert!(processes_with_arg(&format!("pod-{uuid}")).is_empty(), "no qemu was started");
    // The command-line flag overrides the file, both ways.
    let tcg = live.run_within(&["run", "--accel", "tcg", p(&file)], RUN_LIMIT);
    assert!(tcg.status.success(), "{}", describe(&["run", "--accel", "tcg"], &tcg));
}

/// Starts a VM pod whose one app sleeps; returns its uuid and directory.
fn start_sleeper(live: &Live) -> (String, std::path::PathBuf) {
    let file = live.pod_file(
        "sleeper",
        "name: sleeper\nisolation: vm\nnetwork: none\napps:\n\
         - name: s\n  image: example.com/busybox:1.35\n  exec: [/bin/busybox, sleep, \"600\"]\n",
    );
    let uuid = live.start(&file);
    let dir = live.data.join("pods").join("run").join(&uuid);
    (uuid, dir)
}

#[test]
fn kill_9_of_the_vm_monitor_takes_qemu_along_and_gc_leaves_nothing() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    let before = HostState::take(&[]);
    let (uuid, dir) = start_sleeper(&live);
    let monitor: i32 = fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    assert_eq!(processes_with_arg(&format!("pod-{uuid}")).len(), 1, "qemu runs");
    let ctl = dir.join("vm").join("ctl.sock");
    assert!(wait_for(Duration::from_secs(20), || ctl.exists()), "qemu listens on the control socket");

    let killed = std::process::Command::new("kill").args(["-KILL", &monitor.to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(
        wait_for(Duration::from_secs(10), || processes_with_arg(&format!("pod-{uuid}")).is_empty()),
        "qemu outlived its monitor"
    );
    let entry = live.listed(&uuid).unwrap();
    assert_eq!(entry["state"], "exited", "a pod whose monitor died is exited: {entry}");

    live.ok(&["gc"]);
    assert!(live.listed(&uuid).is_none(), "gc removed the pod");
    assert!(!dir.exists(), "gc removed the pod directory and its sockets");
    assert_eq!(HostState::take(&[]).mounts, before.mounts, "the host's mounts are as before the pod");
}

// qemu itself killed (the equivalent of a guest crash, or the OOM killer's
// pick): the monitor notices, the pod is exited and not reported as still
// running; gc leaves no qemu, socket, mount or pod directory.
#[test]
fn kill_9_of_qemu_ends_the_pod_and_gc_leaves_nothing() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    let before = HostState::take(&[]);
    let (uuid, dir) = start_sleeper(&live);
    live.wait_all_up(&uuid, UP_WITHIN);
    let monitor: i32 = fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    let qemu = processes_with_arg(&format!("pod-{uuid}"));
    assert_eq!(qemu.len(), 1, "one qemu for the pod: {qemu:?}");

    let killed = std::process::Command::new("kill").args(["-KILL", &qemu[0].to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(
        wait_for(Duration::from_secs(20), || live.listed(&uuid).is_some_and(|e| e["state"] == "exited")),
        "the pod is not exited after qemu was killed: {:?}",
        live.listed(&uuid)
    );
    let gone = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    };
    assert!(
        wait_for(Duration::from_secs(10), || gone(monitor)),
        "the monitor outlived qemu: {:?}",
        fs::read_to_string(format!("/proc/{monitor}/stat"))
    );
    let st = live.status(&uuid);
    assert_ne!(st["exitCode"], 0, "a pod whose VM died did not succeed: {st}");
    let app = live.app_status(&uuid, "s");
    assert_ne!(app["state"], "running", "an app of a dead VM is not running: {st}");
    assert_ne!(app["state"], "ready", "an app of a dead VM is not ready: {st}");

    live.ok(&["gc"]);
    assert!(live.listed(&uuid).is_none(), "gc removed the pod");
    assert!(!dir.exists(), "gc removed the pod directory and its sockets");
    assert!(processes_with_arg(&format!("pod-{uuid}")).is_empty(), "no qemu left");
    let root = live.root().to_string_lossy().into_owned();
    let mentioning: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmdline =
                String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned();
            // The metadata service `pod run` started is the host's, not the pod's.
            cmdline.contains(&root) && !cmdline.split('\0').next().is_some_and(|a| a.ends_with("/pod-metadata"))
        })
        .collect();
    assert!(mentioning.is_empty(), "processes of the pod left: {mentioning:?}");
    assert_eq!(HostState::take(&[]).mounts, before.mounts, "the host's mounts are as before the pod");
    eprintln!("kill -9 of qemu: monitor noticed, pod exited ({}), gc left nothing", st["exitCode"]);
}
