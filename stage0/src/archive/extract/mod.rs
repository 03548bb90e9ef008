//! Unpacking the tar of an untrusted ACI or OCI layer into a fresh directory.
//!
//! Every entry is hostile until checked, and a refusal names the entry:
//! - paths are normalised (`./` and empty components dropped); absolute
//!   paths and `..` components are refused;
//! - in an ACI, only `manifest` (a regular file of at most
//!   [`MAX_MANIFEST_BYTES`]) and `rootfs` / `rootfs/...` may appear, each
//!   path once (directories too);
//! - in an OCI layer, paths are relative to the layer's root and may repeat,
//!   as tar and containerd allow: the later entry wins (the earlier one is
//!   unlinked; a directory is kept, its owner and mode taken from the later
//!   entry), except that nothing replaces a directory, so a directory that
//!   was checked as a parent never becomes a symlink or a file. Whiteouts
//!   become overlayfs whiteouts ([`super::overlay`]) and are held to the same
//!   path rules. A whiteout applies to the layers below only: a real entry of
//!   the same name in the same layer wins, whichever comes first, and is made
//!   opaque if it is a directory (it still hides the directory below);
//! - nothing is written through a symlink or a non-directory: every ancestor
//!   of an entry must be a directory this extraction made, which the map of
//!   extracted paths enforces and an `lstat` of each ancestor, top down,
//!   backs up; files are created `O_EXCL|O_NOFOLLOW`, so nothing is
//!   followed or overwritten;
//! - hard links may only point at regular files extracted earlier in rootfs
//!   (in the layer);
//! - device nodes and exotic entry types are refused (the only devices in a
//!   layer's tree are the 0:0 whiteouts made here); fifos are fine (inert
//!   files; an app could make one itself); setuid and setgid bits are kept,
//!   as in the image: `no_new_privs` makes them inert inside pods, and the
//!   store is not reachable by other host users (see `store`);
//! - paths longer than PATH_MAX, components longer than NAME_MAX, symlink
//!   targets longer than PATH_MAX and owners that are not valid IDs are
//!   refused (the kernel would fail them with an I/O error, or chown -1
//!   would silently keep root as owner);
//! - at most [`Limits::max_entries`](super::Limits) entries, and at most
//!   [`MAX_HEADER_BYTES`] of pax records and GNU long names before any one
//!   entry: the tar crate reads those whole into memory, so an unbounded one
//!   is a memory bomb that compresses to nothing.
//!
//! Symlink *targets* are not checked: they are resolved inside the
//! container, never by this code. Extended attributes (pax `SCHILY.xattr.*`)
//! are not applied, so an archive cannot set `trusted.overlay.*` itself (nor
//! file capabilities, which are lost).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use filetime::FileTime;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use spec::{ImageManifest, ManifestError, MAX_MANIFEST_BYTES};
use tar::EntryType;

use super::overlay;
use super::paths::{check_lengths, normalise, shared_dirs, MAX_PATH};
use super::stream::ChunkReader;
use super::{ArchiveError, Reject};

mod layer;
mod nodes;

const BLOCK: u64 = 512;
/// Copy buffer for file data: large writes, few syscalls.
const COPY_BUF: usize = 1 << 20;
const MANIFEST: &[u8] = b"manifest";
/// Most bytes of headers, pax records and GNU long names the tar parser may
/// read for one entry. A PATH_MAX name is 4 KiB; pax records with extended
/// attributes stay far below this.
pub(super) const MAX_HEADER_BYTES: u64 = 1 << 20;
const ROOTFS: &[u8] = b"rootfs";

/// The manifest found while unpacking.
#[derive(Debug)]
pub(super) struct Unpacked {
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
}

/// What an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// An ACI: `manifest` and a `rootfs/` tree, each path once.
    Aci,
    /// An OCI layer: a tree relative to its root, with whiteouts; a path may
    /// repeat, the later entry winning.
    Layer,
}

