//! An image's appc event handlers (`eventHandlers` in its manifest, appc's
//! aci.md): `pre-start` runs before the app's program, as the app (its
//! rootfs, user, environment), and must exit 0 within the app's
//! `startTimeout`; `post-stop` runs after the program ends, also when the
//! app is stopped. Both log into the app's log. In a namespace pod and in a
//! VM pod (the same pod-init runs them). Needs root (and qemu and the guest
//! kernel for the VM test); reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
/// A TCG guest boots in seconds; each step of a VM pod gets this long.
const VM_LIMIT: Duration = Duration::from_secs(240);

/// `example.com/<name>:1`: busybox (a dependency) with these handlers, each
/// a `/bin/sh -c` script; its program is set by each pod file.
fn handler_image(live: &Live, name: &str, pre_start: Option<&str>, post_stop: Option<&str>) {
    let dir = live.work.join(format!("{name}-build"));
    fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    fs::write(dir.join("rootfs/etc/handlers"), "handlers image\n").unwrap();
    let handler = |event: &str, script: &str| serde_json::json!({ "name": event, "exec": ["/bin/sh", "-c", script] });
    let mut handlers = Vec::new();
    handlers.extend(pre_start.map(|s| handler("pre-start", s)));
    handlers.extend(post_stop.map(|s| handler("post-stop", s)));
    let app = serde_json::json!({ "exec": ["/bin/true"], "user": "0", "group": "0", "eventHandlers": handlers });
    busybox_derived_image(live, name, &dir, app);
}

/// A host directory every user may write, for the handlers' and apps'
/// traces: mounted at /out.
/// A one-app pod of `example.com/<image>:1` running `script`, with /out.
fn pod_yaml(name: &str, image: &str, script: &str, extra: &str, out: &Path, isolation: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "name: {name}\nisolation: {isolation}\nnetwork: none\napps:\n  - name: a\n    image: example.com/{image}:1\n    \
         exec: [/bin/sh, -c, {script}]\n    env: {{ GREETING: hello }}\n    mounts: [{{ volume: out, path: /out }}]\n{extra}\
         volumes:\n  - {{ name: out, kind: host, source: {} }}\n",
        out.display()
    )
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Records who ran and what it saw, into /out/<what>.
const PRE: &str = "echo \"pre-start ran as $(id -u) with GREETING=$GREETING\"; \
                   id -u > /out/pre-start; echo prepared > /tmp/prepared";
const POST: &str =
    "echo \"post-stop ran\"; cat /tmp/prepared > /out/post-stop 2>&1 || echo no-prepared > /out/post-stop";

/// Runs a one-app pod (`isolation`, as `uid`) of an image with both
/// handlers; checks that they ran as the app, in order, into its log.
fn handlers_run_as_the_app_in_order(isolation: &str, uid: &str, limit: Duration) {
    let live = Live::new(&[Example::Busybox]);
    let name = format!("hooked-{isolation}");
    handler_image(&live, &name, Some(PRE), Some(POST));
    let out = live.out_dir("out");
    // It sees what pre-start left in its rootfs: pre-start ran first.
    let script = "cat /tmp/prepared > /out/app; echo app ran";
    let user = format!("    user: \"{uid}\"\n");
    let file = live.pod_file(&name, &pod_yaml(&name, &name, script, &user, &out, isolation));
    let run = live.run_within(&["run", p(&file)], limit);
    let logs = live.ok(&["logs", &name, "a"]);
    assert!(run.status.success(), "{}\nlog: {logs}", describe(&["run"], &run));
    assert_eq!(read(out.join("pre-start")).trim(), uid, "the pre-start handler runs as the app's user");
    assert_eq!(read(out.join("app")).trim(), "prepared", "the app starts after its pre-start handler");
    assert_eq!(read(out.join("post-stop")).trim(), "prepared", "the post-stop handler runs in the app's rootfs");
    let pre = format!("pre-start ran as {uid} with GREETING=hello");
    assert_eq!(logs.lines().collect::<Vec<_>>(), [pre.as_str(), "app ran", "post-stop ran"], "the app's log");
    let st = live.app_status(&name, "a");
    assert_eq!((st["state"].as_str(), st["exitCode"].as_i64()), (Some("exited"), Some(0)), "{st}");
}

