//! Hostile archives, validly signed by a trusted key so that the extractor
//! is what must refuse them: each exits 5 naming the offending entry, leaves
//! the store exactly as it was, and writes nothing outside it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

const NAME: &str = "example.com/evil";
/// From the staging dir's `extract/rootfs/` up to the test's temp dir, which
/// holds `outside/`: extract, fetch-XXXX, tmp, data, temp dir.
const UP: &str = "../../../../../";
/// The same from `extract/`, where top-level entries and hardlink targets are
/// resolved.
const UP_TOP: &str = "../../../../";

/// A store holding one image imported from a hand-made tar, which also shows
/// the raw tar writer makes archives pod accepts.
fn seeded() -> (Pod, Key) {
    let (pod, key) = common::seeded();
    assert_eq!(read(&pod.tree_with("etc/seed").join("etc/seed")), b"seed\n");
    (pod, key)
}

/// Signs `bytes`, fetches them, and requires exit 5 with all of `words` in
/// the message, the store untouched and `outside/` empty.
fn rejected(bytes: &[u8], extra: &[&str], words: &[&str]) -> String {
    let (pod, key) = seeded();
    let img = pod.write_signed("evil.aci", bytes, &key);
    let before = pod.snapshot();
    let mut args = vec!["fetch"];
    args.extend_from_slice(extra);
    args.push(p(&img));
    let err = pod.fails(&args, EXIT_INVALID);
    eprintln!("pod said: {err}");
    assert_mentions(&err, words);
    pod.assert_untouched(&before, "hostile fetch");
    err
}

#[test]
fn dotdot_path_is_rejected() {
    let entry = format!("rootfs/{UP}outside/pwned");
    let mut t = RawTar::with_manifest(NAME);
    t.file(&entry, b"pwned\n");
    rejected(&t.finish(), &[], &[&entry]);
}

#[test]
fn dotdot_at_top_level_is_rejected() {
    let entry = format!("{UP_TOP}outside/pwned");
    let mut t = RawTar::with_manifest(NAME);
    t.file(&entry, b"pwned\n");
    rejected(&t.finish(), &[], &[&entry]);
}

#[test]
fn absolute_path_is_rejected() {
    // The target is this test's own `outside/`, which is checked below.
    let (pod, key) = seeded();
    let entry = format!("{}/pwned", p(&pod.outside));
    let mut t = RawTar::with_manifest(NAME);
    t.file(&entry, b"pwned\n");
    let img = pod.write_signed("evil.aci", &t.finish(), &key);
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", p(&img)], EXIT_INVALID);
    eprintln!("pod said: {err}");
    assert_mentions(&err, &[&entry]);
    pod.assert_untouched(&before, "absolute path");
}

#[test]
fn write_through_an_absolute_symlink_is_rejected() {
    let (pod, key) = seeded();
    let mut t = RawTar::with_manifest(NAME);
    t.symlink("rootfs/escape", p(&pod.outside)).file("rootfs/escape/pwned", b"pwned\n");
    let img = pod.write_signed("evil.aci", &t.finish(), &key);
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", p(&img)], EXIT_INVALID);
    eprintln!("pod said: {err}");
    assert_mentions(&err, &["rootfs/escape"]);
    pod.assert_untouched(&before, "symlink then write through it");
}

#[test]
fn write_through_a_relative_symlink_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.symlink("rootfs/up", &format!("{UP}outside")).file("rootfs/up/pwned", b"pwned\n");
    rejected(&t.finish(), &[], &["rootfs/up"]);
}

#[test]
fn hardlink_to_outside_is_rejected() {
    let (pod, key) = seeded();
    let victim = pod.outside.join("victim");
    fs::write(&victim, "host secret\n").unwrap();
    let targets = [p(&victim).to_owned(), format!("rootfs/{UP}outside/victim"), format!("{UP_TOP}outside/victim")];
    for (i, target) in targets.iter().enumerate() {
        let entry = format!("rootfs/hardlink-{i}");
        let mut t = RawTar::with_manifest(NAME);
        t.hardlink(&entry, target);
        let img = pod.write_signed(&format!("evil-{i}.aci"), &t.finish(), &key);
        let before = pod.snapshot();
        let err = pod.fails(&["fetch", p(&img)], EXIT_INVALID);
        eprintln!("pod said: {err}");
        assert_mentions_any(&err, &[&entry, target]);
        assert_same(&before, &pod.snapshot(), &format!("hardlink to {target}"));
        let md = fs::metadata(&victim).unwrap();
        assert_eq!(md.nlink(), 1, "{target}: the host file gained a link");
        assert_eq!(read(&victim), b"host secret\n");
        assert_eq!(fs::read_dir(&pod.outside).unwrap().count(), 1, "written outside the store");
    }

    // A target that is clean as written but goes through a symlink out.
    let mut t = RawTar::with_manifest(NAME);
    t.symlink("rootfs/out", p(&pod.outside)).hardlink("rootfs/hardlink-via", "rootfs/out/victim");
    let img = pod.write_signed("evil-via.aci", &t.finish(), &key);
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", p(&img)], EXIT_INVALID);
    eprintln!("pod said: {err}");
    assert_mentions(&err, &["rootfs/hardlink-via"]);
    assert_same(&before, &pod.snapshot(), "hardlink through a symlink");
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1, "the host file gained a link");
}

