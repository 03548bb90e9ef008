//! Tier (a) for stats.rs and update.rs: cgroup v1 and v2 control files as
//! the kernel writes them, in fake trees (the v2 layout is exercised here
//! even on hosts with v1 controllers).

use std::fs;
use std::path::Path;

use super::*;

const UUID: &str = "0f7a3c1e-aaaa-bbbb-cccc-123456789abc";

fn file(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")).trim().to_owned()
}

fn hierarchy(root: &Path, mountinfo: &str) -> Hierarchy {
    let path = root.join("mountinfo");
    fs::write(&path, mountinfo.replace("{root}", &root.display().to_string())).expect("mountinfo");
    detect(&path, root).expect("detect")
}

const V2_MOUNTINFO: &str = "30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

const V1_MOUNTINFO: &str = "\
31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/memory rw,relatime - cgroup cgroup rw,memory
33 31 0:30 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / {root}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / {root}/pids rw,relatime - cgroup cgroup rw,pids
";

/// An app leaf `web` as a 6.1 kernel shows it with cpu, memory and pids
/// enabled (memory.stat shortened to the lines read, plus a few others).
fn fake_v2_app(root: &Path) -> String {
    let app = format!("pod/{UUID}/web");
    file(root, "cgroup.controllers", "cpuset cpu io memory pids\n");
    for dir in [String::new(), "pod".into(), format!("pod/{UUID}")] {
        file(root, format!("{dir}/cgroup.subtree_control").trim_start_matches('/'), "cpu memory pids\n");
    }
    let files = [
        ("cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\ncore_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n"),
        ("cpu.max", "50000 100000\n"),
        ("cpu.weight", "100\n"),
        ("memory.current", "10485760\n"),
        ("memory.peak", "12582912\n"),
        ("memory.max", "67108864\n"),
        ("memory.swap.current", "4096\n"),
        ("memory.swap.max", "0\n"),
        ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
        ("memory.stat", "anon 6291456\nfile 3145728\nkernel 524288\nkernel_stack 65536\nsock 0\nfile_mapped 1048576\nactive_anon 0\ninactive_anon 6291456\nactive_file 1048576\ninactive_file 2097152\npgfault 1200\npgmajfault 3\n"),
        ("pids.current", "4\n"),
        ("pids.max", "max\n"),
        ("cpu.pressure", "some avg10=1.00 avg60=0.50 avg300=0.10 total=2000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
        ("memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
        ("cpuset.cpus", "\n"),
        ("cpuset.mems", "\n"),
    ];
    for (name, content) in files {
        file(root, &format!("{app}/{name}"), content);
    }
    app
}

fn fake_v1_app(root: &Path) {
    let app = format!("pod/{UUID}/web");
    let files = [
        ("cpuacct", "cpuacct.usage", "2500000000\n"),
        ("cpuacct", "cpuacct.stat", "user 200\nsystem 50\n"),
        ("cpu", "cpu.stat", "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\n"),
        ("cpu", "cpu.shares", "1024\n"),
        ("cpu", "cpu.cfs_quota_us", "-1\n"),
        ("cpu", "cpu.cfs_period_us", "100000\n"),
        ("memory", "memory.usage_in_bytes", "10485760\n"),
        ("memory", "memory.max_usage_in_bytes", "12582912\n"),
        ("memory", "memory.limit_in_bytes", "9223372036854771712\n"),
        ("memory", "memory.memsw.usage_in_bytes", "10489856\n"),
        ("memory", "memory.memsw.limit_in_bytes", "9223372036854771712\n"),
        ("memory", "memory.kmem.usage_in_bytes", "524288\n"),
        ("memory", "memory.failcnt", "3\n"),
        ("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"),
        // The plain keys count this cgroup alone; total_* its subtree.
        ("memory", "memory.stat", "cache 1\nrss 1\nmapped_file 1\npgfault 1\ntotal_cache 3145728\ntotal_rss 6291456\ntotal_mapped_file 1048576\ntotal_pgfault 1200\ntotal_pgmajfault 3\ntotal_inactive_file 2097152\ntotal_active_file 1048576\n"),
        ("pids", "pids.current", "4\n"),
        ("pids", "pids.max", "max\n"),
    ];
    for (controller, name, content) in files {
        file(root, &format!("{controller}/{app}/{name}"), content);
    }
}

/// Both versions' files describe the same app: the same Stats come out.
fn expected() -> Stats {
    Stats {
        cpu: CpuStats {
            usage_ns: 2_500_000_000,
            user_ns: 2_000_000_000,
            system_ns: 500_000_000,
            periods: 40,
            throttled_periods: 7,
            throttled_ns: 350_000_000,
        },
        memory: MemoryStats {
            usage: 10_485_760,
            max_usage: Some(12_582_912),
            rss: 6_291_456,
            cache: 3_145_728,
            mapped_file: 1_048_576,
            active_file: 1_048_576,
            inactive_file: 2_097_152,
            kernel: Some(524_288),
            pgfault: 1200,
            pgmajfault: 3,
            swap: Some(4096),
            failcnt: 3,
            oom_kills: 1,
        },
        pids: Some(4),
        pressure: Pressure::default(),
    }
}

#[test]
fn v2_stats_from_kernel_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_v2_app(tmp.path());
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    let mut s = app_stats(&h, UUID, "web").expect("stats");
    assert_eq!(s.pressure.cpu.map(|p| p.some.total_ns), Some(2_000_000), "{:?}", s.pressure);
    assert!(s.pressure.memory.is_some() && s.pressure.io.is_none(), "{:?}", s.pressure);
    s.pressure = Pressure::default();
    assert_eq!(s, expected());
    assert_eq!(s.memory.working_set(), 10_485_760 - 2_097_152);
    let l = app_limits(&h, UUID, "web").expect("limits");
    assert_eq!(l.cpu_quota_us, Some(50_000));
    assert_eq!(l.cpu_period_us, Some(100_000));
    assert_eq!(l.cpu_shares, Some(weight_to_shares(100)));
    assert_eq!(l.memory_bytes, Some(64 << 20));
    assert_eq!(l.memory_swap_bytes, Some(64 << 20), "swap.max 0: memory+swap is the memory limit");
    assert_eq!(l.pids, None, "max is unlimited");
    assert_eq!(l.cpuset_cpus, None, "empty is unset");
}

#[test]
fn v2_kernel_line_is_summed_on_older_kernels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = fake_v2_app(tmp.path());
    file(tmp.path(), &format!("{app}/memory.stat"), "anon 10\nkernel_stack 100\npagetables 20\nslab 3\n");
    fs::remove_file(tmp.path().join(&app).join("memory.peak")).expect("rm");
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    let s = app_stats(&h, UUID, "web").expect("stats");
    assert_eq!(s.memory.kernel, Some(123));
    assert_eq!(s.memory.max_usage, None, "no memory.peak before Linux 5.19");
}

