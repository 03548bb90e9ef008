//! Hostile input beyond the archive basics of `hostile.rs`: archives that
//! aim at the kernel's limits, the tar parser's memory or the host's inodes;
//! image manifests with oversized, nested, contradictory or self-referential
//! fields; malformed signatures; key files someone else could have written.
//! Each case is built here, at test time, and must fail with its documented
//! exit code and a message naming the entry, field, file or image, leaving
//! the store, the pods directory (both under `POD_DIR`) and, for trust
//! commands, the trusted keys exactly as they were.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

const NAME: &str = "example.com/evil";
const SIG_TAG: &str = "pod-ed25519-signature";

/// Runs `pod ARGS`: exit `code`, a message naming all of `words`, and the
/// store, the pods and the trusted keys untouched.
fn refused(pod: &Pod, args: &[&str], code: i32, words: &[&str]) -> String {
    let before = pod.snapshot();
    let config = snapshot(&pod.config);
    let err = pod.fails(args, code);
    eprintln!("pod said: {err}");
    assert_mentions(&err, words);
    pod.assert_untouched(&before, &args.join(" "));
    assert_same(&config, &snapshot(&pod.config), &format!("{}: the configuration", args.join(" ")));
    err
}

/// Signs `bytes` with the trusted key and fetches them with `extra` flags:
/// exit 5 naming all of `words`.
fn rejected_archive(bytes: &[u8], extra: &[&str], words: &[&str]) -> String {
    let (pod, key) = seeded();
    let img = pod.write_signed("evil.aci", bytes, &key);
    let mut args = vec!["fetch"];
    args.extend_from_slice(extra);
    args.push(p(&img));
    refused(&pod, &args, EXIT_INVALID, words)
}

/// Recomputes a ustar header's checksum after it was patched.
fn rechecksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A pax extended header ('x') with one `key=value` record for the next entry.
fn pax(t: &mut RawTar, key: &str, value: &[u8]) {
    let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    let record = [len.to_string().as_bytes(), &body].concat();
    t.entry("PaxHeader/next", b'x', &record, "", 0o644, (0, 0));
}

/// A regular file header whose uid (108) or gid (116) field holds `id` in
/// GNU base-256.
fn with_owner(name: &str, field_at: usize, id: u64) -> [u8; 512] {
    let mut h = tar_header(name, REG, 0, "", 0o644, (0, 0));
    h[field_at] = 0x80;
    h[field_at + 1..field_at + 8].copy_from_slice(&id.to_be_bytes()[1..]);
    rechecksum(&mut h);
    h
}

// ---------------------------------------------------------------------------
// Archives.

#[test]
fn archive_path_longer_than_path_max_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    pax(&mut t, "path", format!("rootfs/{}", "deep/".repeat(820)).as_bytes());
    t.file("rootfs/innocent", b"");
    rejected_archive(&t.finish(), &[], &["rootfs/deep/deep/deep", "path is 4107 bytes", "4095"]);
}

#[test]
fn archive_name_longer_than_name_max_is_rejected() {
    let long = format!("rootfs/{}", "n".repeat(300));
    let mut t = RawTar::with_manifest(NAME);
    pax(&mut t, "path", long.as_bytes());
    t.file("rootfs/innocent", b"");
    rejected_archive(&t.finish(), &[], &[&long, "path component is 300 bytes", "255"]);
}

#[test]
fn archive_symlink_target_longer_than_path_max_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    pax(&mut t, "linkpath", "../".repeat(1400).as_bytes());
    t.symlink("rootfs/far", "x");
    rejected_archive(&t.finish(), &[], &["rootfs/far", "symlink target is 4200 bytes"]);
}

#[test]
fn archive_owner_minus_one_is_rejected() {
    // (uid_t)-1 is chown's "leave unchanged": the file would stay root's.
    let mut t = RawTar::with_manifest(NAME);
    t.raw(&with_owner("rootfs/nobody-at-all", 108, u64::from(u32::MAX)));
    rejected_archive(&t.finish(), &[], &["rootfs/nobody-at-all", "4294967295", "not a valid uid or gid"]);
}

