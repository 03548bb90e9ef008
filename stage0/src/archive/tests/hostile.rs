//! One test per kind of hostile or malformed archive: each is refused as
//! invalid input, with an error naming the entry, and nothing is written
//! outside the destination.

use super::*;

#[test]
fn refuses_parent_dir_components() {
    let name = "rootfs/../../outside/evil";
    let tar = RawTar::default().manifest().file(name, b"evil").finish();
    let err = Sandbox::new().refuse(&tar, name);
    assert_eq!(reason(&err), &Reject::ParentDir);
}

#[test]
fn refuses_parent_dir_in_a_long_name() {
    let name = format!("rootfs/{}{}outside/evil", "a/".repeat(60), "../".repeat(61));
    let tar = RawTar::default().manifest().long_name(name.as_bytes()).file("rootfs/innocent", b"evil").finish();
    let err = Sandbox::new().refuse(&tar, &name);
    assert_eq!(reason(&err), &Reject::ParentDir);
}

#[test]
fn refuses_parent_dir_in_a_pax_path() {
    let name = "rootfs/../../outside/evil";
    let tar = RawTar::default().manifest().pax("path", name.as_bytes()).file("rootfs/innocent", b"evil").finish();
    Sandbox::new().refuse(&tar, name);
}

#[test]
fn refuses_absolute_paths() {
    let sandbox = Sandbox::new();
    let name = sandbox.outside().join("evil").display().to_string();
    let tar = RawTar::default().manifest().file(&name, b"evil").finish();
    let err = sandbox.refuse(&tar, &name);
    assert_eq!(reason(&err), &Reject::Absolute);
}

#[test]
fn refuses_writing_through_an_absolute_symlink() {
    let sandbox = Sandbox::new();
    let tar = RawTar::default()
        .manifest()
        .symlink("rootfs/link", sandbox.outside().as_os_str().as_bytes())
        .file("rootfs/link/evil", b"evil")
        .finish();
    let err = sandbox.refuse(&tar, "rootfs/link/evil");
    assert_eq!(reason(&err), &Reject::ThroughSymlink { link: "rootfs/link".into() });
}

#[test]
fn refuses_writing_through_a_relative_symlink() {
    let sandbox = Sandbox::new();
    let tar = RawTar::default()
        .manifest()
        .symlink("rootfs/link", b"../../outside")
        .file("rootfs/link/evil", b"evil")
        .finish();
    sandbox.refuse(&tar, "rootfs/link/evil");
}

#[test]
fn refuses_directories_through_a_symlink() {
    let sandbox = Sandbox::new();
    let tar = RawTar::default()
        .manifest()
        .symlink("rootfs/link", sandbox.outside().as_os_str().as_bytes())
        .file("rootfs/link/sub/deeper/evil", b"evil")
        .finish();
    let err = sandbox.refuse(&tar, "rootfs/link/sub/deeper/evil");
    assert_eq!(reason(&err), &Reject::ThroughSymlink { link: "rootfs/link".into() });
}

#[test]
fn refuses_rootfs_as_a_symlink() {
    let sandbox = Sandbox::new();
    let tar = RawTar::default()
        .manifest()
        .symlink("rootfs", sandbox.outside().as_os_str().as_bytes())
        .file("rootfs/evil", b"evil")
        .finish();
    let err = sandbox.refuse(&tar, "rootfs");
    assert_eq!(reason(&err), &Reject::NotDirectory);
}

#[test]
fn refuses_entries_below_a_file() {
    let tar = RawTar::default().manifest().file("rootfs/f", b"").file("rootfs/f/g", b"").finish();
    let err = Sandbox::new().refuse(&tar, "rootfs/f/g");
    assert_eq!(reason(&err), &Reject::ParentNotDirectory { parent: "rootfs/f".into() });
}

