//! Rendering a resolved layer list into the tree store: `trees/<key>/rootfs`
//! is every layer's rootfs laid down bottom→top, later layers winning, with
//! pathWhitelists applied. Trees are read-only lowers for the pod's overlay.
//!
//! ```text
//! <data>/trees/<key>/rootfs/   the flattened files
//!                   /layers    the image IDs bottom→top, one per line
//! ```
//!
//! As in the image store, a tree appears only by rename(2) of a complete
//! staging directory: readers never see half a tree, and of two concurrent
//! renderers the first rename wins and the other discards its copy.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use nix::errno::Errno;
use nix::sys::stat::Mode;
use spec::ImageId;

use crate::crashpoint::crashpoint;
use crate::deps::{tree_key_of, Resolution, Whitelist};
use crate::exit::{Exit, ExitCodeOf};
use crate::paths::Dirs;
use crate::store::{Store, StoreError};

/// Name of the layer list inside a tree directory.
const LAYERS: &str = "layers";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {id} is not in the store: {path} is missing")]
    MissingImage { id: ImageId, path: PathBuf },
    #[error("{path} is not a rendered tree (not a directory)")]
    NotATree { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExitCodeOf for RenderError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } | Self::NotATree { .. } => Exit::Failure,
            Self::MissingImage { .. } => Exit::NotFound,
            Self::Store(e) => e.exit(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RenderError + 'a {
    move |source| RenderError::Io { op, path: path.to_owned(), source }
}

/// How `render` obtained the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeOrigin {
    /// Laid down by this call.
    Rendered,
    /// Already in the store, or rendered concurrently by another process.
    Reused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedTree {
    /// The tree store key (`Resolution::tree_key`).
    pub key: String,
    /// `trees/<key>/rootfs`.
    pub path: PathBuf,
    pub origin: TreeOrigin,
}

/// Renders `res` into `trees/<key>`, or reuses the tree already there.
pub fn render(dirs: &Dirs, res: &Resolution) -> Result<RenderedTree, RenderError> {
    let key = res.tree_key();
    let target = dirs.trees().join(&key);
    let done = |origin| RenderedTree { key: key.clone(), path: target.join("rootfs"), origin };
    if is_tree(&target)? {
        return Ok(done(TreeOrigin::Reused));
    }
    // The store's staging protocol (a flocked dir under tmp/) lets
    // `pod image gc` tell a live render from a killed one's leftovers.
    let staging = Store::open(dirs)?.staging("tree")?;
    let tree = staging.path().join("tree");
    let rootfs = tree.join("rootfs");
    for d in [&tree, &rootfs] {
        fs::DirBuilder::new().mode(0o700).create(d).map_err(io_err("create directory", d))?;
    }
    let mut r = Renderer { root: rootfs, dirs: BTreeMap::new() };
    for id in &res.order {
        let src = dirs.images().join(id.as_str()).join("rootfs");
        match fs::symlink_metadata(&src) {
            Ok(m) if m.is_dir() => {
                r.layer(&src, res.whitelist(id))?;
                crashpoint("render.layer");
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("inspect", &src)(e)),
            _ => return Err(RenderError::MissingImage { id: id.clone(), path: src }),
        }
    }
    r.finish()?;
    let layers = tree.join(LAYERS);
    let list: String = res.order.iter().map(|id| format!("{id}\n")).collect();
    fs::write(&layers, list).map_err(io_err("write", &layers))?;
    crashpoint("render.install");
    // No syncfs before publishing: like tar, rkt and containers/storage (whose
    // layer fsync is off by default), durability of a freshly written tree is
    // left to the page cache. Syncing here cost 3x the extraction itself in
    // bench/fetch.sh. After a power loss `pod image verify` finds damaged
    // images, and `pod image gc` drops trees of removed images.
    let origin = install(&tree, &target)?;
    crashpoint("render.installed");
    tracing::debug!(key = %key, layers = res.order.len(), ?origin, "tree ready");
    // `staging` drops here: removes the lock and, after a lost race, our copy.
    Ok(done(origin))
}

