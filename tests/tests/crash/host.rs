//! The host as the crash tests compare it: processes, and what an
//! environment's pods left behind.

use super::*;

/// A process as `/proc/PID/stat` shows it; `start` (field 22) tells a pid
/// reused later from this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) state: char,
    pub(crate) start: u64,
    pub(crate) cmdline: String,
}

pub(crate) fn proc_of(pid: u32) -> Option<Proc> {
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

pub(crate) fn all_procs() -> Vec<Proc> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter_map(proc_of)
        .collect()
}

/// `root` and every process below it.
pub(crate) fn tree(root: u32) -> Vec<Proc> {
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
pub(crate) fn alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start == p.start && now.state != 'Z')
}

/// The fds of `pid` that point into `dir` (the pod lock is an fd of the pod
/// directory).
pub(crate) fn fds_into(pid: u32, dir: &std::path::Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok().map(|t| (e.file_name(), t)))
        .filter(|(_, t)| t.starts_with(dir))
        .map(|(n, t)| format!("fd {} -> {}", n.to_string_lossy(), t.display()))
        .collect()
}

// ---------------------------------------------------------------------------
// What an environment's pods left on the host.

/// The host before an environment's pods; [`Footprint::left`] lists what
/// they left: new mounts, cgroups, netns pins and iptables lines naming the
/// environment's root or one of its pods, new links, veths on its bridge,
/// processes whose command line names its root.
pub(crate) struct Footprint {
    before: HostState,
    root: String,
    bridge: Option<String>,
}

impl Footprint {
    pub(crate) fn take(live: &Live) -> Self {
        let bridge = live.net.as_ref().map(|n| n.bridge.clone());
        let ignore: Vec<&str> = bridge.iter().map(String::as_str).collect();
        Self { before: HostState::take(&ignore), root: live.root().to_string_lossy().into_owned(), bridge }
    }

    pub(crate) fn left(&self, uuids: &[String]) -> Vec<String> {
        let ignore: Vec<&str> = self.bridge.iter().map(String::as_str).collect();
        let after = HostState::take(&ignore);
        // The CNI chains a pod's rules jump to are named by hashes, not uuids.
        let chains: Vec<String> = uuids
            .iter()
            .flat_map(|u| iptables_mentioning(u))
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "-j").nth(1).map(str::to_owned))
            .filter(|c| c.starts_with("CNI-") && !c.starts_with("CNI-HOSTPORT-"))
            .collect();
        let ours = |e: &str| {
            e.contains(&self.root)
                || uuids.iter().any(|u| e.contains(u.as_str()))
                || chains.iter().any(|c| e.contains(c.as_str()))
        };
        let existed = self.before.entries();
        let mut left: Vec<String> = after.entries().into_iter().filter(|e| ours(e) && !existed.contains(e)).collect();
        if let Some(b) = &self.bridge {
            left.extend(links_on(b).into_iter().map(|l| format!("veth {l} on {b}")));
        }
        left.extend(
            all_procs()
                .into_iter()
                // The metadata service `pod run` started is the host's,
                // not a pod's: it stays, as a service does (README).
                .filter(|p| p.state != 'Z' && p.cmdline.contains(&self.root) && !is_metadata_service(&p.cmdline))
                .map(|p| format!("process {} {}", p.pid, p.cmdline)),
        );
        left
    }
}

/// Whether a command line is the data directory's metadata service.
fn is_metadata_service(cmdline: &str) -> bool {
    cmdline.split_whitespace().next().is_some_and(|argv0| argv0.ends_with("/pod-metadata"))
}

/// Every pod uuid under the environment's `pods/` (`embryo/.<uuid>` too).
pub(crate) fn pod_uuids(live: &Live) -> Vec<String> {
    let mut out = Vec::new();
    for state in ["embryo", "prepared", "run", "garbage"] {
        let Ok(rd) = fs::read_dir(live.data.join("pods").join(state)) else { continue };
        out.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().trim_start_matches('.').to_owned()));
    }
    out
}

/// The store and the pods directory after `pod gc`: no pods, nothing in
/// `tmp/`, every image entry complete and verified, every tree complete.
pub(crate) fn assert_store_sound(live: &Live, what: &str) {
    let pods = pod_uuids(live);
    assert!(pods.is_empty(), "{what}: pods left after gc: {pods:?}");
    let tmp = live.tmp_entries();
    assert!(tmp.is_empty(), "{what}: left in the store's tmp/: {tmp:?}");
    for dir in live.image_dirs() {
        assert!(dir.join("meta.json").is_file(), "{what}: incomplete store entry {}", dir.display());
    }
    let layers: Vec<PathBuf> =
        fs::read_dir(live.data.join("layers")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    for layer in layers {
        assert!(
            layer.join("diff_id").is_file() && layer.join("rootfs").is_dir(),
            "{what}: incomplete layer {}",
            layer.display()
        );
    }
    let trees: Vec<PathBuf> =
        fs::read_dir(live.data.join("trees")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    for tree in trees {
        assert!(
            tree.join("layers").is_file() && tree.join("rootfs").is_dir(),
            "{what}: incomplete tree {}",
            tree.display()
        );
    }
    let out = live.run(&["image", "verify"]);
    assert!(out.status.success(), "{what}: {}", describe(&["image", "verify"], &out));
    let verified = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("ok")).count();
    assert_eq!(
        verified,
        live.image_dirs().len(),
        "{what}: every entry verified\n{}",
        describe(&["image", "verify"], &out)
    );
}

pub(crate) fn gc_ok(live: &Live, what: &str) {
    let out = live.run_within(&["gc"], Duration::from_secs(60));
    assert!(out.status.success(), "{what}: {}", describe(&["gc"], &out));
}

// ---------------------------------------------------------------------------