#[test]
fn refuses_hard_links_to_absolute_paths() {
    let sandbox = Sandbox::new();
    let secret = sandbox.secret();
    let tar = RawTar::default().manifest().hardlink("rootfs/h", secret.as_os_str().as_bytes()).finish();
    let err = sandbox.refuse(&tar, "rootfs/h");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { why: "is absolute", .. }), "{err}");
    assert_eq!(fs::metadata(&secret).expect("stat").nlink(), 1);
}

#[test]
fn refuses_hard_links_with_parent_dir() {
    let sandbox = Sandbox::new();
    let secret = sandbox.secret();
    let tar = RawTar::default().manifest().hardlink("rootfs/h", b"rootfs/../../secret/file").finish();
    let err = sandbox.refuse(&tar, "rootfs/h");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { why: "has a '..' component", .. }), "{err}");
    assert_eq!(fs::metadata(&secret).expect("stat").nlink(), 1);
}

#[test]
fn refuses_hard_links_through_a_symlink() {
    let sandbox = Sandbox::new();
    let secret = sandbox.secret();
    let dir = secret.parent().expect("secret dir");
    let tar = RawTar::default()
        .manifest()
        .symlink("rootfs/link", dir.as_os_str().as_bytes())
        .hardlink("rootfs/h", b"rootfs/link/file")
        .finish();
    let err = sandbox.refuse(&tar, "rootfs/h");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { why: "goes through a symlink", .. }), "{err}");
    assert_eq!(fs::metadata(&secret).expect("stat").nlink(), 1);
}

#[test]
fn refuses_hard_links_to_files_not_yet_extracted() {
    let tar = RawTar::default().manifest().hardlink("rootfs/h", b"rootfs/later").file("rootfs/later", b"").finish();
    let err = Sandbox::new().refuse(&tar, "rootfs/h");
    assert!(matches!(reason(&err), Reject::HardLinkTarget { target, .. } if target == "rootfs/later"), "{err}");
}

#[test]
fn refuses_hard_links_to_directories_symlinks_and_the_manifest() {
    for (target, why) in [
        ("rootfs/d", "is not a regular file extracted earlier in the archive"),
        ("rootfs/s", "is not a regular file extracted earlier in the archive"),
        ("manifest", "is not inside rootfs/"),
    ] {
        let tar = RawTar::default()
            .manifest()
            .dir("rootfs/d", 0o755)
            .symlink("rootfs/s", b"/etc/passwd")
            .hardlink("rootfs/h", target.as_bytes())
            .finish();
        let err = Sandbox::new().refuse(&tar, "rootfs/h");
        assert!(matches!(reason(&err), Reject::HardLinkTarget { why: w, .. } if *w == why), "{target}: {err}");
    }
}

#[test]
fn accepts_hard_links_to_earlier_files() {
    let tar = RawTar::default().manifest().file("rootfs/f", b"x").hardlink("rootfs/h", b"./rootfs/f").finish();
    let sandbox = Sandbox::new();
    sandbox.extract(&tar).expect("extract");
    let ino = |rel: &str| fs::metadata(sandbox.dest().join(rel)).expect("stat").ino();
    assert_eq!(ino("rootfs/f"), ino("rootfs/h"));
}

#[test]
fn refuses_device_nodes() {
    for (ty, kind) in [(EntryType::Char, "character"), (EntryType::Block, "block")] {
        let tar = RawTar::default().manifest().entry(b"rootfs/dev/sda", ty, 0o600, b"", b"").finish();
        let sandbox = Sandbox::new();
        let err = sandbox.refuse(&tar, "rootfs/dev/sda");
        assert_eq!(reason(&err), &Reject::Device { kind });
        assert!(!sandbox.dest().join("rootfs/dev/sda").exists());
    }
}

#[test]
fn refuses_unsupported_entry_types() {
    for ty in [b'V', b'D', b'g'] {
        let tar = RawTar::default().manifest().entry(b"rootfs/odd", EntryType::new(ty), 0o644, b"", b"").finish();
        let err = Sandbox::new().refuse(&tar, "rootfs/odd");
        assert_eq!(reason(&err), &Reject::UnsupportedType(char::from(ty)));
    }
}