/// What an extracted path is, as far as later entries are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A directory made for an entry below it, with no entry of its own yet.
    ImplicitDir,
    Dir,
    File,
    Symlink,
    Fifo,
    /// An overlayfs whiteout (layers only).
    Whiteout,
}

/// What an entry does to a path extracted earlier (layers only, but for
/// the first, which is how an ACI's directory entry follows its contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Nothing there yet.
    Nothing,
    /// A directory entry for a directory already there: only its owner,
    /// mode and time change.
    Redeclare,
    /// A non-directory (or whiteout) to unlink first.
    Unlink,
}

/// Ownership, mode and time from an entry's header.
#[derive(Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
}

/// The tar stream as the tar parser reads it, with a byte budget while it
/// reads headers (`Some(bytes left)`); file data is read unmetered.
struct Metered {
    inner: ChunkReader,
    budget: Rc<Cell<Option<u64>>>,
}

impl Read for Metered {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Some(left) = self.budget.get() {
            let left = left.checked_sub(n as u64).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "more than {MAX_HEADER_BYTES} bytes of tar headers (pax records, GNU long names) \
                         before one entry"
                    ),
                )
            })?;
            self.budget.set(Some(left));
        }
        Ok(n)
    }
}

/// Unpacks the tar read from `reader` into the empty directory `dest`, then
/// reads the stream to its end so all of it is hashed. More than
/// `max_entries` entries is an error. The manifest of an ACI, `None` for a
/// layer.
pub(super) fn unpack(
    reader: ChunkReader,
    dest: &Path,
    max_entries: u64,
    format: Format,
) -> Result<Option<Unpacked>, ArchiveError> {
    let mut ex = Extractor::new(dest, format);
    let budget = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(Metered { inner: reader, budget: Rc::clone(&budget) });
    // Where the last entry's data ends: an end-of-archive block must follow.
    let mut data_end = 0u64;
    let mut last: Option<String> = None;
    let mut count = 0u64;
    let mut entries = archive.entries().map_err(|e| malformed(last.as_deref(), e))?;
    // `entries` borrows `archive` until the loop ends.
    loop {
        budget.set(Some(MAX_HEADER_BYTES));
        let next = entries.next();
        budget.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|e| malformed(last.as_deref(), e))?;
        count += 1;
        if count > max_entries {
            return Err(ArchiveError::TooManyEntries { limit: max_entries });
        }
        let raw = entry.path_bytes().into_owned();
        let name = lossy(&raw);
        let padded = entry.size().div_ceil(BLOCK).saturating_mul(BLOCK);
        data_end = entry.raw_file_position().saturating_add(padded);
        ex.entry(&mut entry, &raw, &name)?;
        // Data that no file took (a directory or link with a size) is read
        // here, unmetered, rather than skipped inside the next header read.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| malformed_at(&name, e))?;
        last = Some(name);
    }
    let mut reader = archive.into_inner().inner;
    // The tar crate takes a clean EOF where a header should be as the end;
    // only the zero block it read (or not) tells a cut archive apart.
    if reader.consumed() < data_end.saturating_add(BLOCK) {
        return Err(ArchiveError::Truncated(match last {
            Some(name) => format!("no end-of-archive marker after entry {name:?}"),
            None => "no tar entries and no end-of-archive marker".to_owned(),
        }));
    }
    reader.drain().map_err(|e| malformed(last.as_deref(), e))?;
    ex.finish()
}

struct Extractor<'d> {
    dest: &'d Path,
    format: Format,
    /// Every path extracted (or made as an ancestor), normalised.
    seen: HashMap<Vec<u8>, Kind>,
    /// Directory entries: their mode and mtime are applied at the end.
    dirs: Vec<(PathBuf, Meta)>,
    /// Where in `dirs` each directory entry is, for a layer's later entry
    /// of the same directory to replace.
    dir_slots: HashMap<Vec<u8>, usize>,
    manifest: Option<Unpacked>,
    /// The last parent directory verified on disk; entries come grouped by
    /// directory, so this saves most of the `lstat`s.
    checked_parent: Option<Vec<u8>>,
    buf: Vec<u8>,
    is_root: bool,
}

