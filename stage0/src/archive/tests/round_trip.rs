//! Images packed from real trees extract to the same trees, with the same
//! IDs, whatever the compression and however the entry paths are spelled.

use super::*;

/// One node of a tree as a user would compare it.
#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let path = e.expect("entry").path();
            let md = fs::symlink_metadata(&path).expect("lstat");
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "other"
            };
            out.insert(
                path.strip_prefix(root).expect("under root").to_path_buf(),
                Node {
                    kind,
                    // A symlink's own mode means nothing on Linux.
                    mode: if ft.is_symlink() { 0 } else { md.mode() },
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    content: ft.is_file().then(|| fs::read(&path).expect("read")),
                    target: ft.is_symlink().then(|| fs::read_link(&path).expect("readlink")),
                },
            );
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let md = fs::metadata(root).expect("stat root");
    out.insert(
        PathBuf::new(),
        Node {
            kind: "dir",
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            content: None,
            target: None,
        },
    );
    walk(root, root, &mut out);
    out
}

fn set_mtime(path: &Path, secs: i64) {
    let t = FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).expect("set times");
}

/// A rootfs with every kind of file an image may hold.
fn sample_rootfs(root: &Path) {
    let mkdir = |rel: &str, mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let file = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::write(&p, data).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    mkdir("bin", 0o755);
    mkdir("etc", 0o750);
    mkdir("tmp", 0o1777);
    mkdir("shared", 0o2775);
    mkdir("run", 0o755);
    file("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755);
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-link")).expect("hard link");
    file("etc/config", b"key = value\n", 0o640);
    file("etc/empty", b"", 0o600);
    // More than one chunk of the extraction pipeline, and not a multiple of 512.
    let big: Vec<u8> =
        (0..(3 * CHUNK_FOR_TESTS + 777)).map(|i| u8::try_from(i * 7 % 251).unwrap_or_default()).collect();
    file("big", &big, 0o644);
    std::os::unix::fs::symlink("tool", root.join("bin/sh")).expect("symlink");
    std::os::unix::fs::symlink("/etc/does-not-exist", root.join("etc/dangling")).expect("symlink");
    std::os::unix::fs::symlink("./here/", root.join("etc/dot-slash")).expect("symlink");
    let long_target = format!("/{}", "t".repeat(180));
    std::os::unix::fs::symlink(&long_target, root.join("etc/long-target")).expect("symlink");
    nix::unistd::mkfifo(&root.join("run/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::set_permissions(root.join("run/fifo"), fs::Permissions::from_mode(0o620)).expect("chmod fifo");
    // GNU long names: a deep path and a long file name.
    let deep = format!("{}/{}", "d".repeat(60), "e".repeat(60));
    mkdir(&deep, 0o755);
    file(&format!("{deep}/{}", "f".repeat(150)), b"long", 0o644);
    if is_root() {
        std::os::unix::fs::chown(root.join("etc/config"), Some(1234), Some(5678)).expect("chown");
        std::os::unix::fs::lchown(root.join("bin/sh"), Some(42), Some(43)).expect("lchown");
        std::os::unix::fs::chown(root.join("shared"), Some(7), Some(8)).expect("chown");
        // chown cleared the setgid bit.
        fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o2775)).expect("chmod");
    } else {
        eprintln!("skipped: ownership preservation needs root");
    }
    // Times last, directories after their contents.
    let mut all: Vec<_> = snapshot(root).into_keys().collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in (0i64..).zip(&all) {
        set_mtime(&root.join(rel), 1_500_000_000 + i * 1000);
    }
}

const CHUNK_FOR_TESTS: usize = super::stream::CHUNK;

fn decompress(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match Compression::detect(bytes) {
        Compression::Zstd => out = zstd::decode_all(bytes).expect("zstd"),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
        }
        Compression::None => out = bytes.to_vec(),
    }
    out
}

