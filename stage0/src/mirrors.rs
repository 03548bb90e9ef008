//! Registry mirrors: where registry images under a name prefix are pulled
//! from first, as containers' `registries.conf` mirrors. A YAML list in
//! `<config>/mirrors.yaml`:
//!
//! ```yaml
//! - prefix: registry.k8s.io/
//!   mirror: docker://127.0.0.1:5000/mirror/registry.k8s.io/
//! ```
//!
//! Unlike a source (`pod source add`), a mirror does not rename the image:
//! `registry.k8s.io/pause:3.9` pulled through the mirror above is fetched
//! from `127.0.0.1:5000/mirror/registry.k8s.io/pause:3.9` but stored, tagged
//! and verified as `registry.k8s.io/pause:3.9`, its signature checked
//! against the keys trusted for that name. When every mirror fails the
//! image is pulled from its own registry.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spec::oci::Reference;

use crate::exit::{Exit, ExitCodeOf};
use crate::listfile::{self, ListFileError};
use crate::trust::Scope;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid mirror: {0}")]
    Invalid(String),
    #[error("no mirror with prefix {0:?}")]
    NotFound(String),
}

impl From<ListFileError> for MirrorError {
    fn from(e: ListFileError) -> Self {
        match e {
            ListFileError::Io { op, path, source } => Self::Io { op, path, source },
            ListFileError::Parse { path, source } => Self::Parse { path, source },
        }
    }
}

impl ExitCodeOf for MirrorError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::NotFound(_) => Exit::NotFound,
            _ => Exit::InvalidInput,
        }
    }
}

/// One mirror: registry names under `prefix` are looked for under
/// `mirror` (`docker://HOST[:PORT][/PATH]`) first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub prefix: String,
    pub mirror: String,
}

impl Mirror {
    /// Validates the prefix (as trust prefixes are written) and the mirror
    /// location (a registry, optionally with a repository path).
    pub fn new(prefix: &str, mirror: &str) -> Result<Self, MirrorError> {
        Scope::prefix(prefix).map_err(|e| MirrorError::Invalid(e.to_string()))?;
        if prefix.is_empty() {
            return Err(MirrorError::Invalid("the prefix is empty".into()));
        }
        let m = Self { prefix: prefix.to_owned(), mirror: mirror.to_owned() };
        // A name under the mirror's path must be a valid reference.
        let body = m.location()?;
        let probe = if body.contains('/') { format!("{body}/x") } else { format!("{body}/library/x") };
        Reference::parse(&probe).map_err(|why| MirrorError::Invalid(format!("mirror {mirror:?}: {why}")))?;
        Ok(m)
    }

    /// The mirror without `docker://` and trailing `/`.
    fn location(&self) -> Result<&str, MirrorError> {
        let body = self.mirror.strip_prefix("docker://").ok_or_else(|| {
            MirrorError::Invalid(format!("mirror {:?} must start with docker:// (a registry)", self.mirror))
        })?;
        let body = body.trim_end_matches('/');
        if body.is_empty() {
            return Err(MirrorError::Invalid(format!("mirror {:?} names no registry", self.mirror)));
        }
        Ok(body)
    }

    /// Where `r` is looked for on this mirror, if its name is under the
    /// prefix: the rest of the name after the prefix, under the mirror's
    /// path, with the same tag and digest.
    pub fn rewrite(&self, r: &Reference) -> Option<Reference> {
        let name = r.name();
        let name = name.as_str();
        if !Scope::Prefix(self.prefix.clone()).covers(name) {
            return None;
        }
        let rest = name.strip_prefix(&self.prefix)?.trim_start_matches('/');
        let base = self.location().ok()?;
        let repo = if rest.is_empty() { base.to_owned() } else { format!("{base}/{rest}") };
        let mut s = repo;
        if let Some(t) = &r.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &r.digest {
            s.push('@');
            s.push_str(d);
        }
        Reference::parse(&s).ok()
    }
}

/// The configured mirrors, backed by one YAML file.
#[derive(Debug, Clone)]
pub struct Mirrors {
    path: PathBuf,
}

impl Mirrors {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn list(&self) -> Result<Vec<Mirror>, MirrorError> {
        let list: Vec<Mirror> = listfile::read(&self.path)?;
        for m in &list {
            Mirror::new(&m.prefix, &m.mirror)
                .map_err(|e| MirrorError::Invalid(format!("{}: {e}", self.path.display())))?;
        }
        Ok(list)
    }

    fn save(&self, list: &[Mirror]) -> Result<(), MirrorError> {
        Ok(listfile::write(&self.path, list)?)
    }

    /// Adds a mirror; a prefix may have several, tried in the order added.
    /// Adding one that is there already changes nothing.
    pub fn add(&self, mirror: Mirror) -> Result<(), MirrorError> {
        let mut list = self.list()?;
        if !list.contains(&mirror) {
            list.push(mirror);
        }
        self.save(&list)
    }

