//! Registry authentication pieces: `WWW-Authenticate` challenges, and
//! credentials from a containers-style `auth.json` (or Docker's
//! `config.json`), looked up by registry host and repository.
//!
//! Credentials never appear in an error message, a log line or `Debug`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::exit::{Exit, ExitCodeOf};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `why` never quotes the file's content: it holds secrets.
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
}

impl ExitCodeOf for AuthError {
    fn exit(&self) -> Exit {
        match self {
            Self::Read { .. } => Exit::Failure,
            Self::Format { .. } => Exit::InvalidInput,
        }
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `bearer`, `basic`, ...
    pub scheme: String,
    /// Parameter names lowercased, values unquoted.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more
/// challenges, each a scheme then `name=value` parameters, values a token or
/// a quoted string (with `\` escapes, and commas inside quotes).
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        header[start..*i].to_owned()
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            return Err(format!("unexpected {:?} at byte {i}", char::from(b[i])));
        }
        let mut ch = Challenge { scheme: scheme.to_ascii_lowercase(), params: BTreeMap::new() };
        loop {
            skip_ws(&mut i);
            while i < b.len() && b[i] == b',' {
                i += 1;
                skip_ws(&mut i);
            }
            if i >= b.len() {
                break;
            }
            let mark = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= b.len() || b[i] != b'=' {
                // Not a parameter: the next challenge's scheme.
                if name.is_empty() {
                    return Err(format!("unexpected {:?} at byte {i}", char::from(b[i])));
                }
                i = mark;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match b.get(i) {
                        None => return Err(format!("unterminated quoted value of {name}")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < b.len() => {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                String::from_utf8(v).map_err(|_| format!("value of {name} is not UTF-8"))?
            } else {
                // A token by the RFC; anything up to a comma or blank is
                // taken, as some registries send unquoted URLs.
                let start = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t' | b'"') {
                    i += 1;
                }
                let v = header[start..i].to_owned();
                if v.is_empty() {
                    return Err(format!("empty value of {name}"));
                }
                v
            };
            ch.params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(ch);
    }
    if out.is_empty() {
        return Err("no challenge".to_owned());
    }
    Ok(out)
}

/// A user name and password; `Debug` hides both.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// The auth file to use when none is given: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
/// `~/.docker/config.json`, the first that exists. The environment and the
/// file system come in as functions, for tests.
pub fn default_auth_file(env: impl Fn(&str) -> Option<OsString>, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = env("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p).join("containers/auth.json"));
    }
    if let Some(home) = env("HOME").filter(|p| !p.is_empty()) {
        let home = PathBuf::from(home);
        candidates.push(home.join(".config/containers/auth.json"));
        candidates.push(home.join(".docker/config.json"));
    }
    candidates.into_iter().find(|p| exists(p))
}

/// The entries of an auth file, keyed by `host[:port][/path]` (normalised:
/// no scheme, no trailing `/`, no Docker `/v1` `/v2` suffix).
#[derive(Clone, Default)]
pub struct AuthFile {
    pub path: Option<PathBuf>,
    entries: BTreeMap<String, Credentials>,
}

impl fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFile").field("path", &self.path).field("keys", &self.entries.keys()).finish()
    }
}

fn normalise_key(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let mut k = k.trim_end_matches('/').to_ascii_lowercase();
    for suffix in ["/v1", "/v2"] {
        if let Some(s) = k.strip_suffix(suffix) {
            k = s.to_owned();
        }
    }
    // Docker's own name for Docker Hub.
    if k == "index.docker.io" || k == "registry-1.docker.io" {
        k = "docker.io".to_owned();
    }
    k
}

