//! The content-addressed image store.
//!
//! ```text
//! <data>/images/<image ID>/image.aci       the file as fetched (any compression)
//!                         /image.aci.sig   its signature, when verified
//!                         /manifest        the image manifest
//!                         /rootfs/         the image's own files, extracted
//!                         /meta.json       name, labels, size, signer, import time
//! <data>/tmp/<staging>/                    imports in progress
//! ```
//!
//! An entry appears only by rename(2) of a complete staging directory, so a
//! reader never sees half an image, and concurrent imports of one image end
//! with one entry: the first rename wins, later ones find the target taken
//! and discard their copy. Importers hold the store lock shared; gc holds it
//! exclusively. Each staging dir is flocked by its owner, so gc can tell a
//! live import from the leftovers of a killed one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use spec::{AcIdentifier, ImageId, ImageManifest, ImageName};

use crate::archive::{self, ArchiveError, Limits};
use crate::crashpoint::crashpoint;
use crate::exit::{Exit, ExitCodeOf};
use crate::paths::{self, Dirs};

mod names;
pub use names::OtherName;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no image matches {0:?}")]
    NotFound(String),
    #[error("{query:?} matches {count} images; use a longer ID prefix or add labels")]
    Ambiguous { query: String, count: usize },
    #[error("store entry {id} is corrupt: {why}")]
    Corrupt { id: String, why: String },
    #[error("the store at {0} is locked by another pod process")]
    Locked(PathBuf),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl ExitCodeOf for StoreError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } | Self::Corrupt { .. } => Exit::Failure,
            Self::NotFound(_) => Exit::NotFound,
            Self::Ambiguous { .. } | Self::Locked(_) => Exit::Conflict,
            Self::Archive(e) => e.exit(),
        }
    }
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_owned(), source }
}

/// What the store records about an image beyond its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: ImageId,
    /// The appc name, or an OCI image's repository (`host:port/repo`).
    pub name: ImageName,
    pub labels: BTreeMap<String, String>,
    /// Size of the image file as fetched.
    pub size: u64,
    pub uncompressed_size: u64,
    /// ID of the key whose signature was verified; `None` for an image
    /// imported with `--insecure-options=image`.
    pub signer: Option<String>,
    /// RFC 3339, UTC.
    pub imported_at: String,
    /// Where it was fetched from.
    pub source: String,
    /// What an OCI image is made of; absent for an ACI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<crate::oci::store::OciMeta>,
    /// The other names and tags it was pulled by (the same manifest under
    /// another tag or repository), each verified for its own name when
    /// pulled: see `Store::add_name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_names: Vec<OtherName>,
}

impl ImageMeta {
    /// True if every label in `want` is on this image with the same value.
    pub fn matches(&self, name: &AcIdentifier, want: &BTreeMap<String, String>) -> bool {
        self.name == *name && want.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

/// A staging directory under `tmp/`, flocked while its owner lives; removed on
/// drop unless committed.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    _lock: Flock<File>,
    keep: bool,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a leftover is found by `pod image gc` anyway.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

const LOCK_NAME: &str = ".lock";

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    dirs: Dirs,
}

impl Store {
    /// Opens the store, creating its directories.
    pub fn open(dirs: &Dirs) -> Result<Self, StoreError> {
        for d in [dirs.images(), dirs.trees(), dirs.tmp()] {
            paths::create_private_dir(&d).map_err(io_err("create directory", &d))?;
        }
        Ok(Self { dirs: dirs.clone() })
    }

