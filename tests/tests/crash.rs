//! A pod whose stage1 is killed with SIGKILL mid-run: `pod gc` must leave
//! the host as it was before the pod (mounts, cgroups, netns pins, veths,
//! iptables) with none of the pod's processes alive. The only test of its
//! binary, so that no other pod of this suite changes the host meanwhile
//! (cargo runs test binaries one after another); what other users of the
//! host change meanwhile is told apart from the pod's own. Needs root and the CNI
//! plugins; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A process as `/proc/PID/stat` shows it; `start` (field 22) tells a pid
/// reused later from this one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    start: u64,
    cmdline: String,
}

fn proc_of(pid: u32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some(Proc {
        pid,
        state: f[0].chars().next()?,
        ppid: f[1].parse().ok()?,
        start: f[19].parse().ok()?,
        cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_owned(),
    })
}

fn all_procs() -> Vec<Proc> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter_map(proc_of)
        .collect()
}

/// `root` and every process below it.
fn tree(root: u32) -> Vec<Proc> {
    let all = all_procs();
    let mut out: Vec<Proc> = all.iter().filter(|p| p.pid == root).cloned().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        out.extend(all.iter().filter(|p| p.ppid == parent).cloned());
        i += 1;
    }
    out
}

/// Still the same process, and not a zombie.
fn alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start == p.start && now.state != 'Z')
}

/// The fds of `pid` that point into `dir` (the pod lock is an fd of the pod
/// directory).
fn fds_into(pid: u32, dir: &std::path::Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok().map(|t| (e.file_name(), t)))
        .filter(|(_, t)| t.starts_with(dir))
        .map(|(n, t)| format!("fd {} -> {}", n.to_string_lossy(), t.display()))
        .collect()
}

// A kill -9 of the monitor takes the pod down with it (the launcher and the
// pod's PID 1 die through PR_SET_PDEATHSIG; the lock was the monitor's
// alone), so the pod reads as exited and `pod gc` restores the host.
#[test]
fn killing_stage1_then_gc_leaves_the_host_as_it_was() {
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
    // The pod's PID 1 is forked by a launcher, a child of the monitor; both
    // run pod-stage1-ns. The monitor is the outermost of them.
    let mut monitor = proc_of(init.ppid).unwrap();
    while let Some(parent) = proc_of(monitor.ppid).filter(|p| p.cmdline.contains("pod-stage1-ns")) {
        monitor = parent;
    }
    assert!(
        monitor.cmdline.contains("pod-stage1-ns") && monitor.cmdline.contains(&uuid),
        "the parent of the pod's PID 1 is not its stage1: {monitor:?}"
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
