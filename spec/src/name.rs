//! appc names: `AcIdentifier` (image names, label names) and `AcName` (app,
//! port, volume and mount point names), validated at construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name accepted; appc sets no limit, a manifest field this long is
/// already hostile.
pub const MAX_NAME_LEN: usize = 512;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("invalid name {name:?}: {why}")]
    Invalid { name: String, why: &'static str },
}

fn check(s: &str, separators: &[u8], what: &'static str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    let bytes = s.as_bytes();
    let invalid = |why| NameError::Invalid { name: s.to_owned(), why };
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(invalid(what));
    }
    let mut prev_sep = false;
    for &b in bytes {
        if alnum(b) {
            prev_sep = false;
        } else if separators.contains(&b) {
            if prev_sep {
                return Err(invalid(what));
            }
            prev_sep = true;
        } else {
            return Err(invalid(what));
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $seps:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `s` as this kind of name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check(&s, $seps, $what)?;
                Ok(Self(s))
            }
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// An appc AC Identifier: `[a-z0-9]+([-._~/][a-z0-9]+)*`. Image names and
    /// label names are identifiers, e.g. `example.com/redis`.
    AcIdentifier,
    b"-._~/",
    "an identifier is lowercase letters and digits separated by single '-', '.', '_', '~' or '/'"
);

name_type!(
    /// An appc AC Name: `[a-z0-9]+(-[a-z0-9]+)*`. Apps, ports, volumes and
    /// mount points are named with these.
    AcName,
    b"-",
    "a name is lowercase letters and digits separated by single '-'"
);

impl AcIdentifier {
    /// True if this name lies under `prefix`, as trust prefixes are matched:
    /// `example.com/` covers `example.com/redis`; `example.com` covers
    /// `example.com` and `example.com/...` but not `example.community`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        name_has_prefix(self.as_str(), prefix)
    }
}

fn name_has_prefix(name: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    if prefix.ends_with('/') {
        return name.starts_with(prefix);
    }
    name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The name of an image in the store, of either kind: an appc
/// [`AcIdentifier`] (`example.com/redis`), or an OCI repository as a
/// registry names it (`127.0.0.1:5000/team/web`, `docker.io/library/nginx`):
/// an identifier whose first component may carry a `:port`. Trust prefixes
/// are matched on it the same way for both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName(String);

impl ImageName {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let (host, rest) = s.split_once('/').map_or((s.as_str(), None), |(h, r)| (h, Some(r)));
        let bare_host = match host.split_once(':') {
            Some((h, port)) => {
                if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) || rest.is_none() {
                    return Err(NameError::Invalid {
                        name: s.clone(),
                        why: "a ':' may only give the registry's port, as in host:5000/repo",
                    });
                }
                h
            }
            None => host,
        };
        let plain = match rest {
            Some(r) => format!("{bare_host}/{r}"),
            None => bare_host.to_owned(),
        };
        AcIdentifier::new(plain).map_err(|e| match e {
            NameError::Invalid { why, .. } => NameError::Invalid { name: s.clone(), why },
            other => other,
        })?;
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True if this name lies under `prefix` (see [`AcIdentifier::has_prefix`]).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        name_has_prefix(&self.0, prefix)
    }
}

impl From<AcIdentifier> for ImageName {
    fn from(n: AcIdentifier) -> Self {
        Self(n.0)
    }
}

impl PartialEq<AcIdentifier> for ImageName {
    fn eq(&self, other: &AcIdentifier) -> bool {
        self.0 == other.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ImageName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl Serialize for ImageName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "example.com/redis", "coreos.com/etcd_v2", "a~b", "x-1.2/y"] {
            assert!(AcIdentifier::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a//b", "a b", "../x", "/abs", "a/", "é"] {
            assert!(AcIdentifier::new(bad).is_err(), "{bad}");
        }
        assert!(AcIdentifier::new("a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn names() {
        assert!(AcName::new("web-1").is_ok());
        for bad in ["web_1", "web.1", "Web", "web--1"] {
            assert!(AcName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let n = AcIdentifier::new("example.com/redis").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.has_prefix("example.com/"));
        assert!(n.has_prefix("example.com"));
        assert!(n.has_prefix(""));
        assert!(!n.has_prefix("example.co"));
        assert!(!n.has_prefix("example.com/r"));
        assert!(n.has_prefix("example.com/redis"));
    }

    #[test]
    fn image_names() {
        for ok in ["example.com/redis", "127.0.0.1:5000/team/web", "localhost:5000/a", "docker.io/library/nginx"] {
            let n = ImageName::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(n.as_str(), ok);
        }
        for bad in ["host:5000", "host:/a", "host:abc/a", "a/b:c", "Host/a", "a//b", "host:123456/a"] {
            assert!(ImageName::new(bad).is_err(), "{bad}");
        }
        let n = ImageName::new("127.0.0.1:5000/team/web").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.has_prefix("127.0.0.1:5000/team/"));
        assert!(n.has_prefix("127.0.0.1:5000/team"));
        assert!(!n.has_prefix("127.0.0.1:5000/teamx"));
        assert!(!n.has_prefix("127.0.0.1:500"));
    }
}
