//! Running pods without a network (`network: none`): what `pod run` exits
//! with, what it prints, restarts, resource limits as the apps feel them,
//! pod files refused before anything is created, and the commands around a
//! pod's life (`logs`, `rm`, `gc`). Needs root; reports a skip without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const BUSYBOX: &str = "example.com/busybox:1.35";
/// Generous: a foreground pod here lives a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A pod file with `network: none`: each `(app, script, extra)` is an app
/// of the busybox image running `/bin/sh -c script`, with `extra` (YAML
/// lines indented as the app's fields) added; `tail` ends the file.
fn busybox_pod(name: &str, apps: &[(&str, &str, &str)], tail: &str) -> String {
    let mut y = format!("name: {name}\nnetwork: none\napps:\n");
    for (app, script, extra) in apps {
        let script = serde_json::to_string(script).unwrap();
        y.push_str(&format!("  - name: {app}\n    image: {BUSYBOX}\n    exec: [/bin/sh, -c, {script}]\n"));
        y.push_str(extra);
    }
    y.push_str(tail);
    y
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `file` in the foreground (`--net none`).
fn run_fg(live: &Live, file: &Path) -> std::process::Output {
    live.run_within(&["run", "--net", "none", p(file)], RUN_LIMIT)
}

macro_rules! skip_unless_pods {
    () => {
        if let Some(why) = skip_reason(false) {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

#[test]
fn exit_status_is_the_first_failing_apps_code_and_output_is_prefixed() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file(
        "codes",
        &busybox_pod(
            "codes",
            &[
                ("fine", "echo fine says hi; exit 0", ""),
                ("five", "echo five says bye; sleep 0.5; exit 5", ""),
                // Fails too, but after `five`: the pod's status stays 5.
                ("seven", "sleep 1.5; echo seven was late; exit 7", ""),
            ],
            "",
        ),
    );
    let out = run_fg(&live, &file);
    let args = ["run", "--net", "none", p(&file)];
    assert_eq!(out.status.code(), Some(5), "{}", describe(&args, &out));
    let text = stdout(&out);
    for line in ["[fine] fine says hi\n", "[five] five says bye\n", "[seven] seven was late\n"] {
        assert!(text.contains(line), "the foreground run does not print {line:?}\n{}", describe(&args, &out));
    }

    let st = live.status("codes");
    assert_eq!(st["state"], "exited", "{st}");
    assert_eq!(st["exitCode"], 5, "{st}");
    let fine = live.app_status("codes", "fine");
    assert_eq!((&fine["exitCode"], &fine["signal"]), (&0.into(), &serde_json::Value::Null), "{fine}");
    let five = live.app_status("codes", "five");
    assert_eq!(five["exitCode"], 5, "{five}");
    assert_eq!(live.app_status("codes", "seven")["exitCode"], 7, "{st}");
}

#[test]
fn an_app_killed_by_a_signal_makes_the_pod_exit_128_plus_it() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("sig", &busybox_pod("sig", &[("victim", "echo about to die; kill -9 $$", "")], ""));
    let out = run_fg(&live, &file);
    assert_eq!(out.status.code(), Some(137), "{}", describe(&["run", p(&file)], &out));
    assert!(stdout(&out).contains("[victim] about to die\n"), "{}", describe(&["run", p(&file)], &out));
    let app = live.app_status("sig", "victim");
    assert_eq!(app["signal"], 9, "{app}");
    assert_eq!(live.status("sig")["exitCode"], 137);
}

#[test]
fn on_failure_restarts_until_the_app_succeeds() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    // The empty volume outlives each run, so the app counts its attempts.
    let script = "echo run >> /data/count; n=$(wc -l < /data/count); echo attempt $n; [ $n -ge 3 ] || exit 1";
    let extra = "    restart: on-failure\n    mounts: [{ volume: scratch, path: /data }]\n";
    let yaml = busybox_pod("flaky", &[("flaky", script, extra)], "volumes:\n  - { name: scratch, kind: empty }\n");
    let file = live.pod_file("flaky", &yaml);
    let out = run_fg(&live, &file);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&["run", p(&file)], &out));
    let text = stdout(&out);
    for n in 1..=3 {
        assert!(text.contains(&format!("[flaky] attempt {n}\n")), "attempt {n} missing:\n{text}");
    }
    assert!(!text.contains("attempt 4"), "restarted after succeeding:\n{text}");
    let app = live.app_status("flaky", "flaky");
    assert!(app["restarts"].as_u64().is_some_and(|r| r >= 2), "{app}");
    assert_eq!(app["exitCode"], 0, "{app}");
}