#[test]
fn v1_stats_from_kernel_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_v1_app(tmp.path());
    let h = hierarchy(tmp.path(), V1_MOUNTINFO);
    assert_eq!(app_stats(&h, UUID, "web").expect("stats"), expected());
    let l = app_limits(&h, UUID, "web").expect("limits");
    assert_eq!(l.memory_bytes, None, "PAGE_COUNTER_MAX is unlimited");
    assert_eq!(l.cpu_quota_us, None, "-1 is unlimited");
    assert_eq!(l.cpu_shares, Some(1024));
    assert_eq!(l.cpu_period_us, Some(100_000));
}

#[test]
fn a_missing_cgroup_is_not_found_and_names_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_v2_app(tmp.path());
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    match app_stats(&h, UUID, "db") {
        Err(CgroupError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    assert!(matches!(app_stats(&h, "../etc", "web"), Err(CgroupError::InvalidUuid(_))));
    assert!(matches!(app_stats(&h, UUID, "../x"), Err(CgroupError::InvalidApp { .. })));
}

#[test]
fn shares_and_weight_convert_as_the_kubelet_does() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    for w in [1, 39, 100, 5000, 10_000] {
        assert_eq!(shares_to_weight(weight_to_shares(w)), w, "weight {w}");
    }
}

#[test]
fn v2_update_writes_weight_max_memory_and_cpuset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = fake_v2_app(tmp.path());
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    let u = Update {
        cpu_shares: Some(512),
        cpu_quota_us: Some(20_000),
        memory_bytes: Some(32 << 20),
        cpuset_cpus: Some("0".into()),
        ..Update::default()
    };
    drop(update_app(&h, UUID, "web", &u).expect("update"));
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.weight")), shares_to_weight(512).to_string());
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.max")), "20000 100000", "the period kept");
    assert_eq!(read(tmp.path(), &format!("{app}/memory.max")), (32u64 << 20).to_string());
    assert_eq!(read(tmp.path(), &format!("{app}/memory.swap.max")), "0");
    assert_eq!(read(tmp.path(), &format!("{app}/cpuset.cpus")), "0");
    // cpuset enabled from the root to the pod, not in the app's leaf.
    assert_eq!(read(tmp.path(), "cgroup.subtree_control"), "+cpuset");
    assert_eq!(read(tmp.path(), &format!("pod/{UUID}/cgroup.subtree_control")), "+cpuset");
    assert!(!tmp.path().join(&app).join("cgroup.subtree_control").exists());

    // -1 lifts the quota; memory+swap -1 lets it swap.
    let u = Update {
        cpu_quota_us: Some(-1),
        memory_bytes: Some(1 << 30),
        memory_swap_bytes: Some(-1),
        ..Update::default()
    };
    drop(update_app(&h, UUID, "web", &u).expect("update"));
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.max")), "max 100000");
    assert_eq!(read(tmp.path(), &format!("{app}/memory.swap.max")), "max");
}

