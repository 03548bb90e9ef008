//! ACI archives: packing a rootfs into an image and extracting untrusted
//! images safely. (API fixed; bodies in progress.)

use std::io::{Read, Write};
use std::path::Path;

use spec::{ImageId, ImageManifest};

use crate::exit::{Exit, ExitCodeOf};

/// Compression of an ACI file, detected from its magic bytes when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

/// Caps applied while reading an untrusted archive.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest uncompressed tar accepted (decompression-bomb guard).
    pub max_uncompressed: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_uncompressed: 4 << 30 }
    }
}

/// What extraction found.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub id: ImageId,
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
    pub uncompressed_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExitCodeOf for ArchiveError {
    fn exit(&self) -> Exit {
        Exit::Failure
    }
}

/// Extracts an ACI from `src` (zstd, gzip or plain tar) into the empty
/// directory `dest`, which receives `manifest` and `rootfs/`.
pub fn extract_aci(_src: impl Read, _dest: &Path, _limits: &Limits) -> Result<Extracted, ArchiveError> {
    unimplemented!("in progress")
}

/// Decompresses and hashes an ACI without extracting it: its image ID and
/// uncompressed size.
pub fn image_id_of(_src: impl Read, _limits: &Limits) -> Result<(ImageId, u64), ArchiveError> {
    unimplemented!("in progress")
}

/// Writes `manifest` and the directory `rootfs` as an ACI to `out`; returns
/// the image ID (hash of the uncompressed tar).
pub fn pack_aci(
    _manifest: &ImageManifest,
    _rootfs: &Path,
    _out: impl Write,
    _compression: Compression,
) -> Result<ImageId, ArchiveError> {
    unimplemented!("in progress")
}