#[test]
fn refuses_duplicate_entries() {
    let cases: [(&str, RawTar); 4] = [
        ("rootfs/f", std::mem::take(RawTar::default().manifest().file("rootfs/f", b"1").file("./rootfs/f", b"2"))),
        ("rootfs/d/", std::mem::take(RawTar::default().manifest().dir("rootfs/d", 0o755).dir("rootfs/d/", 0o777))),
        ("rootfs/f", std::mem::take(RawTar::default().manifest().file("rootfs/f", b"1").symlink("rootfs/f", b"/"))),
        ("./manifest", std::mem::take(RawTar::default().manifest().file("./manifest", &manifest_json()))),
    ];
    for (entry, mut tar) in cases {
        let err = Sandbox::new().refuse(&tar.finish(), entry);
        assert_eq!(reason(&err), &Reject::Duplicate, "{entry}");
    }
}

#[test]
fn refuses_other_top_level_entries() {
    for name in ["etc/passwd", "rootfsx/y", "manifest/x", "extra"] {
        let tar = RawTar::default().manifest().file(name, b"").finish();
        let err = Sandbox::new().refuse(&tar, name);
        assert_eq!(reason(&err), &Reject::UnexpectedTopLevel, "{name}");
    }
}

#[test]
fn refuses_a_manifest_that_is_not_a_file() {
    let tar = RawTar::default().symlink("manifest", b"/etc/passwd").finish();
    let err = Sandbox::new().refuse(&tar, "manifest");
    assert_eq!(reason(&err), &Reject::NotRegular);
}

#[test]
fn refuses_an_oversized_manifest_from_its_header() {
    // The header claims 1 GiB and no data follows: the size alone must
    // refuse it, before any read.
    let mut tar = RawTar::default();
    tar.push(&RawTar::header(b"manifest", EntryType::Regular, 0o644, 1 << 30, b""), b"");
    let err = Sandbox::new().extract(&tar.finish()).expect_err("accepted");
    assert!(matches!(err, ArchiveError::Manifest(ManifestError::TooLarge { size }) if size == 1 << 30), "{err:?}");
    assert_eq!(err.exit(), Exit::InvalidInput);

    let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
    let tar = RawTar::default().file("manifest", &big).finish();
    let err = Sandbox::new().extract(&tar).expect_err("accepted");
    assert!(matches!(err, ArchiveError::Manifest(ManifestError::TooLarge { .. })), "{err:?}");
}

#[test]
fn refuses_invalid_manifests() {
    for bad in [&b"{not json"[..], br#"{"acKind":"PodManifest","acVersion":"0.8.11","name":"a"}"#] {
        let tar = RawTar::default().file("manifest", bad).finish();
        let sandbox = Sandbox::new();
        let err = sandbox.extract(&tar).expect_err("accepted");
        assert!(matches!(err, ArchiveError::Manifest(_)), "{err:?}");
        assert_eq!(err.exit(), Exit::InvalidInput);
    }
}

#[test]
fn refuses_an_archive_without_manifest() {
    let tar = RawTar::default().file("rootfs/f", b"").finish();
    let err = Sandbox::new().extract(&tar).expect_err("accepted");
    assert!(matches!(err, ArchiveError::NoManifest), "{err:?}");
    assert_eq!(err.to_string(), "archive has no manifest");
}

fn zeros_image(size: usize) -> Vec<u8> {
    let tar = RawTar::default().manifest().file("rootfs/zeros", &vec![0; size]).finish();
    zstd::encode_all(&tar[..], 1).expect("zstd")
}