#[test]
fn archive_group_beyond_32_bits_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.raw(&with_owner("rootfs/huge-gid", 116, 1 << 40));
    rejected_archive(&t.finish(), &[], &["rootfs/huge-gid", "1099511627776"]);
}

#[test]
fn archive_with_more_entries_than_the_limit_is_rejected() {
    // An inode bomb in miniature: the limit is lowered so the test is fast.
    let mut t = RawTar::with_manifest(NAME);
    for i in 0..60 {
        t.file(&format!("rootfs/f{i}"), b"");
    }
    let bytes = compress(&["zstd", "-q", "-c"], &t.finish());
    rejected_archive(&bytes, &["--max-image-entries", "50"], &["more than 50 entries", "--max-image-entries"]);
}

#[test]
fn archive_pax_header_memory_bomb_is_rejected_in_bounded_memory() {
    // 2 GiB of pax record, ~100 kB compressed, that the tar parser would
    // read whole into memory. Under a 1 GiB address-space limit, pod must
    // refuse it rather than abort on a failed allocation.
    const SIZE: u64 = 2 << 30;
    let mut head = RawTar::with_manifest(NAME);
    head.raw(&tar_header("PaxHeader/bomb", b'x', SIZE, "", 0o644, (0, 0)));
    let head = head.unfinished();
    let bytes = compress_with(&["zstd", "-q", "-1", "-c"], move |w| {
        w.write_all(&head)?;
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            w.write_all(&chunk)?;
        }
        w.write_all(&[0u8; 1024])
    });
    let (pod, key) = seeded();
    let img = pod.write_signed("bomb.aci", &bytes, &key);
    let before = pod.snapshot();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--as=1073741824", "--"])
        .arg(pod_bin())
        .args(["fetch", p(&img)])
        .env("POD_DIR", &pod.data)
        .env("POD_CONFIG", &pod.config)
        .env_remove("POD_MAX_IMAGE_SIZE")
        .current_dir(&pod.work);
    let out = output_within(cmd, Duration::from_secs(60), "pod fetch of a pax bomb");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&["fetch", p(&img)], &out));
    assert_mentions(&err, &["bytes of tar headers", "pax"]);
    pod.assert_untouched(&before, "pax bomb");
}

#[test]
fn archive_gnu_sparse_size_bomb_is_rejected() {
    // A GNU sparse file claiming 8 GiB (the most 11 octal digits hold),
    // holding one byte.
    const REAL: u64 = (8 << 30) - 1;
    let mut h = tar_header("rootfs/sparse", b'S', 1, "", 0o644, (0, 0));
    h[257..265].copy_from_slice(b"ustar  \0");
    let octal = |v: u64| format!("{v:011o}\0").into_bytes();
    h[386..398].copy_from_slice(&octal(REAL - 1));
    h[398..410].copy_from_slice(&octal(1));
    h[483..495].copy_from_slice(&octal(REAL));
    rechecksum(&mut h);
    let mut t = RawTar::with_manifest(NAME);
    t.raw(&h).raw(&[b'x'; 512]);
    rejected_archive(&t.finish(), &[], &["rootfs/sparse", "unsupported entry type 'S'"]);
}

#[test]
fn archive_nul_inside_a_pax_path_is_rejected() {
    // What C would read as `rootfs/ok` and the extractor as a longer name.
    let mut t = RawTar::with_manifest(NAME);
    pax(&mut t, "path", b"rootfs/ok\0/../../../outside/pwned");
    t.file("rootfs/innocent", b"");
    rejected_archive(&t.finish(), &[], &["rootfs/ok", "NUL"]);
}

