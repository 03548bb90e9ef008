//! Tier (a): detection and pod layout against fake trees in a temp dir —
//! plain directories with pre-created control files, no root needed.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }
    /// Creates `rel` (and its parents) holding `content`.
    fn file(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
    /// Writes a mountinfo file, `{root}` standing for the fake cgroup root.
    fn mountinfo(&self, text: &str) -> PathBuf {
        let path = self.root().join("mountinfo");
        fs::write(&path, text.replace("{root}", &self.root().display().to_string())).expect("mountinfo");
        path
    }
    fn detect(&self, text: &str) -> Hierarchy {
        detect(&self.mountinfo(text), self.root()).expect("detect")
    }
}

const UNIFIED: &str = "30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

const LEGACY: &str = "\
31 23 0:28 / {root} rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/memory rw,relatime shared:10 master:2 - cgroup cgroup rw,memory
33 31 0:30 / {root}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / {root}/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / {root}/freezer rw,relatime - cgroup cgroup rw,freezer
36 31 0:33 / {root}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
37 31 0:34 / {root}/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
50 20 0:29 / /var/lib/c1/rootfs/sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio
";

const HYBRID_EXTRA: &str = "41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";

/// This machine's /proc/self/mountinfo, cgroup lines.
const THIS_HOST: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const WEB: Limits = Limits { memory_bytes: Some(50 << 20), cpu_millis: Some(500), pids: Some(5), cpu_shares: None };
const DB: Limits = Limits { memory_bytes: None, cpu_millis: Some(2000), pids: None, cpu_shares: None };

#[test]
fn detects_unified() {
    let fake = Fake::new();
    let h = fake.detect(UNIFIED);
    assert_eq!(h.mode(), Mode::Unified);
    assert_eq!(h.unified(), Some(fake.root()));
    assert_eq!(h.controller_mount("memory"), None);
}

#[test]
fn detects_legacy_with_co_mounted_controllers() {
    let fake = Fake::new();
    let h = fake.detect(LEGACY);
    assert_eq!(h.mode(), Mode::Legacy);
    assert_eq!(h.unified(), None);
    assert_eq!(h.controller_mount("cpu"), Some(fake.path("cpu,cpuacct").as_path()));
    assert_eq!(h.controller_mount("cpuacct"), Some(fake.path("cpu,cpuacct").as_path()));
    assert_eq!(h.controller_mount("cpuset"), Some(fake.path("cpuset").as_path()));
    // Named hierarchies are not controllers; other mount trees are ignored.
    assert_eq!(h.controller_mount("systemd"), None);
    assert_eq!(h.controller_mount("blkio"), None);
    let roots: Vec<PathBuf> = h.roots().into_iter().map(Path::to_owned).collect();
    assert_eq!(roots, ["memory", "cpu,cpuacct", "pids", "freezer"].map(|r| fake.path(r)));
}

#[test]
fn detects_hybrid() {
    let fake = Fake::new();
    let h = fake.detect(&format!("{LEGACY}{HYBRID_EXTRA}"));
    assert_eq!(h.mode(), Mode::Hybrid);
    assert_eq!(h.unified(), Some(fake.path("unified").as_path()));
    assert_eq!(h.controller_mount("memory"), Some(fake.path("memory").as_path()));
}

