//! Crashes and concurrency. Every kill -9 a `pod` process or a pod can
//! suffer, at every step that leaves something on disk or on the host, then
//! `pod gc`: the host must be as it was (mounts, cgroups, netns pins, veths,
//! iptables rules, processes, the store's temp dirs, pod dirs) and every
//! store entry must pass `pod image verify`. And 20 `pod fetch`es or `pod
//! run`s of one image at once: all succeed, with one store entry.
//!
//! stage0's steps are reached deterministically: debug builds of `pod` die
//! by SIGKILL at the step named by `POD_TEST_KILL_AT` (the list is
//! `STEPS` in stage0/src/crashpoint.rs, read from the source here so that a
//! new step is tested at once). stage1 and the pod's PID 1 are killed from
//! outside, as an operator or the OOM killer would. VM pods: see vm.rs.
//!
//! The tests of this binary take turns (one lock), so that each one's host
//! snapshots see only its own pods; what other users of the host change
//! meanwhile is told apart from the pods' own by their uuids and paths.
//! Needs root and the CNI plugins; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use host::*;

#[path = "crash/host.rs"]
mod host;
#[path = "crash/races.rs"]
mod races;

/// One test at a time: each compares the host before and after its pods.
fn serial() -> MutexGuard<'static, ()> {
    static HOST: Mutex<()> = Mutex::new(());
    HOST.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// A kill -9 of the monitor takes the pod down with it (the pod's PID 1
// dies through PR_SET_PDEATHSIG; the lock was the monitor's
// alone), so the pod reads as exited and `pod gc` restores the host.
#[test]
fn killing_stage1_then_gc_leaves_the_host_as_it_was() {
    let _turn = serial();
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[Example::Redis, Example::Web]);
    let bridge = live.net.as_ref().unwrap().bridge.clone();
    // The test's bridge appears with its first pod and stays (the bridge
    // plugin never deletes bridges; the Live guard does): not a leftover.
    let before = HostState::take(&[&bridge]);

    let port = free_port();
    let uuid = live.start(&live.web_db_file("web-db", port));
    assert_eq!(http_get_ok(port, Duration::from_secs(60)), "visits: 1\n");

    // The pod's footprint on the host: what appeared with it and is its own
    // (named by its uuid or kept under its temp dir, or an iptables chain
    // its rules jump to). Other pods on this host may come and go meanwhile.
    let during = HostState::take(&[&bridge]);
    let root = live.root().to_string_lossy().into_owned();
    let chains: Vec<String> = iptables_mentioning(&uuid)
        .iter()
        .flat_map(|l| l.split_whitespace().skip_while(|w| *w != "-j").nth(1).map(str::to_owned))
        .filter(|c| c.starts_with("CNI-") && !c.starts_with("CNI-HOSTPORT-"))
        .collect();
    let ours = |e: &str| e.contains(&uuid) || e.contains(&root) || chains.iter().any(|c| e.contains(c.as_str()));
    let existed = before.entries();
    let footprint: Vec<String> = during.entries().into_iter().filter(|e| ours(e) && !existed.contains(e)).collect();
    for kind in ["mount ", "cgroup ", "netns ", "iptables "] {
        assert!(footprint.iter().any(|e| e.starts_with(kind)), "no {kind}of the pod seen: {footprint:#?}");
    }
    assert!(!links_on(&bridge).is_empty(), "no veth on {bridge}");

    let pod_dir = live.data.join("pods/run").join(&uuid);
    let init_pid: u32 = fs::read_to_string(pod_dir.join("pid")).unwrap().trim().parse().unwrap();
    let init = proc_of(init_pid).unwrap();
    // The pod's PID 1 is forked by the monitor itself: one host process
    // per pod besides pod-init.
    let monitor = proc_of(init.ppid).unwrap();
    assert!(
        monitor.cmdline.contains("pod-stage1-ns") && monitor.cmdline.contains(&uuid),
        "the parent of the pod's PID 1 is not its stage1: {monitor:?}"
    );
    assert!(
        proc_of(monitor.ppid).is_none_or(|p| !p.cmdline.contains(&uuid)),
        "the pod's stage1 runs in more than one host process: {monitor:?}"
    );
    let pod_procs = tree(init_pid);
    assert!(pod_procs.len() >= 3, "pod-init, redis and python expected: {pod_procs:#?}");

    let killed = Command::new("kill").args(["-KILL", &monitor.pid.to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(wait_for(Duration::from_secs(10), || !alive(&monitor)), "stage1 survived SIGKILL");

    let out = live.run_within(&["gc"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&["gc"], &out));

    let survivors: Vec<&Proc> = pod_procs.iter().filter(|p| alive(p)).collect();
    assert!(
        survivors.is_empty(),
        "the pod's processes outlived its killed stage1 and `pod gc`: {survivors:#?}\n\
         pod-init's fds into the pod dir (the pod lock): {:?}\npod list: {:?}",
        fds_into(init_pid, &pod_dir),
        live.pods()
    );
    assert!(live.listed(&uuid).is_none(), "pod gc left the pod: {:?}", live.pods());
    assert!(refused(port), "127.0.0.1:{port} still accepts connections");
    let after = HostState::take(&[&bridge]);
    let now = after.entries();
    let left: Vec<&String> = footprint.iter().filter(|e| now.contains(e)).collect();
    assert!(left.is_empty(), "left behind by the pod: {left:#?}");
    assert_eq!(links_on(&bridge), Vec::<String>::new(), "veths left on {bridge}");
    // Anything else that changed was done by others on this host; shown for
    // whoever reads a failure.
    let diff = after.diff(&before);
    if !diff.is_empty() {
        eprintln!("host changes not attributed to the pod:\n{diff}");
    }
}

// Kill points in stage0.

/// `STEPS` in stage0/src/crashpoint.rs, read from the source.
fn kill_points() -> Vec<String> {
    let src = include_str!("../../stage0/src/crashpoint.rs");
    let start = src.find("pub const STEPS").expect("STEPS in stage0/src/crashpoint.rs");
    let body = &src[start..];
    let body = &body[body.find("= &[").unwrap()..body.find("];").unwrap()];
    let steps: Vec<String> = body.split('"').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(steps.len() >= 10, "could not read STEPS from crashpoint.rs: {steps:?}");
    steps
}

/// What reaches a kill point, and what it needs in place first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `pod fetch` of busybox into a store without it (nor its tree).
    Fetch,
    /// `pod run` of a one-app pod (with a volume, on the test network).
    Run,
    /// The same in a VM.
    RunVm,
    /// `pod gc` with an exited pod to collect.
    Gc,
    /// `pod image rm` of the stored busybox.
    ImageRm,
    /// `pod image build` of a small directory recipe, its scratch dir in
    /// the environment's own `TMPDIR`.
    Build,
    /// `pod fetch` of a two-layer OCI image (busybox + a file) from an OCI
    /// layout, into a store without it, its blobs or its layers.
    OciFetch,
}

