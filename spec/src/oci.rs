//! OCI image references, as `pod fetch`, `pod run` and pod files write them:
//!
//! ```text
//! docker://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]   a registry (distribution API v2)
//! oci:DIR[:TAG]                                      an OCI image layout directory
//! oci-archive:FILE[:TAG]                             a tar of an OCI image layout
//! docker-archive:FILE[:NAME:TAG]                     what `docker save` / `podman save` write
//! ```
//!
//! Registry names are normalised as docker and containers/image do: a first
//! component with no `.` or `:` that is not `localhost` is a Docker Hub path
//! (`nginx` is `docker.io/library/nginx`), and the tag defaults to `latest`.
//! Parsing only; no I/O.

use std::fmt;

use crate::name::ImageName;

/// Longest reference accepted (docker's limit on a whole name is 255 for
/// the repository; a tag is at most 128 and a digest 71).
const MAX_REFERENCE: usize = 512;
const MAX_TAG: usize = 128;

/// Docker Hub, as names spell it.
pub const DOCKER_HUB: &str = "docker.io";

/// A registry reference, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path inside the registry, e.g. `team/web`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]` (without `docker://`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_REFERENCE {
            return Err(format!("image reference is {} bytes long; the limit is {MAX_REFERENCE}", s.len()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d)?;
                (r, Some(d.to_owned()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':'
        // before it gives the registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_owned()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            check_tag(t)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), repo.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        if repository.is_empty() {
            return Err(format!("image reference {s:?} names no repository"));
        }
        let r = Self {
            registry,
            repository,
            tag: if digest.is_some() { tag } else { tag.or(Some("latest".into())) },
            digest,
        };
        ImageName::new(r.name_string()).map_err(|e| format!("image reference {s:?}: {e}"))?;
        Ok(r)
    }

    fn name_string(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository`: the image's name, what trust prefixes match.
    pub fn name(&self) -> ImageName {
        // Validated by `parse`.
        ImageName::new(self.name_string()).unwrap_or_else(|_| unreachable!("validated when parsed"))
    }

    /// What the registry is asked for: the digest if pinned, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok_first = t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok_first || t.len() > MAX_TAG || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(format!(
            "invalid tag {t:?}: up to {MAX_TAG} letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// `sha256:<64 lowercase hex>`: the only digest algorithm pod accepts.
pub fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(format!("invalid digest {d:?}: expected sha256: and 64 lowercase hex digits")),
    }
}

/// Where an OCI image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciSource {
    Registry(Reference),
    /// An OCI image layout directory; the tag picks an entry of its index
    /// (`org.opencontainers.image.ref.name`), or its only entry.
    Layout {
        dir: String,
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        file: String,
        tag: Option<String>,
    },
    /// `docker save` output; `NAME:TAG` picks an image if it holds several.
    DockerArchive {
        file: String,
        name: Option<String>,
    },
}

impl OciSource {
    /// True if `s` is written as an OCI source (by its scheme).
    pub fn is_oci(s: &str) -> bool {
        ["docker://", "oci:", "oci-archive:", "docker-archive:"].iter().any(|p| s.starts_with(p))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let path_and_tag = |rest: &str, what: &str| -> Result<(String, Option<String>), String> {
            let (path, tag) = match rest.split_once(':') {
                Some((p, t)) => (p, Some(t.to_owned())),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("{s:?}: {what} path is empty"));
            }
            if let Some(t) = &tag {
                check_tag(t).map_err(|e| format!("{s:?}: {e}"))?;
            }
            Ok((path.to_owned(), tag))
        };
        if let Some(r) = s.strip_prefix("docker://") {
            Ok(Self::Registry(Reference::parse(r)?))
        } else if let Some(r) = s.strip_prefix("oci-archive:") {
            let (file, tag) = path_and_tag(r, "archive")?;
            Ok(Self::OciArchive { file, tag })
        } else if let Some(r) = s.strip_prefix("oci:") {
            let (dir, tag) = path_and_tag(r, "layout")?;
            Ok(Self::Layout { dir, tag })
        } else if let Some(r) = s.strip_prefix("docker-archive:") {
            let (file, name) = match r.split_once(':') {
                Some((f, n)) => (f, Some(n.to_owned())),
                None => (r, None),
            };
            if file.is_empty() {
                return Err(format!("{s:?}: archive path is empty"));
            }
            if let Some(n) = &name {
                Reference::parse(n).map_err(|e| format!("{s:?}: {e}"))?;
            }
            Ok(Self::DockerArchive { file: file.to_owned(), name })
        } else {
            Err(format!("{s:?} is not an OCI image source (docker://, oci:, oci-archive:, docker-archive:)"))
        }
    }
}

impl fmt::Display for OciSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |t: &Option<String>| t.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
        match self {
            Self::Registry(r) => write!(f, "docker://{r}"),
            Self::Layout { dir, tag } => write!(f, "oci:{dir}{}", opt(tag)),
            Self::OciArchive { file, tag } => write!(f, "oci-archive:{file}{}", opt(tag)),
            Self::DockerArchive { file, name } => write!(f, "docker-archive:{file}{}", opt(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn registry_references() {
        let x = r("127.0.0.1:5000/team/web:1.0");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("127.0.0.1:5000", "team/web", Some("1.0"))
        );
        assert_eq!(x.name().as_str(), "127.0.0.1:5000/team/web");
        assert_eq!(x.reference(), "1.0");
        assert_eq!(x.to_string(), "127.0.0.1:5000/team/web:1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("localhost:5000/web@{d}"));
        assert_eq!((x.tag.as_deref(), x.digest.as_deref(), x.reference()), (None, Some(d.as_str()), d.as_str()));
        let x = r("nginx");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("docker.io", "library/nginx", Some("latest"))
        );
        let x = r("team/app:2");
        assert_eq!((x.registry.as_str(), x.repository.as_str()), ("docker.io", "team/app"));
        let x = r("localhost/app");
        assert_eq!(x.registry, "localhost");
        let x = r("registry-1.docker.io/library/redis:7");
        assert_eq!(x.name().as_str(), "docker.io/library/redis");
        for bad in ["", "host:5000/", "Host/App", "a/b:", "a/b:-x", "a@sha256:12", "a/b@md5:00", "a//b", "h:x/b"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(Reference::parse(&format!("a/b:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(
            OciSource::parse("oci:/tmp/layout:v1"),
            Ok(OciSource::Layout { dir: "/tmp/layout".into(), tag: Some("v1".into()) })
        );
        assert_eq!(
            OciSource::parse("oci-archive:x.tar"),
            Ok(OciSource::OciArchive { file: "x.tar".into(), tag: None })
        );
        assert_eq!(
            OciSource::parse("docker-archive:/a.tar:example.com/web:1"),
            Ok(OciSource::DockerArchive { file: "/a.tar".into(), name: Some("example.com/web:1".into()) })
        );
        assert!(matches!(OciSource::parse("docker://127.0.0.1:5000/a:1"), Ok(OciSource::Registry(_))));
        assert!(OciSource::parse("oci:").is_err());
        assert!(OciSource::parse("oci:/x:bad tag").is_err());
        assert!(OciSource::parse("docker://").is_err());
        assert!(OciSource::is_oci("oci-archive:x") && !OciSource::is_oci("example.com/x"));
        for s in ["docker://127.0.0.1:5000/a:1", "oci:/l:t", "oci-archive:f", "docker-archive:f:example.com/w:1"] {
            assert_eq!(OciSource::parse(s).map(|x| x.to_string()), Ok(s.to_owned()));
        }
    }
}