#[test]
fn an_app_over_its_memory_limit_is_killed() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    // 64 MiB held in a shell variable, twice the limit.
    let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo holding ${#x} bytes";
    let limited = live.pod_file("mem", &busybox_pod("mem", &[("hog", hog, "    resources: { memory: 32Mi }\n")], ""));
    let out = run_fg(&live, &limited);
    assert_eq!(out.status.code(), Some(137), "{}", describe(&["run", p(&limited)], &out));
    assert!(!stdout(&out).contains("holding"), "the hog got its memory:\n{}", stdout(&out));
    let app = live.app_status("mem", "hog");
    assert_eq!(app["signal"], 9, "{app}");
    // stage1 counts the OOM kills of the app's cgroup; status says why.
    assert!(app["oomKills"].as_u64().unwrap_or(0) >= 1, "{app}");
    assert!(app["message"].as_str().unwrap_or("").contains("OOM"), "{app}");

    // The same app without the limit gets its memory: the limit killed it.
    let free = live.pod_file("mem-free", &busybox_pod("mem-free", &[("hog", hog, "")], ""));
    let out = run_fg(&live, &free);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&["run", p(&free)], &out));
    assert!(stdout(&out).contains("[hog] holding 67108864 bytes\n"), "{}", stdout(&out));
}

#[test]
fn an_app_over_its_pids_limit_cannot_fork() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 3 & echo forked $i; done; \
                  wait; echo all forked";
    let file = live.pod_file("pids", &busybox_pod("pids", &[("forker", script, "    resources: { pids: 8 }\n")], ""));
    let out = run_fg(&live, &file);
    let text = stdout(&out);
    assert_mentions_any(&text, &["can't fork", "Resource temporarily unavailable"]);
    assert!(!text.contains("all forked") && !text.contains("forked 20"), "20 forks under pids: 8:\n{text}");
    // The shell and at most seven sleeps fit in eight.
    assert!(text.contains("forked 1\n") && !text.contains("forked 8\n"), "{text}");
    assert_ne!(out.status.code(), Some(0), "{}", describe(&["run", p(&file)], &out));
    let logged = live.ok(&["logs", "pids", "forker"]);
    assert_mentions_any(&logged, &["can't fork", "Resource temporarily unavailable"]);
}

/// Every pod directory under `POD_DIR/pods`, whatever its state.
fn pod_dirs(live: &Live) -> Vec<String> {
    let mut out = Vec::new();
    for state in ["embryo", "prepared", "run", "garbage"] {
        if let Ok(rd) = fs::read_dir(live.data.join("pods").join(state)) {
            out.extend(rd.flatten().map(|e| format!("{state}/{}", e.file_name().to_string_lossy())));
        }
    }
    out
}

#[test]
fn a_bad_pod_file_is_refused_naming_file_line_and_field() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let unknown = live.pod_file(
        "unknown-field",
        &format!("name: bad\nnetwork: none\napps:\n  - name: a\n    image: {BUSYBOX}\n    colour: blue\n"),
    );
    let err = live.fails(&["run", p(&unknown)], EXIT_INVALID);
    assert_mentions(&err, &["unknown-field.yaml", "line 6", "colour", "apps[0]"]);

    let size = live.pod_file(
        "bad-size",
        &format!(
            "name: bad\nnetwork: none\napps:\n  - name: a\n    image: {BUSYBOX}\n    exec: [/bin/true]\n    \
             resources: {{ memory: 12 parsecs }}\n"
        ),
    );
    let err = live.fails(&["run", "-d", p(&size)], EXIT_INVALID);
    assert_mentions(&err, &["bad-size.yaml", "line 7", "apps[0].resources.memory", "12 parsecs"]);

    assert!(pod_dirs(&live).is_empty(), "a refused pod file left pods: {:?}", pod_dirs(&live));
    assert!(live.pods().is_empty(), "{:?}", live.pods());
}