#[test]
fn archive_entry_named_with_terminal_escapes_is_named_escaped() {
    // Invalid UTF-8 and an escape sequence in a refused entry's name: the
    // message names it without writing the raw bytes to the terminal.
    let mut h = tar_header("rootfs/XXXXXXXXX", CHARDEV, 0, "", 0o666, (1, 1));
    h[7..16].copy_from_slice(b"\xff\x1b[31mred");
    rechecksum(&mut h);
    let mut t = RawTar::with_manifest(NAME);
    t.raw(&h);
    let err = rejected_archive(&t.finish(), &[], &["rootfs/", "device nodes are not allowed"]);
    assert!(!err.contains('\u{1b}'), "a raw escape reached the terminal: {err:?}");
    assert_mentions_any(&err, &["\\u{1b}[31mred"]);
}

#[test]
fn archive_block_device_is_rejected() {
    let mut t = RawTar::with_manifest(NAME);
    t.entry("rootfs/sda", b'4', b"", "", 0o660, (8, 0));
    rejected_archive(&t.finish(), &[], &["rootfs/sda", "block device"]);
}

/// Policy, not refusal: fifos and setuid-root files are kept as the image
/// has them (inert inside pods: no_new_privs), and the store that holds
/// them is not reachable by other host users.
#[test]
fn archive_setuid_root_file_and_fifo_are_kept_in_a_private_store() {
    let (pod, key) = seeded();
    let mut t = RawTar::with_manifest("example.com/suid");
    t.entry("rootfs/su", REG, b"#!/bin/true\n", "", 0o4755, (0, 0)).entry("rootfs/pipe", b'6', b"", "", 0o600, (0, 0));
    let img = pod.write_signed("suid.aci", &t.finish(), &key);
    let id = assert_id(&pod.ok(&["fetch", p(&img)]));
    let rootfs = pod.data.join("images").join(&id).join("rootfs");
    let md = fs::metadata(rootfs.join("su")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755, "setuid bit");
    let fifo = fs::symlink_metadata(rootfs.join("pipe")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    for dir in ["images", "trees", "tmp"] {
        let mode = fs::metadata(pod.data.join(dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir}/ is reachable by other users");
    }
}

// ---------------------------------------------------------------------------
// Image manifests: a valid archive around a manifest changed by `edit`.

fn manifest_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut m: Value = serde_json::from_slice(&manifest_json(NAME, "1")).unwrap();
    edit(&mut m);
    serde_json::to_vec(&m).unwrap()
}

fn image_with_manifest(manifest: &[u8]) -> Vec<u8> {
    let mut t = RawTar::new();
    t.file("manifest", manifest).dir("rootfs");
    t.finish()
}

fn rejected_manifest(manifest: &[u8], words: &[&str]) -> String {
    let mut all = vec!["manifest"];
    all.extend_from_slice(words);
    rejected_archive(&image_with_manifest(manifest), &[], &all)
}

#[test]
fn manifest_with_too_many_annotations_is_rejected() {
    let m = manifest_with(|m| {
        let many: Vec<Value> = (0..5000).map(|i| json!({ "name": format!("a{i}"), "value": "" })).collect();
        m["annotations"] = Value::Array(many);
    });
    rejected_manifest(&m, &["annotations", "5000 entries", "4096"]);
}

#[test]
fn manifest_with_an_oversized_environment_value_is_rejected() {
    let m = manifest_with(|m| m["app"]["environment"] = json!([{ "name": "BIG", "value": "x".repeat(70_000) }]));
    rejected_manifest(&m, &["app.environment[0]", "BIG"]);
}

#[test]
fn manifest_with_a_huge_exec_list_is_rejected() {
    let m = manifest_with(|m| m["app"]["exec"] = json!(vec!["/bin/true"; 5000]));
    rejected_manifest(&m, &["app.exec", "5000 entries"]);
}

#[test]
fn manifest_nested_too_deep_is_rejected() {
    // Isolator values are free-form JSON: 300 levels of arrays.
    let mut m = manifest_with(|m| m["app"]["isolators"] = json!([{ "name": "resource/memory", "value": "DEEP" }]));
    let at = m.windows(6).position(|w| w == b"\"DEEP\"").unwrap();
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    m.splice(at..at + 6, deep.bytes());
    rejected_manifest(&m, &["json", "recursion limit"]);
}

#[test]
fn manifest_mount_point_with_dotdot_is_rejected() {
    let m = manifest_with(|m| m["app"]["mountPoints"] = json!([{ "name": "data", "path": "/data/../../etc" }]));
    rejected_manifest(&m, &["app.mountPoints[0].path", "'..'"]);
}

#[test]
fn manifest_port_out_of_range_is_rejected() {
    let m = manifest_with(|m| m["app"]["ports"] = json!([{ "name": "http", "protocol": "tcp", "port": 70000 }]));
    rejected_manifest(&m, &["70000"]);
    let m = manifest_with(|m| m["app"]["ports"] = json!([{ "name": "http", "protocol": "tcp", "port": 0 }]));
    rejected_manifest(&m, &["app.ports[0]", "outside 1-65535"]);
}

#[test]
fn manifest_with_duplicate_port_names_is_rejected() {
    let m = manifest_with(|m| {
        m["app"]["ports"] = json!([
            { "name": "http", "protocol": "tcp", "port": 80 },
            { "name": "http", "protocol": "tcp", "port": 8080 },
        ]);
    });
    rejected_manifest(&m, &["app.ports[1].name", "duplicate"]);
}

#[test]
fn manifest_with_an_invalid_port_name_is_rejected() {
    let m = manifest_with(|m| m["app"]["ports"] = json!([{ "name": "Web Port!", "protocol": "tcp", "port": 80 }]));
    rejected_manifest(&m, &["Web Port!"]);
}

#[test]
fn manifest_of_unknown_kind_or_version_is_rejected() {
    rejected_manifest(&manifest_with(|m| m["acKind"] = json!("PodManifest")), &["acKind", "PodManifest"]);
    rejected_manifest(&manifest_with(|m| m["acVersion"] = json!("latest")), &["acVersion", "latest"]);
}

#[test]
fn manifest_depending_on_itself_is_rejected_before_the_store() {
    let m = manifest_with(|m| m["dependencies"] = json!([{ "imageName": NAME }]));
    rejected_manifest(&m, &["dependencies[0].imageName", "itself", NAME]);
}

#[test]
fn manifest_with_a_duplicate_json_key_is_rejected() {
    // Two parsers could read two different names; this one reads none.
    let m = manifest_json(NAME, "1");
    let text = String::from_utf8(m).unwrap().replacen("\"name\":", "\"name\": \"example.com/innocent\", \"name\":", 1);
    rejected_manifest(text.as_bytes(), &["duplicate field", "name"]);
}

#[test]
fn manifest_that_is_not_utf8_is_rejected() {
    let mut m = manifest_json(NAME, "1");
    let at = m.windows(4).position(|w| w == b"evil").unwrap();
    m[at] = 0xff;
    rejected_manifest(&m, &["json"]);
}

// ---------------------------------------------------------------------------
// Signatures (exit 3). Covered in verify.rs: none, an untrusted key, a key
// trusted for another prefix, a tampered image, another image's signature.

/// A validly signed image and its signature line's parts.
fn signed(pod: &Pod, key: &Key) -> (PathBuf, String) {
    let mut t = RawTar::with_manifest("example.com/good");
    t.file("rootfs/good", b"good\n");
    let img = pod.write_signed("good.aci", &t.finish(), key);
    let line = fs::read_to_string(sig_of(&img)).unwrap();
    (img, line.trim().to_owned())
}

fn refused_sig(sig: &[u8], words: &[&str]) {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    fs::write(sig_of(&img), sig).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, words);
}

