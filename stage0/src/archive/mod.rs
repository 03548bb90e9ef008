//! ACI archives: packing a rootfs into an image and extracting untrusted
//! images safely; and the same extraction for OCI layers, into a tree of
//! their own in overlayfs format ([`crate::oci::layer`]).
//!
//! An ACI is a tar — zstd-, gzip- or un-compressed — holding exactly a
//! `manifest` file and a `rootfs/` tree. Its image ID is the SHA-512 of the
//! whole uncompressed tar stream, read to EOF, so it equals `sha512sum` of
//! the decompressed file.
//!
//! Extraction is a pipeline of three threads joined by bounded channels of
//! large chunks ([`stream`]): the calling thread reads, decompresses and
//! counts the stream; a second hashes it; a third parses the tar and writes
//! files ([`extract`]). Everything in an archive is treated as hostile; see
//! [`extract`] for the rules. ACIs and OCI layers share all of it; the
//! differences (the `manifest`/`rootfs` wrapper, duplicates, whiteouts) hang
//! off one [`extract::Format`] switch.

mod extract;
mod overlay;
mod pack;
mod paths;
mod stream;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use sha2::digest::Output;
use sha2::Digest;
use spec::{ImageId, ImageManifest, ManifestError};

use crate::exit::{Exit, ExitCodeOf};
use crate::sha512::Sha512;
use extract::Format;

/// Compression of an ACI file or OCI layer blob, detected from its magic
/// bytes when reading (unless a layer's media type says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// Detects the compression from the first bytes of a file: zstd
    /// (`28 B5 2F FD`), gzip (`1F 8B`), otherwise a plain tar.
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Self::Zstd
        } else if magic.starts_with(&[0x1F, 0x8B]) {
            Self::Gzip
        } else {
            Self::None
        }
    }
}

/// Caps applied while reading an untrusted archive.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest uncompressed tar accepted (decompression-bomb guard).
    pub max_uncompressed: u64,
    /// Most tar entries accepted (inode-bomb guard): a tar of empty files
    /// compresses to almost nothing and each one costs the host an inode.
    pub max_entries: u64,
}

/// Default of [`Limits::max_entries`]: a full Debian system is ~100k files.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