impl<'d> Extractor<'d> {
    fn new(dest: &'d Path, format: Format) -> Self {
        Self {
            dest,
            format,
            seen: HashMap::new(),
            dirs: Vec::new(),
            dir_slots: HashMap::new(),
            manifest: None,
            checked_parent: None,
            buf: vec![0; COPY_BUF],
            is_root: nix::unistd::geteuid().is_root(),
        }
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, Metered>, raw: &[u8], name: &str) -> Result<(), ArchiveError> {
        let rel = normalise(raw).map_err(|reason| rejected(name, reason))?;
        check_lengths(&rel).map_err(|reason| rejected(name, reason))?;
        let ty = entry.header().entry_type();
        if rel.is_empty() {
            // `./`, the archive's root: the destination itself, whose owner
            // and mode a layer sets (the merged root's, if it is the top).
            return match (ty.is_dir(), self.format) {
                (false, _) => Err(rejected(name, Reject::NotDirectory)),
                (true, Format::Aci) => Ok(()),
                (true, Format::Layer) => {
                    let meta = header_meta(entry.header(), name)?;
                    self.dir(&rel, self.dest.to_path_buf(), meta, Replace::Redeclare)
                }
            };
        }
        if self.format == Format::Aci {
            if rel == MANIFEST {
                return self.manifest(entry, name);
            }
            if rel.split(|&b| b == b'/').next() != Some(ROOTFS) {
                return Err(rejected(name, Reject::UnexpectedTopLevel));
            }
            if rel == ROOTFS && !ty.is_dir() {
                return Err(rejected(name, Reject::NotDirectory));
            }
        }
        let kind = match ty {
            // `Continuous` is a regular file to every extractor in use.
            EntryType::Regular | EntryType::Continuous | EntryType::Link => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Fifo => Kind::Fifo,
            EntryType::Char => return Err(rejected(name, Reject::Device { kind: "character" })),
            EntryType::Block => return Err(rejected(name, Reject::Device { kind: "block" })),
            other => return Err(rejected(name, Reject::UnsupportedType(char::from(other.as_byte())))),
        };
        if self.format == Format::Layer {
            if let Some(whiteout) = overlay::whiteout(&rel) {
                let whiteout = whiteout.map_err(|reason| rejected(name, reason))?;
                return self.whiteout(whiteout, &rel, name);
            }
        }
        let replace = match (self.seen.get(&rel[..]), self.format) {
            (None, _) => Replace::Nothing,
            (Some(Kind::ImplicitDir), _) if kind == Kind::Dir => Replace::Redeclare,
            (Some(_), Format::Aci) => return Err(rejected(name, Reject::Duplicate)),
            (Some(Kind::Dir), Format::Layer) if kind == Kind::Dir => Replace::Redeclare,
            (Some(Kind::Dir | Kind::ImplicitDir), Format::Layer) => {
                return Err(rejected(name, Reject::ReplacesDirectory))
            }
            (Some(_), Format::Layer) => Replace::Unlink,
        };
        // The entry it replaces was a whiteout: a directory now hides the
        // one below all the same.
        let opaque = kind == Kind::Dir && self.seen.get(&rel[..]) == Some(&Kind::Whiteout);
        self.prepare_parents(&rel, name)?;
        let path = self.dest.join(OsStr::from_bytes(&rel));
        if replace == Replace::Unlink {
            // unlink never follows a symlink; the parents were just checked.
            fs::remove_file(&path).map_err(ArchiveError::io("remove", &path))?;
        }
        match ty {
            EntryType::Link => self.hard_link(entry, &path, &rel, name)?,
            EntryType::Directory => self.dir(&rel, path.clone(), header_meta(entry.header(), name)?, replace)?,
            EntryType::Symlink => self.symlink(entry, &path, &header_meta(entry.header(), name)?, name)?,
            EntryType::Fifo => self.fifo(&path, &header_meta(entry.header(), name)?)?,
            _ => {
                let meta = header_meta(entry.header(), name)?;
                let size = entry.size();
                self.file(entry, size, &path, &meta, name)?;
                crate::crashpoint::crashpoint("fetch.extracting");
            }
        }
        if opaque {
            overlay::set_opaque(&path).map_err(ArchiveError::io("mark opaque", &path))?;
        }
        self.seen.insert(rel, kind);
        Ok(())
    }

