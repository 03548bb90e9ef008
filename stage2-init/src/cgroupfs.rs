//! An app's own `/sys/fs/cgroup`, as docker and podman give a container
//! with a private cgroup namespace: the app runs in a cgroup namespace
//! rooted at its cgroup (launch.rs), and sees there, read-only, the
//! hierarchies it joined, each rooted at its own cgroup — so a runtime that
//! sizes itself from its limits (the JVM's heap, Go's GOMAXPROCS) finds
//! them at `/sys/fs/cgroup/memory.max` (cgroup v2) or
//! `/sys/fs/cgroup/memory/memory.limit_in_bytes` (v1).
//!
//! Which hierarchies: those of the directories stage1 bound for the app
//! (`Cgroup=`), told apart as pod-init sees them (it may have no /proc):
//! a cgroup2 directory alone is a v2 host: cgroup2 at `/sys/fs/cgroup`;
//! otherwise a small tmpfs there holds one directory per v1 hierarchy,
//! named by its controllers as on the host (`cpu,cpuacct`, `memory`: the
//! prefixes of its control files), and `unified` for a hybrid host's
//! cgroup2. A v1 hierarchy without controllers (`name=systemd`) is left
//! out: its name cannot be read from the directory.
//!
//! On v1 the `cpuset` hierarchy is mounted too, though pods get no cpuset
//! cgroup of their own (stage1 makes none: see its `MANAGED_V1`): hotspot
//! (the JVM's `CgroupSubsystemFactory`) takes cpuset, cpu, cpuacct and
//! memory as required and, with any of them missing from
//! `/proc/self/mountinfo`, ignores every limit and sizes its heap from the
//! host ("Required cgroup v1 cpuset subsystem not found"). docker and
//! podman mount it as every other hierarchy. The app sees there, read-only
//! and rooted at its cgroup namespace, the cpuset cgroup it was started in
//! (pod-init's), and the cgroups below that one.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// One hierarchy the app joined: how to mount it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// `cgroup2`, or `cgroup` (v1).
    pub fstype: String,
    /// v1: the hierarchy's controllers and name (`cpu,cpuacct`,
    /// `name=systemd`), the mount options that select it; v2: empty.
    pub options: String,
}

impl Hierarchy {
    /// The directory under `/sys/fs/cgroup` (v1 and hybrid).
    fn dir_name(&self) -> String {
        if self.fstype == "cgroup2" {
            "unified".into()
        } else {
            self.options.trim_start_matches("name=").to_owned()
        }
    }
}