fn scenario(step: &str) -> Scenario {
    match step.split('.').next().unwrap_or_default() {
        "fetch" | "store" | "render" => Scenario::Fetch,
        "prepare" | "run" | "stage1-ns" => Scenario::Run,
        "stage1-vm" => Scenario::RunVm,
        "gc" => Scenario::Gc,
        "image" => Scenario::ImageRm,
        "build" => Scenario::Build,
        "oci" => Scenario::OciFetch,
        _ => panic!("crash.rs cannot reach kill point {step:?}: give it a Scenario"),
    }
}

const BUSYBOX: &str = "example.com/busybox:1.35";

/// A pod of one busybox app that echoes and exits, with an empty volume.
fn echo_pod(live: &Live, isolation: &str) -> PathBuf {
    let net = live.net.as_ref().map_or("none", |n| n.name.as_str());
    let net = if isolation == "vm" { "none" } else { net };
    live.pod_file(
        &format!("echo-{isolation}"),
        &format!(
            "name: echo\nisolation: {isolation}\nnetwork: {net}\napps:\n\
             - name: a\n  image: {BUSYBOX}\n  exec: [/bin/sh, -c, \"echo crash-test\"]\n  \
             mounts: [{{ volume: v, path: /v }}]\nvolumes:\n- {{ name: v, kind: empty }}\n"
        ),
    )
}

fn ensure_image(live: &Live, aci: &Path) {
    if live.image_dirs().is_empty() {
        live.ok(&["fetch", p(aci)]);
    }
}

