//! Trusted keys, each trusted for a name prefix (or, explicitly, for every
//! name). Stored as plain key files, one directory per prefix:
//!
//! ```text
//! <config>/trust/prefix.d/<prefix with '/' as %2f>/<key ID>.pub
//! <config>/trust/root.d/<key ID>.pub
//! ```
//!
//! A directory per prefix makes add and remove single atomic file operations,
//! safe under concurrent `pod` processes, with nothing to parse but key files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use spec::AcIdentifier;

use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{self, KeyError, KeyId, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid trust prefix {prefix:?}: {why}")]
    Prefix { prefix: String, why: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no trusted key {key}{}", .prefix.as_ref().map(|p| format!(" for prefix {p:?}")).unwrap_or_default())]
    NotTrusted { key: String, prefix: Option<String> },
}

impl ExitCodeOf for TrustError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::Prefix { .. } => Exit::InvalidInput,
            Self::Key(e) => e.exit(),
            Self::NotTrusted { .. } => Exit::NotFound,
        }
    }
}

/// What a trusted key may sign.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every image name (`pod trust add --root`).
    Root,
    /// Names under this prefix.
    Prefix(String),
}

impl Scope {
    /// Validates a user-given prefix: an AC identifier, optionally ending in '/'.
    pub fn prefix(p: &str) -> Result<Self, TrustError> {
        let body = p.strip_suffix('/').unwrap_or(p);
        AcIdentifier::new(body).map_err(|e| TrustError::Prefix { prefix: p.to_owned(), why: e.to_string() })?;
        Ok(Self::Prefix(p.to_owned()))
    }
    pub fn covers(&self, name: &AcIdentifier) -> bool {
        match self {
            Self::Root => true,
            Self::Prefix(p) => name.has_prefix(p),
        }
    }
    fn dir(&self, trust: &Path) -> PathBuf {
        match self {
            Self::Root => trust.join("root.d"),
            Self::Prefix(p) => trust.join("prefix.d").join(p.replace('/', "%2f")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root => f.write_str("(all names)"),
            Self::Prefix(p) => f.write_str(p),
        }
    }
}

/// One trusted key and its scope.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub scope: Scope,
    pub key: PublicKey,
}

/// The trust store rooted at `<config>/trust`.
#[derive(Debug, Clone)]
pub struct TrustStore {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TrustError + 'a {
    move |source| TrustError::Io { op, path: path.to_owned(), source }
}

impl TrustStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Trusts the key in `key_file` for `scope`. Idempotent. Returns the key.
    pub fn add(&self, scope: &Scope, key_file: &Path) -> Result<PublicKey, TrustError> {
        let key = PublicKey::load_trusted(key_file)?;
        let dir = scope.dir(&self.root);
        // Explicit modes (the umask can only take bits away): `list` refuses
        // anything here that group or others can write.
        fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir).map_err(io_err("create directory", &dir))?;
        let dest = dir.join(format!("{}.pub", key.id));
        let tmp = dir.join(format!(".{}.{}.tmp", key.id, std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(key.to_line().as_bytes()).map_err(io_err("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        Ok(key)
    }

    /// Removes trust in `key` for `scope`, or for every scope when `None`.
    /// Returns how many entries were removed; none is an error.
    pub fn remove(&self, key: &str, scope: Option<&Scope>) -> Result<usize, TrustError> {
        let mut removed = 0;
        for t in self.list()? {
            let hit = t.key.id.as_str() == key || (key.len() >= 8 && t.key.id.as_str().starts_with(key));
            if hit && scope.is_none_or(|s| *s == t.scope) {
                let p = t.scope.dir(&self.root).join(format!("{}.pub", t.key.id));
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
                removed += 1;
            }
        }
        if removed == 0 {
            return Err(TrustError::NotTrusted { key: key.to_owned(), prefix: scope.map(ToString::to_string) });
        }
        Ok(removed)
    }

    /// Every trusted key with its scope, sorted by scope then key ID.
    ///
    /// A key file, or a directory on the way to one, that group or others
    /// can write (or that another user owns) is an error naming it, never
    /// skipped: whoever could write it could make pod trust their key.
    pub fn list(&self) -> Result<Vec<TrustedKey>, TrustError> {
        let mut out = Vec::new();
        let dir_rule = |dir: &Path| -> Result<(), TrustError> {
            match fs::metadata(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                _ => Ok(keys::check_owner_only(dir, "directory of trusted keys")?),
            }
        };
        dir_rule(&self.root)?;
        dir_rule(&self.root.join("prefix.d"))?;
        let mut scan = |dir: &Path, scope: Scope| -> Result<(), TrustError> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(TrustError::Io { op: "read directory", path: dir.to_owned(), source: e }),
            };
            dir_rule(dir)?;
            for entry in entries {
                let entry = entry.map_err(io_err("read directory", dir))?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pub") && !entry.file_name().to_string_lossy().starts_with('.')
                {
                    out.push(TrustedKey { scope: scope.clone(), key: PublicKey::load_trusted(&path)? });
                }
            }
            Ok(())
        };
        scan(&Scope::Root.dir(&self.root), Scope::Root)?;
        let prefixes = self.root.join("prefix.d");
        match fs::read_dir(&prefixes) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err("read directory", &prefixes))?;
                    let prefix = entry.file_name().to_string_lossy().replace("%2f", "/");
                    scan(&entry.path(), Scope::Prefix(prefix))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(TrustError::Io { op: "read directory", path: prefixes, source: e }),
        }
        out.sort_by(|a, b| (&a.scope, &a.key.id).cmp(&(&b.scope, &b.key.id)));
        Ok(out)
    }

    /// Trusted entries for one key ID (any scope).
    pub fn by_id(&self, id: &KeyId) -> Result<Vec<TrustedKey>, TrustError> {
        Ok(self.list()?.into_iter().filter(|t| &t.key.id == id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let k = keys::generate().unwrap_or_else(|e| panic!("{e}"));
        let public = keys::write_keypair(dir.path(), "k", &k, "").unwrap_or_else(|e| panic!("{e}"));
        let store = TrustStore::new(dir.path().join("trust"));
        let scope = Scope::prefix("example.com/").unwrap_or_else(|e| panic!("{e}"));
        store.add(&scope, &dir.path().join("k.pub")).unwrap_or_else(|e| panic!("{e}"));
        store.add(&scope, &dir.path().join("k.pub")).unwrap_or_else(|e| panic!("{e}"));
        store.add(&Scope::Root, &dir.path().join("k.pub")).unwrap_or_else(|e| panic!("{e}"));
        let listed = store.list().unwrap_or_default();
        assert_eq!(listed.len(), 2);
        assert_eq!(store.by_id(&public.id).map(|v| v.len()).ok(), Some(2));
        let name = AcIdentifier::new("example.com/redis").unwrap_or_else(|e| panic!("{e}"));
        let other = AcIdentifier::new("evil.com/redis").unwrap_or_else(|e| panic!("{e}"));
        assert!(scope.covers(&name) && !scope.covers(&other));
        assert_eq!(store.remove(public.id.as_str(), Some(&Scope::Root)).ok(), Some(1));
        assert_eq!(store.list().map(|v| v.len()).ok(), Some(1));
        assert!(store.remove(public.id.as_str(), Some(&Scope::Root)).is_err());
        assert!(Scope::prefix("../etc").is_err());
        assert!(Scope::prefix("Example.com/").is_err());
    }
}
