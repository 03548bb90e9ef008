//! ImageFsInfo: what the image store takes on its filesystem, counted by
//! walking it (bytes by allocated blocks, each inode once, never crossing
//! into another filesystem such as a running pod's mounts).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stage0::paths::Dirs;

use crate::error::CriError;

/// Bytes and inodes used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// The store's parts: images, OCI blobs and layer trees, rendered trees.
pub fn store_dirs(dirs: &Dirs) -> Vec<PathBuf> {
    vec![dirs.images(), dirs.blobs(), dirs.layers(), dirs.trees()]
}

/// Usage of everything under `roots` on the filesystem of `dirs.data`.
pub fn usage(data: &Path, roots: &[PathBuf]) -> Result<Usage, CriError> {
    let dev = fs::symlink_metadata(data)
        .map_err(|source| CriError::Io { op: "inspect", path: data.to_owned(), source })?
        .dev();
    let mut seen = HashSet::new();
    let mut total = Usage::default();
    let mut stack: Vec<PathBuf> = roots.iter().filter(|r| r.exists()).cloned().collect();
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed while we walk: a concurrent rm or gc.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CriError::Io { op: "inspect", path, source }),
        };
        if meta.dev() != dev || !seen.insert(meta.ino()) {
            continue;
        }
        total.inodes += 1;
        total.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CriError::Io { op: "read directory", path, source }),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|source| CriError::Io { op: "read directory", path: path.clone(), source })?;
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_inode_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        let u = usage(tmp.path(), &[root.clone(), tmp.path().join("missing")]).unwrap();
        assert_eq!(u.inodes, 2, "the directory and one file");
        assert!(u.bytes >= 10_000, "{u:?}");
    }
}