#[test]
fn v1_update_writes_shares_cfs_memsw_and_refuses_cpusets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_v1_app(tmp.path());
    let h = hierarchy(tmp.path(), V1_MOUNTINFO);
    let app = format!("pod/{UUID}/web");
    let u = Update {
        cpu_shares: Some(256),
        cpu_quota_us: Some(30_000),
        cpu_period_us: Some(50_000),
        memory_bytes: Some(64 << 20),
        pids: Some(100),
        ..Update::default()
    };
    drop(update_app(&h, UUID, "web", &u).expect("update"));
    assert_eq!(read(tmp.path(), &format!("cpu/{app}/cpu.shares")), "256");
    assert_eq!(read(tmp.path(), &format!("cpu/{app}/cpu.cfs_quota_us")), "30000");
    assert_eq!(read(tmp.path(), &format!("cpu/{app}/cpu.cfs_period_us")), "50000");
    assert_eq!(read(tmp.path(), &format!("memory/{app}/memory.limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(read(tmp.path(), &format!("memory/{app}/memory.memsw.limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(read(tmp.path(), &format!("pids/{app}/pids.max")), "100");

    let cpuset = Update { cpuset_cpus: Some("0".into()), ..Update::default() };
    let err = update_app(&h, UUID, "web", &cpuset).expect_err("v1 cpuset");
    assert!(err.to_string().contains("cgroup v2"), "{err}");
}

#[test]
fn a_refused_write_puts_every_old_limit_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_v1_app(tmp.path());
    let h = hierarchy(tmp.path(), V1_MOUNTINFO);
    let app = format!("pod/{UUID}/web");
    // The last write fails (the file is gone, as a kernel refusal would).
    fs::remove_file(tmp.path().join(format!("pids/{app}/pids.max"))).expect("rm");
    let u = Update { cpu_shares: Some(256), memory_bytes: Some(64 << 20), pids: Some(5), ..Update::default() };
    update_app(&h, UUID, "web", &u).expect_err("pids.max missing");
    assert_eq!(read(tmp.path(), &format!("cpu/{app}/cpu.shares")), "1024");
    assert_eq!(read(tmp.path(), &format!("memory/{app}/memory.limit_in_bytes")), "9223372036854771712");
    assert_eq!(read(tmp.path(), &format!("memory/{app}/memory.memsw.limit_in_bytes")), "9223372036854771712");
}

#[test]
fn bad_values_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = fake_v2_app(tmp.path());
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    let bad = [
        (Update { cpu_period_us: Some(10), ..Update::default() }, "cpu period"),
        (Update { cpu_quota_us: Some(5), ..Update::default() }, "cpu quota"),
        (Update { cpu_shares: Some(1), ..Update::default() }, "cpu shares"),
        (Update { memory_bytes: Some(0), ..Update::default() }, "memory limit"),
        (Update { memory_bytes: Some(100), memory_swap_bytes: Some(50), ..Update::default() }, "memory+swap"),
        (Update { cpuset_cpus: Some("0-a".into()), ..Update::default() }, "cpuset cpus"),
    ];
    for (u, field) in bad {
        let err = update_app(&h, UUID, "web", &u).expect_err(field);
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.max")), "50000 100000");
    assert_eq!(read(tmp.path(), "cgroup.subtree_control"), "cpu memory pids");
}

#[test]
fn an_applied_update_can_be_undone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = fake_v2_app(tmp.path());
    let h = hierarchy(tmp.path(), V2_MOUNTINFO);
    let u = Update { cpu_period_us: Some(50_000), memory_bytes: Some(1 << 30), ..Update::default() };
    let applied = update_app(&h, UUID, "web", &u).expect("update");
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.max")), "50000 50000");
    applied.undo();
    assert_eq!(read(tmp.path(), &format!("{app}/cpu.max")), "50000 100000");
    assert_eq!(read(tmp.path(), &format!("{app}/memory.max")), "67108864");
    assert_eq!(read(tmp.path(), &format!("{app}/memory.swap.max")), "0");
}
