//! Where stage0 keeps its state. Both roots are parameters (flags or
//! environment), so tests and benchmarks point them at a temp dir.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default data directory: the store, trees and pods.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pod";
/// Default configuration directory: trusted keys, image sources.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/pod";

/// The two roots of stage0's state.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub data: PathBuf,
    pub config: PathBuf,
}

impl Dirs {
    pub fn new(data: impl Into<PathBuf>, config: impl Into<PathBuf>) -> Self {
        Self { data: data.into(), config: config.into() }
    }
    /// Image store: `images/<id>/` with the fetched file, its signature, the
    /// manifest, the extracted rootfs and `meta.json`.
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }
    /// Flattened renderings of dependency lists, keyed by their hash.
    pub fn trees(&self) -> PathBuf {
        self.data.join("trees")
    }
    /// OCI blobs by digest: `blobs/sha256/<hex>`.
    pub fn blobs(&self) -> PathBuf {
        self.data.join("blobs")
    }
    /// OCI layers, each rendered once: `layers/sha256-<hex>/rootfs`.
    pub fn layers(&self) -> PathBuf {
        self.data.join("layers")
    }
    /// Scratch space on the same filesystem, for atomic renames into place.
    pub fn tmp(&self) -> PathBuf {
        self.data.join("tmp")
    }
    /// The store lock: shared by importers, exclusive for gc.
    pub fn store_lock(&self) -> PathBuf {
        self.data.join("store.lock")
    }
    /// Trusted public keys.
    pub fn trust(&self) -> PathBuf {
        self.config.join("trust")
    }
    /// Image sources (URL template per name prefix).
    pub fn sources(&self) -> PathBuf {
        self.config.join("sources.yaml")
    }
    /// Registry mirrors (per name prefix, see `mirrors`).
    pub fn mirrors(&self) -> PathBuf {
        self.config.join("mirrors.yaml")
    }
}

/// Creates `dir` (and its parents) as a directory only its owner can enter,
/// tightening an existing one. The store and the pods hold image rootfs
/// trees and apps' writable layers, setuid binaries included (kept as the
/// image has them; `no_new_privs` makes them inert inside pods): another
/// host user who could reach them could run those as root. Docker keeps
/// `/var/lib/docker` 0710 for the same reason.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