#[test]
fn logs_show_each_apps_lines_and_rm_and_gc_remove_exited_pods() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let chatty = live.pod_file(
        "chatty",
        &busybox_pod(
            "chatty",
            &[("alpha", "echo alpha one; echo alpha two", ""), ("beta", "echo beta one >&2; echo beta two", "")],
            "",
        ),
    );
    let out = run_fg(&live, &chatty);
    assert!(out.status.success(), "{}", describe(&["run", p(&chatty)], &out));
    let other = live.pod_file("other", &busybox_pod("other", &[("quiet", "true", "")], ""));
    let out = run_fg(&live, &other);
    assert!(out.status.success(), "{}", describe(&["run", p(&other)], &out));

    // One app: its lines, as written, and nothing else.
    assert_eq!(live.ok(&["logs", "chatty", "alpha"]), "alpha one\nalpha two");
    // stderr is logged too.
    assert_eq!(live.ok(&["logs", "chatty", "beta"]), "beta one\nbeta two");
    // All apps: each line prefixed with its app.
    let all = live.ok(&["logs", "chatty"]);
    for line in ["[alpha] alpha one", "[alpha] alpha two", "[beta] beta one", "[beta] beta two"] {
        assert!(all.lines().any(|l| l == line), "{line:?} missing from pod logs:\n{all}");
    }
    let err = live.fails(&["logs", "chatty", "gamma"], EXIT_NOT_FOUND);
    assert_mentions(&err, &["gamma"]);

    // A running pod is not removed.
    let sleeper = live.pod_file("sleeper", &busybox_pod("sleeper", &[("nap", "exec sleep 60", "")], ""));
    let sleeper_uuid = live.start(&sleeper);
    live.wait_all_up(&sleeper_uuid, Duration::from_secs(20));
    live.fails(&["rm", &sleeper_uuid], EXIT_CONFLICT);
    // Nor the image its rootfs sits on.
    let err = live.fails(&["image", "rm", BUSYBOX], EXIT_CONFLICT);
    assert_mentions(&err, &[&sleeper_uuid]);
    assert_eq!(live.listed(&sleeper_uuid).unwrap()["state"], "running");

    // rm removes the exited pod named, by its uuid prefix; its logs go with it.
    let chatty_uuid = live.status("chatty")["uuid"].as_str().unwrap().to_owned();
    assert_eq!(live.ok(&["rm", &chatty_uuid[..8]]), chatty_uuid);
    assert!(live.listed(&chatty_uuid).is_none(), "{:?}", live.pods());
    assert!(!pod_dirs(&live).iter().any(|d| d.ends_with(&chatty_uuid)), "{:?}", pod_dirs(&live));
    live.fails(&["logs", &chatty_uuid], EXIT_NOT_FOUND);

    // gc removes exited pods and leaves the running one.
    let other_uuid = live.status("other")["uuid"].as_str().unwrap().to_owned();
    let out = live.run(&["gc"]);
    assert!(out.status.success(), "{}", describe(&["gc"], &out));
    assert!(live.listed(&other_uuid).is_none(), "gc left an exited pod: {:?}", live.pods());
    assert_eq!(live.listed(&sleeper_uuid).unwrap()["state"], "running", "gc touched a running pod");

    let out = live.run_within(&["stop", "--timeout", "5", &sleeper_uuid], Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&["stop", &sleeper_uuid], &out));
    live.ok(&["gc"]);
    assert!(live.pods().is_empty(), "{:?}", live.pods());
    assert!(pod_dirs(&live).is_empty(), "{:?}", pod_dirs(&live));
}