impl Default for Limits {
    fn default() -> Self {
        Self { max_uncompressed: 4 << 30, max_entries: DEFAULT_MAX_ENTRIES }
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
    /// A local file operation failed (not the archive's fault).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Reading the (compressed) image itself failed.
    #[error("reading the image: {0}")]
    Read(#[source] io::Error),
    #[error("corrupt or truncated {format} stream: {source}")]
    Decompress {
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("uncompressed image is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("archive has more than {limit} entries (the limit; --max-image-entries to raise it)")]
    TooManyEntries { limit: u64 },
    #[error("malformed tar {context}: {source}")]
    Tar {
        /// Where in the archive, e.g. `at entry "rootfs/bin"`.
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("truncated archive: {0}")]
    Truncated(String),
    #[error("archive has no manifest")]
    NoManifest,
    #[error("invalid image manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// An entry that is hostile or outside the ACI format.
    #[error("archive entry {path:?}: {reason}")]
    Rejected { path: String, reason: Reject },
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    #[error("extraction directory {path} is not empty")]
    DestNotEmpty { path: String },
    /// A file in a rootfs being packed that an image cannot hold.
    #[error("cannot pack {path}: {kind} files cannot be put in an image")]
    Unpackable { path: String, kind: &'static str },
}

/// Why an archive entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("'..' path components are not allowed")]
    ParentDir,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("only \"manifest\" and \"rootfs/\" may be at the top of an image")]
    UnexpectedTopLevel,
    #[error("must be a regular file")]
    NotRegular,
    #[error("must be a directory")]
    NotDirectory,
    #[error("path goes through the symlink {link:?} created earlier in the archive")]
    ThroughSymlink { link: String },
    #[error("parent {parent:?} is not a directory")]
    ParentNotDirectory { parent: String },
    #[error("{found} found on disk at {at:?} where a directory was extracted")]
    UnexpectedOnDisk { at: String, found: &'static str },
    #[error("duplicate entry")]
    Duplicate,
    #[error("would replace a directory extracted earlier with a non-directory")]
    ReplacesDirectory,
    #[error("not a valid whiteout (a '.wh.' name needs a name after it, and nothing below it)")]
    InvalidWhiteout,
    #[error("{kind} device nodes are not allowed in images")]
    Device { kind: &'static str },
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    #[error("symlink has an empty target")]
    EmptyLinkTarget,
    #[error("hard link target {target:?} {why}")]
    HardLinkTarget { target: String, why: &'static str },
    /// Above 32 bits, or 2^32-1, which chown(2) reads as "leave unchanged".
    #[error("owner {0} is not a valid uid or gid (0 to 4294967294)")]
    IdOutOfRange(u64),
    #[error("{what} is {len} bytes; the limit is {limit}")]
    TooLong { what: &'static str, len: usize, limit: usize },
}

impl ArchiveError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io { op, path: path.display().to_string(), source }
    }
}

impl ExitCodeOf for ArchiveError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } | Self::Read(_) | Self::DestNotEmpty { .. } => Exit::Failure,
            Self::Decompress { .. }
            | Self::TooLarge { .. }
            | Self::TooManyEntries { .. }
            | Self::Tar { .. }
            | Self::Truncated(_)
            | Self::NoManifest
            | Self::Manifest(_)
            | Self::Rejected { .. }
            | Self::MediaType(_)
            | Self::Unpackable { .. } => Exit::InvalidInput,
        }
    }
}

/// How many chunks may wait between two stages of a pipeline. Small: it only
/// has to absorb jitter between the threads, and it bounds memory use.
const QUEUE_DEPTH: usize = 4;

/// Extracts an ACI from `src` (zstd, gzip or plain tar) into the empty
/// directory `dest`, which receives `manifest` and `rootfs/`.
///
/// On error `dest` may hold a partial tree, never anything outside it; the
/// caller removes it.
pub fn extract_aci(src: impl Read, dest: &Path, limits: &Limits) -> Result<Extracted, ArchiveError> {
    let out = run_pipeline::<Sha512>(src, None, dest, limits, Format::Aci)?;
    let mut digest = [0u8; 64];
    digest.copy_from_slice(&out.digest);
    let id = ImageId::from_digest(&digest);
    // `Format::Aci` has already refused an archive without manifest.
    let unpacked = out.unpacked.ok_or(ArchiveError::NoManifest)?;
    tracing::debug!(id = id.as_str(), uncompressed_size = out.size, dest = %dest.display(), "extracted image");
    Ok(Extracted {
        id,
        manifest: unpacked.manifest,
        manifest_bytes: unpacked.manifest_bytes,
        uncompressed_size: out.size,
    })
}

/// An OCI layer tarball, extracted by [`extract_layer`].
#[derive(Debug, Clone)]
pub(crate) struct ExtractedLayer {
    /// SHA-256 of the uncompressed tar stream.
    pub sha256: [u8; 32],
    pub uncompressed_size: u64,
    pub compression: Compression,
}

/// Extracts an OCI layer tar from `src` into the empty directory `dest`,
/// which becomes the layer's tree, whiteouts in overlayfs format.
/// `compression`: `None` to detect it from the magic bytes.
pub(crate) fn extract_layer(
    src: impl Read,
    compression: Option<Compression>,
    dest: &Path,
    limits: &Limits,
) -> Result<ExtractedLayer, ArchiveError> {
    let out = run_pipeline::<sha2::Sha256>(src, compression, dest, limits, Format::Layer)?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&out.digest);
    Ok(ExtractedLayer { sha256, uncompressed_size: out.size, compression: out.compression })
}

/// What [`run_pipeline`] found.
struct PipelineOut<D: Digest> {
    digest: Output<D>,
    unpacked: Option<extract::Unpacked>,
    size: u64,
    compression: Compression,
}