#[test]
fn signature_truncated_is_refused() {
    let (pod, key) = seeded();
    let (img, line) = signed(&pod, &key);
    fs::write(sig_of(&img), &line[..line.len() - 20]).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["good.aci.sig", "signature"]);
}

#[test]
fn signature_of_the_wrong_length_is_refused() {
    let (pod, key) = seeded();
    let (img, line) = signed(&pod, &key);
    // 63 bytes, base64: a valid encoding of one byte too few.
    let short = format!("{SIG_TAG} {} {}", key.id, "A".repeat(84));
    fs::write(sig_of(&img), short).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["good.aci.sig", "not 64 bytes"]);
    assert!(line.starts_with(SIG_TAG));
}

#[test]
fn signature_in_foreign_armor_is_refused() {
    let pgp = b"-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n";
    refused_sig(pgp, &["good.aci.sig", SIG_TAG]);
}

#[test]
fn signature_with_trailing_data_is_refused() {
    let (pod, key) = seeded();
    let (img, line) = signed(&pod, &key);
    fs::write(sig_of(&img), format!("{line} {line}\n")).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["good.aci.sig", "trailing data"]);
}

#[test]
fn signature_that_is_not_text_is_refused() {
    refused_sig(&[0xff, 0xfe, 0x00, 0x01, 0x80], &["good.aci.sig", "not UTF-8"]);
}