#[test]
fn detects_this_hosts_layout() {
    let fake = Fake::new();
    let h = detect(&fake.mountinfo(THIS_HOST), Path::new("/sys/fs/cgroup")).expect("detect");
    assert_eq!(h.mode(), Mode::Hybrid);
    let roots: Vec<&Path> = h.roots();
    let want = ["memory", "cpu", "cpuacct", "pids", "freezer", "unified"].map(|c| Path::new("/sys/fs/cgroup").join(c));
    assert_eq!(roots, want.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

#[test]
fn cgroup2_alone_below_a_tmpfs_is_unified() {
    let fake = Fake::new();
    let h =
        fake.detect("31 23 0:28 / {root} rw - tmpfs tmpfs rw\n41 31 0:38 / {root}/unified rw - cgroup2 cgroup2 rw\n");
    assert_eq!(h.mode(), Mode::Unified);
    assert_eq!(h.unified(), Some(fake.path("unified").as_path()));
}

#[test]
fn detection_errors_name_the_file() {
    let fake = Fake::new();
    let none = detect(&fake.mountinfo("22 1 0:5 / /proc rw - proc proc rw\n"), fake.root());
    assert!(matches!(none, Err(CgroupError::NoHierarchy { .. })), "{none:?}");
    let bad = detect(&fake.mountinfo("22 1 0:5 / /proc rw - proc proc rw\ngarbage\n"), fake.root());
    let msg = bad.expect_err("garbage accepted").to_string();
    assert!(msg.contains("mountinfo:2"), "{msg}");
    let missing = detect(&fake.path("nope"), fake.root()).expect_err("no file");
    assert!(missing.to_string().starts_with("read "), "{missing}");
}

#[test]
fn escaped_mount_points() {
    let fake = Fake::new();
    let h = fake.detect(
        "31 23 0:28 / {root} rw - tmpfs tmpfs rw\n32 31 0:29 / {root}/mem\\040ory rw - cgroup cgroup rw,memory\n",
    );
    assert_eq!(h.controller_mount("memory"), Some(fake.path("mem ory").as_path()));
}

#[test]
fn cpu_quota_math() {
    assert_eq!(v2::cpu_max(500).as_deref(), Some("50000 100000"));
    assert_eq!(v2::cpu_max(2000).as_deref(), Some("200000 100000"));
    assert_eq!(cpu_quota_us(250), Some(25_000));
    // Below the kernel's 1 ms minimum: raised to it.
    assert_eq!(cpu_quota_us(1), Some(1_000));
    assert_eq!(cpu_quota_us(u64::MAX), None);
}

/// A v2 tree as the kernel would show it once the pod exists.
fn fake_v2(fake: &Fake, uuid: &str) {
    fake.file("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
    fake.file("cgroup.subtree_control", "");
    fake.file("pod/cgroup.subtree_control", "");
    fake.file(&format!("pod/{uuid}/cgroup.subtree_control"), "");
    for f in ["memory.max", "memory.swap.max", "cpu.max", "pids.max", "memory.events"] {
        fake.file(&format!("pod/{uuid}/web/{f}"), "");
    }
    for f in ["memory.max", "cpu.max", "pids.max"] {
        fake.file(&format!("pod/{uuid}/db/{f}"), "");
    }
}

#[test]
fn v2_enables_controllers_and_writes_limits() {
    let fake = Fake::new();
    fake_v2(&fake, "u1");
    let h = fake.detect(UNIFIED);
    let pod = create_pod(&h, "u1", &[("web", WEB), ("db", DB)]).expect("create");
    for dir in ["", "pod/", "pod/u1/"] {
        assert_eq!(fake.read(&format!("{dir}cgroup.subtree_control")), "+cpu +memory +pids", "{dir}");
    }
    assert_eq!(fake.read("pod/u1/web/memory.max"), "52428800");
    assert_eq!(fake.read("pod/u1/web/memory.swap.max"), "0");
    assert_eq!(fake.read("pod/u1/web/cpu.max"), "50000 100000");
    assert_eq!(fake.read("pod/u1/web/pids.max"), "5");
    assert_eq!(fake.read("pod/u1/db/cpu.max"), "200000 100000");
    assert_eq!(fake.read("pod/u1/db/memory.max"), "");
    assert_eq!(fake.read("pod/u1/db/pids.max"), "");
    assert!(fake.path("pod/u1/init.scope").is_dir());
    assert_eq!(pod.app_dirs("web").expect("web"), [fake.path("pod/u1/web")]);
    assert_eq!(pod.init_dirs(), [fake.path("pod/u1/init.scope")]);
    assert!(matches!(pod.app_dirs("cache"), Err(CgroupError::UnknownApp { .. })));

    fake.file("pod/u1/web/memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n");
    assert_eq!(pod.oom_kills("web").expect("oom"), 1);

    // Again, with controllers already on: the same result, enabled levels
    // left alone.
    fake.file("cgroup.subtree_control", "cpu io memory pids\n");
    create_pod(&h, "u1", &[("web", WEB), ("db", DB)]).expect("create again");
    assert_eq!(fake.read("cgroup.subtree_control"), "cpu io memory pids\n");
    assert_eq!(fake.read("pod/u1/web/cpu.max"), "50000 100000");
}

#[test]
fn v2_missing_controller_fails_before_touching_the_tree() {
    let fake = Fake::new();
    fake.file("cgroup.controllers", "cpu pids\n");
    fake.file("cgroup.subtree_control", "");
    let h = fake.detect(UNIFIED);
    let err = create_pod(&h, "u2", &[("web", WEB)]).expect_err("memory missing");
    assert!(matches!(err, CgroupError::ControllerMissing { controller: "memory", .. }), "{err}");
    assert!(!fake.path("pod").exists());
}

#[test]
fn failure_halfway_removes_what_was_made() {
    let fake = Fake::new();
    fake.file("cgroup.controllers", "cpu memory pids\n");
    fake.file("cgroup.subtree_control", "");
    // Plain directories made by create_pod have no cgroup.subtree_control:
    // enabling controllers in pod/ fails after the directories exist.
    let h = fake.detect(UNIFIED);
    let err = create_pod(&h, "u3", &[("web", WEB), ("db", DB)]).expect_err("half-made");
    let msg = err.to_string();
    assert!(msg.contains("pod/cgroup.subtree_control"), "{msg}");
    assert!(!fake.path("pod/u3").exists(), "left behind");
    assert!(fake.path("pod").is_dir(), "the shared base stays");

    // A pod that existed before keeps its directories.
    fake_v2(&fake, "u4");
    fs::remove_file(fake.path("pod/u4/db/cpu.max")).expect("rm");
    let err = create_pod(&h, "u4", &[("web", WEB), ("db", DB)]).expect_err("no cpu.max");
    assert!(err.to_string().contains("db/cpu.max"), "{err}");
    assert!(fake.path("pod/u4/db").is_dir() && fake.path("pod/u4/web").is_dir());
    assert!(!fake.path("pod/u4/init.scope").exists(), "made by the failed call, so removed");
}

/// v1 hierarchies as the kernel would show them once the pod exists.
fn fake_v1(fake: &Fake, uuid: &str) {
    fake.file(&format!("memory/pod/{uuid}/web/memory.limit_in_bytes"), "");
    fake.file(&format!("memory/pod/{uuid}/web/memory.memsw.limit_in_bytes"), "");
    fake.file(&format!("memory/pod/{uuid}/db/memory.limit_in_bytes"), "");
    for app in ["web", "db"] {
        fake.file(&format!("cpu,cpuacct/pod/{uuid}/{app}/cpu.cfs_period_us"), "");
        fake.file(&format!("cpu,cpuacct/pod/{uuid}/{app}/cpu.cfs_quota_us"), "");
    }
    fake.file(&format!("pids/pod/{uuid}/web/pids.max"), "");
    fs::create_dir_all(fake.path("freezer")).expect("freezer");
    fake.file("unified/cgroup.subtree_control", "");
}

#[test]
fn v1_hybrid_writes_limits_and_mirrors_into_cgroup2() {
    let fake = Fake::new();
    fake_v1(&fake, "u5");
    let h = fake.detect(&format!("{LEGACY}{HYBRID_EXTRA}"));
    let db = Limits { memory_bytes: Some(1 << 30), ..DB };
    let pod = create_pod(&h, "u5", &[("web", WEB), ("db", db)]).expect("create");
    assert_eq!(fake.read("memory/pod/u5/web/memory.limit_in_bytes"), "52428800");
    assert_eq!(fake.read("memory/pod/u5/web/memory.memsw.limit_in_bytes"), "52428800");
    assert_eq!(fake.read("memory/pod/u5/db/memory.limit_in_bytes"), "1073741824");
    assert_eq!(fake.read("cpu,cpuacct/pod/u5/web/cpu.cfs_period_us"), "100000");
    assert_eq!(fake.read("cpu,cpuacct/pod/u5/web/cpu.cfs_quota_us"), "50000");
    assert_eq!(fake.read("cpu,cpuacct/pod/u5/db/cpu.cfs_quota_us"), "200000");
    assert_eq!(fake.read("pids/pod/u5/web/pids.max"), "5");
    // The cgroup2 mirror has no controllers: nothing is enabled there.
    assert_eq!(fake.read("unified/cgroup.subtree_control"), "");
    let want: Vec<PathBuf> =
        ["memory", "cpu,cpuacct", "pids", "freezer", "unified"].map(|r| fake.path(&format!("{r}/pod/u5/web"))).into();
    assert_eq!(pod.app_dirs("web").expect("web"), want);
    for dir in want.iter().chain(&pod.init_dirs()) {
        assert!(dir.is_dir(), "{}", dir.display());
    }
    assert!(!fake.path("cpuset/pod").exists(), "cpuset is not managed");

    fake.file("memory/pod/u5/web/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n");
    assert_eq!(pod.oom_kills("web").expect("oom"), 4);
}

#[test]
fn v1_missing_controller_fails_before_touching_the_tree() {
    let fake = Fake::new();
    let h = fake
        .detect("31 23 0:28 / {root} rw - tmpfs tmpfs rw\n32 31 0:29 / {root}/memory rw - cgroup cgroup rw,memory\n");
    assert_eq!(h.mode(), Mode::Legacy);
    let err = create_pod(&h, "u6", &[("web", WEB)]).expect_err("no cpu, no pids");
    assert!(matches!(err, CgroupError::ControllerMissing { controller: "cpu", .. }), "{err}");
    assert!(!fake.path("memory/pod").exists());
}

#[test]
fn open_list_and_destroy_on_a_fake_legacy_tree() {
    let fake = Fake::new();
    for root in ["memory", "cpu,cpuacct", "pids", "freezer"] {
        fs::create_dir_all(fake.path(root)).expect("mount point");
    }
    let h = fake.detect(LEGACY);
    // No limits: every directory is made by create_pod and stays empty, so
    // destroy can rmdir them as the kernel would.
    let apps = [("web", Limits::default()), ("db", Limits::default())];
    create_pod(&h, "u7", &apps).expect("create");
    create_pod(&h, "u8", &apps[..1]).expect("create");
    fs::create_dir_all(fake.path("memory/pod/not.a.uuid")).expect("stray");
    assert_eq!(list_pods(&h).expect("list"), ["u7", "u8"]);

    let pod = open_pod(&h, "u7").expect("open").expect("exists");
    assert_eq!(pod.apps(), ["db", "web"], "init.scope is not an app");
    assert_eq!(pod.procs().expect("procs"), []);
    pod.destroy().expect("destroy");
    for root in ["memory", "cpu,cpuacct", "pids", "freezer"] {
        assert!(!fake.path(&format!("{root}/pod/u7")).exists(), "{root}");
        assert!(fake.path(&format!("{root}/pod/u8/web")).is_dir(), "{root}");
    }
    assert_eq!(list_pods(&h).expect("list"), ["u8"]);
    assert!(open_pod(&h, "u7").expect("open").is_none());
    pod.destroy().expect("destroy twice");
}

#[test]
fn a_pod_under_a_parent_of_its_own() {
    let fake = Fake::new();
    for root in ["memory", "cpu,cpuacct", "pids", "freezer"] {
        fs::create_dir_all(fake.path(root)).expect("mount point");
    }
    // kubelet made its QoS cgroup in memory only; pod makes the rest.
    fs::create_dir_all(fake.path("memory/kubepods/burstable/pod-k1")).expect("kubelet's");
    let h = fake.detect(LEGACY);
    let loc = PodLoc::new(Some("/kubepods/burstable/pod-k1"), "u11").expect("parent");
    let pod = create_pod(&h, &loc, &[("web", Limits::default())]).expect("create");
    let want: Vec<PathBuf> = ["memory", "cpu,cpuacct", "pids", "freezer"]
        .map(|r| fake.path(&format!("{r}/kubepods/burstable/pod-k1/u11/web")))
        .into();
    assert_eq!(pod.app_dirs("web").expect("web"), want);
    assert!(!fake.path("memory/pod").exists(), "nothing under pod/");
    // Found again only through its parent; list_pods is pod/'s.
    assert!(open_pod(&h, "u11").expect("open").is_none());
    let again = open_pod(&h, &loc).expect("open").expect("exists");
    assert_eq!(again.apps(), ["web"]);
    again.destroy().expect("destroy");
    for root in ["memory", "cpu,cpuacct", "pids", "freezer"] {
        assert!(!fake.path(&format!("{root}/kubepods/burstable/pod-k1/u11")).exists(), "{root}");
        assert!(fake.path(&format!("{root}/kubepods/burstable/pod-k1")).is_dir(), "{root}: the parent stays");
    }
    for bad in ["/kubepods.slice", "kubepods", "/", "/a/../b"] {
        let e = PodLoc::new(Some(bad), "u12").expect_err(bad);
        assert!(matches!(e, CgroupError::InvalidParent(_)), "{bad}: {e}");
    }
}

#[test]
fn names_and_limits_are_checked_first() {
    let fake = Fake::new();
    let h = fake.detect(LEGACY);
    for uuid in ["", "../x", "a/b", "-rf", "u u"] {
        assert!(matches!(create_pod(&h, uuid, &[]), Err(CgroupError::InvalidUuid(_))), "{uuid:?}");
        assert!(open_pod(&h, uuid).is_err(), "{uuid:?}");
    }
    for app in ["", "Web", "a/b", "..", "init.scope", "memory.max", "a_b"] {
        let err = create_pod(&h, "u9", &[(app, Limits::default())]).expect_err(app);
        assert!(matches!(err, CgroupError::InvalidApp { .. }), "{app:?}: {err}");
    }
    let dup = create_pod(&h, "u9", &[("web", Limits::default()), ("web", Limits::default())]);
    assert!(matches!(dup, Err(CgroupError::DuplicateApp(_))));
    let zero = Limits { memory_bytes: Some(0), ..Limits::default() };
    assert!(matches!(create_pod(&h, "u9", &[("web", zero)]), Err(CgroupError::InvalidLimit { .. })));
    let huge = Limits { cpu_millis: Some(u64::MAX / 10), ..Limits::default() };
    assert!(matches!(create_pod(&h, "u9", &[("web", huge)]), Err(CgroupError::InvalidLimit { .. })));
    assert!(!fake.path("memory/pod").exists(), "nothing made for a rejected pod");
}

#[test]
fn limits_from_the_resolved_pod() {
    let r = spec::stage1::Resources { memory_bytes: Some(1), cpu_millis: Some(2), pids: Some(3), ..Default::default() };
    assert_eq!(Limits::from(r), Limits { memory_bytes: Some(1), cpu_millis: Some(2), pids: Some(3), cpu_shares: None });
    assert_eq!((super::cpu_weight(2), super::cpu_weight(1024), super::cpu_weight(262_144)), (1, 39, 10000));
}

#[test]
fn v2_delegation_chowns_app_leaves_and_the_pods_procs_only() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: chown needs root");
        return;
    }
    let fake = Fake::new();
    fake_v2(&fake, "u1");
    for dir in ["pod/u1", "pod/u1/web", "pod/u1/db", "pod/u1/init.scope"] {
        fake.file(&format!("{dir}/cgroup.procs"), "");
    }
    let h = fake.detect(UNIFIED);
    let pod = create_pod(&h, "u1", &[("web", WEB), ("db", DB)]).expect("create");
    pod.delegate_apps(100_000, 100_001).expect("delegate");
    let owner = |rel: &str| {
        let m = fs::metadata(fake.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        (m.uid(), m.gid())
    };
    for rel in ["pod/u1/web", "pod/u1/web/cgroup.procs", "pod/u1/db/cgroup.procs", "pod/u1/cgroup.procs"] {
        assert_eq!(owner(rel), (100_000, 100_001), "{rel}");
    }
    for rel in ["pod/u1", "pod/u1/init.scope/cgroup.procs", "pod/u1/web/memory.max", "pod/u1/cgroup.subtree_control"] {
        assert_eq!(owner(rel), (0, 0), "{rel} stays host root's");
    }
}
