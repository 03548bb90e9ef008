//! OCI layers applied into trees of their own: whiteouts, opaque
//! directories, duplicate entries, compression and the diff ID.

use std::os::unix::fs::FileTypeExt;
use std::process::{Command, Stdio};

use super::*;
use crate::oci::layer::{apply_layer, AppliedLayer};

impl Sandbox {
    pub(super) fn apply(&self, bytes: &[u8]) -> Result<AppliedLayer, ArchiveError> {
        apply_layer(bytes, None, &self.dest(), &Limits::default())
    }
    pub(super) fn at(&self, rel: &str) -> PathBuf {
        self.dest().join(rel)
    }
}

/// Whether the node at `path` is an overlayfs whiteout.
pub(super) fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_char_device() && md.rdev() == 0)
}

/// The `trusted.overlay.opaque` xattr of `path`, if set.
pub(super) fn opaque_xattr(path: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16];
    let len = rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut buf).ok()?;
    Some(buf[..len].to_vec())
}

/// Whiteouts and opaque directories need mknod and `trusted.*` xattrs.
pub(super) fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIP: {what} needs root (mknod, trusted.* xattrs)");
    true
}

/// Every name in the tree under `root`, relative to it.
fn names(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let path = e.expect("entry").path();
            out.push(path.strip_prefix(root).expect("under root").display().to_string());
            if fs::symlink_metadata(&path).expect("lstat").is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn whiteouts_become_char_devices_0_0() {
    if skip_unless_root("whiteouts") {
        return;
    }
    let tar = RawTar::default()
        .dir("./etc", 0o755)
        .file("./etc/hosts", b"127.0.0.1 localhost\n")
        .file("./etc/.wh.passwd", b"")
        .file(".wh.usr", b"")
        .file("var/lib/.wh.apt", b"")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    for rel in ["etc/passwd", "usr", "var/lib/apt"] {
        assert!(is_whiteout(&sandbox.at(rel)), "{rel} is not a whiteout");
    }
    assert_eq!(names(&sandbox.dest()), ["etc", "etc/hosts", "etc/passwd", "usr", "var", "var/lib", "var/lib/apt"]);
}

#[test]
fn opaque_markers_set_the_xattr() {
    if skip_unless_root("opaque directories") {
        return;
    }
    let tar = RawTar::default()
        .dir("a", 0o755)
        .file("a/.wh..wh..opq", b"")
        .file("a/new", b"n")
        // Its directory has no entry: made for it.
        .file("b/c/.wh..wh..opq", b"")
        // AUFS bookkeeping: skipped.
        .dir(".wh..wh.plnk", 0o700)
        .file(".wh..wh.plnk/1.2", b"")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    assert_eq!(opaque_xattr(&sandbox.at("a")).as_deref(), Some(&b"y"[..]));
    assert_eq!(opaque_xattr(&sandbox.at("b/c")).as_deref(), Some(&b"y"[..]));
    assert_eq!(opaque_xattr(&sandbox.at("b")), None);
    assert_eq!(names(&sandbox.dest()), ["a", "a/new", "b", "b/c"]);
}

#[test]
fn a_layers_own_entry_beats_its_whiteout() {
    if skip_unless_root("whiteouts") {
        return;
    }
    let tar = RawTar::default()
        .file(".wh.f1", b"")
        .file("f1", b"after the whiteout")
        .file("f2", b"before the whiteout")
        .file(".wh.f2", b"")
        .file(".wh.d1", b"")
        .file("d1/x", b"")
        .dir("d2", 0o755)
        .file(".wh.d2", b"")
        .file(".wh.d3", b"")
        .dir("d3", 0o750)
        .file(".wh.gone", b"")
        .file(".wh.gone", b"")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    assert_eq!(fs::read(sandbox.at("f1")).expect("f1"), b"after the whiteout");
    assert_eq!(fs::read(sandbox.at("f2")).expect("f2"), b"before the whiteout");
    // A directory of the layer still hides the one below.
    for dir in ["d1", "d2", "d3"] {
        assert!(sandbox.at(dir).is_dir(), "{dir}");
        assert_eq!(opaque_xattr(&sandbox.at(dir)).as_deref(), Some(&b"y"[..]), "{dir}");
    }
    assert_eq!(fs::metadata(sandbox.at("d3")).expect("d3").mode() & 0o7777, 0o750);
    assert!(is_whiteout(&sandbox.at("gone")));
}

#[test]
fn later_duplicates_win() {
    let tar = RawTar::default()
        .file("f", b"first")
        .file("./f", b"second")
        .dir("d", 0o700)
        .file("d/x", b"")
        .dir("d/", 0o751)
        .file("to-symlink", b"")
        .symlink("to-symlink", b"/etc/os-release")
        .symlink("to-dir", b"/etc")
        .dir("to-dir", 0o755)
        .file("to-dir/inside", b"in a real directory")
        .file("target", b"t")
        .hardlink("h", b"target")
        .file("h", b"not a link any more")
        .file("h2", b"")
        .hardlink("h2", b"target")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    assert_eq!(fs::read(sandbox.at("f")).expect("f"), b"second");
    assert_eq!(fs::metadata(sandbox.at("d")).expect("d").mode() & 0o7777, 0o751);
    assert_eq!(fs::read_link(sandbox.at("to-symlink")).expect("readlink"), Path::new("/etc/os-release"));
    assert!(fs::symlink_metadata(sandbox.at("to-dir")).expect("lstat").is_dir());
    assert_eq!(fs::read(sandbox.at("to-dir/inside")).expect("inside"), b"in a real directory");
    let ino = |rel: &str| fs::metadata(sandbox.at(rel)).expect("stat").ino();
    assert_ne!(ino("h"), ino("target"));
    assert_eq!(ino("h2"), ino("target"));
    sandbox.assert_outside_untouched();
}

#[test]
fn directory_entries_may_follow_their_contents() {
    let tar = RawTar::default().file("usr/bin/x", b"x").dir("usr/bin", 0o711).dir("usr", 0o705).finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    let mode = |rel: &str| fs::metadata(sandbox.at(rel)).expect("stat").mode() & 0o7777;
    assert_eq!((mode("usr"), mode("usr/bin")), (0o705, 0o711));
}

#[test]
fn the_root_entry_sets_the_trees_root() {
    let sandbox = Sandbox::new();
    fs::set_permissions(sandbox.dest(), fs::Permissions::from_mode(0o700)).expect("chmod");
    sandbox.apply(&RawTar::default().file("f", b"").finish()).expect("apply");
    assert_eq!(fs::metadata(sandbox.dest()).expect("stat").mode() & 0o7777, 0o755);

    let sandbox = Sandbox::new();
    sandbox.apply(&RawTar::default().dir("./", 0o750).file("f", b"").finish()).expect("apply");
    let md = fs::metadata(sandbox.dest()).expect("stat");
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o750, MTIME));
}

