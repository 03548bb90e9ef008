//! Finding the cgroup hierarchies, once: mountinfo gives the mount points,
//! the cgroup root's filesystem type gives the mode (mountinfo's fstype in
//! [`detect`], statfs magic on the live host in [`detect_host`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{self, FsType};

use super::{fsx, CgroupError, Result};

/// How the host arranges its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// cgroup v2 only: `cgroup2` at the cgroup root.
    Unified,
    /// cgroup v1 only: a `tmpfs` root with one mount per controller group.
    Legacy,
    /// v1 controllers plus a `cgroup2` mount beside them (systemd's
    /// `unified`); controllers are used through v1.
    Hybrid,
}

/// The filesystem at a cgroup path, from mountinfo or statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Cgroup2,
    Cgroup1,
    Tmpfs,
    Other,
}

impl FsKind {
    /// From mountinfo's fstype field.
    pub fn from_fstype(fstype: &str) -> Self {
        match fstype {
            "cgroup2" => Self::Cgroup2,
            "cgroup" => Self::Cgroup1,
            "tmpfs" => Self::Tmpfs,
            _ => Self::Other,
        }
    }

    /// From `statfs(2)`'s `f_type`.
    pub fn from_magic(magic: FsType) -> Self {
        if magic == statfs::CGROUP2_SUPER_MAGIC {
            Self::Cgroup2
        } else if magic == statfs::CGROUP_SUPER_MAGIC {
            Self::Cgroup1
        } else if magic == statfs::TMPFS_MAGIC {
            Self::Tmpfs
        } else {
            Self::Other
        }
    }
}

/// The host's cgroup hierarchies, found once and passed to every operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub(super) layout: Layout,
}

/// What each backend needs to know; the one place v1 and v2 diverge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Layout {
    V2 {
        root: PathBuf,
    },
    /// `root` is the cgroup root (e.g. `/sys/fs/cgroup`), for messages.
    V1 {
        root: PathBuf,
        controllers: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
}

/// v1 hierarchies a pod gets a directory in, in `app_dirs` order. cpuset is
/// left out on purpose: a new cpuset cgroup is unusable until its cpus and
/// mems are filled in, and pods get no cpuset limits. devices, blkio and
/// the named `systemd` hierarchy are not managed either.
pub(super) const MANAGED_V1: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

/// Controllers cgroup v1 knows by name; anything else in a cgroup mount's
/// super options (`rw`, `name=systemd`, `clone_children`, ...) is an option.
const V1_CONTROLLERS: [&str; 14] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

impl Hierarchy {
    pub fn mode(&self) -> Mode {
        match &self.layout {
            Layout::V2 { .. } => Mode::Unified,
            Layout::V1 { unified: None, .. } => Mode::Legacy,
            Layout::V1 { unified: Some(_), .. } => Mode::Hybrid,
        }
    }

    /// The cgroup2 mount: the whole tree in Unified, the one beside the v1
    /// controllers in Hybrid, none in Legacy.
    pub fn unified(&self) -> Option<&Path> {
        match &self.layout {
            Layout::V2 { root } => Some(root),
            Layout::V1 { unified, .. } => unified.as_deref(),
        }
    }

    /// Where a v1 controller is mounted (Legacy and Hybrid only).
    pub fn controller_mount(&self, controller: &str) -> Option<&Path> {
        match &self.layout {
            Layout::V2 { .. } => None,
            Layout::V1 { controllers, .. } => controllers.get(controller).map(PathBuf::as_path),
        }
    }

    /// Every hierarchy a pod has a directory in, each once, in a stable
    /// order: the managed v1 mounts (co-mounted controllers share one), then
    /// the cgroup2 mount.
    pub(super) fn roots(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2 { root } => vec![root],
            Layout::V1 { controllers, unified, .. } => {
                let mut roots: Vec<&Path> = Vec::new();
                for mount in MANAGED_V1.iter().filter_map(|c| controllers.get(*c)) {
                    if !roots.contains(&mount.as_path()) {
                        roots.push(mount);
                    }
                }
                roots.extend(unified.as_deref());
                roots
            }
        }
    }
}