#[test]
fn char_device_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.dir("rootfs/dev").chardev("rootfs/dev/mem", 1, 1);
    rejected(&t.finish(), &[], &["rootfs/dev/mem"]);
}

/// A tar holding one 256 MiB file of zeros, streamed through `compressor`.
fn bomb(compressor: &[&str]) -> Vec<u8> {
    const SIZE: u64 = 256 << 20;
    let mut head = RawTar::with_manifest(NAME);
    head.raw(&tar_header("rootfs/zeros", REG, SIZE, "", 0o644, (0, 0)));
    let head = head.unfinished();
    let bytes = compress_with(compressor, move |w| {
        w.write_all(&head)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            w.write_all(&zeros)?;
        }
        w.write_all(&[0u8; 1024])
    });
    assert!(bytes.len() < 1 << 20, "the bomb is {} bytes compressed", bytes.len());
    bytes
}

#[test]
fn zstd_decompression_bomb_is_rejected() {
    let err = rejected(&bomb(&["zstd", "-q", "-c"]), &["--max-image-size", "10M"], &[]);
    assert_mentions_any(&err, &["limit", "too large", "larger", "exceeds"]);
}

#[test]
fn gzip_decompression_bomb_is_rejected() {
    let err = rejected(&bomb(&["gzip", "-9", "-c"]), &["--max-image-size", "10M"], &[]);
    assert_mentions_any(&err, &["limit", "too large", "larger", "exceeds"]);
}

#[test]
fn oversized_manifest_is_rejected() {
    // Valid JSON followed by whitespace: only its size is wrong.
    let mut manifest = manifest_json(NAME, "1");
    manifest.resize(manifest.len() + (1 << 20) + 1, b' ');
    let mut t = RawTar::new();
    t.file("manifest", &manifest).dir("rootfs");
    let err = rejected(&t.finish(), &[], &["manifest"]);
    assert_mentions_any(&err, &["limit", "too large", "larger", "exceeds"]);
}

#[test]
fn malformed_manifest_is_rejected() {
    let mut t = RawTar::new();
    t.file("manifest", br#"{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "#).dir("rootfs");
    rejected(&t.finish(), &[], &["manifest", "json"]);
}

#[test]
fn invalid_name_in_manifest_is_rejected() {
    let mut t = RawTar::new();
    t.file("manifest", &manifest_json("Example.com/Not A Name", "1")).dir("rootfs");
    rejected(&t.finish(), &[], &["manifest", "name"]);
}

#[test]
fn duplicate_manifest_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.file("manifest", &manifest_json("example.com/other", "1"));
    rejected(&t.finish(), &[], &["manifest"]);
}

#[test]
fn duplicate_file_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.file("rootfs/twice", b"first\n").file("rootfs/twice", b"second\n");
    rejected(&t.finish(), &[], &["rootfs/twice"]);
}

#[test]
fn truncated_tar_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.raw(&tar_header("rootfs/cut-short", REG, 4096, "", 0o644, (0, 0))).raw(&[b'x'; 1000]);
    rejected(&t.unfinished(), &[], &["rootfs/cut-short"]);
}

#[test]
fn truncated_compressed_stream_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    // Incompressible content, so half the stream is half the files.
    let noise: Vec<u8> = (0u32..200_000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
    t.file("rootfs/noise", &noise);
    let whole = compress(&["zstd", "-q", "-c"], &t.finish());
    rejected(&whole[..whole.len() / 2], &[], &[]);
}

#[test]
fn missing_manifest_is_rejected() {
    let mut t = RawTar::new();
    t.dir("rootfs").file("rootfs/hello", b"hello\n");
    rejected(&t.finish(), &[], &["manifest"]);
}
