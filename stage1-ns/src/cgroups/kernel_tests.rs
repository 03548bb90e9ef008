//! Tier (b): the real kernel. Needs root; reports a skip otherwise. Each
//! test uses its own pod uuid and a guard that destroys it even on panic.
//!
//! On a Hybrid host (v1 controllers, empty cgroup2 beside them) limits are
//! checked through v1; the v2 code path runs against the real cgroup2 mount
//! for membership, `cgroup.kill` and rmdir only, since it has no controllers
//! there. v2 limit files are covered by the fake trees in `tests.rs`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::Pid;

use super::*;

fn host() -> Option<Hierarchy> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: cgroup kernel tests need root");
        return None;
    }
    match detect_host(Path::new("/proc/self/mountinfo"), Path::new("/sys/fs/cgroup")) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("SKIP: no usable cgroups on this host: {e}");
            None
        }
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Destroys the pod's cgroups (and so its processes) when dropped.
struct Guard {
    h: Hierarchy,
    uuid: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        match open_pod(&self.h, &self.uuid) {
            Ok(Some(pod)) => {
                if let Err(e) = pod.destroy() {
                    eprintln!("cleanup of pod {}: {e}", self.uuid);
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("cleanup of pod {}: {e}", self.uuid),
        }
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// A shell waiting for a line on stdin before running `script`, so it can
/// be put into its cgroup first.
fn gated_sh(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", &format!("read _; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

fn release(child: &mut Child) {
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("release");
}

#[test]
fn limits_processes_kill_and_destroy() {
    let Some(h) = host() else { return };
    let uuid = unique("life");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };
    let web = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), pids: Some(16), cpu_shares: None };
    let db = Limits { memory_bytes: Some(50 << 20), cpu_millis: None, pids: Some(5), cpu_shares: None };
    create_pod(&h, &uuid, &[("web", web), ("db", db)]).expect("create");
    let pod = create_pod(&h, &uuid, &[("web", web), ("db", db)]).expect("create again");

    let rel = Path::new(POD_BASE).join(&uuid).join("web");
    match h.mode() {
        Mode::Unified => {
            let dir = h.unified().expect("v2 root").join(&rel);
            assert_eq!(read(&dir.join("memory.max")), "67108864");
            assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
            assert_eq!(read(&dir.join("pids.max")), "16");
        }
        Mode::Legacy | Mode::Hybrid => {
            let at = |c: &str, f: &str| read(&h.controller_mount(c).expect(c).join(&rel).join(f));
            assert_eq!(at("memory", "memory.limit_in_bytes"), "67108864");
            assert_eq!(at("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
            assert_eq!(at("pids", "pids.max"), "16");
        }
    }

    let mut sleep = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let dirs = pod.app_dirs("web").expect("web");
    if h.mode() == Mode::Hybrid {
        assert!(dirs.iter().any(|d| h.unified().is_some_and(|u| d.starts_with(u))), "mirrored into cgroup2");
    }
    add_pid(&dirs, pid(&sleep)).expect("add sleep");
    for dir in &dirs {
        assert_eq!(read(&dir.join("cgroup.procs")), sleep.id().to_string(), "{}", dir.display());
    }
    assert_eq!(pod.procs().expect("procs"), [pid(&sleep)]);
    assert!(list_pods(&h).expect("list").contains(&uuid));
    assert_eq!(open_pod(&h, &uuid).expect("open").expect("found").apps(), ["db", "web"]);

    pod.kill_all().expect("kill_all");
    assert_eq!(sleep.wait().expect("wait").signal(), Some(9));
    assert_eq!(pod.procs().expect("procs"), []);
    pod.destroy().expect("destroy");
    for root in h.roots() {
        let dir = root.join(POD_BASE).join(&uuid);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(!list_pods(&h).expect("list").contains(&uuid));
    assert!(open_pod(&h, &uuid).expect("open").is_none());
}

#[test]
fn pids_limit_stops_forks() {
    let Some(h) = host() else { return };
    let uuid = unique("pids");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };
    let limits = Limits { pids: Some(5), ..Limits::default() };
    let pod = create_pod(&h, &uuid, &[("forker", limits)]).expect("create");

    // 20 background sleeps; each fork past the limit fails. The shell then
    // exits without waiting, leaving the sleeps that made it in the pod.
    let mut sh =
        gated_sh("i=0; while [ $i -lt 20 ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo spawned");
    add_pid(&pod.app_dirs("forker").expect("dirs"), pid(&sh)).expect("add sh");
    release(&mut sh);
    let out = sh.wait_with_output().expect("wait sh");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let left = pod.procs().expect("procs").len();
    eprintln!("pids.max=5: {left} sleeps running; sh said {stderr:?}");
    assert!((1..=5).contains(&left), "{left} processes despite pids.max=5");
    assert!(stderr.contains("fork") || stderr.contains("resource temporarily unavailable"), "{stderr}");

    pod.destroy().expect("destroy");
    assert!(open_pod(&h, &uuid).expect("open").is_none());
}

#[test]
fn memory_limit_oom_kills() {
    let Some(h) = host() else { return };
    let uuid = unique("oom");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };
    let hog = Limits { memory_bytes: Some(50 << 20), ..Limits::default() };
    let pod = create_pod(&h, &uuid, &[("hog", hog), ("calm", hog)]).expect("create");
    assert_eq!(pod.oom_kills("hog").expect("oom before"), 0);

    // tail keeps a line in memory until it ends; /dev/zero has no newline,
    // so tail grows towards 300 MiB and is killed at 50.
    let mut sh = gated_sh("head -c 300M /dev/zero | tail >/dev/null");
    add_pid(&pod.app_dirs("hog").expect("dirs"), pid(&sh)).expect("add sh");
    release(&mut sh);
    let status = sh.wait().expect("wait sh");
    assert!(!status.success(), "300 MiB fit in a 50 MiB limit: {status:?}");
    assert!(pod.oom_kills("hog").expect("oom after") >= 1);
    assert_eq!(pod.oom_kills("calm").expect("other app"), 0);
    pod.destroy().expect("destroy");
}

/// The v2 backend against the host's real cgroup2 mount (on a Hybrid host
/// the empty `unified` one): mkdir, membership, `cgroup.kill`, rmdir, and a
/// limit refused for want of a controller without leaving anything behind.
#[test]
fn v2_backend_on_the_real_cgroup2_mount() {
    let Some(host) = host() else { return };
    let Some(mount) = host.unified() else {
        eprintln!("SKIP: no cgroup2 mount on this host");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mountinfo = tmp.path().join("mountinfo");
    std::fs::write(&mountinfo, format!("41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n", mount.display())).expect("write");
    let h = detect(&mountinfo, mount).expect("detect");
    assert_eq!(h.mode(), Mode::Unified);
    let uuid = unique("v2");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };

    let available = read(&mount.join("cgroup.controllers"));
    if !available.split_whitespace().any(|c| c == "memory") {
        let limited = Limits { memory_bytes: Some(50 << 20), ..Limits::default() };
        let err = create_pod(&h, &uuid, &[("app", limited)]).expect_err("no memory controller");
        assert!(matches!(err, CgroupError::ControllerMissing { controller: "memory", .. }), "{err}");
        assert!(!mount.join(POD_BASE).join(&uuid).exists());
    }

    let pod = create_pod(&h, &uuid, &[("app", Limits::default())]).expect("create");
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let mut init = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    add_pid(&pod.app_dirs("app").expect("dirs"), pid(&sleep)).expect("add");
    add_pid(&pod.init_dirs(), pid(&init)).expect("add init");
    let mut want = vec![pid(&sleep), pid(&init)];
    want.sort();
    assert_eq!(pod.procs().expect("procs"), want);

    let has_kill = mount.join(POD_BASE).join(&uuid).join("cgroup.kill").exists();
    eprintln!("cgroup.kill {}", if has_kill { "present" } else { "absent: SIGKILL loop used" });
    pod.kill_all().expect("kill");
    assert_eq!(sleep.wait().expect("wait").signal(), Some(9));
    assert_eq!(init.wait().expect("wait").signal(), Some(9));
    pod.destroy().expect("destroy");
    assert!(!mount.join(POD_BASE).join(&uuid).exists());
    assert!(!list_pods(&h).expect("list").contains(&uuid));
}

/// Legacy mode over the host's real v1 mounts (its cgroup2 mount hidden
/// from a copy of mountinfo): no `cgroup.kill`, so kill_all goes through
/// the v1 freezer (freeze, SIGKILL, thaw).
#[test]
fn legacy_freezer_kill_on_the_real_v1_mounts() {
    let Some(host) = host() else { return };
    if host.mode() == Mode::Unified || host.controller_mount("freezer").is_none() {
        eprintln!("SKIP: no cgroup v1 freezer on this host");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mountinfo = tmp.path().join("mountinfo");
    let real = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let v1_only: String = real.lines().filter(|l| !l.contains(" - cgroup2 ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&mountinfo, v1_only).expect("write");
    let h = detect(&mountinfo, Path::new("/sys/fs/cgroup")).expect("detect");
    assert_eq!(h.mode(), Mode::Legacy);
    let uuid = unique("v1");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };
    let pod = create_pod(&h, &uuid, &[("busy", Limits { pids: Some(32), ..Limits::default() })]).expect("create");

    let mut sh = gated_sh("i=0; while [ $i -lt 15 ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; wait");
    add_pid(&pod.app_dirs("busy").expect("dirs"), pid(&sh)).expect("add sh");
    release(&mut sh);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pod.procs().expect("procs").len() < 16 {
        assert!(std::time::Instant::now() < deadline, "the sleeps never all started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pod.kill_all().expect("kill_all");
    assert_eq!(sh.wait().expect("wait").signal(), Some(9));
    let freezer = h.controller_mount("freezer").expect("freezer").join(POD_BASE).join(&uuid);
    assert_eq!(read(&freezer.join("freezer.state")), "THAWED");
    pod.destroy().expect("destroy");
    for root in h.roots() {
        assert!(!root.join(POD_BASE).join(&uuid).exists(), "{}", root.display());
    }
}

#[test]
fn stats_and_live_updates_on_the_real_hierarchy() {
    let Some(h) = host() else { return };
    let uuid = unique("stats");
    let _guard = Guard { h: h.clone(), uuid: uuid.clone() };
    let pod = create_pod(&h, &uuid, &[("web", Limits::default())]).expect("create");
    // Busy for a moment, then holding a few MiB of memory while it waits.
    let mut child = gated_sh(
        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; x=$(head -c 4000000 /dev/zero | tr '\\0' a); sleep 30",
    );
    add_pid(&pod.app_dirs("web").expect("dirs"), pid(&child)).expect("join");
    release(&mut child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stats = loop {
        let s = app_stats(&h, &uuid, "web").expect("stats");
        if s.memory.usage > 4_000_000 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(stats.cpu.usage_ns > 0, "{stats:?}");
    assert!(stats.memory.usage > 4_000_000 && stats.memory.rss > 0, "{stats:?}");
    assert!(stats.pids.unwrap_or(1) >= 1, "{stats:?}");
    assert!(app_procs(&h, &uuid, "web").expect("procs").contains(&pid(&child)));
    if h.unified().is_some_and(|u| u.join("cpu.pressure").exists()) {
        assert!(stats.pressure.cpu.is_some() && stats.pressure.memory.is_some(), "{stats:?}");
    }
    // The app's memory still moves (the pipeline's processes exit): compare
    // the pod with its app only across a read where the app stood still.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (app, whole) = loop {
        let before = app_stats(&h, &uuid, "web").expect("stats").memory.usage;
        let whole = pod_stats(&h, &uuid).expect("pod stats");
        let after = app_stats(&h, &uuid, "web").expect("stats").memory.usage;
        if before == after || std::time::Instant::now() > deadline {
            break (after, whole);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(whole.memory.usage >= app, "the pod holds its app ({app} bytes): {whole:?}");

    let u = Update { memory_bytes: Some(64 << 20), cpu_quota_us: Some(20_000), ..Update::default() };
    drop(update_app(&h, &uuid, "web", &u).expect("update"));
    let l = app_limits(&h, &uuid, "web").expect("limits");
    assert_eq!((l.memory_bytes, l.cpu_quota_us), (Some(64 << 20), Some(20_000)), "{l:?}");
    if h.mode() != Mode::Unified {
        // v1 cannot reclaim anonymous memory without swap: it refuses, and
        // every limit written before is put back.
        let below = Update { cpu_quota_us: Some(30_000), memory_bytes: Some(1 << 20), ..Update::default() };
        let err = update_app(&h, &uuid, "web", &below).expect_err("below usage");
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
        let l = app_limits(&h, &uuid, "web").expect("limits");
        assert_eq!((l.memory_bytes, l.cpu_quota_us), (Some(64 << 20), Some(20_000)), "{l:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