impl AuthFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { path: Some(path.to_owned()), entries: BTreeMap::new() })
            }
            Err(source) => return Err(AuthError::Read { path: path.to_owned(), source }),
        };
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, AuthError> {
        let fmt_err = |why: &str| AuthError::Format { path: path.to_owned(), why: why.to_owned() };
        // serde_json's messages may quote input: keep only the position.
        let v: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| fmt_err(&format!("not JSON (line {}, column {})", e.line(), e.column())))?;
        let mut entries = BTreeMap::new();
        if let Some(auths) = v.get("auths") {
            let auths = auths.as_object().ok_or_else(|| fmt_err("\"auths\" is not an object"))?;
            for (key, entry) in auths {
                let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) else {
                    tracing::debug!(path = %path.display(), key, "auth file entry without \"auth\"; skipped");
                    continue;
                };
                let bad = || fmt_err(&format!("the \"auth\" of {key} is not base64 of user:password"));
                let raw = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
                let raw = String::from_utf8(raw).map_err(|_| bad())?;
                let (user, pass) = raw.split_once(':').ok_or_else(bad)?;
                entries
                    .insert(normalise_key(key), Credentials { username: user.to_owned(), password: pass.to_owned() });
            }
        }
        if v.get("credsStore").is_some() || v.get("credHelpers").is_some() {
            tracing::debug!(path = %path.display(), "credential helpers are not supported; only \"auths\" is used");
        }
        Ok(Self { path: Some(path.to_owned()), entries })
    }

    /// The credentials for `repo` on `host` (`host[:port]`): the most
    /// specific of `host/ns/repo`, `host/ns`, `host`.
    pub fn lookup(&self, host: &str, repo: &str) -> Option<&Credentials> {
        let host = normalise_key(host);
        let mut key = format!("{host}/{repo}");
        loop {
            if let Some(c) = self.entries.get(&key) {
                return Some(c);
            }
            match key.rfind('/') {
                Some(i) => key.truncate(i),
                None => return None,
            }
        }
    }

    /// The entry for exactly `host` (a token realm's host), no path.
    pub fn lookup_host(&self, host: &str) -> Option<&Credentials> {
        self.entries.get(&normalise_key(host))
    }

    /// What an error message may say about where credentials came from.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "no auth file".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_with_quoted_commas_and_several_schemes() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .expect("parse");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));

        let c =
            parse_challenges(r#"Basic realm="Registry \"x\"", Bearer realm=https://a/t, service=s"#).expect("parse");
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].scheme.as_str(), c[0].param("realm")), ("basic", Some("Registry \"x\"")));
        assert_eq!((c[1].scheme.as_str(), c[1].param("service")), ("bearer", Some("s")));

        assert_eq!(parse_challenges("Basic").expect("bare")[0].params.len(), 0);
        for bad in ["", "Bearer realm=\"unterminated", "Bearer realm=", "Bearer =x", "\"x\""] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} should be refused");
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_file_lookup_prefers_the_most_specific_key() {
        let json = format!(
            r#"{{"auths":{{
                "reg.example:5000":{{"auth":"{}"}},
                "reg.example:5000/team":{{"auth":"{}"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "https://other.example/":{{"auth":"{}"}},
                "empty.example":{{}}
            }}}}"#,
            b64("host:1"),
            b64("team:2"),
            b64("hub:3"),
            b64("other:4")
        );
        let f = AuthFile::parse(Path::new("/x/auth.json"), json.as_bytes()).expect("parse");
        let user = |h: &str, r: &str| f.lookup(h, r).map(|c| c.username.clone());
        assert_eq!(user("reg.example:5000", "team/app").as_deref(), Some("team"));
        assert_eq!(user("reg.example:5000", "teamx/app").as_deref(), Some("host"));
        assert_eq!(user("reg.example:5000", "app").as_deref(), Some("host"));
        assert_eq!(user("reg.example", "app"), None, "another port is another registry");
        assert_eq!(user("docker.io", "library/alpine").as_deref(), Some("hub"));
        assert_eq!(user("registry-1.docker.io", "library/alpine").as_deref(), Some("hub"));
        assert_eq!(user("other.example", "x").as_deref(), Some("other"));
        assert_eq!(user("empty.example", "x"), None);
        assert_eq!(f.lookup("reg.example:5000", "app").map(|c| c.password.as_str()), Some("1"));
        assert!(!format!("{f:?}").contains('1'), "Debug shows no secret");

        let bad = format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nocolon"));
        let e = AuthFile::parse(Path::new("/x/auth.json"), bad.as_bytes()).expect_err("no colon");
        assert!(!e.to_string().contains("nocolon") && e.to_string().contains("/x/auth.json"), "{e}");
    }

    #[test]
    fn default_auth_file_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        let all = &[("REGISTRY_AUTH_FILE", "/a.json"), ("XDG_RUNTIME_DIR", "/run/u"), ("HOME", "/h")];
        let only = |existing: &'static [&'static str]| move |p: &Path| existing.iter().any(|e| Path::new(e) == p);
        assert_eq!(default_auth_file(env(all), only(&["/a.json", "/h/.docker/config.json"])), Some("/a.json".into()));
        assert_eq!(
            default_auth_file(env(all), only(&["/run/u/containers/auth.json", "/h/.docker/config.json"])),
            Some("/run/u/containers/auth.json".into())
        );
        assert_eq!(
            default_auth_file(env(all), only(&["/h/.config/containers/auth.json", "/h/.docker/config.json"])),
            Some("/h/.config/containers/auth.json".into())
        );
        assert_eq!(
            default_auth_file(env(all), only(&["/h/.docker/config.json"])),
            Some("/h/.docker/config.json".into())
        );
        assert_eq!(default_auth_file(env(&[]), only(&["/h/.docker/config.json"])), None);
    }
}