#[test]
fn keeps_owners_modes_times_links_and_fifos() {
    let mut h = RawTar::header(b"bin/su", EntryType::Regular, 0o4755, 2, b"");
    h.set_uid(0);
    h.set_cksum();
    let mut owned = RawTar::header(b"home/u/f", EntryType::Regular, 0o640, 1, b"");
    owned.set_uid(1000);
    owned.set_gid(100);
    owned.set_cksum();
    let tar = RawTar::default()
        .push(&h, b"su")
        .push(&owned, b"f")
        .symlink("bin/sh", b"dash")
        .hardlink("bin/su2", b"./bin/su")
        .entry(b"run/fifo", EntryType::Fifo, 0o600, b"", b"")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.apply(&tar).expect("apply");
    let su = fs::metadata(sandbox.at("bin/su")).expect("su");
    assert_eq!((su.mode() & 0o7777, su.mtime(), su.nlink()), (0o4755, MTIME, 2));
    if is_root() {
        let f = fs::metadata(sandbox.at("home/u/f")).expect("f");
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1000, 100, 0o640));
    } else {
        eprintln!("SKIP: owners other than the extracting user need root");
    }
    assert_eq!(fs::read_link(sandbox.at("bin/sh")).expect("readlink"), Path::new("dash"));
    assert!(fs::symlink_metadata(sandbox.at("run/fifo")).expect("fifo").file_type().is_fifo());
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `sha256sum` of `bytes`, if the tool is there.
fn sha256sum(bytes: &[u8]) -> Option<String> {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    String::from_utf8(out.stdout).ok()?.split_whitespace().next().map(str::to_owned)
}

#[test]
fn reads_gzip_zstd_and_plain_layers_and_hashes_the_tar() {
    let tar = RawTar::default().dir("etc", 0o755).file("etc/motd", &[b'm'; 70_000]).finish();
    let expected = format!("sha256:{}", sha256_hex(&tar));
    match sha256sum(&tar) {
        Some(tool) => assert_eq!(expected, format!("sha256:{tool}")),
        None => eprintln!("SKIP: no sha256sum to compare the diff ID with"),
    }
    let gz = gzip(&tar);
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    for (blob, compression, declared) in [
        (&tar, Compression::None, Some(Compression::None)),
        (&gz, Compression::Gzip, Some(Compression::Gzip)),
        (&zst, Compression::Zstd, Some(Compression::Zstd)),
        (&tar, Compression::None, None),
        (&gz, Compression::Gzip, None),
        (&zst, Compression::Zstd, None),
    ] {
        let sandbox = Sandbox::new();
        let applied = apply_layer(&blob[..], declared, &sandbox.dest(), &Limits::default()).expect("apply");
        assert_eq!(
            applied,
            AppliedLayer { diff_id: expected.clone(), uncompressed_size: tar.len() as u64, compression },
            "{declared:?}"
        );
        assert_eq!(fs::read(sandbox.at("etc/motd")).expect("motd"), vec![b'm'; 70_000]);
    }
    // The media type is believed: gzip said to be zstd is corrupt.
    let err = apply_layer(&gz[..], Some(Compression::Zstd), &Sandbox::new().dest(), &Limits::default())
        .expect_err("gzip read as zstd");
    assert!(matches!(err, ArchiveError::Decompress { format: "zstd", .. }), "{err:?}");
}

#[test]
fn refuses_a_destination_that_is_not_empty() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.at("old"), b"").expect("write");
    let err = sandbox.apply(&RawTar::default().file("f", b"").finish()).expect_err("accepted");
    assert!(matches!(err, ArchiveError::DestNotEmpty { .. }), "{err:?}");
}
