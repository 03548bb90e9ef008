//! Which host directories a pod file may mount (`kind: host` volumes).
//!
//! A pod file may come from someone with less privilege than the operator
//! who runs it (SECURITY.md), so its host volumes are checked before
//! anything is fetched or written:
//!
//! 1. the source is resolved (`realpath`: every symlink followed) and must be
//!    an existing directory; the check applies to the resolved path;
//! 2. it must not be a built-in sensitive path: `/proc`, `/sys`, `/dev`,
//!    `/boot`, `/root` or anything under them; `/etc`, `/run`, `/var/run`,
//!    `/usr`, `/bin`, `/sbin`, `/lib`, `/lib32`, `/lib64`, `/libx32`, `/var`,
//!    `/home` themselves; the data directory (store, pods) and the
//!    configuration directory (trusted keys) or anything under them; nor
//!    any directory that contains one of those two (`/`, `/var/lib`, ...);
//!    `readOnly` does not lift any of this;
//! 3. if the operator wrote an allowlist, `<config>/host-volumes` (one
//!    absolute directory per line, `#` comments), it must lie under one of
//!    its entries.
//!
//! The resolved path is what goes into the frozen `pod.json`, and stage1
//! opens it again without following any symlink before mounting it (see
//! `stage1-ns`'s rootfs), so a symlink swapped in after this check cannot
//! redirect the mount.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use spec::pod::{PodFile, VolumeKind};

use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{self, KeyError};
use crate::paths::Dirs;

/// The allowlist, in the configuration directory.
pub const ALLOWLIST_FILE: &str = "host-volumes";

/// Never mountable, nor anything under them.
const DENIED_TREES: &[&str] = &["/proc", "/sys", "/dev", "/boot", "/root"];
/// Never mountable themselves (their subdirectories may be: `/etc/ssl/certs`,
/// `/home/alice/data`). `/` is covered by the ancestor rule.
const DENIED_EXACT: &[&str] =
    &["/etc", "/run", "/var/run", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/var", "/home"];

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// `at` is `FILE: volumes[I] (NAME)`.
    #[error("{at}: host source {source_path}: {why}")]
    Source { at: String, source_path: String, why: String },
    #[error("{at}: host source {source_path} resolves to {}, which {why}", .resolved.display())]
    Refused { at: String, source_path: String, resolved: PathBuf, why: String },
    #[error("{path}: line {line}: {why}")]
    Allowlist { path: PathBuf, line: usize, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Permissions(#[from] KeyError),
}

impl ExitCodeOf for VolumeError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::Source { .. } | Self::Refused { .. } | Self::Allowlist { .. } | Self::Permissions(_) => {
                Exit::InvalidInput
            }
        }
    }
}

/// The host-volume rules of this host: the built-in ones, the directories
/// pod's state lives in, and the operator's allowlist if there is one.
#[derive(Debug, Clone)]
pub struct HostVolumePolicy {
    /// Directories a volume may neither be, nor lie under, nor contain.
    state: Vec<PathBuf>,
    /// Whether the built-in sensitive paths (`/proc`, `/etc`, ...) are
    /// refused: for pod files, not for the CRI (see [`Self::for_cri`]).
    system_paths: bool,
    /// Whether a regular file may be a source (the CRI's file mounts, such
    /// as kubelet's termination-log); pod files mount directories.
    files: bool,
    /// `Some` when the allowlist file exists: its entries, resolved.
    allowed: Option<Vec<PathBuf>>,
    allowlist: PathBuf,
}