    fn manifest(&mut self, entry: &mut tar::Entry<'_, Metered>, name: &str) -> Result<(), ArchiveError> {
        if !matches!(entry.header().entry_type(), EntryType::Regular | EntryType::Continuous) {
            return Err(rejected(name, Reject::NotRegular));
        }
        if self.manifest.is_some() {
            return Err(rejected(name, Reject::Duplicate));
        }
        // Checked on the header, before a byte is buffered.
        let size = entry.size();
        let len = match usize::try_from(size) {
            Ok(len) if len <= MAX_MANIFEST_BYTES => len,
            _ => return Err(ManifestError::TooLarge { size: usize::try_from(size).unwrap_or(usize::MAX) }.into()),
        };
        let mut bytes = Vec::with_capacity(len);
        entry.read_to_end(&mut bytes).map_err(|e| malformed_at(name, e))?;
        if bytes.len() != len {
            return Err(ArchiveError::Truncated(format!("entry {name:?} ends after {} of {len} bytes", bytes.len())));
        }
        let manifest = ImageManifest::parse(&bytes)?;
        let path = self.dest.join("manifest");
        let mut file = create_new(&path, 0o644)?;
        file.write_all(&bytes).map_err(ArchiveError::io("write", &path))?;
        self.manifest = Some(Unpacked { manifest, manifest_bytes: bytes });
        Ok(())
    }

    /// Checks that every ancestor of `rel` is a directory made by this
    /// extraction, making those that have no entry yet.
    fn prepare_parents(&mut self, rel: &[u8], name: &str) -> Result<(), ArchiveError> {
        let Some(slash) = rel.iter().rposition(|&b| b == b'/') else {
            return Ok(()); // `rootfs` itself (a top-level path of a layer), whose parent is dest
        };
        let parent = &rel[..slash];
        if self.checked_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        // Ancestors shared with the parent checked last were checked then,
        // and a directory, once made, is never replaced (not even by a
        // layer's duplicate entry).
        let checked = self.checked_parent.as_deref().map_or(0, |last| shared_dirs(last, parent));
        for end in (checked + 1..=slash).filter(|&i| rel[i] == b'/') {
            let ancestor = &rel[..end];
            match self.seen.get(ancestor) {
                Some(Kind::Dir | Kind::ImplicitDir) => {}
                Some(Kind::Symlink) => return Err(rejected(name, Reject::ThroughSymlink { link: lossy(ancestor) })),
                // Whited out, then filled in this layer: a directory that
                // still hides the one below.
                Some(Kind::Whiteout) => self.fill_whiteout(ancestor)?,
                Some(_) => return Err(rejected(name, Reject::ParentNotDirectory { parent: lossy(ancestor) })),
                None => self.implicit_dir(ancestor)?,
            }
            // Defence in depth: whatever the map says, each ancestor on disk
            // must be a real directory, checked from the top down before
            // anything is made inside it. lstat resolves the components
            // above the last one, but those were checked just before.
            let path = self.dest.join(OsStr::from_bytes(ancestor));
            let file_type = fs::symlink_metadata(&path).map_err(ArchiveError::io("stat", &path))?.file_type();
            if !file_type.is_dir() {
                let found = if file_type.is_symlink() { "a symlink" } else { "a non-directory" };
                return Err(rejected(name, Reject::UnexpectedOnDisk { at: lossy(ancestor), found }));
            }
        }
        self.checked_parent = Some(parent.to_vec());
        Ok(())
    }

