//! Writing one node of each kind: regular files, directories, symbolic
//! and hard links, FIFOs, and their owners.

use super::*;

impl Extractor<'_> {
    pub(super) fn file(
        &mut self,
        data: &mut impl Read,
        size: u64,
        path: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let file = create_new(path, 0o600)?;
        let mut remaining = size;
        while remaining > 0 {
            let want = usize::try_from(remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
            let n = read_full(data, &mut self.buf[..want]).map_err(|e| malformed_at(name, e))?;
            if n == 0 {
                let got = size - remaining;
                return Err(ArchiveError::Truncated(format!("entry {name:?} ends after {got} of {size} bytes")));
            }
            (&file).write_all(&self.buf[..n]).map_err(ArchiveError::io("write", path))?;
            remaining -= n as u64;
        }
        // Owner before mode: chown clears the setuid and setgid bits.
        self.chown(std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)), path)?;
        file.set_permissions(Permissions::from_mode(meta.mode)).map_err(ArchiveError::io("chmod", path))?;
        filetime::set_file_handle_times(&file, None, Some(meta.mtime)).map_err(ArchiveError::io("set times of", path))
    }

    /// `Replace::Redeclare`: the directory is there already (made as an
    /// ancestor, or by an earlier entry of a layer).
    pub(super) fn dir(&mut self, rel: &[u8], path: PathBuf, meta: Meta, replace: Replace) -> Result<(), ArchiveError> {
        if replace != Replace::Redeclare {
            // Owner-writable until the end, so that the contents can be
            // written even when not root; the real mode comes last.
            fs::DirBuilder::new().mode(0o700).create(&path).map_err(ArchiveError::io("create directory", &path))?;
        }
        self.chown(std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid)), &path)?;
        // A later entry for the same directory wins: its mode and time are
        // the ones applied at the end.
        match self.dir_slots.get(rel) {
            Some(&slot) => self.dirs[slot] = (path, meta),
            None => {
                self.dir_slots.insert(rel.to_vec(), self.dirs.len());
                self.dirs.push((path, meta));
            }
        }
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        entry: &tar::Entry<'_, Metered>,
        path: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let target = entry.link_name_bytes().map(Cow::into_owned).unwrap_or_default();
        if target.is_empty() {
            return Err(rejected(name, Reject::EmptyLinkTarget));
        }
        if target.contains(&0) {
            return Err(rejected(name, Reject::Nul));
        }
        if target.len() > MAX_PATH {
            let len = target.len();
            return Err(rejected(name, Reject::TooLong { what: "symlink target", len, limit: MAX_PATH }));
        }
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), path)
            .map_err(ArchiveError::io("create symlink", path))?;
        self.chown(std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)), path)?;
        filetime::set_symlink_file_times(path, meta.mtime, meta.mtime).map_err(ArchiveError::io("set times of", path))
    }

    pub(super) fn fifo(&mut self, path: &Path, meta: &Meta) -> Result<(), ArchiveError> {
        // mkfifo does not follow a symlink in the last component.
        nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| ArchiveError::io("create fifo", path)(e.into()))?;
        self.chown(std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)), path)?;
        // chmod follows symlinks, but this is the fifo just made in a verified
        // directory; the only fd-based way would be opening the fifo.
        fs::set_permissions(path, Permissions::from_mode(meta.mode)).map_err(ArchiveError::io("chmod", path))?;
        filetime::set_symlink_file_times(path, meta.mtime, meta.mtime).map_err(ArchiveError::io("set times of", path))
    }

    pub(super) fn hard_link(
        &mut self,
        entry: &tar::Entry<'_, Metered>,
        path: &Path,
        rel: &[u8],
        name: &str,
    ) -> Result<(), ArchiveError> {
        let raw = entry.link_name_bytes().map(Cow::into_owned).unwrap_or_default();
        let bad = |why| rejected(name, Reject::HardLinkTarget { target: lossy(&raw), why });
        let target = normalise(&raw).map_err(|reason| {
            bad(match reason {
                Reject::Absolute => "is absolute",
                Reject::ParentDir => "has a '..' component",
                _ => "contains a NUL byte",
            })
        })?;
        if self.format == Format::Aci && !target.starts_with(b"rootfs/") {
            return Err(bad("is not inside rootfs/"));
        }
        if target == rel {
            // A layer's duplicate entry linking to the file it replaces.
            return Err(bad("is the entry itself"));
        }
        if self.seen.get(&target[..]) != Some(&Kind::File) {
            let through_symlink = (0..target.len())
                .filter(|&i| target[i] == b'/')
                .any(|end| self.seen.get(&target[..end]) == Some(&Kind::Symlink));
            return Err(bad(if through_symlink {
                "goes through a symlink"
            } else {
                "is not a regular file extracted earlier in the archive"
            }));
        }
        // Defence in depth, as for parents: the target on disk must be that
        // regular file. (linkat without AT_SYMLINK_FOLLOW would link a
        // symlink itself, not its target, but no symlink belongs here.)
        let target_path = self.dest.join(OsStr::from_bytes(&target));
        let md = fs::symlink_metadata(&target_path).map_err(ArchiveError::io("stat", &target_path))?;
        if !md.file_type().is_file() {
            return Err(bad("is not a regular file on disk"));
        }
        fs::hard_link(&target_path, path).map_err(ArchiveError::io("create hard link", path))
    }

    /// Tolerates EPERM from chown when not root: an unprivileged extraction
    /// cannot give files away, and owns them instead.
    pub(super) fn chown(&self, result: io::Result<()>, path: &Path) -> Result<(), ArchiveError> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !self.is_root => Ok(()),
            Err(e) => Err(ArchiveError::io("chown", path)(e)),
            Ok(()) => Ok(()),
        }
    }
}