#[test]
fn round_trip_each_compression() {
    let src = tempfile::tempdir().expect("tempdir");
    let rootfs = src.path().join("rootfs");
    fs::create_dir(&rootfs).expect("mkdir");
    sample_rootfs(&rootfs);
    let before = snapshot(&rootfs);
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let mut image = Vec::new();
        let id = pack_aci(&manifest(), &rootfs, &mut image, compression).expect("pack");
        assert_eq!(Compression::detect(&image), compression);
        let tar = decompress(&image);
        assert_eq!(id, sha512_id(&tar), "{compression:?}: ID is not the sha512 of the uncompressed tar");
        assert_eq!(image_id_of(&image[..], &Limits::default()).expect("image_id_of"), (id.clone(), tar.len() as u64));

        let sandbox = Sandbox::new();
        let got = sandbox.extract(&image).expect("extract");
        assert_eq!(got.id, id);
        assert_eq!(got.uncompressed_size, tar.len() as u64);
        assert_eq!(got.manifest, manifest());
        assert_eq!(got.manifest_bytes, manifest().to_json());
        assert_eq!(fs::read(sandbox.dest().join("manifest")).expect("manifest"), got.manifest_bytes);
        let after = snapshot(&sandbox.dest().join("rootfs"));
        assert_eq!(before.len(), after.len(), "{compression:?}");
        for (path, node) in &before {
            assert_eq!(after.get(path), Some(node), "{compression:?}: {}", path.display());
        }
        let ino = |rel: &str| fs::metadata(sandbox.dest().join("rootfs").join(rel)).expect("stat").ino();
        assert_eq!(ino("bin/tool"), ino("bin/tool-link"), "hard link not preserved");
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn pack_is_deterministic() {
    let src = tempfile::tempdir().expect("tempdir");
    sample_rootfs(src.path());
    let pack = || {
        let mut out = Vec::new();
        let id = pack_aci(&manifest(), src.path(), &mut out, Compression::None).expect("pack");
        (id, out)
    };
    let (id1, tar1) = pack();
    let (id2, tar2) = pack();
    assert_eq!(id1, id2);
    assert!(tar1 == tar2, "two packs of one tree differ");
    // manifest first, then rootfs, as rkt and appc tools expect.
    let mut archive = tar::Archive::new(&tar1[..]);
    let names: Vec<_> = archive
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry").path().expect("path").display().to_string())
        .take(3)
        .collect();
    assert_eq!(names, ["manifest", "rootfs", "rootfs/big"]);
}

#[test]
fn pack_refuses_sockets() {
    let src = tempfile::tempdir().expect("tempdir");
    let sock = src.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let err = pack_aci(&manifest(), src.path(), Vec::new(), Compression::None).expect_err("socket packed");
    assert!(matches!(err, ArchiveError::Unpackable { kind: "socket", .. }), "{err:?}");
    assert!(err.to_string().contains(&sock.display().to_string()), "{err}");
    assert_eq!(err.exit(), Exit::InvalidInput);
}

#[test]
fn pack_refuses_device_nodes() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let src = tempfile::tempdir().expect("tempdir");
    let dev = src.path().join("null");
    if let Err(e) = mknod(&dev, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)) {
        eprintln!("skipped: cannot mknod here ({e})");
        return;
    }
    let err = pack_aci(&manifest(), src.path(), Vec::new(), Compression::Zstd).expect_err("device packed");
    assert!(matches!(err, ArchiveError::Unpackable { kind: "character device", .. }), "{err:?}");
    assert!(err.to_string().contains(&dev.display().to_string()), "{err}");
}

#[test]
fn accepts_all_spellings_of_entry_paths() {
    let tar = RawTar::default()
        .dir("./", 0o755)
        .file("./manifest", &manifest_json())
        .file("./rootfs/a", b"a")
        .file("rootfs//b/./c", b"c")
        // The directory entry after its contents gives the made-up directory its metadata.
        .dir("./rootfs/b/", 0o711)
        .dir("rootfs/", 0o750)
        .finish();
    let sandbox = Sandbox::new();
    let got = sandbox.extract(&tar).expect("extract");
    assert_eq!(got.id, sha512_id(&tar));
    let rootfs = sandbox.dest().join("rootfs");
    assert_eq!(fs::read(rootfs.join("a")).expect("a"), b"a");
    assert_eq!(fs::read(rootfs.join("b/c")).expect("c"), b"c");
    let md = fs::metadata(rootfs.join("b")).expect("stat b");
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o711, MTIME));
    assert_eq!(fs::metadata(&rootfs).expect("stat rootfs").mode() & 0o7777, 0o750);
}