    /// Removes every mirror of `prefix`.
    pub fn remove(&self, prefix: &str) -> Result<(), MirrorError> {
        let mut list = self.list()?;
        let before = list.len();
        list.retain(|m| m.prefix != prefix);
        if list.len() == before {
            return Err(MirrorError::NotFound(prefix.to_owned()));
        }
        self.save(&list)
    }

    /// Where to look for `r` before its own registry: the mirrors of the
    /// longest prefix that covers its name, in the order they were added.
    pub fn candidates(&self, r: &Reference) -> Result<Vec<Reference>, MirrorError> {
        let list = self.list()?;
        let name = r.name();
        let Some(longest) =
            list.iter().filter(|m| Scope::Prefix(m.prefix.clone()).covers(name.as_str())).map(|m| m.prefix.len()).max()
        else {
            return Ok(Vec::new());
        };
        Ok(list.iter().filter(|m| m.prefix.len() == longest).filter_map(|m| m.rewrite(r)).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn a_mirror_keeps_the_path_tag_and_digest() {
        let m = Mirror::new("registry.k8s.io/", "docker://127.0.0.1:5000/mirror/registry.k8s.io/").unwrap();
        let got = m.rewrite(&r("registry.k8s.io/e2e-test-images/busybox:1.29-2")).unwrap();
        assert_eq!(got.to_string(), "127.0.0.1:5000/mirror/registry.k8s.io/e2e-test-images/busybox:1.29-2");
        let digest = format!("sha256:{}", "a".repeat(64));
        let got = m.rewrite(&r(&format!("registry.k8s.io/pause@{digest}"))).unwrap();
        assert_eq!(got.to_string(), format!("127.0.0.1:5000/mirror/registry.k8s.io/pause@{digest}"));
        assert!(m.rewrite(&r("registry.k8s.io.evil.example/pause:1")).is_none());
        assert!(m.rewrite(&r("gcr.io/pause:1")).is_none());
        // A mirror at a registry's root.
        let root = Mirror::new("gcr.io/k8s-staging-cri-tools/", "docker://127.0.0.1:5000").unwrap();
        let got = root.rewrite(&r("gcr.io/k8s-staging-cri-tools/test-image-tags:1")).unwrap();
        assert_eq!(got.to_string(), "127.0.0.1:5000/test-image-tags:1");
        // A prefix without a slash matches whole path components only.
        let bare = Mirror::new("gcr.io/team", "docker://127.0.0.1:5000/m").unwrap();
        assert_eq!(bare.rewrite(&r("gcr.io/team/app:1")).unwrap().to_string(), "127.0.0.1:5000/m/app:1");
        assert!(bare.rewrite(&r("gcr.io/teamx/app:1")).is_none());
    }

    #[test]
    fn bad_mirrors_are_refused() {
        assert!(Mirror::new("registry.k8s.io/", "https://127.0.0.1:5000/").is_err());
        assert!(Mirror::new("registry.k8s.io/", "docker://").is_err());
        assert!(Mirror::new("registry.k8s.io/", "docker://127.0.0.1:5000/UPPER/").is_err());
        assert!(Mirror::new("", "docker://127.0.0.1:5000/").is_err());
        assert!(Mirror::new("Bad Prefix/", "docker://127.0.0.1:5000/").is_err());
    }

    #[test]
    fn the_longest_prefix_wins_and_mirrors_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let ms = Mirrors::new(dir.path().join("mirrors.yaml"));
        assert!(ms.candidates(&r("registry.k8s.io/pause:3.9")).unwrap().is_empty());
        ms.add(Mirror::new("registry.k8s.io/", "docker://127.0.0.1:5000/a").unwrap()).unwrap();
        ms.add(Mirror::new("registry.k8s.io/", "docker://127.0.0.1:5001/b").unwrap()).unwrap();
        ms.add(Mirror::new("registry.k8s.io/", "docker://127.0.0.1:5001/b").unwrap()).unwrap();
        ms.add(Mirror::new("registry.k8s.io/e2e-test-images/", "docker://127.0.0.1:5002").unwrap()).unwrap();
        let got: Vec<String> =
            ms.candidates(&r("registry.k8s.io/pause:3.9")).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(got, ["127.0.0.1:5000/a/pause:3.9", "127.0.0.1:5001/b/pause:3.9"]);
        let got = ms.candidates(&r("registry.k8s.io/e2e-test-images/nginx:1.14-2")).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].to_string(), "127.0.0.1:5002/nginx:1.14-2");
        ms.remove("registry.k8s.io/").unwrap();
        assert_eq!(ms.list().unwrap().len(), 1);
        assert!(matches!(ms.remove("registry.k8s.io/"), Err(MirrorError::NotFound(_))));
    }
}