#[test]
fn stops_decompression_bombs() {
    let image = zeros_image(32 << 20);
    assert!(image.len() < 64 << 10, "not much of a bomb: {} bytes", image.len());
    let limits = Limits { max_uncompressed: 1 << 20, ..Limits::default() };
    let sandbox = Sandbox::new();
    let err = extract_aci(&image[..], &sandbox.dest(), &limits).expect_err("bomb accepted");
    assert!(matches!(err, ArchiveError::TooLarge { limit: 1048576 }), "{err:?}");
    assert!(err.to_string().contains("1048576"), "{err}");
    assert_eq!(err.exit(), Exit::InvalidInput);
    sandbox.assert_outside_untouched();
    let err = image_id_of(&image[..], &limits).expect_err("bomb hashed");
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err:?}");
    // Exactly at the limit is fine.
    let exact = zstd::decode_all(&image[..]).expect("zstd").len() as u64;
    image_id_of(&image[..], &Limits { max_uncompressed: exact, ..Limits::default() }).expect("at the limit");
}

#[test]
fn refuses_truncated_archives() {
    let tar = RawTar::default().manifest().file("rootfs/data", &[7u8; 100_000]).finish();
    let cut = 512 * 3 + 40_000; // in the middle of rootfs/data
    let sandbox = Sandbox::new();
    let err = sandbox.refuse(&tar[..cut], "rootfs/data");
    assert!(matches!(err, ArchiveError::Truncated(_)), "{err:?}");

    for image in [zstd::encode_all(&tar[..], 3).expect("zstd"), gzip(&tar)] {
        let cut = &image[..image.len() / 2];
        let err = Sandbox::new().extract(cut).expect_err("truncated accepted");
        assert!(matches!(err, ArchiveError::Decompress { .. }), "{err:?}");
        assert_eq!(err.exit(), Exit::InvalidInput);
        assert!(matches!(image_id_of(cut, &Limits::default()), Err(ArchiveError::Decompress { .. })));
    }
}

#[test]
fn refuses_archives_without_end_marker() {
    let tar = RawTar::default().manifest().file("rootfs/f", b"data").unfinished();
    let err = Sandbox::new().refuse(&tar, "rootfs/f");
    assert!(matches!(err, ArchiveError::Truncated(_)), "{err:?}");
    let err = Sandbox::new().extract(b"").expect_err("empty accepted");
    assert!(matches!(err, ArchiveError::Truncated(_)), "{err:?}");
}

#[test]
fn refuses_bad_header_checksums() {
    let mut tar = RawTar::default().manifest().file("rootfs/f", b"data").finish();
    let second_header = 512 * 2;
    tar[second_header + 10] ^= 1;
    let err = Sandbox::new().extract(&tar).expect_err("accepted");
    assert!(matches!(err, ArchiveError::Tar { .. }), "{err:?}");
    assert!(err.to_string().contains("manifest"), "{err}");
}

#[test]
fn errors_map_to_exit_codes() {
    let io = || std::io::Error::other("x");
    assert_eq!(ArchiveError::Io { op: "write", path: "p".into(), source: io() }.exit(), Exit::Failure);
    assert_eq!(ArchiveError::Read(io()).exit(), Exit::Failure);
    assert_eq!(ArchiveError::NoManifest.exit(), Exit::InvalidInput);
    assert_eq!(ArchiveError::Rejected { path: "p".into(), reason: Reject::Duplicate }.exit(), Exit::InvalidInput);
}

#[test]
fn refuses_paths_and_symlink_targets_over_the_kernel_limits() {
    // Through a pax path: ustar fields cannot hold these.
    let long = format!("rootfs/{}", "d/".repeat(2100));
    let tar = RawTar::default().manifest().pax("path", long.as_bytes()).file("rootfs/innocent", b"").finish();
    let err = Sandbox::new().refuse(&tar, "rootfs/d/d/d");
    assert!(matches!(reason(&err), Reject::TooLong { what: "path", .. }), "{err}");

    let component = format!("rootfs/{}", "n".repeat(256));
    let tar = RawTar::default().manifest().pax("path", component.as_bytes()).file("rootfs/innocent", b"").finish();
    let err = Sandbox::new().refuse(&tar, &component);
    assert_eq!(reason(&err), &Reject::TooLong { what: "path component", len: 256, limit: 255 });

    let target = "t/".repeat(2048);
    let tar = RawTar::default().manifest().pax("linkpath", target.as_bytes()).symlink("rootfs/link", b"x").finish();
    let err = Sandbox::new().refuse(&tar, "rootfs/link");
    assert_eq!(reason(&err), &Reject::TooLong { what: "symlink target", len: 4096, limit: 4095 });

    // 255 bytes is a fine component.
    let ok = format!("rootfs/{}", "n".repeat(255));
    let tar = RawTar::default().manifest().pax("path", ok.as_bytes()).file("rootfs/x", b"").finish();
    Sandbox::new().extract(&tar).expect("a NAME_MAX component");
}