    /// Makes a directory that only appears as an ancestor: 0755, root's.
    fn implicit_dir(&mut self, rel: &[u8]) -> Result<(), ArchiveError> {
        let path = self.dest.join(OsStr::from_bytes(rel));
        fs::DirBuilder::new().mode(0o755).create(&path).map_err(ArchiveError::io("create directory", &path))?;
        // The umask applied to mkdir; the mode must be exactly 0755.
        fs::set_permissions(&path, Permissions::from_mode(0o755)).map_err(ArchiveError::io("chmod", &path))?;
        self.chown(std::os::unix::fs::lchown(&path, Some(0), Some(0)), &path)?;
        self.seen.insert(rel.to_vec(), Kind::ImplicitDir);
        Ok(())
    }

    fn finish(mut self) -> Result<Option<Unpacked>, ArchiveError> {
        let manifest = match self.format {
            Format::Aci => {
                let manifest = self.manifest.take().ok_or(ArchiveError::NoManifest)?;
                if !self.seen.contains_key(ROOTFS) {
                    self.implicit_dir(ROOTFS)?;
                }
                Some(manifest)
            }
            Format::Layer => {
                if !self.dir_slots.contains_key(&b""[..]) {
                    // No `./` entry: the layer's root is 0755 and root's,
                    // like any directory the archive does not describe.
                    let root = self.dest;
                    fs::set_permissions(root, Permissions::from_mode(0o755))
                        .map_err(ArchiveError::io("chmod", root))?;
                    self.chown(std::os::unix::fs::lchown(root, Some(0), Some(0)), root)?;
                }
                None
            }
        };
        // Directories last, deepest first: writing their contents changed
        // their mtimes, and a read-only mode would have blocked the writing.
        // chmod follows symlinks, but each of these was made by mkdir and
        // nothing can have replaced it (duplicates are refused, and a layer's
        // duplicates never replace a directory).
        for (path, meta) in self.dirs.iter().rev() {
            fs::set_permissions(path, Permissions::from_mode(meta.mode)).map_err(ArchiveError::io("chmod", path))?;
            filetime::set_symlink_file_times(path, meta.mtime, meta.mtime)
                .map_err(ArchiveError::io("set times of", path))?;
        }
        Ok(manifest)
    }
}

fn header_meta(header: &tar::Header, name: &str) -> Result<Meta, ArchiveError> {
    let uid = header.uid().map_err(|e| malformed_at(name, e))?;
    let gid = header.gid().map_err(|e| malformed_at(name, e))?;
    let mtime = header.mtime().map_err(|e| malformed_at(name, e))?;
    Ok(Meta {
        mode: header.mode().map_err(|e| malformed_at(name, e))? & 0o7777,
        uid: valid_id(uid).ok_or_else(|| rejected(name, Reject::IdOutOfRange(uid)))?,
        gid: valid_id(gid).ok_or_else(|| rejected(name, Reject::IdOutOfRange(gid)))?,
        mtime: FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
    })
}

/// A uid or gid chown(2) takes as one: 32 bits, and not -1 ("no change").
fn valid_id(id: u64) -> Option<u32> {
    u32::try_from(id).ok().filter(|&id| id != u32::MAX)
}

/// Creates a file that must not exist yet, never following a symlink.
fn create_new(path: &Path, mode: u32) -> Result<File, ArchiveError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(ArchiveError::io("create", path))?;
    Ok(file)
}

/// Reads until `buf` is full or the data ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn rejected(name: &str, reason: Reject) -> ArchiveError {
    ArchiveError::Rejected { path: name.to_owned(), reason }
}

fn malformed(after: Option<&str>, source: io::Error) -> ArchiveError {
    let context = match after {
        Some(name) => format!("after entry {name:?}"),
        None => "at its start".to_owned(),
    };
    ArchiveError::Tar { context, source }
}

fn malformed_at(name: &str, source: io::Error) -> ArchiveError {
    ArchiveError::Tar { context: format!("at entry {name:?}"), source }
}