/// Sets up what `scenario` needs; returns the command that reaches its steps.
fn arrange(live: &Live, s: Scenario, aci: &Path, pod_file: &Path) -> Vec<String> {
    match s {
        Scenario::Fetch => {
            if !live.image_dirs().is_empty() {
                live.ok(&["image", "rm", BUSYBOX]);
            }
            // Drops the tree too, so that the fetch renders it again.
            live.ok(&["image", "gc"]);
            assert!(live.image_dirs().is_empty() && live.trees().is_empty(), "a store without busybox");
            vec!["fetch".into(), p(aci).into()]
        }
        Scenario::Run | Scenario::RunVm => {
            ensure_image(live, aci);
            vec!["run".into(), p(pod_file).into()]
        }
        Scenario::Gc => {
            ensure_image(live, aci);
            let out = live.run_within(&["run", p(pod_file)], Duration::from_secs(120));
            assert!(out.status.success(), "{}", describe(&["run"], &out));
            assert_eq!(pod_uuids(live).len(), 1, "an exited pod to collect");
            vec!["gc".into()]
        }
        Scenario::ImageRm => {
            ensure_image(live, aci);
            vec!["image".into(), "rm".into(), BUSYBOX.into()]
        }
        Scenario::Build => {
            let b = Build::of(live);
            let _ = fs::remove_file(&b.out);
            b.args()
        }
        Scenario::OciFetch => {
            for dir in live.image_dirs() {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("sha256-") {
                    live.ok(&["image", "rm", &name]);
                }
            }
            live.ok(&["image", "gc"]);
            assert_eq!(fs::read_dir(live.data.join("layers")).map(Iterator::count).unwrap_or(0), 0, "no layers left");
            oci_fetch_args(live)
        }
    }
}

/// `pod fetch` of the OCI layout the `oci.*` steps pull (built once).
fn oci_fetch_args(live: &Live) -> Vec<String> {
    let layout = live.work.join("oci-layout");
    if !layout.join("index.json").is_file() {
        let img = OciImage::new(&layout, "v1").and_then(OciImage::busybox).expect("umoci (checked before)");
        img.layer(&[("crash.txt", b"crash\n")]);
    }
    ["fetch", "--insecure-options=image", &format!("oci:{}:v1", layout.display())].map(str::to_owned).to_vec()
}

/// A small image built from a directory, for the kill points of `pod image build`.
struct Build {
    recipe: PathBuf,
    out: PathBuf,
    /// `TMPDIR` of the builds: where their scratch dirs go.
    tmpdir: PathBuf,
}

impl Build {
    fn of(live: &Live) -> Self {
        let dir = live.work.join("tiny");
        let recipe = dir.join("recipe.yaml");
        if !recipe.is_file() {
            fs::create_dir_all(dir.join("files/etc")).unwrap();
            fs::write(dir.join("files/hello"), "hello\n").unwrap();
            fs::write(dir.join("files/etc/motd"), "tiny\n").unwrap();
            let yaml = "name: example.com/tiny\nlabels: { version: \"1\" }\napp: { exec: [/hello], user: \"0\", group: \"0\" }\n\
                        rootfs: { dir: files }\n";
            fs::write(&recipe, yaml).unwrap();
        }
        let tmpdir = live.work.join("build-tmp");
        fs::create_dir_all(&tmpdir).unwrap();
        Self { recipe, out: live.images.join("tiny.aci"), tmpdir }
    }

    fn args(&self) -> Vec<String> {
        let cache = self.tmpdir.with_file_name("deb-cache");
        ["image", "build", p(&self.recipe), "-o", p(&self.out), "--cache-dir", p(&cache)].map(str::to_owned).to_vec()
    }

    fn scratch(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.tmpdir).unwrap().flatten().map(|e| e.path()).collect()
    }
}