/// Detects the mode from `mountinfo` alone: the fstype of the mount at
/// `cgroup_root` (`cgroup2` → Unified), else the `cgroup` and `cgroup2`
/// mounts below it. Mounts outside `cgroup_root` (a container's rootfs, say)
/// are ignored.
pub fn detect(mountinfo: &Path, cgroup_root: &Path) -> Result<Hierarchy> {
    let mounts = parse_mountinfo(mountinfo)?;
    let root_kind =
        mounts.iter().rev().find(|m| m.point == cgroup_root).map_or(FsKind::Other, |m| FsKind::from_fstype(&m.fstype));
    classify(mountinfo, cgroup_root, root_kind, &mounts)
}

/// [`detect`] on a live host: the root's type comes from `statfs(2)`'s magic
/// number, which sees through anything mountinfo might misreport (e.g. a
/// path that is not a mount point itself). Usually
/// `detect_host("/proc/self/mountinfo", "/sys/fs/cgroup")`.
pub fn detect_host(mountinfo: &Path, cgroup_root: &Path) -> Result<Hierarchy> {
    let stat =
        statfs::statfs(cgroup_root).map_err(|source| CgroupError::Statfs { path: cgroup_root.to_owned(), source })?;
    let mounts = parse_mountinfo(mountinfo)?;
    classify(mountinfo, cgroup_root, FsKind::from_magic(stat.filesystem_type()), &mounts)
}

fn classify(mountinfo: &Path, root: &Path, root_kind: FsKind, mounts: &[Mount]) -> Result<Hierarchy> {
    if root_kind == FsKind::Cgroup2 {
        return Ok(Hierarchy { layout: Layout::V2 { root: root.to_owned() } });
    }
    let below = mounts.iter().filter(|m| m.point.starts_with(root));
    let mut controllers: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut unified = None;
    for m in below {
        match FsKind::from_fstype(&m.fstype) {
            FsKind::Cgroup1 => {
                for opt in m.super_opts.split(',').filter(|o| V1_CONTROLLERS.contains(o)) {
                    controllers.entry(opt.to_owned()).or_insert_with(|| m.point.clone());
                }
            }
            FsKind::Cgroup2 if unified.is_none() => unified = Some(m.point.clone()),
            _ => {}
        }
    }
    let layout = match (controllers.is_empty(), unified) {
        // Every controller on cgroup2 but mounted below a tmpfs: that mount
        // is the whole v2 tree.
        (true, Some(root)) => Layout::V2 { root },
        (true, None) => {
            return Err(CgroupError::NoHierarchy { root: root.to_owned(), mountinfo: mountinfo.to_owned() })
        }
        (false, unified) => Layout::V1 { root: root.to_owned(), controllers, unified },
    };
    Ok(Hierarchy { layout })
}

#[derive(Debug)]
struct Mount {
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
/// (proc(5)): the mount point is field 5, then optional fields up to `-`,
/// then fstype, source and super options.
fn parse_mountinfo(path: &Path) -> Result<Vec<Mount>> {
    let text = fsx::read(path)?;
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || CgroupError::Mountinfo { path: path.to_owned(), line: n + 1 };
        let fields: Vec<&str> = line.split(' ').collect();
        let point = fields.get(4).ok_or_else(bad)?;
        let sep = fields.iter().skip(6).position(|f| *f == "-").ok_or_else(bad)? + 6;
        let fstype = fields.get(sep + 1).ok_or_else(bad)?;
        let super_opts = fields.get(sep + 3).copied().unwrap_or_default();
        mounts.push(Mount {
            point: PathBuf::from(unescape(point)),
            fstype: (*fstype).to_owned(),
            super_opts: super_opts.to_owned(),
        });
    }
    Ok(mounts)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape(r"/plain\x"), r"/plain\x");
    }

    #[test]
    fn kinds_from_fstype_and_magic() {
        assert_eq!(FsKind::from_fstype("cgroup2"), FsKind::Cgroup2);
        assert_eq!(FsKind::from_fstype("cgroup"), FsKind::Cgroup1);
        assert_eq!(FsKind::from_fstype("tmpfs"), FsKind::Tmpfs);
        assert_eq!(FsKind::from_fstype("sysfs"), FsKind::Other);
        assert_eq!(FsKind::from_magic(FsType(0x6367_7270)), FsKind::Cgroup2);
        assert_eq!(FsKind::from_magic(statfs::TMPFS_MAGIC), FsKind::Tmpfs);
        assert_eq!(FsKind::from_magic(statfs::CGROUP_SUPER_MAGIC), FsKind::Cgroup1);
    }
}
