//! Where stage0 keeps its state. Both roots are parameters (flags or
//! environment), so tests and benchmarks point them at a temp dir.

use std::path::PathBuf;

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
}