#[test]
fn implicit_directories_are_0755() {
    let tar = RawTar::default().manifest().file("rootfs/x/y/z", b"z").finish();
    let sandbox = Sandbox::new();
    sandbox.extract(&tar).expect("extract");
    for rel in ["rootfs", "rootfs/x", "rootfs/x/y"] {
        let md = fs::metadata(sandbox.dest().join(rel)).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o755, "{rel}");
        if is_root() {
            assert_eq!((md.uid(), md.gid()), (0, 0), "{rel}");
        }
    }
}

#[test]
fn empty_rootfs_is_created() {
    let tar = RawTar::default().manifest().finish();
    let sandbox = Sandbox::new();
    sandbox.extract(&tar).expect("extract");
    assert!(sandbox.dest().join("rootfs").is_dir());
}

#[test]
fn id_covers_trailing_padding() {
    let mut tar = RawTar::default().manifest().file("rootfs/f", b"data").finish();
    // tar(1) pads to a 10 KiB record; the hash covers it too.
    tar.resize(tar.len() + 10 * 1024 - 7, 0);
    let sandbox = Sandbox::new();
    let got = sandbox.extract(&tar).expect("extract");
    assert_eq!((got.id.clone(), got.uncompressed_size), (sha512_id(&tar), tar.len() as u64));
    assert_eq!(image_id_of(&tar[..], &Limits::default()).expect("id"), (got.id, tar.len() as u64));
}

#[test]
fn reads_pax_and_gnu_long_names() {
    let long_a = format!("rootfs/{}/a", "x".repeat(150));
    let long_b = format!("rootfs/{}/b", "y".repeat(150));
    let tar = RawTar::default()
        .manifest()
        .long_name(long_a.as_bytes())
        .file("rootfs/truncated-name", b"a")
        .pax("path", long_b.as_bytes())
        .file("rootfs/other-name", b"b")
        .finish();
    let sandbox = Sandbox::new();
    sandbox.extract(&tar).expect("extract");
    assert_eq!(fs::read(sandbox.dest().join(&long_a)).expect("a"), b"a");
    assert_eq!(fs::read(sandbox.dest().join(&long_b)).expect("b"), b"b");
}

#[test]
fn refuses_a_non_empty_destination() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.dest().join("old"), b"").expect("write");
    let err = sandbox.extract(&RawTar::default().manifest().finish()).expect_err("accepted");
    assert!(matches!(err, ArchiveError::DestNotEmpty { .. }), "{err:?}");
}

/// A reader or writer that fails after `left` bytes, like a full disk or a
/// dropped connection.
struct FailsAfter {
    left: usize,
    data: Vec<u8>,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("connection reset"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        self.left -= n;
        Ok(n)
    }
}

impl Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pack_reports_a_failing_output() {
    let src = tempfile::tempdir().expect("tempdir");
    // Incompressible, so that the compressed output is large too.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    fs::write(src.path().join("noise"), noise).expect("write");
    for compression in [Compression::None, Compression::Zstd] {
        let out = FailsAfter { left: 100_000, data: Vec::new() };
        let err = pack_aci(&manifest(), src.path(), out, compression).expect_err("pack succeeded");
        assert!(matches!(err, ArchiveError::Io { op: "write", .. }), "{compression:?}: {err:?}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(err.exit(), Exit::Failure);
    }
}

#[test]
fn pack_needs_a_directory() {
    let src = tempfile::NamedTempFile::new().expect("tempfile");
    let err = pack_aci(&manifest(), src.path(), Vec::new(), Compression::None).expect_err("packed a file");
    assert!(err.to_string().contains(&src.path().display().to_string()), "{err}");
}

#[test]
fn a_failing_source_is_an_io_error() {
    let tar = RawTar::default().manifest().file("rootfs/data", &[5u8; 300_000]).finish();
    for image in [tar.clone(), zstd::encode_all(&tar[..], 3).expect("zstd")] {
        let src = FailsAfter { left: image.len() / 2, data: image };
        let err = Sandbox::new().extract_from(src).expect_err("extracted");
        assert!(matches!(err, ArchiveError::Read(_)), "{err:?}");
        assert_eq!(err.exit(), Exit::Failure);
    }
}