/// Extracts the tar in `src` into the empty directory `dest` as `format`,
/// hashing the uncompressed stream with `D`.
fn run_pipeline<D: Digest>(
    src: impl Read,
    compression: Option<Compression>,
    dest: &Path,
    limits: &Limits,
    format: Format,
) -> Result<PipelineOut<D>, ArchiveError> {
    let mut listing = std::fs::read_dir(dest).map_err(ArchiveError::io("read directory", dest))?;
    if listing.next().is_some() {
        return Err(ArchiveError::DestNotEmpty { path: dest.display().to_string() });
    }
    let mut pump = stream::Decompressor::new(src, compression, limits)?;
    let (to_hash, hash_rx) = mpsc::sync_channel(QUEUE_DEPTH);
    let (to_tar, tar_rx) = mpsc::sync_channel(QUEUE_DEPTH);
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let (untar_name, hash_name) = match format {
        Format::Aci => ("aci-untar", "aci-hash"),
        Format::Layer => ("layer-untar", "layer-hash"),
    };
    // Three stages, each on its own thread: decompress | hash | untar. `src`
    // need not be `Send`, so decompression stays on this thread.
    let (pumped, digest, unpacked) = thread::scope(|s| {
        let max_entries = limits.max_entries;
        let reader = stream::ChunkReader::new(tar_rx, recycle_tx);
        let untar = move || extract::unpack(reader, dest, max_entries, format);
        // Should a spawn fail, the channels moved into it close and the
        // threads already running end on their own.
        let tar = spawn(s, untar_name, untar)?;
        let hasher = spawn(s, hash_name, stream::hasher::<D>(hash_rx, stream::AfterHash::Tar(to_tar)))?;
        let pumped = pump.pump_into(&to_hash, &recycle_rx);
        drop(to_hash);
        Ok::<_, ArchiveError>((pumped, join(hasher), join(tar)))
    })?;
    // A decompression error explains whatever the tar side then saw (a cut
    // stream), so it wins; otherwise the tar side's verdict stands.
    pumped?;
    let unpacked = unpacked?;
    Ok(PipelineOut { digest, unpacked, size: pump.size(), compression: pump.compression() })
}

/// Decompresses and hashes an ACI without extracting it: its image ID and
/// uncompressed size.
pub fn image_id_of(src: impl Read, limits: &Limits) -> Result<(ImageId, u64), ArchiveError> {
    let mut pump = stream::Decompressor::new(src, None, limits)?;
    let (to_hash, hash_rx) = mpsc::sync_channel(QUEUE_DEPTH);
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let (pumped, digest) = thread::scope(|s| {
        let hasher = spawn(s, "aci-hash", stream::hasher::<Sha512>(hash_rx, stream::AfterHash::Recycle(recycle_tx)))?;
        let pumped = pump.pump_into(&to_hash, &recycle_rx);
        drop(to_hash);
        Ok::<_, ArchiveError>((pumped, join(hasher)))
    })?;
    pumped?;
    let mut id = [0u8; 64];
    id.copy_from_slice(&digest);
    Ok((ImageId::from_digest(&id), pump.size()))
}

fn spawn<'s, T: Send + 's>(
    scope: &'s thread::Scope<'s, '_>,
    name: &'static str,
    f: impl FnOnce() -> T + Send + 's,
) -> Result<thread::ScopedJoinHandle<'s, T>, ArchiveError> {
    thread::Builder::new().name(name.to_owned()).spawn_scoped(scope, f).map_err(|source| ArchiveError::Io {
        op: "start thread",
        path: name.to_owned(),
        source,
    })
}

/// Joins a pipeline thread. A panic there is a bug: it is re-raised here
/// rather than turned into an error.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Writes `manifest` and the directory `rootfs` as an ACI to `out`; returns
/// the image ID (hash of the uncompressed tar).
pub fn pack_aci(
    manifest: &ImageManifest,
    rootfs: &Path,
    out: impl Write,
    compression: Compression,
) -> Result<ImageId, ArchiveError> {
    pack::pack(manifest, rootfs, out, compression)
}
