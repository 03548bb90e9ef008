//! Hostile OCI layers: the ACI rules hold (each case refused as invalid
//! input, naming the entry, nothing written outside the tree), and so do the
//! whiteout paths and the duplicates a layer may have.

use super::*;
use crate::oci::layer::apply_layer;

impl Sandbox {
    /// Applies a hostile layer: must fail as invalid input, naming `entry`,
    /// with nothing written outside dest.
    fn refuse_layer(&self, bytes: &[u8], entry: &str) -> ArchiveError {
        let err = self.apply(bytes).expect_err("hostile layer was accepted");
        let msg = err.to_string();
        assert!(msg.contains(entry), "error {msg:?} does not name {entry:?}");
        assert_eq!(err.exit(), Exit::InvalidInput, "{msg}");
        self.assert_outside_untouched();
        err
    }
}

#[test]
fn refuses_escaping_paths_and_whiteouts() {
    for (name, why) in [
        ("../outside/evil", Reject::ParentDir),
        ("../.wh.x", Reject::ParentDir),
        ("a/../../.wh.x", Reject::ParentDir),
        ("a/.wh...", Reject::ParentDir),
        ("../.wh..wh..opq", Reject::ParentDir),
        ("/.wh.etc", Reject::Absolute),
        ("/tmp/evil", Reject::Absolute),
        ("a/.wh.", Reject::InvalidWhiteout),
        ("a/.wh..", Reject::InvalidWhiteout),
        ("a/.wh.b/c", Reject::InvalidWhiteout),
    ] {
        let tar = RawTar::default().file(name, b"evil").finish();
        let err = Sandbox::new().refuse_layer(&tar, name);
        assert_eq!(reason(&err), &why, "{name}");
    }
}

#[test]
fn refuses_whiteouts_and_files_through_a_symlink() {
    for name in ["link/.wh.x", "link/.wh..wh..opq", "link/sub/.wh.x", "link/evil"] {
        let sandbox = Sandbox::new();
        let tar = RawTar::default().symlink("link", sandbox.outside().as_os_str().as_bytes()).file(name, b"").finish();
        let err = sandbox.refuse_layer(&tar, name);
        assert_eq!(reason(&err), &Reject::ThroughSymlink { link: "link".into() }, "{name}");
    }
}

#[test]
fn a_duplicate_never_turns_a_directory_into_a_symlink() {
    let sandbox = Sandbox::new();
    let outside = sandbox.outside();
    let tar = RawTar::default()
        .dir("d", 0o755)
        .file("d/f", b"")
        .symlink("d", outside.as_os_str().as_bytes())
        .file("d/evil", b"evil")
        .finish();
    let err = sandbox.refuse_layer(&tar, "d");
    assert_eq!(reason(&err), &Reject::ReplacesDirectory);
    // Nor into a file, even one made as an implicit parent.
    let tar = RawTar::default().file("p/f", b"").file("p", b"").finish();
    let err = Sandbox::new().refuse_layer(&tar, "p");
    assert_eq!(reason(&err), &Reject::ReplacesDirectory);
}

#[test]
fn a_symlink_replaced_by_a_directory_is_a_real_directory() {
    let sandbox = Sandbox::new();
    let tar = RawTar::default()
        .symlink("s", sandbox.outside().as_os_str().as_bytes())
        .dir("s", 0o755)
        .file("s/f", b"inside")
        .finish();
    sandbox.apply(&tar).expect("apply");
    assert!(fs::symlink_metadata(sandbox.at("s")).expect("lstat").is_dir());
    sandbox.assert_outside_untouched();
}

#[test]
fn refuses_hard_links_out_of_the_tree() {
    let sandbox = Sandbox::new();
    let secret = sandbox.secret();
    let dir = secret.parent().expect("secret dir");
    let cases: [(Vec<u8>, &str); 4] = [
        (secret.as_os_str().as_bytes().to_vec(), "is absolute"),
        (b"../secret/file".to_vec(), "has a '..' component"),
        (b"link/file".to_vec(), "goes through a symlink"),
        (b"later".to_vec(), "is not a regular file extracted earlier in the archive"),
    ];
    for (target, why) in cases {
        let sandbox = Sandbox::new();
        let tar = RawTar::default()
            .symlink("link", dir.as_os_str().as_bytes())
            .hardlink("h", &target)
            .file("later", b"")
            .finish();
        let err = sandbox.refuse_layer(&tar, "h");
        assert!(matches!(reason(&err), Reject::HardLinkTarget { why: w, .. } if *w == why), "{err}");
    }
    assert_eq!(fs::metadata(&secret).expect("stat").nlink(), 1);
    // A duplicate linking to the very file it replaces.
    let tar = RawTar::default().file("f", b"").hardlink("f", b"f").finish();
    let err = Sandbox::new().refuse_layer(&tar, "f");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { why: "is the entry itself", .. }), "{err}");
    // And to a whiteout.
    let tar = RawTar::default().file(".wh.w", b"").hardlink("h", b"w").finish();
    let err = Sandbox::new().refuse_layer(&tar, "h");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { .. }), "{err}");
}

