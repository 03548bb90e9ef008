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
//!
//! A prefix is either an appc name prefix (`example.com/`) or an OCI registry
//! name prefix: a registry host with an optional port, then repository path
//! components (`127.0.0.1:5000/team/`, `registry.example.com/`). Both match
//! the way [`AcIdentifier::has_prefix`] does: a prefix ending in `/` matches
//! names starting with it, any other only at a path boundary, so
//! `127.0.0.1:5000/team` covers `127.0.0.1:5000/team/web` but not
//! `127.0.0.1:5000/teamx/web`. Key files are stored as they are read: a
//! pod-ed25519 line or a PEM SubjectPublicKeyInfo (see `keys`).

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
    /// Validates a user-given prefix: an AC identifier or a registry name
    /// (`host[:port]/path`, lowercase), optionally ending in '/'.
    pub fn prefix(p: &str) -> Result<Self, TrustError> {
        let body = p.strip_suffix('/').unwrap_or(p);
        if let Err(ac) = AcIdentifier::new(body) {
            // A registry name has a ':' (port) or is an IPv6 literal; report
            // the grammar the user was most likely aiming at.
            let registry_like = body.contains(':') || body.starts_with('[');
            check_registry_prefix(body).map_err(|why| TrustError::Prefix {
                prefix: p.to_owned(),
                why: if registry_like { why } else { ac.to_string() },
            })?;
        }
        Ok(Self::Prefix(p.to_owned()))
    }
    /// True if `name` (an appc name, or an OCI repository such as
    /// `127.0.0.1:5000/team/web`) is under this scope.
    pub fn covers(&self, name: &(impl AsRef<str> + ?Sized)) -> bool {
        match self {
            Self::Root => true,
            Self::Prefix(p) => has_prefix(name.as_ref(), p),
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

/// [`AcIdentifier::has_prefix`]'s rule, for any name.
fn has_prefix(name: &str, prefix: &str) -> bool {
    if prefix.is_empty() || prefix.ends_with('/') {
        return name.starts_with(prefix);
    }
    name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The distribution spec's repository name, lowercase only: a registry host
/// (DNS labels or an IPv4 address, or a bracketed IPv6 literal) with an
/// optional port, then path components of `[a-z0-9]` runs joined by `.`,
/// `_`, `__` or dashes.
fn check_registry_prefix(body: &str) -> Result<(), String> {
    const MAX: usize = 255;
    if body.len() > MAX {
        return Err(format!("longer than {MAX} characters"));
    }
    let mut parts = body.split('/');
    let host = parts.next().unwrap_or_default();
    check_host(host)?;
    for c in parts {
        check_path_component(c)?;
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing the registry host".into());
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("unclosed '[' in the registry host")?;
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':') {
            return Err(format!("{host:?} is not an IPv6 address in brackets (lowercase hex)"));
        }
        match after {
            "" => (None, None),
            a => (None, Some(a.strip_prefix(':').ok_or_else(|| format!("junk after the IPv6 address in {host:?}"))?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(format!("port {port:?} is not a number from 0 to 65535"));
        }
    }
    if let Some(name) = name {
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!(
                    "registry host {name:?}: {label:?} is not a lowercase DNS label (a-z, 0-9, '-' inside)"
                ));
            }
        }
    }
    Ok(())
}

fn check_path_component(c: &str) -> Result<(), String> {
    let bad = || format!("path component {c:?} is not lowercase a-z/0-9 runs joined by '.', '_', '__' or '-'");
    if c.is_empty() {
        return Err("empty path component ('//')".into());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return Err(bad());
        }
    }
    Ok(())
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
        f.write_all(key.to_file_text().as_bytes()).map_err(io_err("write", &tmp))?;
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

    /// The keys trusted for `name` (an appc name or an OCI repository such
    /// as `127.0.0.1:5000/team/web`): every entry whose scope covers it.
    pub fn keys_for(&self, name: &str) -> Result<Vec<TrustedKey>, TrustError> {
        Ok(self.list()?.into_iter().filter(|t| t.scope.covers(name)).collect())
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

    #[test]
    fn registry_prefixes() {
        for ok in [
            "127.0.0.1:5000/team/",
            "127.0.0.1:5000/team",
            "registry.example.com/",
            "registry.example.com",
            "localhost:5000/",
            "[::1]:5000/a/b_c/d__e/f-g--h/",
            "ghcr.io/org/app.v2",
        ] {
            assert!(Scope::prefix(ok).is_ok(), "{ok}: {:?}", Scope::prefix(ok).err());
        }
        for bad in [
            "127.0.0.1:5000/../x",
            "127.0.0.1:5000//x",
            "127.0.0.1:5000/Team/",
            "Registry.example.com:5000/",
            "127.0.0.1:99999/",
            "127.0.0.1:/x",
            "127.0.0.1:5000/a_-b",
            "127.0.0.1:5000/-a",
            ":5000/x",
            "[::1/x",
            "",
        ] {
            let err = Scope::prefix(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(err.exit(), Exit::InvalidInput);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let team = Scope::prefix("127.0.0.1:5000/team/").unwrap_or_else(|e| panic!("{e}"));
        assert!(team.covers("127.0.0.1:5000/team/web"));
        assert!(team.covers("127.0.0.1:5000/team/sub/web"));
        assert!(!team.covers("127.0.0.1:5000/teamx/web"));
        assert!(!team.covers("127.0.0.1:5001/team/web"));
        let bare = Scope::prefix("127.0.0.1:5000/team").unwrap_or_else(|e| panic!("{e}"));
        assert!(bare.covers("127.0.0.1:5000/team/web") && bare.covers("127.0.0.1:5000/team"));
        assert!(!bare.covers("127.0.0.1:5000/teamx/web"));
        let host = Scope::prefix("registry.example.com").unwrap_or_else(|e| panic!("{e}"));
        assert!(host.covers("registry.example.com/a/b") && !host.covers("registry.example.community/a"));
        assert!(Scope::Root.covers("127.0.0.1:5000/anything"));
        // appc names keep their rule, through &str and AcIdentifier alike.
        let appc = Scope::prefix("example.com").unwrap_or_else(|e| panic!("{e}"));
        let name = AcIdentifier::new("example.com/redis").unwrap_or_else(|e| panic!("{e}"));
        assert!(appc.covers(&name) && appc.covers("example.com/redis") && !appc.covers("example.community/x"));
    }

    #[test]
    fn pem_keys_in_the_store() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pem = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuUluwuUK3kNZq6kgMSI26oa4icaQ
a0evC8SdEsaa5OQm6Wdgfcro8JaKPAXGBD6q0XTasMYmWKLHz7bNuAbrbQ==
-----END PUBLIC KEY-----
";
        let file = dir.path().join("cosign.pub");
        fs::write(&file, pem).unwrap_or_else(|e| panic!("{e}"));
        let store = TrustStore::new(dir.path().join("trust"));
        let team = Scope::prefix("127.0.0.1:5000/team/").unwrap_or_else(|e| panic!("{e}"));
        let k = store.add(&team, &file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.kind(), keys::KeyKind::EcdsaP256);
        let stored = dir.path().join("trust/prefix.d/127.0.0.1:5000%2fteam%2f").join(format!("{}.pub", k.id));
        assert_eq!(fs::read_to_string(&stored).ok().as_deref(), Some(pem), "stored as PEM under its ID");
        let pod = keys::generate().unwrap_or_else(|e| panic!("{e}"));
        keys::write_keypair(dir.path(), "p", &pod, "pod key").unwrap_or_else(|e| panic!("{e}"));
        store
            .add(&Scope::prefix("example.com/").unwrap_or_else(|e| panic!("{e}")), &dir.path().join("p.pub"))
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = store.list().unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<_> = listed.iter().map(|t| (t.scope.to_string(), t.key.kind())).collect();
        assert_eq!(
            kinds,
            [
                ("127.0.0.1:5000/team/".to_owned(), keys::KeyKind::EcdsaP256),
                ("example.com/".to_owned(), keys::KeyKind::PodEd25519)
            ]
        );
        let for_web = store.keys_for("127.0.0.1:5000/team/web").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(for_web.iter().map(|t| &t.key.id).collect::<Vec<_>>(), [&k.id]);
        assert!(store.keys_for("127.0.0.1:5000/teamx/web").unwrap_or_else(|e| panic!("{e}")).is_empty());
        assert_eq!(store.remove(k.id.as_str(), Some(&team)).ok(), Some(1));
    }
}