/// After the kill and `pod gc`: the normal command works again.
fn recover(live: &Live, s: Scenario, aci: &Path, pod_file: &Path, step: &str) {
    match s {
        Scenario::Build => {
            let b = Build::of(live);
            assert!(!b.out.exists(), "a build killed at {step} left a file under the output's name");
            let args = b.args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = live.cmd(&args);
            cmd.env("TMPDIR", &b.tmpdir);
            let out = output_within(cmd, Duration::from_secs(120), "image build");
            assert!(out.status.success(), "build after a kill at {step}: {}", describe(&args, &out));
            let left = b.scratch();
            assert!(left.is_empty(), "the next build did not remove the killed one's scratch dir: {left:?}");
            let mut tmp = b.out.clone().into_os_string();
            tmp.push(".tmp");
            assert!(!Path::new(&tmp).exists(), "OUT.tmp left after a build");
            live.ok(&["image", "sign", "--key", p(&e2e_key().secret), p(&b.out)]);
            let id = live.ok(&["fetch", p(&b.out)]);
            live.ok(&["image", "verify", &id]);
            live.ok(&["image", "rm", &id]);
        }
        Scenario::OciFetch => {
            let args = oci_fetch_args(live);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = live.run_within(&args, Duration::from_secs(120));
            assert!(out.status.success(), "OCI fetch after a kill at {step}: {}", describe(&args, &out));
            let oci = live
                .image_dirs()
                .iter()
                .filter(|d| d.file_name().unwrap().to_string_lossy().starts_with("sha256-"))
                .count();
            assert_eq!(oci, 1, "one OCI store entry after a kill at {step}");
        }
        Scenario::Fetch | Scenario::ImageRm => {
            let out = live.run_within(&["fetch", p(aci)], Duration::from_secs(120));
            assert!(out.status.success(), "fetch after a kill at {step}: {}", describe(&["fetch"], &out));
            assert_id(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(live.image_dirs().len(), 1, "one store entry after a kill at {step}");
        }
        Scenario::Run | Scenario::RunVm | Scenario::Gc => {
            let out = live.run_within(&["run", p(pod_file)], Duration::from_secs(120));
            assert!(out.status.success(), "run after a kill at {step}: {}", describe(&["run"], &out));
            assert!(String::from_utf8_lossy(&out.stdout).contains("[a] crash-test"), "{}", describe(&["run"], &out));
            gc_ok(live, step);
        }
    }
}

/// Runs `args` with `POD_TEST_KILL_AT=step`; asserts `pod` died of SIGKILL
/// there (so the step was reached: a missed step fails the test).
fn kill_at(live: &Live, step: &str, args: &[String], tmpdir: Option<&Path>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = live.cmd(&args);
    cmd.env("POD_TEST_KILL_AT", step);
    if let Some(t) = tmpdir {
        cmd.env("TMPDIR", t);
    }
    let out = output_within(cmd, Duration::from_secs(120), &args.join(" "));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "POD_TEST_KILL_AT={step}: `pod` was not killed there (step not reached?)\n{}",
        describe(&args, &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("POD_TEST_KILL_AT={step}")),
        "{}",
        describe(&args, &out)
    );
    out
}

fn vm_host_available() -> bool {
    let kernel = std::env::var("POD_GUEST_KERNEL").unwrap_or_else(|_| "/usr/lib/pod/guest/vmlinuz".into());
    Path::new(&kernel).is_file()
        && target_dir().join("debug/pod-stage1-vm").is_file()
        && Command::new("qemu-system-x86_64").arg("--version").output().is_ok()
}

// Every kill point of stage0, in order: `pod` dies there by SIGKILL, `pod
// gc` runs, and the host and the store are as before, every entry
// verifies, and the command then works.
#[test]
fn killing_pod_at_every_step_then_gc_restores_host_and_store() {
    let _turn = serial();
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let aci = example_image(Example::Busybox);
    let live = Live::with_net(&[Example::Busybox]);
    let ns_file = echo_pod(&live, "namespace");
    let vm_file = echo_pod(&live, "vm");
    let vms = vm_host_available();
    if !vms {
        eprintln!("SKIP (part): no VM host (guest kernel, qemu, pod-stage1-vm): the kill points of VM pods");
    }
    let mut cases: Vec<(String, &str)> = Vec::new();
    let umoci = need_tools(&["umoci"]);
    for step in kill_points() {
        if let (Scenario::OciFetch, Err(Skip(why))) = (scenario(&step), &umoci) {
            eprintln!("SKIP: kill point {step}: {why}");
            continue;
        }
        if scenario(&step) == Scenario::RunVm {
            if vms {
                cases.push((step, "vm"));
            }
            continue;
        }
        // The VM stage1's gc after a `pod run` killed before it started it.
        if vms && step.starts_with("run.") {
            cases.push((step.clone(), "vm"));
        }
        cases.push((step, "namespace"));
    }
    let started = Instant::now();
    for (step, isolation) in &cases {
        let t = Instant::now();
        let s = scenario(step);
        let file = if *isolation == "vm" { &vm_file } else { &ns_file };
        let args = arrange(&live, s, &aci, file);
        let footprint = Footprint::take(&live);
        let tmpdir = (s == Scenario::Build).then(|| Build::of(&live).tmpdir);
        kill_at(&live, step, &args, tmpdir.as_deref());
        if let Some(tmpdir) = &tmpdir {
            let scratch = fs::read_dir(tmpdir).unwrap().count();
            assert_eq!(scratch, 1, "{step}: the killed build's scratch dir is there for the next build to remove");
        }
        let uuids = pod_uuids(&live);
        // A monitor killed mid-setup leaves work for gc: check it is there.
        let expected: &[&str] = match step.as_str() {
            "stage1-ns.cgroups" => &["cgroup "],
            "stage1-ns.network" | "stage1-ns.running" => &["cgroup ", "netns ", "veth "],
            _ => &[],
        };
        let present = footprint.left(&uuids);
        for kind in expected {
            assert!(present.iter().any(|e| e.starts_with(kind)), "{step}: no {kind}left for gc: {present:#?}");
        }
        gc_ok(&live, step);
        let what = format!("after a kill at {step} ({isolation}) and pod gc");
        assert_store_sound(&live, &what);
        let left = footprint.left(&uuids);
        assert!(left.is_empty(), "{what}: left on the host: {left:#?}");
        recover(&live, s, &aci, file, step);
        assert_store_sound(&live, &format!("{what}, then the command again"));
        let shown: Vec<&str> = args.iter().map(|a| a.rsplit('/').next().unwrap_or(a)).collect();
        let again = match s {
            Scenario::Fetch | Scenario::ImageRm | Scenario::OciFetch => "pod fetch",
            Scenario::Build => "pod image build (and fetch)",
            _ => "pod run",
        };
        eprintln!(
            "kill -9 at {step:<18} {isolation:<9} `pod {}`: died there; after gc: host as before, \
             store verified; {again} works ({:.1?})",
            shown.join(" "),
            t.elapsed()
        );
    }
    eprintln!("{} kill points in {:.1?}", cases.len(), started.elapsed());
}

