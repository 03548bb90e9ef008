//! The OCI side of the store: blobs by digest, layers rendered once into
//! trees of their own, and what an OCI image entry records.
//!
//! Blobs and layer trees are shared: an image entry names them by digest in
//! its `meta.json`, and `pod image gc` removes those no image names
//! (reachability, under the store's exclusive lock). Both appear only by
//! rename(2) of something complete and verified, as image entries do.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};
use spec::ImageId;

use crate::paths::Dirs;
use crate::store::{io_err, Store, StoreError};

/// One layer of an OCI image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerMeta {
    /// Digest of the blob as stored (`sha256:<hex>`, compressed).
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Digest of the uncompressed tar, as the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// What an OCI image entry is made of, beside [`crate::store::ImageMeta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciMeta {
    /// The manifest digest (`sha256:<hex>`): the image ID in OCI's spelling.
    pub digest: String,
    pub media_type: String,
    /// The digest of the index or manifest list it was picked from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    pub config_digest: String,
    /// Bottom to top.
    pub layers: Vec<LayerMeta>,
    /// The tag it was fetched by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The config's StopSignal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How the signature was checked: `cosign` (key ID in `signer`), or
    /// absent for an image fetched with `--insecure-options=image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Files of an OCI image entry.
pub const MANIFEST_FILE: &str = "oci-manifest.json";
pub const CONFIG_FILE: &str = "config.json";

fn hex_of(digest: &str) -> Result<&str, StoreError> {
    spec::oci::check_digest(digest).map_err(|why| StoreError::Corrupt { id: digest.to_owned(), why })?;
    Ok(&digest["sha256:".len()..])
}

/// `blobs/sha256/<hex>`.
pub fn blob_path(dirs: &Dirs, digest: &str) -> Result<PathBuf, StoreError> {
    Ok(dirs.blobs().join("sha256").join(hex_of(digest)?))
}

/// `layers/sha256-<hex>`: the layer's directory; its tree is `rootfs/`.
pub fn layer_dir(dirs: &Dirs, digest: &str) -> Result<PathBuf, StoreError> {
    Ok(dirs.layers().join(format!("sha256-{}", hex_of(digest)?)))
}

/// The tree of a layer, as stage1 stacks it.
pub fn layer_tree(dirs: &Dirs, digest: &str) -> Result<PathBuf, StoreError> {
    Ok(layer_dir(dirs, digest)?.join("rootfs"))
}

/// True if the blob is stored with this size.
pub fn has_blob(dirs: &Dirs, digest: &str, size: u64) -> bool {
    blob_path(dirs, digest).is_ok_and(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size))
}

/// True if the layer's tree is rendered.
pub fn has_layer(dirs: &Dirs, digest: &str) -> bool {
    layer_tree(dirs, digest).is_ok_and(|p| p.is_dir())
}

/// Moves a verified blob (a file in a staging dir) into `blobs/`. Another
/// process may have stored the same blob meanwhile: the content is the same
/// (same digest), so either copy will do.
pub fn commit_blob(dirs: &Dirs, file: &Path, digest: &str) -> Result<(), StoreError> {
    let dest = blob_path(dirs, digest)?;
    if let Some(parent) = dest.parent() {
        crate::paths::create_private_dir(parent).map_err(io_err("create directory", parent))?;
    }
    fs::rename(file, &dest).map_err(io_err("rename into place", &dest))
}