    pub fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    fn lock(&self, arg: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.dirs.store_lock();
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Flock::lock(f, arg).map(StoreLock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                StoreError::Locked(path.clone())
            } else {
                StoreError::Io { op: "lock", path: path.clone(), source: errno.into() }
            }
        })
    }

    /// Shared lock held while importing; blocks while gc runs.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockShared)
    }

    /// Exclusive lock for gc and removal; waits for imports to finish.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockExclusive)
    }

    /// The exclusive lock if no import is running ([`StoreError::Locked`] if one is).
    pub fn try_lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockExclusiveNonblock)
    }

    /// A fresh staging directory `tmp/<purpose>-<random>`.
    pub fn staging(&self, purpose: &str) -> Result<Staging, StoreError> {
        let tmp = self.dirs.tmp();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{purpose}-"))
            .tempdir_in(&tmp)
            .map_err(io_err("create staging directory in", &tmp))?
            .keep();
        let lock_path = dir.join(LOCK_NAME);
        let f = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| StoreError::Io {
            op: "lock",
            path: lock_path.clone(),
            source: e.into(),
        })?;
        Ok(Staging { path: dir, _lock: lock, keep: false })
    }

    pub fn image_dir(&self, id: &ImageId) -> PathBuf {
        self.dirs.images().join(id.as_str())
    }

    pub fn rootfs(&self, id: &ImageId) -> PathBuf {
        self.image_dir(id).join("rootfs")
    }

    /// Moves a complete staging dir into place as image `id`. Returns false
    /// if the image was already there (ours is discarded), true if added.
    pub fn commit(&self, mut staging: Staging, id: &ImageId) -> Result<bool, StoreError> {
        let dest = self.image_dir(id);
        let lock_path = staging.path.join(LOCK_NAME);
        fs::remove_file(&lock_path).map_err(io_err("remove", &lock_path))?;
        crashpoint("store.commit");
        match fs::rename(&staging.path, &dest) {
            Ok(()) => {
                staging.keep = true;
                fsync_dir(&self.dirs.images());
                crashpoint("store.committed");
                Ok(true)
            }
            // Lost the race to a concurrent import of the same image: theirs
            // is complete (it got there by rename too), ours goes away on drop.
            Err(e) if e.raw_os_error().is_some_and(is_exists) && dest.join("meta.json").is_file() => Ok(false),
            Err(e) => Err(StoreError::Io { op: "rename into place", path: dest, source: e }),
        }
    }

    pub fn meta(&self, id: &ImageId) -> Result<ImageMeta, StoreError> {
        let p = self.image_dir(id).join("meta.json");
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(id.to_string())),
            Err(e) => return Err(StoreError::Io { op: "read", path: p, source: e }),
        };
        serde_json::from_slice(&text)
            .map_err(|e| StoreError::Corrupt { id: id.to_string(), why: format!("meta.json: {e}") })
    }

    pub fn manifest(&self, id: &ImageId) -> Result<ImageManifest, StoreError> {
        let p = self.image_dir(id).join("manifest");
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        ImageManifest::parse(&bytes)
            .map_err(|e| StoreError::Corrupt { id: id.to_string(), why: format!("manifest: {e}") })
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<ImageMeta>, StoreError> {
        let dir = self.dirs.images();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let Ok(id) = entry.file_name().to_string_lossy().parse::<ImageId>() else { continue };
            match self.meta(&id) {
                Ok(m) => out.push(m),
                // Removed between readdir and read: not an error.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.imported_at.cmp(&a.imported_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest image named `name` carrying all of `labels`.
    pub fn find(
        &self,
        name: &AcIdentifier,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<ImageMeta>, StoreError> {
        Ok(self.list()?.into_iter().find(|m| m.matches(name, labels)))
    }

    /// Resolves what a user typed: a full ID, an ID prefix (12+ hex digits),
    /// or `name[:version]`. A name resolves to its newest import.
    pub fn lookup(&self, query: &str) -> Result<ImageMeta, StoreError> {
        if let Ok(id) = query.parse::<ImageId>() {
            return self.meta(&id);
        }
        let all = self.list()?;
        if query.starts_with("sha512-")
            || query.starts_with("sha256-")
            || query.starts_with("sha256:")
            || (query.len() >= spec::id::MIN_PREFIX_HEX && query.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let hits: Vec<_> = all.into_iter().filter(|m| m.id.matches_prefix(query)).collect();
            return match hits.len() {
                0 => Err(StoreError::NotFound(query.to_owned())),
                1 => Ok(hits.into_iter().next().ok_or_else(|| StoreError::NotFound(query.to_owned()))?),
                count => Err(StoreError::Ambiguous { query: query.to_owned(), count }),
            };
        }
        // `name:version`; a ':' before the last '/' is a registry's port.
        let after_slash = query.rfind('/').map_or(0, |i| i + 1);
        let (name, version) = match query[after_slash..].rfind(':') {
            Some(i) => (&query[..after_slash + i], Some(&query[after_slash + i + 1..])),
            None => (query, None),
        };
        let name = ImageName::new(name).map_err(|_| StoreError::NotFound(query.to_owned()))?;
        all.into_iter()
            .find(|m| m.name == name && version.is_none_or(|v| m.labels.get("version").map(String::as_str) == Some(v)))
            .ok_or_else(|| StoreError::NotFound(query.to_owned()))
    }

    /// Removes an image: renamed out of `images/` first (atomic), then deleted.
    pub fn remove(&self, id: &ImageId) -> Result<(), StoreError> {
        let _lock = self.lock_exclusive()?;
        let src = self.image_dir(id);
        if !src.exists() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let doomed = self.dirs.tmp().join(format!("rm-{}-{}", &id.hex()[..16], std::process::id()));
        fs::rename(&src, &doomed).map_err(io_err("rename", &src))?;
        crashpoint("image.rm");
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))
    }

    /// Re-hashes the stored image file and checks it against its ID and
    /// manifest. Returns the uncompressed size.
    pub fn verify(&self, id: &ImageId, limits: &Limits) -> Result<u64, StoreError> {
        if id.is_oci() {
            return crate::oci::store::verify(self, id);
        }
        let dir = self.image_dir(id);
        let file = dir.join("image.aci");
        let f = File::open(&file).map_err(io_err("open", &file))?;
        let (actual, size) = archive::image_id_of(io::BufReader::with_capacity(1 << 20, f), limits)?;
        if &actual != id {
            return Err(StoreError::Corrupt { id: id.to_string(), why: format!("image.aci hashes to {actual}") });
        }
        let meta = self.meta(id)?;
        if meta.uncompressed_size != size {
            return Err(StoreError::Corrupt { id: id.to_string(), why: "size differs from meta.json".into() });
        }
        let manifest = self.manifest(id)?;
        if meta.name != manifest.name {
            return Err(StoreError::Corrupt { id: id.to_string(), why: "manifest name differs from meta.json".into() });
        }
        if !dir.join("rootfs").is_dir() {
            return Err(StoreError::Corrupt { id: id.to_string(), why: "rootfs is missing".into() });
        }
        Ok(size)
    }

    /// Removes staging dirs whose owner is gone (a killed import). Caller
    /// holds the exclusive lock. Returns the names removed.
    pub fn gc_tmp(&self) -> Result<Vec<String>, StoreError> {
        let tmp = self.dirs.tmp();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&tmp).map_err(io_err("read directory", &tmp))? {
            let entry = entry.map_err(io_err("read directory", &tmp))?;
            let path = entry.path();
            let lock_path = path.join(LOCK_NAME);
            let alive = match File::open(&lock_path) {
                Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err(),
                Err(_) => false,
            };
            if !alive {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let r = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                r.map_err(io_err("remove", &path))?;
                removed.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(removed)
    }
}

fn is_exists(errno: i32) -> bool {
    errno == nix::errno::Errno::ENOTEMPTY as i32 || errno == nix::errno::Errno::EEXIST as i32
}

/// Makes a rename durable. Failure only weakens durability, not correctness.
fn fsync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