#[test]
fn logs_follow_prints_lines_as_they_come_until_the_pod_exits() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file("ticker", &busybox_pod("ticker", &[("tick", "echo first; sleep 2; echo second", "")], ""));
    let uuid = live.start(&file);
    let out = live.run_within(&["logs", "-f", &uuid, "tick"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&["logs", "-f", &uuid], &out));
    assert_eq!(stdout(&out), "first\nsecond\n");
    assert_eq!(live.listed(&uuid).unwrap()["state"], "exited");
}

// `pod stats`: a busy app shows its CPU, an idle one none; the memory limit
// is the app's; storage writes and pids are counted; a pod that is not
// running is refused by name.
#[test]
fn stats_show_each_apps_cpu_memory_and_io() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let busy = "dd if=/dev/zero of=/written bs=1M count=8 conv=fsync 2>/dev/null; while :; do :; done";
    let file = live.pod_file(
        "stats",
        &busybox_pod(
            "stats",
            &[("busy", busy, "    resources: { memory: 64Mi }\n"), ("idle", "exec sleep 1000", "")],
            "",
        ),
    );
    let uuid = live.start(&file);
    // Past the dd: the busy app is spinning.
    std::thread::sleep(Duration::from_secs(2));
    let out = live.run_within(&["stats", "--no-stream", "--format", "json", &uuid], RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&["stats"], &out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |app: &str| rows.as_array().unwrap().iter().find(|r| r["app"] == app).cloned().unwrap_or_default();
    let (busy, idle) = (row("busy"), row("idle"));
    assert_eq!(busy["pod"], uuid.as_str(), "{rows}");
    // A spinning shell gets what a loaded 2-core host spares it; sleep none.
    assert!(busy["cpuPercent"].as_f64().unwrap() > 5.0, "a spinning shell uses CPU: {rows}");
    assert!(idle["cpuPercent"].as_f64().unwrap() < 1.0, "sleep uses none: {rows}");
    assert_eq!(busy["memLimit"], 64 << 20, "{rows}");
    assert!(idle["memLimit"].as_u64().unwrap() > 64 << 20, "no limit: the host's memory: {rows}");
    assert!(busy["memUsage"].as_u64().unwrap() > 0 && busy["pids"].as_u64().unwrap() >= 1, "{rows}");
    assert!(busy["blockOutput"].as_u64().unwrap() >= 8 << 20, "dd's 8 MiB written: {rows}");

    let out = live.run_within(&["stats", "--no-stream", &uuid], RUN_LIMIT);
    let table = stdout(&out);
    assert!(table.starts_with("POD") && table.contains("MEM USAGE / LIMIT") && table.contains("/ 67.109MB"), "{table}");
    assert!(table.lines().any(|l| l.contains(" busy ")), "{table}");

    live.ok(&["stop", &uuid]);
    let out = live.run(&["stats", "--no-stream", &uuid]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&["stats"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["not running"]);
    let out = live.run(&["stats", "--no-stream", "no-such-pod"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&["stats"], &out));
}

// `pod generate systemd` writes a unit systemd's own checker accepts, and
// `pod run` speaks the notify protocol such a unit expects: READY=1 only
// once every app is ready (here: after its probe passes), STOPPING=1 on
// SIGTERM, then the pod stops.
#[test]
fn a_notify_unit_for_a_pod_file_and_ready_then_stopping() {
    skip_unless_pods!();
    use std::os::unix::net::UnixDatagram;
    let live = Live::new(&[Example::Busybox]);
    let slow = "sleep 2; touch /ready; exec sleep 1000";
    let probe = "    readiness: { exec: [/bin/sh, -c, \"test -f /ready\"], timeout: 60s }\n";
    let file = live.pod_file("notify", &busybox_pod("notify", &[("slow", slow, probe)], ""));

    let unit = live.ok(&["generate", "systemd", p(&file)]);
    assert!(unit.contains("\nType=notify\n") && unit.contains(&format!(" run {}\n", p(&file))), "{unit}");
    if let Some(analyze) = which("systemd-analyze") {
        let path = live.work.join("pod-notify.service");
        fs::write(&path, &unit).unwrap();
        let out = std::process::Command::new(analyze).args(["verify", p(&path)]).output().unwrap();
        assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("SKIP (part): systemd-analyze not installed; the unit is not verified");
    }
    let bad = live.pod_file("bad", "name: bad\napps: nope\n");
    let out = live.run(&["generate", "systemd", p(&bad)]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&["generate"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &[p(&bad), "apps"]);

    let socket_path = live.work.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let recv = |within: Duration| {
        socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let mut cmd = live.cmd(&["run", "--net", "none", p(&file)]);
    cmd.env("NOTIFY_SOCKET", &socket_path).stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ready = recv(Duration::from_secs(60)).expect("READY=1 within 60 s");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // Sent by the monitor, the process systemd would watch: `pod run` itself.
    assert!(ready.contains(&format!("MAINPID={}", child.id())), "{ready:?}");
    let uuid = live.pods().into_iter().find(|e| e["name"] == "notify").unwrap()["uuid"].as_str().unwrap().to_owned();
    assert_eq!(live.app_status(&uuid, "slow")["state"], "ready", "READY=1 came before the app was ready");

    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert_eq!(recv(Duration::from_secs(30)).as_deref(), Some("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "pod run ended: {status:?}");
    assert_eq!(live.status(&uuid)["state"], "exited");
}

// Each app sees its own cgroup at /sys/fs/cgroup, read-only, rooted at
// itself: its memory limit where runtimes look for it (v2 memory.max, v1
// memory/memory.limit_in_bytes), and `/` as its cgroup path.
#[test]
fn an_app_reads_its_own_limits_under_sys_fs_cgroup() {
    skip_unless_pods!();
    let live = Live::new(&[Example::Busybox]);
    let script = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; \
                  echo cgroup:; cat /proc/self/cgroup; echo mounts:; grep ' /sys/fs/cgroup' /proc/self/mountinfo";
    let file = live.pod_file("cgns", &busybox_pod("cgns", &[("app", script, "    resources: { memory: 64Mi }\n")], ""));
    let out = run_fg(&live, &file);
    assert!(out.status.success(), "{}", describe(&["run", p(&file)], &out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_start_matches("[app] ")).collect();
    assert_eq!(lines.first().copied(), Some("67108864"), "the app's limit, where runtimes read it:\n{text}");
    let cgroups: Vec<&str> =
        lines.iter().skip_while(|l| **l != "cgroup:").skip(1).take_while(|l| **l != "mounts:").copied().collect();
    assert!(
        !cgroups.is_empty() && cgroups.iter().all(|l| l.ends_with(":/")),
        "its own cgroup is its root: {cgroups:?}"
    );
    let mounts: Vec<&str> = lines.iter().skip_while(|l| **l != "mounts:").skip(1).copied().collect();
    assert!(!mounts.is_empty(), "{text}");
    for m in &mounts {
        let opts = m.split_whitespace().nth(5).unwrap_or_default();
        assert!(opts.split(',').any(|o| o == "ro"), "mounted read-only: {m}");
    }
    // v1: every hierarchy the JVM requires (jvm.rs), cpuset included though
    // pods get no cpuset cgroup of their own.
    let v1: Vec<&str> = mounts.iter().filter(|m| m.contains(" - cgroup ")).copied().collect();
    if !v1.is_empty() {
        for c in ["cpuset", "cpu", "cpuacct", "memory"] {
            let has = |m: &&str| m.rsplit(' ').next().unwrap_or_default().split(',').any(|o| o == c);
            assert!(v1.iter().any(has), "no v1 {c} hierarchy under /sys/fs/cgroup: {v1:?}");
        }
    }
}