#[test]
fn signature_file_too_large_is_refused() {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    // An endless "file": refused, never read to the end.
    fs::remove_file(sig_of(&img)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", sig_of(&img)).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["good.aci.sig", "not a regular file"]);
    fs::remove_file(sig_of(&img)).unwrap();
    fs::write(sig_of(&img), vec![b' '; 10_000]).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["good.aci.sig", "too large"]);
}

#[test]
fn signature_that_is_a_fifo_is_refused_without_hanging() {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    let sig = sig_of(&img);
    fs::remove_file(&sig).unwrap();
    let status = Command::new("mkfifo").arg(&sig).status().unwrap();
    assert!(status.success());
    let before = pod.snapshot();
    let out = output_within(pod.cmd(&["fetch", p(&img)]), Duration::from_secs(30), "fetch with a fifo signature");
    assert_eq!(out.status.code(), Some(EXIT_VERIFICATION), "{}", describe(&["fetch", p(&img)], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["good.aci.sig", "not a regular file"]);
    pod.assert_untouched(&before, "fifo signature");
}

#[test]
fn signature_naming_a_trusted_key_made_by_another_is_refused() {
    // The stranger signs, then claims the trusted key's ID.
    let (pod, key) = seeded();
    let stranger = pod.keygen("stranger");
    let (img, _) = signed(&pod, &stranger);
    let line = fs::read_to_string(sig_of(&img)).unwrap().replace(&stranger.id, &key.id);
    fs::write(sig_of(&img), line).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_VERIFICATION, &["bad signature", "good.aci", &key.id]);
}

// ---------------------------------------------------------------------------
// Keys (exit 5): key files someone else could have written, and files that
// are not keys.