// ---------------------------------------------------------------------------
// The pod's PID 1 killed from the host.

// kill -9 of pod-init from the host (the OOM killer's choice, or an
// operator's): the kernel ends the pod's pid namespace, the monitor sees its
// PID 1 die, tears the pod down and records 137; gc leaves nothing.
#[test]
fn killing_the_pods_pid1_ends_the_pod_and_gc_leaves_the_host_as_it_was() {
    let _turn = serial();
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[Example::Busybox]);
    let footprint = Footprint::take(&live);
    let file = live.pod_file(
        "sleeper",
        &format!(
            "name: sleeper\nnetwork: {}\napps:\n- name: s\n  image: {BUSYBOX}\n  exec: [/bin/busybox, sleep, \"600\"]\n",
            live.net_name()
        ),
    );
    let uuid = live.start(&file);
    live.wait_all_up(&uuid, Duration::from_secs(60));
    let present = footprint.left(std::slice::from_ref(&uuid));
    for kind in ["cgroup ", "netns ", "veth ", "process "] {
        assert!(present.iter().any(|e| e.starts_with(kind)), "no {kind}of the running pod seen: {present:#?}");
    }
    let dir = live.data.join("pods/run").join(&uuid);
    let pid1: u32 = fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    let init = proc_of(pid1).unwrap();
    assert!(init.cmdline.contains("pod-init"), "the pid file names the pod's PID 1: {init:?}");
    let pod_procs = tree(pid1);

    let killed = Command::new("kill").args(["-KILL", &pid1.to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(
        wait_for(Duration::from_secs(20), || live.listed(&uuid).is_some_and(|e| e["state"] == "exited")),
        "the pod is not exited after its PID 1 was killed: {:?}",
        live.listed(&uuid)
    );
    let st = live.status(&uuid);
    assert_eq!(st["exitCode"], 137, "the pod ended by SIGKILL (128+9): {st}");
    assert_eq!(live.app_status(&uuid, "s")["state"], "lost", "the app is not reported running: {st}");
    let survivors: Vec<&Proc> = pod_procs.iter().filter(|p| alive(p)).collect();
    assert!(survivors.is_empty(), "the pod's processes outlived its PID 1: {survivors:#?}");
    // The monitor tears the pod down itself, just after it reported the
    // exit (stage0 reads the pod as exited from then on, as podman does
    // while its cleanup runs); gc removes the directory.
    assert!(
        wait_for(Duration::from_secs(10), || footprint.left(std::slice::from_ref(&uuid)).is_empty()),
        "the exited pod still holds: {:#?}",
        footprint.left(std::slice::from_ref(&uuid))
    );
    gc_ok(&live, "gc after killing pod-init");
    assert!(live.listed(&uuid).is_none(), "gc removed the pod");
    let left = footprint.left(std::slice::from_ref(&uuid));
    assert!(left.is_empty(), "left on the host: {left:#?}");
    eprintln!("kill -9 of pod-init: pod exited 137, torn down by its monitor; gc left nothing");
}