#[test]
fn refuses_device_nodes_even_named_as_whiteouts() {
    for (name, ty, kind) in [
        ("dev/sda", EntryType::Block, "block"),
        ("dev/null", EntryType::Char, "character"),
        (".wh.x", EntryType::Char, "character"),
    ] {
        let tar = RawTar::default().entry(name.as_bytes(), ty, 0o600, b"", b"").finish();
        let sandbox = Sandbox::new();
        let err = sandbox.refuse_layer(&tar, name);
        assert_eq!(reason(&err), &Reject::Device { kind });
    }
}

#[test]
fn refuses_sparse_and_exotic_entries() {
    for ty in [b'S', b'V', b'D', b'g'] {
        let mut h = RawTar::header(b"odd", EntryType::new(ty), 0o644, 0, b"");
        // A GNU sparse header the tar crate can parse: a real size of 0.
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.realsize.copy_from_slice(b"00000000000\0");
        }
        h.set_cksum();
        let tar = RawTar::default().push(&h, b"").finish();
        let err = Sandbox::new().refuse_layer(&tar, "odd");
        assert_eq!(reason(&err), &Reject::UnsupportedType(char::from(ty)));
    }
}

#[test]
fn refuses_nul_long_paths_and_bad_owners() {
    let tar = RawTar::default().pax("path", b"a\0b").file("innocent", b"").finish();
    let err = Sandbox::new().apply(&tar).expect_err("NUL accepted");
    assert_eq!(err.exit(), Exit::InvalidInput, "{err}");

    let long = "d/".repeat(2100);
    let tar = RawTar::default().pax("path", long.as_bytes()).file("innocent", b"").finish();
    let err = Sandbox::new().refuse_layer(&tar, "d/d/d");
    assert!(matches!(reason(&err), Reject::TooLong { what: "path", .. }), "{err}");
    let whiteout = format!(".wh.{}", "n".repeat(252));
    let tar = RawTar::default().pax("path", whiteout.as_bytes()).file("innocent", b"").finish();
    let err = Sandbox::new().refuse_layer(&tar, &whiteout);
    assert!(matches!(reason(&err), Reject::TooLong { what: "path component", .. }), "{err}");

    let mut h = RawTar::header(b"f", EntryType::Regular, 0o644, 0, b"");
    h.as_old_mut().uid = [0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    h.set_cksum();
    let tar = RawTar::default().push(&h, b"").finish();
    let err = Sandbox::new().refuse_layer(&tar, "f");
    assert_eq!(reason(&err), &Reject::IdOutOfRange(u64::from(u32::MAX)));
}

#[test]
fn refuses_truncated_layers() {
    let tar = RawTar::default().file("data", &[7u8; 100_000]).finish();
    let err = Sandbox::new().refuse_layer(&tar[..512 + 40_000], "data");
    assert!(matches!(err, ArchiveError::Truncated(_)), "{err:?}");
    let err = Sandbox::new().refuse_layer(&RawTar::default().file("f", b"").unfinished(), "f");
    assert!(matches!(err, ArchiveError::Truncated(_)), "{err:?}");
    let gz = gzip(&tar);
    let err = Sandbox::new().apply(&gz[..gz.len() / 2]).expect_err("cut gzip accepted");
    assert!(matches!(err, ArchiveError::Decompress { format: "gzip", .. }), "{err:?}");
}

#[test]
fn stops_gzip_bombs() {
    let tar = RawTar::default().file("zeros", &vec![0; 32 << 20]).finish();
    // At the best level: a fast level of some zlib backends (zlib-rs, which
    // the workspace enables for SPDY) makes a poor bomb.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &tar).expect("gzip");
    let bomb = enc.finish().expect("gzip");
    assert!(bomb.len() < 256 << 10, "not much of a bomb: {} bytes", bomb.len());
    let sandbox = Sandbox::new();
    let limits = Limits { max_uncompressed: 1 << 20, ..Limits::default() };
    let err = apply_layer(&bomb[..], None, &sandbox.dest(), &limits).expect_err("bomb accepted");
    assert!(matches!(err, ArchiveError::TooLarge { limit: 1048576 }), "{err:?}");
    assert_eq!(err.exit(), Exit::InvalidInput);
    sandbox.assert_outside_untouched();
}

#[test]
fn refuses_more_entries_than_the_limit() {
    let mut tar = RawTar::default();
    for i in 0..10 {
        tar.file(&format!(".wh.{i}"), b"");
    }
    let tar = tar.finish();
    let limits = Limits { max_entries: 9, ..Limits::default() };
    let err = apply_layer(&tar[..], None, &Sandbox::new().dest(), &limits).expect_err("10 entries accepted");
    assert!(matches!(err, ArchiveError::TooManyEntries { limit: 9 }), "{err:?}");
}

#[test]
fn stops_pax_and_long_name_memory_bombs() {
    let huge = vec![b'a'; 64 << 20];
    for ty in [EntryType::XHeader, EntryType::GNULongName] {
        let tar = RawTar::default().entry(b"././@Header", ty, 0o644, &huge, b"").file("f", b"").finish();
        let blob = zstd::encode_all(&tar[..], 1).expect("zstd");
        let err = Sandbox::new().apply(&blob).expect_err("header bomb accepted");
        assert!(err.to_string().contains("bytes of tar headers"), "{err}");
    }
}