/// Moves a rendered layer (a directory holding `rootfs/` and `diff_id`) into
/// `layers/`. Losing the race to a concurrent renderer of the same layer is
/// success; ours stays behind for its staging dir's cleanup.
pub fn commit_layer(dirs: &Dirs, rendered: &Path, digest: &str) -> Result<(), StoreError> {
    let dest = layer_dir(dirs, digest)?;
    let layers = dirs.layers();
    crate::paths::create_private_dir(&layers).map_err(io_err("create directory", &layers))?;
    match fs::rename(rendered, &dest) {
        Ok(()) => {
            if let Ok(d) = File::open(dirs.layers()) {
                // Durability only: a lost rename renders the layer again.
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) if e.raw_os_error().is_some_and(|n| n == libc_eexist() || n == libc_enotempty()) => Ok(()),
        Err(e) => Err(StoreError::Io { op: "rename into place", path: dest, source: e }),
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}
fn libc_enotempty() -> i32 {
    nix::errno::Errno::ENOTEMPTY as i32
}

/// Removes blobs and layer trees that no image in `keep` names. Returns
/// the digests removed. The caller holds the store's exclusive lock.
pub fn gc(dirs: &Dirs, keep: &[OciMeta]) -> Result<Vec<String>, StoreError> {
    let mut blobs = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for m in keep {
        blobs.insert(m.config_digest.clone());
        for l in &m.layers {
            blobs.insert(l.digest.clone());
            layers.insert(l.digest.clone());
        }
    }
    let mut removed = Vec::new();
    let blob_dir = dirs.blobs().join("sha256");
    for name in list(&blob_dir)? {
        let digest = format!("sha256:{name}");
        if !blobs.contains(&digest) {
            let p = blob_dir.join(&name);
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
            removed.push(digest);
        }
    }
    let layer_root = dirs.layers();
    for name in list(&layer_root)? {
        let Some(hex) = name.strip_prefix("sha256-") else { continue };
        let digest = format!("sha256:{hex}");
        if layers.contains(&digest) {
            continue;
        }
        // Out of layers/ first, atomically, so no pod being prepared picks
        // up a half-deleted tree; a crash mid-delete leaves a tmp/ leftover.
        let tmp = dirs.tmp();
        let grave = tempfile::Builder::new()
            .prefix("gc-layer-")
            .tempdir_in(&tmp)
            .map_err(io_err("create directory in", &tmp))?
            .keep();
        let src = layer_root.join(&name);
        fs::rename(&src, grave.join(&name)).map_err(io_err("rename out of layers", &src))?;
        fs::remove_dir_all(&grave).map_err(io_err("remove", &grave))?;
        removed.push(format!("layer {digest}"));
    }
    Ok(removed)
}

/// `sha256:<hex>` of a file, and its size.
pub(crate) fn file_digest(path: &Path) -> Result<(String, u64), StoreError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h).map_err(io_err("read", path))?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// Re-hashes an OCI image's manifest against its ID, and its config and
/// layer blobs against the manifest's digests; checks the layer trees are
/// there. Returns the uncompressed size recorded.
pub fn verify(store: &Store, id: &ImageId) -> Result<u64, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { id: id.to_string(), why };
    let meta = store.meta(id)?;
    let oci = meta.oci.as_ref().ok_or_else(|| corrupt("meta.json has no OCI section".into()))?;
    let (digest, _) = file_digest(&store.image_dir(id).join(MANIFEST_FILE))?;
    if Some(&digest) != id.oci_digest().as_ref() {
        return Err(corrupt(format!("{MANIFEST_FILE} hashes to {digest}")));
    }
    let (config, _) = file_digest(&store.image_dir(id).join(CONFIG_FILE))?;
    if config != oci.config_digest {
        return Err(corrupt(format!("{CONFIG_FILE} hashes to {config}, not {}", oci.config_digest)));
    }
    let dirs = store.dirs();
    for l in &oci.layers {
        let path = blob_path(dirs, &l.digest)?;
        let (got, size) = file_digest(&path).map_err(|_| corrupt(format!("layer blob {} is missing", l.digest)))?;
        if got != l.digest || size != l.size {
            return Err(corrupt(format!("layer blob {} hashes to {got} ({size} bytes)", l.digest)));
        }
        if !has_layer(dirs, &l.digest) {
            return Err(corrupt(format!("layer {} is not rendered", l.digest)));
        }
    }
    Ok(meta.uncompressed_size)
}

fn list(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::Io { op: "read directory", path: dir.to_owned(), source: e }),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io_err("read directory", dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_what_images_name() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dirs = Dirs::new(t.path().join("data"), t.path().join("config"));
        crate::store::Store::open(&dirs).unwrap_or_else(|e| panic!("{e}"));
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        for c in ['a', 'b', 'c'] {
            let f = t.path().join(format!("blob-{c}"));
            fs::write(&f, c.to_string()).unwrap_or_else(|e| panic!("{e}"));
            commit_blob(&dirs, &f, &d(c)).unwrap_or_else(|e| panic!("{e}"));
            let r = t.path().join(format!("layer-{c}"));
            fs::create_dir_all(r.join("rootfs")).unwrap_or_else(|e| panic!("{e}"));
            commit_layer(&dirs, &r, &d(c)).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(has_blob(&dirs, &d('a'), 1) && !has_blob(&dirs, &d('a'), 2) && has_layer(&dirs, &d('b')));
        let layer = |c| LayerMeta { digest: d(c), size: 1, media_type: String::new(), diff_id: d(c) };
        let keep = OciMeta {
            digest: d('f'),
            media_type: String::new(),
            index_digest: None,
            config_digest: d('a'),
            layers: vec![layer('b')],
            tag: None,
            stop_signal: None,
            signature: None,
        };
        let removed = gc(&dirs, &[keep]).unwrap_or_else(|e| panic!("{e}"));
        // Blob c; layers a and c (a is only a config).
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(has_blob(&dirs, &d('a'), 1) && has_blob(&dirs, &d('b'), 1) && !has_blob(&dirs, &d('c'), 1));
        assert!(has_layer(&dirs, &d('b')) && !has_layer(&dirs, &d('a')) && !has_layer(&dirs, &d('c')));
        assert!(blob_path(&dirs, "sha256:../x").is_err());
    }
}