/// True if `path` is a tree; an error if something else sits there.
fn is_tree(path: &Path) -> Result<bool, RenderError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(RenderError::NotATree { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Moves a complete tree to its key. Losing the race to a concurrent
/// renderer is success: its tree has the same content; ours stays behind
/// for the caller to discard.
fn install(tree: &Path, target: &Path) -> Result<TreeOrigin, RenderError> {
    match fs::rename(tree, target) {
        Ok(()) => {
            if let Some(parent) = target.parent() {
                // Best effort: without it the rename may be lost on a crash,
                // and the next run renders again.
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
            Ok(TreeOrigin::Rendered)
        }
        Err(e) if matches!(e.raw_os_error(), Some(n) if n == Errno::EEXIST as i32 || n == Errno::ENOTEMPTY as i32) => {
            Ok(TreeOrigin::Reused)
        }
        Err(e) => Err(io_err("rename into place", target)(e)),
    }
}

/// Ownership, mode and times of a directory, applied once it is filled:
/// creating entries would otherwise bump the mtime, and a read-only mode
/// would block the next layer.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: FileTime,
    mtime: FileTime,
}

impl DirMeta {
    fn of(m: &Metadata) -> Self {
        Self {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            atime: FileTime::from_last_access_time(m),
            mtime: FileTime::from_last_modification_time(m),
        }
    }
}

/// Lays layers into `root`, a private staging directory.
///
/// Safety against hostile layers: every path written is `root` joined with
/// components whose parents were checked (with `symlink_metadata`) to be
/// real directories during this walk, and existing entries are unlinked and
/// recreated, never opened. A symlink left by one layer is thus never
/// followed by a later one: a later layer's directory of the same name
/// replaces it (later wins, as for any other type clash).
struct Renderer {
    root: PathBuf,
    /// Directories of the tree, relative to `root`, with the metadata of the
    /// last layer that had them.
    dirs: BTreeMap<PathBuf, DirMeta>,
}

impl Renderer {
    fn layer(&mut self, src_root: &Path, filter: Option<&Whitelist>) -> Result<(), RenderError> {
        let meta = fs::symlink_metadata(src_root).map_err(io_err("inspect", src_root))?;
        self.dirs.insert(PathBuf::new(), DirMeta::of(&meta));
        // Iterative, so a deeply nested hostile image cannot overflow the stack.
        let mut pending = vec![PathBuf::new()];
        while let Some(rel_dir) = pending.pop() {
            let src_dir = src_root.join(&rel_dir);
            for entry in fs::read_dir(&src_dir).map_err(io_err("read directory", &src_dir))? {
                let entry = entry.map_err(io_err("read directory", &src_dir))?;
                let src = entry.path();
                // DirEntry::metadata does not follow symlinks.
                let meta = entry.metadata().map_err(io_err("inspect", &src))?;
                let rel = rel_dir.join(entry.file_name());
                if filter.is_some_and(|w| !w.allows(&rel, meta.is_dir())) {
                    // A refused directory holds nothing allowed: skip it all.
                    continue;
                }
                let dst = self.root.join(&rel);
                if meta.is_dir() {
                    self.make_dir(&dst)?;
                    self.dirs.insert(rel.clone(), DirMeta::of(&meta));
                    pending.push(rel);
                } else {
                    self.clear(&dst, &rel)?;
                    place(&src, &dst, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// Makes `dst` a real directory, merging into one already there.
    fn make_dir(&mut self, dst: &Path) -> Result<(), RenderError> {
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => return Ok(()),
            // A file, symlink or fifo of an earlier layer: later wins.
            Ok(_) => fs::remove_file(dst).map_err(io_err("remove", dst))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", dst)(e)),
        }
        // Owner-writable while rendering; the real mode comes in `finish`.
        fs::DirBuilder::new().mode(0o700).create(dst).map_err(io_err("create directory", dst))
    }

    /// Removes whatever an earlier layer put at `dst`.
    fn clear(&mut self, dst: &Path, rel: &Path) -> Result<(), RenderError> {
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => {
                // Does not follow symlinks inside (std's remove_dir_all is
                // symlink-safe). Only links to store files are unlinked.
                fs::remove_dir_all(dst).map_err(io_err("remove", dst))?;
                self.dirs.retain(|d, _| !d.starts_with(rel));
                Ok(())
            }
            Ok(_) => fs::remove_file(dst).map_err(io_err("remove", dst)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", dst)(e)),
        }
    }

    /// Applies directory metadata, children before parents so a parent made
    /// read-only or non-searchable last does not block its children.
    fn finish(&self) -> Result<(), RenderError> {
        for (rel, m) in self.dirs.iter().rev() {
            let path = self.root.join(rel);
            // chown before chmod: chown may clear set-id bits.
            std::os::unix::fs::lchown(&path, Some(m.uid), Some(m.gid)).map_err(io_err("change owner of", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(m.mode)).map_err(io_err("change mode of", &path))?;
            filetime::set_symlink_file_times(&path, m.atime, m.mtime).map_err(io_err("set times of", &path))?;
        }
        Ok(())
    }
}

/// Creates the non-directory `src` at `dst` (now free).
fn place(src: &Path, dst: &Path, meta: &Metadata) -> Result<(), RenderError> {
    let ft = meta.file_type();
    if ft.is_file() {
        return link_or_copy(src, dst, meta);
    }
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_err("create symlink", dst))?;
    } else if ft.is_fifo() {
        nix::unistd::mkfifo(dst, Mode::from_bits_truncate(0o600)).map_err(|e| io_err("create fifo", dst)(e.into()))?;
    } else {
        // Device nodes and sockets are not rendered: stage1 provides /dev,
        // and a device node from an untrusted image would hand the pod the
        // host device. The earlier layer's entry is still gone (later wins).
        tracing::debug!(path = %src.display(), "skipping device or socket");
        return Ok(());
    }
    // chown before chmod: chown may clear set-id bits. Symlinks have no mode.
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io_err("change owner of", dst))?;
    if ft.is_fifo() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("change mode of", dst))?;
    }
    let (atime, mtime) = (FileTime::from_last_access_time(meta), FileTime::from_last_modification_time(meta));
    filetime::set_symlink_file_times(dst, atime, mtime).map_err(io_err("set times of", dst))
}

/// Hardlinks a store file into the tree: no copy, and mode, owner and times
/// come with the inode. The store is immutable and the tree read-only, so
/// sharing the inode is safe; nothing here ever writes to or chmods it.
fn link_or_copy(src: &Path, dst: &Path, meta: &Metadata) -> Result<(), RenderError> {
    let err = match fs::hard_link(src, dst) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // EXDEV: trees on another filesystem. EMLINK: a popular base layer hit
    // the link limit. EPERM: protected_hardlinks when not root.
    let copyable = [Errno::EXDEV, Errno::EMLINK, Errno::EPERM];
    if !copyable.iter().any(|&n| err.raw_os_error() == Some(n as i32)) {
        return Err(io_err("hardlink into", dst)(err));
    }
    let mut from = File::open(src).map_err(io_err("open", src))?;
    // create_new (O_EXCL) never follows a symlink at `dst`.
    let mut to =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst).map_err(io_err("create", dst))?;
    io::copy(&mut from, &mut to).map_err(io_err("copy into", dst))?;
    std::os::unix::fs::fchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(io_err("change owner of", dst))?;
    to.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io_err("change mode of", dst))?;
    let (atime, mtime) = (FileTime::from_last_access_time(meta), FileTime::from_last_modification_time(meta));
    filetime::set_file_handle_times(&to, Some(atime), Some(mtime)).map_err(io_err("set times of", dst))
}

