//! The overlayfs side of OCI layers: recognising whiteout entries and making
//! what overlayfs reads as a whiteout (a character device 0:0) and as an
//! opaque directory (the `trusted.overlay.opaque` xattr set to `y`).
//!
//! The OCI image spec (`layer.md`, "Whiteouts") names them: `DIR/.wh.NAME`
//! deletes `DIR/NAME` of the layers below, `DIR/.wh..wh..opq` hides every
//! child `DIR` has in the layers below. Other names with the reserved
//! `.wh..wh.` prefix are AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`);
//! they and everything under them are skipped, as containerd and Docker do.

use std::io;
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::Reject;

const PREFIX: &[u8] = b".wh.";
const META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Read by overlayfs on a directory of a lower layer; only root may set
/// `trusted.*`.
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a whiteout entry of a layer asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Whiteout<'a> {
    /// Hide this name (a normalised path) of the layers below.
    Remove(Vec<u8>),
    /// Make this directory (a normalised path; `""` is the layer's root)
    /// opaque.
    Opaque(&'a [u8]),
    /// AUFS metadata: nothing to extract.
    AufsMeta,
}

/// Whether the normalised path `rel` is a whiteout entry, and which.
/// `None`: an ordinary entry.
pub(super) fn whiteout(rel: &[u8]) -> Option<Result<Whiteout<'_>, Reject>> {
    let mut components = rel.split(|&b| b == b'/').peekable();
    let mut parent_len = 0;
    while let Some(component) = components.next() {
        let last = components.peek().is_none();
        if component.starts_with(META_PREFIX) && !(last && component == OPAQUE) {
            return Some(Ok(Whiteout::AufsMeta));
        }
        if !component.starts_with(PREFIX) {
            parent_len += component.len() + 1;
            continue;
        }
        if !last {
            // A whiteout is a marker, not a directory: nothing goes below it.
            return Some(Err(Reject::InvalidWhiteout));
        }
        let parent = &rel[..parent_len.saturating_sub(1)];
        if component == OPAQUE {
            return Some(Ok(Whiteout::Opaque(parent)));
        }
        return Some(match &component[PREFIX.len()..] {
            b"" | b"." => Err(Reject::InvalidWhiteout),
            b".." => Err(Reject::ParentDir),
            name if parent.is_empty() => Ok(Whiteout::Remove(name.to_vec())),
            name => Ok(Whiteout::Remove([parent, b"/", name].concat())),
        });
    }
    None
}

/// Makes the whiteout `path`: a character device 0:0, mode 0, as overlayfs
/// itself makes them. mknod does not follow a symlink in the last component.
pub(super) fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

/// Marks the directory `path` opaque, without following a symlink in its
/// last component.
pub(super) fn set_opaque(path: &Path) -> io::Result<()> {
    rustix::fs::lsetxattr(path, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_whiteouts() {
        let remove = |p: &[u8]| Some(Ok(Whiteout::Remove(p.to_vec())));
        assert_eq!(whiteout(b"usr/bin/x"), None);
        assert_eq!(whiteout(b"usr/.whx"), None);
        assert_eq!(whiteout(b"usr/bin/.wh.x"), remove(b"usr/bin/x"));
        assert_eq!(whiteout(b".wh.etc"), remove(b"etc"));
        assert_eq!(whiteout(b"a/.wh..wh..opq"), Some(Ok(Whiteout::Opaque(b"a"))));
        assert_eq!(whiteout(b".wh..wh..opq"), Some(Ok(Whiteout::Opaque(b""))));
        assert_eq!(whiteout(b".wh..wh.plnk/123.4"), Some(Ok(Whiteout::AufsMeta)));
        assert_eq!(whiteout(b"a/.wh..wh.aufs"), Some(Ok(Whiteout::AufsMeta)));
        assert_eq!(whiteout(b"a/.wh..wh..opq/x"), Some(Ok(Whiteout::AufsMeta)));
        assert_eq!(whiteout(b"a/.wh.b/c"), Some(Err(Reject::InvalidWhiteout)));
        assert_eq!(whiteout(b"a/.wh."), Some(Err(Reject::InvalidWhiteout)));
        assert_eq!(whiteout(b"a/.wh.."), Some(Err(Reject::InvalidWhiteout)));
        assert_eq!(whiteout(b"a/.wh..."), Some(Err(Reject::ParentDir)));
        assert_eq!(whiteout(b"a/.wh..x"), remove(b"a/.x"));
    }
}
