//! Applying an OCI layer tarball into a tree of its own, in overlayfs format,
//! so that stage1 can stack the trees of an image's layers as overlayfs lower
//! layers (`lowerdir=top:...:bottom`). Each layer is rendered once and shared
//! by every image that has it.
//!
//! The tar is hostile and is held to the same rules as an ACI's (see
//! `archive::extract`): the same extractor runs, switched to the layer
//! format, in the same three-thread pipeline (decompress | hash | untar).
//! What differs:
//! - paths are relative to the layer's root (`./usr/bin/x` or `usr/bin/x`);
//!   a `./` entry gives the root its owner, mode and time, and without one
//!   the root is 0755 and root's;
//! - a path may appear more than once, the later entry winning, as with tar
//!   and containerd; but nothing replaces a directory (refused), so a
//!   directory checked as the parent of earlier entries never turns into a
//!   symlink that a later entry would be written through;
//! - whiteouts (image-spec `layer.md`): `DIR/.wh.NAME` becomes a character
//!   device 0:0 at `DIR/NAME`, `DIR/.wh..wh..opq` the xattr
//!   `trusted.overlay.opaque=y` on `DIR` (made if need be). The `.wh.`
//!   entries never appear in the tree, and their paths are checked like any
//!   other (`../.wh.x`, absolute, or through a symlink are refused). Other
//!   `.wh..wh.` names are AUFS bookkeeping and are skipped. The spec says a
//!   layer should not both white out a name and create it; when one does,
//!   the whiteout applies to the layers below only, as the spec has it: the
//!   layer's own entry wins whichever comes first, and if it is a directory
//!   it is made opaque, still hiding the directory below;
//! - the hash is SHA-256 of the uncompressed stream: the layer's diff ID, for
//!   the caller to compare with the config's `rootfs.diff_ids`.
//!
//! Extended attributes in the tar are not applied (so file capabilities are
//! lost), as for ACIs; that also keeps a layer from setting
//! `trusted.overlay.*` itself. Device nodes are refused; the only devices in
//! a tree are the whiteouts made here. Making those needs root (mknod and
//! `trusted.*` xattrs).
//!
//! Why a symlink in one layer cannot be written through by the next: each
//! layer is extracted into an empty directory of its own, and the symlink
//! rule only needs to hold within one tree. If layer 1 has `link -> /etc`
//! and layer 2 has `link/x`, layer 2's `link` is a real directory in layer
//! 2's tree (made by this extraction, checked with lstat); nothing is ever
//! resolved through layer 1's tree. In the merged overlayfs view layer 2's
//! directory `link` hides layer 1's symlink, exactly as if the layers had
//! been applied on top of each other by tar.
//!
//! Rendering layers apart has one visible difference from applying them in
//! turn into one tree: a directory that a layer does not describe but needs
//! (`a/b` without an `a/` entry) is made 0755 and root's, and in the merged
//! view its owner and mode hide those of `a` below. Layers written by
//! Docker, BuildKit and containerd have an entry for every parent directory.

use std::io::Read;
use std::path::Path;

use crate::archive::{self, ArchiveError, Compression, Limits};

/// A layer applied into its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    /// `sha256:<hex>` of the uncompressed tar, read to its end: equals
    /// `sha256sum` of the decompressed blob.
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// The compression the blob was read with.
    pub compression: Compression,
}

/// The compression a layer media type says its blob has. Media types that
/// are not layers, or layers this engine cannot read (encrypted ones), are
/// refused.
pub fn layer_compression(media_type: &str) -> Result<Compression, ArchiveError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        other => Err(ArchiveError::MediaType(other.to_owned())),
    }
}

/// Applies the layer blob read from `src` into the empty directory `dest`,
/// which becomes the layer's tree. `compression`: what the blob is (from
/// [`layer_compression`] of its media type), or `None` to detect it from its
/// magic bytes, as containerd does whatever the media type says.
///
/// The caller checks the returned diff ID against the image config before
/// using the tree. On error `dest` may hold a partial tree, never anything
/// outside it; the caller removes it.
pub fn apply_layer(
    src: impl Read,
    compression: Option<Compression>,
    dest: &Path,
    limits: &Limits,
) -> Result<AppliedLayer, ArchiveError> {
    let layer = archive::extract_layer(src, compression, dest, limits)?;
    let diff_id = format!("sha256:{}", hex::encode(layer.sha256));
    tracing::debug!(
        diff_id,
        uncompressed_size = layer.uncompressed_size,
        dest = %dest.display(),
        "applied layer"
    );
    Ok(AppliedLayer { diff_id, uncompressed_size: layer.uncompressed_size, compression: layer.compression })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_layer_media_types() {
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+gzip").ok(), Some(Compression::Gzip));
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").ok(), Some(Compression::Zstd));
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar").ok(), Some(Compression::None));
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").ok(),
            Some(Compression::Gzip)
        );
        for bad in ["application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "application/vnd.oci.image.config.v1+json"]
        {
            let err = layer_compression(bad).expect_err(bad);
            assert!(matches!(&err, ArchiveError::MediaType(m) if m == bad), "{err:?}");
        }
    }
}