/// The hierarchies of the cgroup directories `dirs`.
pub fn hierarchies(dirs: &[PathBuf]) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for dir in dirs {
        let Ok(fs) = nix::sys::statfs::statfs(dir.as_path()) else { continue };
        let h = if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            Hierarchy { fstype: "cgroup2".into(), options: String::new() }
        } else if fs.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            let controllers = v1_controllers(names.iter().map(String::as_str));
            if controllers.is_empty() {
                continue;
            }
            Hierarchy { fstype: "cgroup".into(), options: controllers.join(",") }
        } else {
            continue;
        };
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// Where a VM guest's pod-init mounts the guest's cgroup2 hierarchy, in
/// which it makes each limited app a cgroup of its own ([`guest_app`]).
pub const GUEST_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup of app `app` under the cgroup2 root `root` (the guest's,
/// [`GUEST_ROOT`]), made if missing, with `limits` written into it and
/// their controllers enabled for the root's children. Idempotent: an
/// app's restart, `pod enter` and an app added later take the same path.
pub fn guest_app(root: &Path, app: &str, limits: &spec::unit::Limits) -> Result<PathBuf, String> {
    let write =
        |file: PathBuf, value: &str| std::fs::write(&file, value).map_err(|e| format!("{}: {e}", file.display()));
    let enable: Vec<String> = limits.controllers().iter().map(|c| format!("+{c}")).collect();
    write(root.join("cgroup.subtree_control"), &enable.join(" "))?;
    let dir = root.join(app);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    for (file, value) in limits.cgroup2_files() {
        write(dir.join(file), &value)?;
    }
    Ok(dir)
}

/// The kernel's count of OOM kills in the app's cgroups, named by their
/// `cgroup.procs` files as `App::cgroups` holds them (cgroup v2
/// `memory.events`, v1 `memory.oom_control`: `oom_kill`), 0 where no
/// memory cgroup says.
///
/// pod-init reads it as it reaps the app, while the cgroups surely exist:
/// the stage1 monitor counts too, but only after the pod's end may it be
/// too late, as systemd removes a pod's scope, cgroups and all, as soon as
/// PID 1 (the last process in it) has exited.
pub fn oom_kills(procs_files: &[PathBuf]) -> u64 {
    let count = |file: PathBuf| -> Option<u64> {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    };
    procs_files
        .iter()
        .filter_map(|f| f.parent())
        .filter_map(|d| count(d.join("memory.events")).or_else(|| count(d.join("memory.oom_control"))))
        .max()
        .unwrap_or(0)
}

/// The controllers of a v1 hierarchy, from its directory's file names
/// (`memory.limit_in_bytes` → `memory`), sorted as hosts name them.
fn v1_controllers<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter_map(|n| n.split_once('.').map(|(prefix, _)| prefix))
        .filter(|p| *p != "cgroup" && !p.is_empty())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Mounts `hierarchies` read-only at `root`/sys/fs/cgroup (`root`: the
/// app's `/`, from inside its mount and cgroup namespaces). Nothing when
/// there is none, or the app's /sys has no `fs/cgroup`.
pub fn mount_for_app(root: &Path, hierarchies: &[Hierarchy]) -> nix::Result<()> {
    let target = root.join("sys/fs/cgroup");
    if hierarchies.is_empty() || !target.is_dir() {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME;
    let ro = flags | MsFlags::MS_RDONLY;
    if let [only] = hierarchies {
        if only.fstype == "cgroup2" {
            return mount(Some("cgroup2"), &target, Some("cgroup2"), ro, None::<&str>);
        }
    }
    mount(Some("tmpfs"), &target, Some("tmpfs"), flags, Some("mode=755,size=64k"))?;
    for h in hierarchies {
        let dir = target.join(h.dir_name());
        std::fs::create_dir_all(&dir).map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let data = (!h.options.is_empty()).then_some(h.options.as_str());
        mount(Some(h.fstype.as_str()), &dir, Some(h.fstype.as_str()), ro, data)?;
        // As on hosts: `cpu` and `cpuacct` name a co-mounted `cpu,cpuacct`.
        if h.options.contains(',') && !h.options.contains('=') {
            for single in h.options.split(',') {
                let _ = std::os::unix::fs::symlink(h.dir_name(), target.join(single));
            }
        }
    }
    if needs_cpuset(hierarchies) {
        // Best effort: where cpuset is co-mounted with a controller pod does
        // not use, or not on v1 at all, the mount fails (EBUSY, ENOENT) and
        // the app goes without, as before.
        let dir = target.join("cpuset");
        if std::fs::create_dir(&dir).is_ok() && mount(Some("cgroup"), &dir, Some("cgroup"), ro, Some("cpuset")).is_err()
        {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    mount(None::<&str>, &target, None::<&str>, ro | MsFlags::MS_REMOUNT, Some("mode=755,size=64k"))
}

/// Whether `hierarchies` are v1 ones none of which holds cpuset (see the
/// module's doc: the JVM requires it).
fn needs_cpuset(hierarchies: &[Hierarchy]) -> bool {
    hierarchies.iter().any(|h| h.fstype == "cgroup")
        && !hierarchies.iter().any(|h| h.fstype == "cgroup" && h.options.split(',').any(|c| c == "cpuset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_from_file_names() {
        let cpu = ["cgroup.procs", "cpu.shares", "cpuacct.usage", "cpu.cfs_quota_us", "tasks", "notify_on_release"];
        assert_eq!(v1_controllers(cpu.into_iter()), ["cpu", "cpuacct"]);
        let mem = ["memory.limit_in_bytes", "memory.usage_in_bytes", "cgroup.clone_children"];
        assert_eq!(v1_controllers(mem.into_iter()), ["memory"]);
        assert!(v1_controllers(["cgroup.procs", "tasks", "release_agent"].into_iter()).is_empty(), "name=systemd");
        let h = Hierarchy { fstype: "cgroup".into(), options: "cpu,cpuacct".into() };
        assert_eq!(h.dir_name(), "cpu,cpuacct");
        assert_eq!(Hierarchy { fstype: "cgroup2".into(), options: String::new() }.dir_name(), "unified");
    }

    #[test]
    fn v1_views_get_cpuset_as_docker_gives_it() {
        let v1 = |o: &str| Hierarchy { fstype: "cgroup".into(), options: o.into() };
        let v2 = Hierarchy { fstype: "cgroup2".into(), options: String::new() };
        // What stage1 binds on a v1 or hybrid host: no cpuset among them.
        let pods = [v1("memory"), v1("cpu"), v1("cpuacct"), v1("pids"), v1("freezer"), v2.clone()];
        assert!(needs_cpuset(&pods));
        assert!(needs_cpuset(&[v1("cpu,cpuacct"), v1("memory")]));
        // Already there, co-mounted or on its own; and never on v2.
        assert!(!needs_cpuset(&[v1("cpu,cpuset"), v1("memory")]));
        assert!(!needs_cpuset(&[v1("memory"), v1("cpuset")]));
        assert!(!needs_cpuset(&[v2]));
        assert!(!needs_cpuset(&[]));
    }

    #[test]
    fn a_guest_apps_cgroup_gets_its_limits() {
        // A directory standing in for cgroupfs: the files are plain ones.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let limits = spec::unit::Limits {
            memory_max: Some(33_554_432),
            tasks_max: Some(64),
            cpu_millis: None,
            cpu_weight: None,
        };
        let app = guest_app(dir.path(), "web", &limits).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app, dir.path().join("web"));
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(dir.path().join("cgroup.subtree_control")), "+memory +pids");
        assert_eq!((read(app.join("memory.max")), read(app.join("pids.max"))), ("33554432".into(), "64".into()));
        assert!(!app.join("cpu.max").exists(), "no CPU limit, no cpu.max");
        guest_app(dir.path(), "web", &limits).unwrap_or_else(|e| panic!("again: {e}"));
        let err = guest_app(&dir.path().join("none"), "web", &limits).expect_err("no cgroup root");
        assert!(err.contains("cgroup.subtree_control"), "{err}");
    }

    #[test]
    fn oom_kills_are_read_from_either_version() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (v2, v1, cpu) = (dir.path().join("v2"), dir.path().join("v1"), dir.path().join("cpu"));
        for d in [&v2, &v1, &cpu] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let write = |p: PathBuf, s: &str| std::fs::write(p, s).unwrap_or_else(|e| panic!("{e}"));
        write(v2.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n");
        write(v1.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
        let procs = |d: &Path| d.join("cgroup.procs");
        assert_eq!(oom_kills(&[procs(&v2)]), 2);
        assert_eq!(oom_kills(&[procs(&cpu), procs(&v1)]), 1, "the memory hierarchy's, among others");
        assert_eq!(oom_kills(&[procs(&cpu), procs(&dir.path().join("gone"))]), 0);
    }

    #[test]
    fn directories_that_are_no_cgroups_are_left_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(hierarchies(&[dir.path().to_path_buf(), PathBuf::from("/nonexistent")]).is_empty());
    }
}