impl HostVolumePolicy {
    /// Reads `<config>/host-volumes` if it exists. Like the trusted keys,
    /// it must be writable by its owner only.
    pub fn load(dirs: &Dirs) -> Result<Self, VolumeError> {
        let path = dirs.config.join(ALLOWLIST_FILE);
        let allowed = match fs::read_to_string(&path) {
            Ok(text) => {
                keys::check_owner_only(&path, "host volume allowlist")?;
                Some(parse_allowlist(&text, &path)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(VolumeError::Io { op: "read", path, source: e }),
        };
        Ok(Self::new(&[&dirs.data, &dirs.config], allowed, path))
    }

    /// `state`: the data and configuration directories.
    pub fn new(state: &[&Path], allowed: Option<Vec<PathBuf>>, allowlist: PathBuf) -> Self {
        let state = state.iter().map(|d| resolve_lexically(d)).collect();
        Self { state, system_paths: true, files: false, allowed, allowlist }
    }

    /// The CRI server's rules: only pod's own state (store, pods, trusted
    /// keys) is refused. Which host paths a Kubernetes pod may mount is the
    /// kubelet's decision (hostPath volumes, PodSecurity admission), and it
    /// mounts system paths itself (`/sys`, `/dev`, its own files under
    /// `/var/lib/kubelet`) as containerd and CRI-O let it; the allowlist
    /// and the built-in list are for pod files, whose author may have less
    /// privilege than the operator.
    pub fn for_cri(dirs: &Dirs) -> Self {
        let state = [&dirs.data, &dirs.config].iter().map(|d| resolve_lexically(d)).collect();
        Self { state, system_paths: false, files: true, allowed: None, allowlist: dirs.config.join(ALLOWLIST_FILE) }
    }

    /// Checks every host volume of `pod`; returns, per volume in file order,
    /// the resolved source of a host volume (`None` for other kinds).
    pub fn check(&self, pod: &PodFile, file: &str) -> Result<Vec<Option<PathBuf>>, VolumeError> {
        let mut out = Vec::with_capacity(pod.volumes.len());
        for (index, v) in pod.volumes.iter().enumerate() {
            let VolumeKind::Host { source, .. } = &v.kind else {
                out.push(None);
                continue;
            };
            let at = format!("{file}: volumes[{index}] ({})", v.name);
            let resolved = fs::canonicalize(source).map_err(|e| VolumeError::Source {
                at: at.clone(),
                source_path: source.clone(),
                why: e.to_string(),
            })?;
            let refuse = |why: String| VolumeError::Refused {
                at: at.clone(),
                source_path: source.clone(),
                resolved: resolved.clone(),
                why,
            };
            if !(resolved.is_dir() || self.files && resolved.is_file()) {
                let what = if self.files { "a directory or a regular file" } else { "a directory" };
                return Err(refuse(format!("is not {what}")));
            }
            if let Some(why) = self.refusal(&resolved) {
                return Err(refuse(why));
            }
            out.push(Some(resolved));
        }
        Ok(out)
    }

    /// Why `path` (resolved) may not be mounted, if it may not.
    fn refusal(&self, path: &Path) -> Option<String> {
        if let Some(d) = DENIED_TREES.iter().map(Path::new).find(|d| self.system_paths && path.starts_with(d)) {
            return Some(format!("is {} or under it: host paths there are never mounted into pods", d.display()));
        }
        if self.system_paths && DENIED_EXACT.iter().any(|d| path == Path::new(d)) {
            return Some("is a system directory that is never mounted into pods (a subdirectory may be)".to_owned());
        }
        for d in &self.state {
            if path.starts_with(d) {
                return Some(format!("is pod's own state ({}): never mounted into pods", d.display()));
            }
            if d.starts_with(path) {
                return Some(format!("contains pod's own state ({}): never mounted into pods", d.display()));
            }
        }
        match &self.allowed {
            Some(allowed) if !allowed.iter().any(|a| path.starts_with(a)) => Some(format!(
                "is not under any directory allowed by {} ({})",
                self.allowlist.display(),
                if allowed.is_empty() {
                    "none: it allows no host volumes".to_owned()
                } else {
                    allowed.iter().map(|a| a.display().to_string()).collect::<Vec<_>>().join(", ")
                }
            )),
            _ => None,
        }
    }
}

/// The allowlist's entries: absolute paths without `..`, each resolved if
/// it exists (so that `/srv` being a symlink does not make it useless).
fn parse_allowlist(text: &str, path: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let bad = |why: &str| VolumeError::Allowlist { path: path.to_owned(), line: i + 1, why: why.to_owned() };
        let p = Path::new(entry);
        if !p.is_absolute() {
            return Err(bad(&format!("{entry:?} is not an absolute path")));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(bad(&format!("{entry:?} contains '..'")));
        }
        out.push(resolve_lexically(p));
    }
    Ok(out)
}

/// `realpath` when the path exists; otherwise the path with `.` and
/// repeated `/` folded.
fn resolve_lexically(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.components().collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    struct Host {
        tmp: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            for d in ["data", "config", "srv/www", "srv/secret", "other"] {
                fs::create_dir_all(tmp.path().join(d)).unwrap_or_else(|e| panic!("{e}"));
            }
            Self { tmp }
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
        fn dirs(&self) -> Dirs {
            Dirs::new(self.path("data"), self.path("config"))
        }
        fn policy(&self) -> HostVolumePolicy {
            HostVolumePolicy::load(&self.dirs()).unwrap_or_else(|e| panic!("{e}"))
        }
    }

    fn pod(source: &Path) -> PodFile {
        let yaml = format!(
            "name: p\napps:\n  - name: a\n    image: example.com/a:1\nvolumes:\n  - {{ name: v, kind: host, source: {} }}\n",
            source.display()
        );
        PodFile::parse(yaml.as_bytes(), "p.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(policy: &HostVolumePolicy, source: &Path) -> String {
        match policy.check(&pod(source), "p.yaml") {
            Ok(r) => panic!("{} accepted as {r:?}", source.display()),
            Err(e) => {
                assert_eq!(e.exit(), Exit::InvalidInput, "{e}");
                let msg = e.to_string();
                assert!(msg.contains("p.yaml") && msg.contains("volumes[0] (v)"), "{msg}");
                msg
            }
        }
    }

    #[test]
    fn system_paths_and_pods_own_state_are_refused() {
        let host = Host::new();
        let policy = host.policy();
        for p in ["/", "/proc", "/proc/1", "/sys/fs", "/dev", "/dev/shm", "/boot", "/etc", "/usr", "/var", "/run"] {
            if Path::new(p).is_dir() {
                let msg = refused(&policy, Path::new(p));
                assert!(msg.contains("never mounted"), "{msg}");
            }
        }
        for p in ["data", "data/images", "config", ""] {
            let path = host.path(p);
            fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
            let msg = refused(&policy, &path);
            assert!(msg.contains("pod's own state"), "{msg}");
        }
        let ok = policy.check(&pod(&host.path("srv/www")), "p.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok, [Some(host.path("srv/www").canonicalize().unwrap_or_default())]);
    }

    #[test]
    fn symlinks_are_resolved_before_the_check() {
        let host = Host::new();
        let link = host.path("srv/innocent");
        symlink("/etc", &link).unwrap_or_else(|e| panic!("{e}"));
        let msg = refused(&host.policy(), &link);
        assert!(msg.contains("resolves to /etc"), "{msg}");
        let to_store = host.path("srv/cache");
        symlink(host.path("data"), &to_store).unwrap_or_else(|e| panic!("{e}"));
        refused(&host.policy(), &to_store);
        let file = host.path("srv/file");
        fs::write(&file, "x").unwrap_or_else(|e| panic!("{e}"));
        assert!(refused(&host.policy(), &file).contains("not a directory"));
        assert!(refused(&host.policy(), &host.path("srv/missing")).contains("No such file"));
    }

    #[test]
    fn the_allowlist_limits_host_volumes_to_its_directories() {
        let host = Host::new();
        let list = host.path("config").join(ALLOWLIST_FILE);
        fs::write(&list, format!("# served content\n{}/srv/www   # the site\n\n", host.tmp.path().display()))
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = host.policy();
        assert!(policy.check(&pod(&host.path("srv/www")), "p.yaml").is_ok());
        let msg = refused(&policy, &host.path("srv/secret"));
        assert!(msg.contains("host-volumes") && msg.contains("srv/www"), "{msg}");

        fs::write(&list, "").unwrap_or_else(|e| panic!("{e}"));
        assert!(refused(&host.policy(), &host.path("srv/www")).contains("allows no host volumes"));

        fs::write(&list, "srv/www\n").unwrap_or_else(|e| panic!("{e}"));
        let err = HostVolumePolicy::load(&host.dirs()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("host-volumes: line 1") && err.contains("not an absolute path"), "{err}");

        fs::write(&list, "/srv\n").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&list, fs::Permissions::from_mode(0o666)).unwrap_or_else(|e| panic!("{e}"));
        let err = HostVolumePolicy::load(&host.dirs()).err().unwrap_or_else(|| panic!("a writable allowlist"));
        assert_eq!(err.exit(), Exit::InvalidInput);
        assert!(err.to_string().contains("writable by group or others"), "{err}");
    }
}
