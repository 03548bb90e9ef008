//! Image IDs: `sha512-<hex>` of the uncompressed image tar for ACIs, as
//! appc; `sha256-<hex>` for OCI images, their manifest digest (`sha256:<hex>`
//! in OCI's own spelling, which is accepted too). The `-` form is what names
//! store directories: a `:` would split an overlayfs lowerdir list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const PREFIX: &str = "sha512-";
const HEX_LEN: usize = 128;
const OCI_PREFIX: &str = "sha256-";
const OCI_HEX_LEN: usize = 64;
/// Shortest hash prefix accepted when a user names an image by ID.
pub const MIN_PREFIX_HEX: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageIdError {
    #[error("image ID {0:?} does not start with \"sha512-\" or \"sha256-\"")]
    Algorithm(String),
    #[error("image ID {0:?} is not 128 (sha512) or 64 (sha256) lowercase hex digits after the algorithm")]
    Hex(String),
}

/// A full image ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ImageId {
    /// Builds an ID from a raw SHA-512 digest.
    pub fn from_digest(digest: &[u8; 64]) -> Self {
        let mut s = String::with_capacity(PREFIX.len() + HEX_LEN);
        s.push_str(PREFIX);
        for b in digest {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The hex digest without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
    /// True for an OCI image (a `sha256-` manifest digest).
    pub fn is_oci(&self) -> bool {
        self.0.starts_with(OCI_PREFIX)
    }
    /// The OCI digest spelling, `sha256:<hex>`, of an OCI image's ID.
    pub fn oci_digest(&self) -> Option<String> {
        self.is_oci().then(|| format!("sha256:{}", self.hex()))
    }
    /// The short form shown in tables: the algorithm and the first 32 hex
    /// digits (sha512, as rkt shows them) or 12 (sha256, as docker does).
    pub fn short(&self) -> &str {
        &self.0[..PREFIX.len() + if self.is_oci() { 12 } else { 32 }]
    }
    /// True if `prefix` (with or without `sha512-`/`sha256-`/`sha256:`)
    /// abbreviates this ID.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        let (alg, hex) = match prefix.get(..7) {
            Some(PREFIX) => (Some(PREFIX), &prefix[7..]),
            Some(OCI_PREFIX) | Some("sha256:") => (Some(OCI_PREFIX), &prefix[7..]),
            _ => (None, prefix),
        };
        alg.is_none_or(|a| self.0.starts_with(a))
            && hex.len() >= MIN_PREFIX_HEX
            && is_lower_hex(hex)
            && self.hex().starts_with(hex)
    }
}

impl FromStr for ImageId {
    type Err = ImageIdError;
    fn from_str(s: &str) -> Result<Self, ImageIdError> {
        let (prefix, hex, len) = if let Some(hex) = s.strip_prefix(PREFIX) {
            (PREFIX, hex, HEX_LEN)
        } else if let Some(hex) = s.strip_prefix(OCI_PREFIX).or_else(|| s.strip_prefix("sha256:")) {
            (OCI_PREFIX, hex, OCI_HEX_LEN)
        } else {
            return Err(ImageIdError::Algorithm(s.to_owned()));
        };
        if hex.len() != len || !is_lower_hex(hex) {
            return Err(ImageIdError::Hex(s.to_owned()));
        }
        Ok(Self(format!("{prefix}{hex}")))
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ImageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = ImageId::from_digest(&[0xab; 64]);
        assert_eq!(id.as_str().len(), 7 + 128);
        let parsed: ImageId = id.as_str().parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, id);
        assert!(id.matches_prefix("sha512-abababababab"));
        assert!(id.matches_prefix("abababababab"));
        assert!(!id.matches_prefix("abab"));
        assert!("sha256-ab".parse::<ImageId>().is_err());
        assert!("sha512-AB".parse::<ImageId>().is_err());
        assert!("md5-ab".parse::<ImageId>().is_err());
    }

    #[test]
    fn oci_ids() {
        let id: ImageId = format!("sha256-{}", "cd".repeat(32)).parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(id.is_oci());
        assert_eq!(id.as_str().len(), 7 + 64);
        let colon: ImageId = format!("sha256:{}", "cd".repeat(32)).parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(colon, id);
        assert_eq!(id.oci_digest(), Some(format!("sha256:{}", "cd".repeat(32))));
        assert_eq!(id.short(), "sha256-cdcdcdcdcdcd");
        assert!(id.matches_prefix("sha256:cdcdcdcdcdcd"));
        assert!(id.matches_prefix("cdcdcdcdcdcd"));
        assert!(!id.matches_prefix("sha512-cdcdcdcdcdcd"));
        assert!(ImageId::from_digest(&[0xab; 64]).oci_digest().is_none());
    }
}
