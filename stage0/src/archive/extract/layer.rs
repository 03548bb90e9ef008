//! The part of extraction only OCI layers have: whiteout entries, and
//! whited-out names that the same layer then fills in.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use super::super::overlay::{self, Whiteout};
use super::{ArchiveError, Extractor, Kind};

impl Extractor<'_> {
    /// A layer's whiteout entry `rel`: nothing is extracted at `rel`.
    pub(super) fn whiteout(&mut self, whiteout: Whiteout<'_>, rel: &[u8], name: &str) -> Result<(), ArchiveError> {
        let target = match whiteout {
            Whiteout::AufsMeta => return Ok(()),
            Whiteout::Opaque(dir) => {
                // Makes `dir` if need be, and checks that it is a directory.
                self.prepare_parents(rel, name)?;
                let path = self.dest.join(OsStr::from_bytes(dir));
                return overlay::set_opaque(&path).map_err(ArchiveError::io("mark opaque", &path));
            }
            Whiteout::Remove(target) => target,
        };
        // The target's ancestors are those of `rel`.
        self.prepare_parents(rel, name)?;
        let path = self.dest.join(OsStr::from_bytes(&target));
        match self.seen.get(&target) {
            None => {
                overlay::make_whiteout(&path).map_err(ArchiveError::io("create whiteout", &path))?;
                self.seen.insert(target, Kind::Whiteout);
            }
            // This layer's own directory stays, hiding the one below.
            Some(Kind::Dir | Kind::ImplicitDir) => {
                overlay::set_opaque(&path).map_err(ArchiveError::io("mark opaque", &path))?;
            }
            // A file of this layer already hides the one below; a second
            // whiteout of the name changes nothing.
            Some(_) => {}
        }
        Ok(())
    }

    /// `ancestor` was whited out and now has an entry below it: it becomes
    /// a directory, opaque so that it still hides the one below.
    pub(super) fn fill_whiteout(&mut self, ancestor: &[u8]) -> Result<(), ArchiveError> {
        let path = self.dest.join(OsStr::from_bytes(ancestor));
        fs::remove_file(&path).map_err(ArchiveError::io("remove", &path))?;
        self.implicit_dir(ancestor)?;
        overlay::set_opaque(&path).map_err(ArchiveError::io("mark opaque", &path))
    }
}
