//! OCI images: references, registries (the distribution API v2), layouts and
//! archives, sigstore signatures, layers rendered into trees of their own.
//!
//! ```text
//! <data>/blobs/sha256/<hex>                 every blob once, verified while it streamed in
//! <data>/layers/sha256-<hex>/rootfs         one layer (by blob digest), applied once, with
//!                       /diff_id, size      overlayfs whiteouts; a lower layer of every
//!                                           image that has it
//! <data>/images/sha256-<hex>/               an OCI image: its manifest digest is its ID
//!                            oci-manifest.json, config.json (as fetched), meta.json
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::exit::{Exit, ExitCodeOf};
use crate::store::StoreError;

pub mod auth;
pub mod config;
pub mod export;
pub mod layer;
pub mod layout;
pub mod pull;
pub mod registry;
pub mod registry_source;
pub mod sign;
pub mod sigstore;
pub mod store;
pub mod tls;
pub mod verify;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{location}: {why}")]
    Invalid { location: String, why: String },
    #[error("{what} has digest {got}, not {wanted}: refusing it")]
    DigestMismatch { what: String, wanted: String, got: String },
    #[error("{what} is {got} bytes, not {wanted}: refusing it")]
    SizeMismatch { what: String, wanted: u64, got: String },
    #[error("{location} has no image for {platform} (it has: {available}); --platform picks another")]
    NoPlatform { location: String, platform: String, available: String },
    #[error("{location}: layer {digest}: {source}")]
    Layer {
        location: String,
        digest: String,
        #[source]
        source: crate::archive::ArchiveError,
    },
    /// A signature problem; `why` names the image and what to do.
    #[error("{0}")]
    Signature(String),
    /// A failure with its own exit code (registry, sigstore, keys).
    #[error("{message}")]
    Other { message: String, exit: Exit },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OciError {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io { op, path: path.to_owned(), source }
    }
}

impl ExitCodeOf for OciError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::Read { .. } => Exit::Network,
            Self::NotFound(_) => Exit::NotFound,
            Self::Invalid { .. } | Self::NoPlatform { .. } => Exit::InvalidInput,
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } | Self::Signature(_) => Exit::Verification,
            Self::Layer { source, .. } => source.exit(),
            Self::Other { exit, .. } => *exit,
            Self::Store(e) => e.exit(),
        }
    }
}