#[test]
fn refuses_owners_that_are_not_ids() {
    for id in [u64::from(u32::MAX), 1 << 32, 1 << 50] {
        let mut h = RawTar::header(b"rootfs/f", EntryType::Regular, 0o644, 0, b"");
        // Base-256 (GNU): the top bit of the first byte, then big-endian.
        let mut field = [0u8; 8];
        field[1..].copy_from_slice(&id.to_be_bytes()[1..]);
        field[0] = 0x80;
        h.as_old_mut().uid = field;
        h.set_cksum();
        let tar = RawTar::default().manifest().push(&h, b"").finish();
        let err = Sandbox::new().refuse(&tar, "rootfs/f");
        assert_eq!(reason(&err), &Reject::IdOutOfRange(id), "{err}");
    }
}

#[test]
fn refuses_more_entries_than_the_limit() {
    let mut tar = RawTar::default();
    tar.manifest();
    for i in 0..10 {
        tar.file(&format!("rootfs/{i}"), b"");
    }
    let tar = tar.finish();
    let sandbox = Sandbox::new();
    let limits = Limits { max_entries: 10, ..Limits::default() };
    let err = extract_aci(&tar[..], &sandbox.dest(), &limits).expect_err("11 entries accepted");
    assert!(matches!(err, ArchiveError::TooManyEntries { limit: 10 }), "{err:?}");
    assert_eq!(err.exit(), Exit::InvalidInput);
    let sandbox = Sandbox::new();
    extract_aci(&tar[..], &sandbox.dest(), &Limits { max_entries: 11, ..Limits::default() }).expect("11 entries");
}

#[test]
fn stops_pax_and_long_name_memory_bombs() {
    // 64 MiB of header the tar crate would read whole into memory; the
    // budget stops it after 1 MiB.
    let huge = vec![b'a'; 64 << 20];
    for ty in [EntryType::XHeader, EntryType::GNULongName] {
        let tar =
            RawTar::default().manifest().entry(b"././@Header", ty, 0o644, &huge, b"").file("rootfs/f", b"").finish();
        let image = zstd::encode_all(&tar[..], 1).expect("zstd");
        let err = Sandbox::new().extract(&image).expect_err("header bomb accepted");
        assert!(matches!(err, ArchiveError::Tar { .. }), "{err:?}");
        assert!(err.to_string().contains("bytes of tar headers"), "{err}");
        assert_eq!(err.exit(), Exit::InvalidInput);
    }
}

#[test]
fn keeps_setuid_bits_and_fifos() {
    if !is_root() {
        eprintln!("SKIP: keeping a setuid-root owner needs root");
        return;
    }
    let mut h = RawTar::header(b"rootfs/suid", EntryType::Regular, 0o4755, 4, b"");
    h.set_cksum();
    let tar =
        RawTar::default().manifest().push(&h, b"#!/x").entry(b"rootfs/fifo", EntryType::Fifo, 0o600, b"", b"").finish();
    let sandbox = Sandbox::new();
    sandbox.extract(&tar).expect("setuid file and fifo");
    let md = fs::metadata(sandbox.dest().join("rootfs/suid")).expect("stat");
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o4755, 0));
    let fifo = fs::symlink_metadata(sandbox.dest().join("rootfs/fifo")).expect("stat");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
}
