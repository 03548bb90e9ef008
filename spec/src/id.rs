//! Image IDs: `sha512-<hex>` of the uncompressed image tar, as appc.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const PREFIX: &str = "sha512-";
const HEX_LEN: usize = 128;
/// Shortest hash prefix accepted when a user names an image by ID.
pub const MIN_PREFIX_HEX: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageIdError {
    #[error("image ID {0:?} does not start with \"sha512-\"")]
    Algorithm(String),
    #[error("image ID {0:?} is not 128 lowercase hex digits after \"sha512-\"")]
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
    /// The short form shown in tables: `sha512-` and the first 32 hex digits,
    /// as rkt shows them.
    pub fn short(&self) -> &str {
        &self.0[..PREFIX.len() + 32]
    }
    /// True if `prefix` (with or without `sha512-`) abbreviates this ID.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        let hex = prefix.strip_prefix(PREFIX).unwrap_or(prefix);
        hex.len() >= MIN_PREFIX_HEX && is_lower_hex(hex) && self.hex().starts_with(hex)
    }
}

impl FromStr for ImageId {
    type Err = ImageIdError;
    fn from_str(s: &str) -> Result<Self, ImageIdError> {
        let hex = s.strip_prefix(PREFIX).ok_or_else(|| ImageIdError::Algorithm(s.to_owned()))?;
        if hex.len() != HEX_LEN || !is_lower_hex(hex) {
            return Err(ImageIdError::Hex(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
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
    }
}