#[test]
fn pre_start_runs_before_the_app_as_the_app_and_post_stop_after_it() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    // The app runs as nobody: so do its handlers.
    handlers_run_as_the_app_in_order("namespace", "65534", LIMIT);
}

#[test]
fn a_failing_pre_start_fails_the_app_before_its_program_runs() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    handler_image(&live, "badpre", Some("echo cannot prepare >&2; exit 3"), Some(POST));
    let out = live.out_dir("out");
    let file = live.pod_file("badpre", &pod_yaml("badpre", "badpre", "touch /out/app", "", &out, "namespace"));
    let run = live.run_within(&["run", p(&file)], LIMIT);
    assert!(!run.status.success(), "the pod fails: {}", describe(&["run"], &run));
    assert!(!out.join("app").exists(), "the program never ran");
    let st = live.app_status("badpre", "a");
    assert_eq!(st["state"], "failed", "{st}");
    assert_mentions(st["message"].as_str().unwrap_or_default(), &["pre-start handler exited with code 3"]);
    assert_mentions(&live.ok(&["logs", "badpre", "a"]), &["cannot prepare"]);
    // As systemd's ExecStopPost after a failed ExecStartPre.
    assert_eq!(read(out.join("post-stop")).trim(), "no-prepared", "post-stop runs after the failed start");
}

#[test]
fn a_pre_start_that_hangs_is_killed_at_the_start_timeout() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    handler_image(&live, "slowpre", Some("exec sleep 1000"), None);
    let out = live.out_dir("out");
    let extra = "    startTimeout: 1s\n";
    let file = live.pod_file("slowpre", &pod_yaml("slowpre", "slowpre", "touch /out/app", extra, &out, "namespace"));
    let started = std::time::Instant::now();
    let run = live.run_within(&["run", p(&file)], LIMIT);
    assert!(!run.status.success(), "the pod fails: {}", describe(&["run"], &run));
    assert!(started.elapsed() < Duration::from_secs(30), "the handler is killed at its timeout, not waited for");
    assert!(!out.join("app").exists(), "the program never ran");
    let st = live.app_status("slowpre", "a");
    assert_eq!(st["state"], "failed", "{st}");
    assert_mentions(st["message"].as_str().unwrap_or_default(), &["pre-start handler did not end within 1s"]);
    assert!(processes_with_arg("1000").iter().all(|&pid| !is_sleep(pid)), "the hung handler is gone");
}

/// Whether `pid` is a busybox `sleep 1000` (the hung handler).
fn is_sleep(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|w| w == b"sleep"))
}

#[test]
fn post_stop_runs_when_the_pod_is_stopped() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    handler_image(&live, "stopped", Some(PRE), Some(POST));
    let out = live.out_dir("out");
    let file = live.pod_file("stopped", &pod_yaml("stopped", "stopped", "exec sleep 1000", "", &out, "namespace"));
    let uuid = live.start(&file);
    live.wait_all_up(&uuid, LIMIT);
    assert!(!out.join("post-stop").exists(), "post-stop waits for the program's end");
    let stop = live.run_within(&["stop", &uuid], LIMIT);
    assert!(stop.status.success(), "{}", describe(&["stop"], &stop));
    assert_eq!(read(out.join("post-stop")).trim(), "prepared", "post-stop ran once the app was stopped");
    let st = live.app_status(&uuid, "a");
    assert_eq!(st["state"], "stopped", "{st}");
    assert_mentions(&live.ok(&["logs", &uuid, "a"]), &["post-stop ran"]);
}

#[test]
fn a_vm_pod_runs_its_apps_handlers_too() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    handlers_run_as_the_app_in_order("vm", "65534", VM_LIMIT);
}