fn is_key(name: &str) -> bool {
    name.len() == 128 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The layer list of a tree, `None` if missing or not what the key hashes.
fn read_layers(dir: &Path, key: &str) -> Result<Option<Vec<ImageId>>, RenderError> {
    let path = dir.join(LAYERS);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidData) => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let ids: Result<Vec<ImageId>, _> = text.lines().map(str::parse).collect();
    Ok(ids.ok().filter(|ids| tree_key_of(ids) == key))
}

/// Removes the trees whose layer list fails `keep`, and trees whose layer
/// list is missing or does not hash to their key (they could never be
/// checked, yet `render` would reuse them). Entries not named like a key
/// are not ours and are left alone. Returns the keys removed.
///
/// The caller holds the store lock exclusively, so no render is in flight.
pub fn gc_trees(dirs: &Dirs, keep: impl Fn(&[ImageId]) -> bool) -> Result<Vec<String>, RenderError> {
    let trees = dirs.trees();
    let entries = match fs::read_dir(&trees) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", &trees)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", &trees))?;
        let name = entry.file_name();
        let Some(key) = name.to_str().filter(|k| is_key(k)) else { continue };
        let dir = entry.path();
        let doomed = match read_layers(&dir, key)? {
            Some(layers) => !keep(&layers),
            None => {
                tracing::warn!(tree = key, "layer list missing or corrupt; removing the tree");
                true
            }
        };
        if !doomed {
            continue;
        }
        // Out of trees/ first, atomically, so nobody reuses a half-deleted
        // tree; a crash mid-delete leaves a leftover for the tmp/ cleanup.
        let tmp = dirs.tmp();
        fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        let grave = tempfile::Builder::new()
            .prefix("gc-tree-")
            .tempdir_in(&tmp)
            .map_err(io_err("create directory in", &tmp))?;
        let moved = grave.path().join(key);
        match fs::rename(&dir, &moved) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("rename out of trees", &dir)(e)),
        }
        let grave = grave.keep();
        fs::remove_dir_all(&grave).map_err(io_err("remove", &grave))?;
        removed.push(key.to_owned());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Dirs) {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dirs = Dirs::new(t.path().join("data"), t.path().join("config"));
        (t, dirs)
    }

    fn id(n: u8) -> ImageId {
        ImageId::from_digest(&[n; 64])
    }

    /// The rootfs of stored image `n`, created empty.
    fn image(dirs: &Dirs, n: u8) -> PathBuf {
        let root = dirs.images().join(id(n).as_str()).join("rootfs");
        ok(fs::create_dir_all(&root));
        root
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            ok(fs::create_dir_all(parent));
        }
        ok(fs::write(p, text));
    }

    fn read(root: &Path, rel: &str) -> String {
        ok(fs::read_to_string(root.join(rel)))
    }

    fn layers(ns: &[u8]) -> Resolution {
        Resolution { order: ns.iter().map(|&n| id(n)).collect(), whitelists: BTreeMap::new() }
    }

    #[test]
    fn later_layer_wins_and_files_are_hardlinked() {
        let (_t, dirs) = setup();
        let (l1, l2) = (image(&dirs, 1), image(&dirs, 2));
        write(&l1, "etc/a", "1");
        write(&l1, "etc/b", "base");
        ok(symlink("busybox", l1.join("sh")));
        write(&l2, "etc/a", "2");
        write(&l2, "sh", "real shell");
        let res = layers(&[1, 2]);
        let t = ok(render(&dirs, &res));
        assert_eq!(t.origin, TreeOrigin::Rendered);
        assert_eq!(t.path, dirs.trees().join(res.tree_key()).join("rootfs"));
        assert_eq!((read(&t.path, "etc/a"), read(&t.path, "etc/b")), ("2".into(), "base".into()));
        assert!(ok(fs::symlink_metadata(t.path.join("sh"))).is_file());
        let ino = |p: PathBuf| ok(fs::metadata(p)).ino();
        assert_eq!(ino(t.path.join("etc/b")), ino(l1.join("etc/b")), "no copy");
        let list = read(&dirs.trees().join(&t.key), LAYERS);
        assert_eq!(list, format!("{}\n{}\n", id(1), id(2)));
        // Replacing a hardlinked file in the tree left the store alone.
        assert_eq!(read(&l1, "etc/a"), "1");
        assert_eq!(ok(fs::read_link(l1.join("sh"))), Path::new("busybox"));
    }

    #[test]
    fn type_clashes_are_won_by_the_later_layer() {
        let (_t, dirs) = setup();
        let (l1, l2) = (image(&dirs, 1), image(&dirs, 2));
        write(&l1, "a/x", "dir in 1");
        write(&l1, "b", "file in 1");
        write(&l2, "a", "file in 2");
        write(&l2, "b/y", "dir in 2");
        let t = ok(render(&dirs, &layers(&[1, 2])));
        assert_eq!(read(&t.path, "a"), "file in 2");
        assert_eq!(read(&t.path, "b/y"), "dir in 2");
        let t = ok(render(&dirs, &layers(&[2, 1])));
        assert_eq!(read(&t.path, "a/x"), "dir in 1");
        assert_eq!(read(&t.path, "b"), "file in 1");
    }

    #[test]
    fn metadata_is_preserved() {
        let (_t, dirs) = setup();
        let l1 = image(&dirs, 1);
        write(&l1, "srv/data/f", "x");
        ok(nix::unistd::mkfifo(&l1.join("srv/pipe"), Mode::from_bits_truncate(0o640)));
        ok(fs::set_permissions(l1.join("srv/pipe"), fs::Permissions::from_mode(0o640)));
        ok(fs::set_permissions(l1.join("srv"), fs::Permissions::from_mode(0o750)));
        let old = FileTime::from_unix_time(1_000_000_000, 0);
        ok(filetime::set_file_times(l1.join("srv"), old, old));
        let t = ok(render(&dirs, &layers(&[1])));
        let srv = ok(fs::symlink_metadata(t.path.join("srv")));
        assert_eq!(srv.mode() & 0o7777, 0o750);
        assert_eq!(FileTime::from_last_modification_time(&srv), old, "mtime set after filling");
        let pipe = ok(fs::symlink_metadata(t.path.join("srv/pipe")));
        assert!(pipe.file_type().is_fifo());
        assert_eq!(pipe.mode() & 0o7777, 0o640);
    }

    #[test]
    fn whitelist_keeps_listed_paths_and_their_dirs() {
        let (_t, dirs) = setup();
        let (base, app) = (image(&dirs, 1), image(&dirs, 2));
        for f in ["bin/sh", "bin/ls", "etc/passwd", "usr/share/doc/x"] {
            write(&base, f, f);
        }
        write(&app, "app", "app");
        write(&app, "notes", "unlisted");
        let wl = Whitelist::new(["/bin/sh", "/etc/passwd", "/app"]);
        let mut res = layers(&[1, 2]);
        res.whitelists = [(id(1), wl.clone()), (id(2), wl)].into();
        let t = ok(render(&dirs, &res));
        for kept in ["bin/sh", "etc/passwd", "app"] {
            assert_eq!(read(&t.path, kept), kept);
        }
        for gone in ["bin/ls", "usr", "notes"] {
            assert!(fs::symlink_metadata(t.path.join(gone)).is_err(), "{gone} kept");
        }
    }

    #[test]
    fn second_render_reuses_the_tree() {
        let (_t, dirs) = setup();
        write(&image(&dirs, 1), "f", "x");
        let first = ok(render(&dirs, &layers(&[1])));
        ok(fs::remove_dir_all(dirs.images()));
        // With the image gone, only reuse can succeed.
        let second = ok(render(&dirs, &layers(&[1])));
        assert_eq!(second.origin, TreeOrigin::Reused);
        assert_eq!(second.path, first.path);
        assert_eq!(read(&second.path, "f"), "x");
        let leftovers: Vec<_> = ok(fs::read_dir(dirs.tmp())).collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }

    #[test]
    fn losing_the_rename_race_uses_the_winner() {
        let (t, _dirs) = setup();
        let (ours, theirs) = (t.path().join("ours"), t.path().join("theirs"));
        write(&ours, "rootfs/f", "ours");
        write(&theirs, "rootfs/f", "theirs");
        assert_eq!(ok(install(&ours, &theirs)), TreeOrigin::Reused);
        assert_eq!(read(&theirs, "rootfs/f"), "theirs");
        let fresh = t.path().join("fresh");
        assert_eq!(ok(install(&ours, &fresh)), TreeOrigin::Rendered);
    }

    #[test]
    fn a_layer_symlink_cannot_redirect_later_writes() {
        // Later wins: the later layer's directory `etc` replaces the earlier
        // symlink, rather than failing, since that is what the same clash
        // with a regular file does and what overlayfs shows for it.
        let (t, dirs) = setup();
        let outside = t.path().join("outside");
        ok(fs::create_dir(&outside));
        let (l1, l2, l3) = (image(&dirs, 1), image(&dirs, 2), image(&dirs, 3));
        ok(symlink(&outside, l1.join("etc")));
        ok(symlink(outside.join("f"), l1.join("f")));
        write(&l2, "etc/passwd", "root:x:0:0");
        write(&l2, "f", "in tree");
        let t2 = ok(render(&dirs, &layers(&[1, 2])));
        assert_eq!(ok(fs::read_dir(&outside)).count(), 0, "wrote outside the tree");
        assert!(ok(fs::symlink_metadata(t2.path.join("etc"))).is_dir());
        assert_eq!(read(&t2.path, "etc/passwd"), "root:x:0:0");
        assert_eq!(read(&t2.path, "f"), "in tree");
        // Alone, the symlink is rendered as a symlink, not followed.
        write(&l3, "x", "x");
        let t1 = ok(render(&dirs, &layers(&[1, 3])));
        assert_eq!(ok(fs::read_link(t1.path.join("etc"))), outside);
        assert_eq!(ok(fs::read_dir(&outside)).count(), 0);
    }

    #[test]
    fn missing_image_is_not_found() {
        let (_t, dirs) = setup();
        let e = render(&dirs, &layers(&[7])).err().unwrap_or_else(|| panic!("rendered a missing image"));
        assert!(matches!(e, RenderError::MissingImage { .. }), "{e}");
        assert_eq!(e.exit(), Exit::NotFound);
        assert_eq!(ok(fs::read_dir(dirs.trees())).count(), 0);
    }

    #[test]
    fn gc_removes_unkept_and_corrupt_trees_only() {
        let (_t, dirs) = setup();
        write(&image(&dirs, 1), "f", "1");
        write(&image(&dirs, 2), "g", "2");
        let keep = ok(render(&dirs, &layers(&[1])));
        let drop = ok(render(&dirs, &layers(&[1, 2])));
        let corrupt = dirs.trees().join("ab".repeat(64));
        write(&corrupt, "rootfs/f", "?");
        let foreign = dirs.trees().join("lost+found");
        ok(fs::create_dir(&foreign));
        let mut removed = ok(gc_trees(&dirs, |ls| !ls.contains(&id(2))));
        removed.sort();
        let mut want = vec![drop.key.clone(), "ab".repeat(64)];
        want.sort();
        assert_eq!(removed, want);
        assert!(keep.path.is_dir() && foreign.is_dir());
        assert!(!drop.path.exists() && !corrupt.exists());
        assert_eq!(ok(fs::read_dir(dirs.tmp())).count(), 0, "graves left in tmp");
    }
}