fn trusted_key_file(pod: &Pod, key: &Key) -> PathBuf {
    pod.config.join("trust/prefix.d/example.com%2f").join(format!("{}.pub", key.id))
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn trusted_key_writable_by_others_is_refused_naming_it() {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    let file = trusted_key_file(&pod, &key);
    chmod(&file, 0o666);
    refused(&pod, &["fetch", p(&img)], EXIT_INVALID, &[p(&file), "writable by group or others", "666"]);
    refused(&pod, &["trust", "list"], EXIT_INVALID, &[p(&file)]);
}

#[test]
fn directory_of_trusted_keys_writable_by_others_is_refused_naming_it() {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    let dir = trusted_key_file(&pod, &key).parent().unwrap().to_owned();
    chmod(&dir, 0o777);
    refused(&pod, &["fetch", p(&img)], EXIT_INVALID, &[p(&dir), "directory of trusted keys", "writable"]);
    chmod(&dir, 0o755);
}

#[test]
fn trusted_key_owned_by_another_user_is_refused() {
    let (pod, key) = seeded();
    let (img, _) = signed(&pod, &key);
    let file = trusted_key_file(&pod, &key);
    std::os::unix::fs::chown(&file, Some(4242), Some(4242)).unwrap();
    refused(&pod, &["fetch", p(&img)], EXIT_INVALID, &[p(&file), "owned by uid 4242"]);
}

#[test]
fn trusting_a_key_file_anyone_can_write_is_refused() {
    let (pod, _key) = seeded();
    let other = pod.keygen("other");
    chmod(&other.public, 0o646);
    refused(
        &pod,
        &["trust", "add", "--prefix", "example.org/", p(&other.public)],
        EXIT_INVALID,
        &[p(&other.public), "writable by group or others"],
    );
}

/// Writes `text` as `name` in the work dir, mode 0600.
fn key_file(pod: &Pod, name: &str, text: &str) -> PathBuf {
    let path = pod.work.join(name);
    fs::write(&path, text).unwrap();
    chmod(&path, 0o600);
    path
}

#[test]
fn trusting_a_malformed_key_file_is_refused() {
    let (pod, _key) = seeded();
    let ssh = key_file(&pod, "id_ed25519.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 me@host\n");
    refused(&pod, &["trust", "add", "--root", p(&ssh)], EXIT_INVALID, &["id_ed25519.pub", "pod-ed25519-public"]);
}

#[test]
fn trusting_a_key_of_the_wrong_length_is_refused() {
    let (pod, _key) = seeded();
    // 31 bytes of key material.
    let short = key_file(&pod, "short.pub", "pod-ed25519-public AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n");
    refused(&pod, &["trust", "add", "--root", p(&short)], EXIT_INVALID, &["short.pub", "not 32 bytes"]);
}

#[test]
fn trusting_a_weak_key_is_refused() {
    // The identity point: every signature "verifies" under a weak key.
    let weak = format!("pod-ed25519-public AQ{}=\n", "A".repeat(41));
    let (pod, _key) = seeded();
    let file = key_file(&pod, "weak.pub", &weak);
    refused(&pod, &["trust", "add", "--root", p(&file)], EXIT_INVALID, &["weak.pub", "weak key"]);
}

#[test]
fn trusting_a_private_key_file_is_refused_and_copies_nothing() {
    let (pod, key) = seeded();
    let err = refused(&pod, &["trust", "add", "--root", p(&key.secret)], EXIT_INVALID, &[p(&key.secret)]);
    assert_mentions(&err, &["pod-ed25519-public"]);
    let secret = fs::read_to_string(&key.secret).unwrap();
    let material = secret.split_whitespace().nth(1).unwrap();
    assert!(!err.contains(material), "the private key was printed");
}

#[test]
fn signing_with_a_private_key_others_can_read_is_refused() {
    let (pod, key) = seeded();
    let img = pod.images.join("unsigned.aci");
    fs::write(&img, RawTar::with_manifest("example.com/u").finish()).unwrap();
    for mode in [0o644, 0o620, 0o604] {
        chmod(&key.secret, mode);
        refused(
            &pod,
            &["image", "sign", "--key", p(&key.secret), p(&img)],
            EXIT_INVALID,
            &[p(&key.secret), "readable or writable by group or others"],
        );
        assert!(!sig_of(&img).exists(), "a signature was written with a loose key");
    }
}

#[test]
fn signing_with_something_that_is_not_a_private_key_is_refused() {
    let (pod, key) = seeded();
    let img = pod.images.join("unsigned.aci");
    fs::write(&img, RawTar::with_manifest("example.com/u").finish()).unwrap();
    let public = key_file(&pod, "public-as-secret.key", &fs::read_to_string(&key.public).unwrap());
    refused(
        &pod,
        &["image", "sign", "--key", p(&public), p(&img)],
        EXIT_INVALID,
        &["public-as-secret.key", "pod-ed25519-secret"],
    );
    let short = key_file(&pod, "short.key", "pod-ed25519-secret AAAA\n");
    refused(&pod, &["image", "sign", "--key", p(&short), p(&img)], EXIT_INVALID, &["short.key", "not 32 bytes"]);
    assert!(!sig_of(&img).exists());
}
