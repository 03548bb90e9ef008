//! The host state a pod leaves: its cgroups, network namespace pin, the
//! links on a test bridge, iptables rules, mounts; and a snapshot of all of
//! them to compare before and after.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where stage1 pins pod network namespaces.
pub const NETNS_DIR: &str = "/run/pod/netns";

fn link_names() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Whether a network interface of that name exists on the host.
pub fn link_exists(name: &str) -> bool {
    link_names().contains(name)
}

/// The interfaces enslaved to `bridge` (the host ends of pods' veths).
pub fn links_on(bridge: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// The pod's cgroup directories: `/sys/fs/cgroup/<controller>/pod/<uuid>`
/// (v1, hybrid) and `/sys/fs/cgroup/pod/<uuid>` (v2).
pub fn cgroup_dirs_of(uuid: &str) -> Vec<PathBuf> {
    pod_cgroup_dirs().into_iter().filter(|d| d.file_name().is_some_and(|n| n == uuid)).collect()
}

/// Every pod's cgroup directory, in every hierarchy.
pub fn pod_cgroup_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.join("pod")];
    if let Ok(rd) = fs::read_dir(root) {
        bases.extend(rd.flatten().map(|e| e.path().join("pod")));
    }
    let mut out = Vec::new();
    for base in bases {
        if let Ok(rd) = fs::read_dir(&base) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out
}

/// `/run/pod/netns/<uuid>`.
pub fn netns_file(uuid: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(uuid)
}

/// `iptables-save` and `ip6tables-save` lines, without comments and chain
/// counters (which change by themselves).
pub fn iptables_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        let Ok(out) = Command::new(save).output() else { continue };
        for l in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')) {
            let l = match l.rfind(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            };
            lines.push(format!("{save}: {l}"));
        }
    }
    lines
}

/// The iptables lines that mention `needle` (a pod's rules carry its uuid
/// in their comments).
pub fn iptables_mentioning(needle: &str) -> Vec<String> {
    iptables_lines().into_iter().filter(|l| l.contains(needle)).collect()
}

/// Host state a pod could leave behind, compared before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// Mount points of this (the host's) mount namespace, with repeats.
    pub mounts: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub netns: Vec<String>,
    pub links: BTreeSet<String>,
    pub iptables: Vec<String>,
}

impl HostState {
    /// `ignore_links`: interfaces expected to differ (a test's own bridge,
    /// which the bridge plugin never removes).
    pub fn take(ignore_links: &[&str]) -> Self {
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .collect();
        mounts.sort();
        let mut netns: Vec<String> = fs::read_dir(NETNS_DIR)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        netns.sort();
        let mut links = link_names();
        for l in ignore_links {
            links.remove(*l);
        }
        // portmap makes these once per host, shared by every pod, and
        // leaves them: they are not a pod's leftovers.
        let shared = |l: &String| {
            [":CNI-HOSTPORT-DNAT", ":CNI-HOSTPORT-SETMARK", ":CNI-HOSTPORT-MASQ", "-j CNI-HOSTPORT-"]
                .iter()
                .any(|s| l.contains(s))
        };
        let mut iptables: Vec<String> = iptables_lines().into_iter().filter(|l| !shared(l)).collect();
        iptables.sort();
        Self { mounts, cgroups: pod_cgroup_dirs(), netns, links, iptables }
    }

    /// Every item, prefixed by its kind (`mount /run/pod/netns/...`).
    pub fn entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.mounts.iter().map(|m| format!("mount {m}")));
        out.extend(self.cgroups.iter().map(|c| format!("cgroup {}", c.display())));
        out.extend(self.netns.iter().map(|n| format!("netns {n}")));
        out.extend(self.links.iter().map(|l| format!("link {l}")));
        out.extend(self.iptables.iter().map(|l| format!("iptables {l}")));
        out
    }

    /// What differs from `before`, one line per item; empty when equal.
    pub fn diff(&self, before: &Self) -> String {
        fn lines<T: Ord + Clone + std::fmt::Debug>(what: &str, a: &[T], b: &[T], out: &mut String) {
            let mut a = a.to_vec();
            let mut b = b.to_vec();
            a.sort();
            b.sort();
            // Multiset difference both ways.
            let mut rest = b.clone();
            for x in &a {
                if let Some(i) = rest.iter().position(|y| y == x) {
                    rest.remove(i);
                } else {
                    out.push_str(&format!("  {what}: gone {x:?}\n"));
                }
            }
            for y in rest {
                out.push_str(&format!("  {what}: new {y:?}\n"));
            }
        }
        let mut out = String::new();
        lines("mount", &before.mounts, &self.mounts, &mut out);
        lines("cgroup", &before.cgroups, &self.cgroups, &mut out);
        lines("netns", &before.netns, &self.netns, &mut out);
        let (bl, al): (Vec<_>, Vec<_>) = (before.links.iter().collect(), self.links.iter().collect());
        lines("link", &bl, &al, &mut out);
        lines("iptables", &before.iptables, &self.iptables, &mut out);
        out
    }
}
