//! Signature and trust failures: each exits 3 and leaves the store exactly
//! as it was; `--insecure-options=image` is the only way around them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::*;

/// A store holding one verified image, and the key trusted for example.com/.
fn seeded() -> (Pod, Key) {
    let pod = Pod::new();
    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let seed = pod.build_signed(&ImageSpec::new("example.com/seed", "1").file("seed", "seed\n"), &key);
    assert_id(&pod.ok(&["fetch", p(&seed)]));
    (pod, key)
}

/// Runs `pod ARGS`, requires exit 3 with all of `words` in the message and
/// the store untouched; returns stderr.
fn refused(pod: &Pod, args: &[&str], words: &[&str]) -> String {
    let before = pod.snapshot();
    let err = pod.fails(args, EXIT_VERIFICATION);
    assert_mentions(&err, words);
    pod.assert_untouched(&before, &args.join(" "));
    err
}

fn image(pod: &Pod, name: &str) -> std::path::PathBuf {
    pod.build(&ImageSpec::new(name, "1").file("payload", format!("{name}\n")))
}

#[test]
fn unsigned_image_is_refused() {
    let (pod, _key) = seeded();
    let img = image(&pod, "example.com/unsigned");
    refused(&pod, &["fetch", p(&img)], &["no signature", "pod image sign"]);
}

#[test]
fn untrusted_key_is_refused() {
    let (pod, _key) = seeded();
    let stranger = pod.keygen("stranger");
    let img = image(&pod, "example.com/x");
    pod.sign(&stranger, &img);
    refused(&pod, &["fetch", p(&img)], &["not trusted", &stranger.id]);
}

#[test]
fn key_trusted_for_another_prefix_is_refused() {
    let (pod, _key) = seeded();
    let other = pod.keygen("other");
    pod.trust(&other, "other.org/");
    let img = image(&pod, "example.com/x");
    pod.sign(&other, &img);
    refused(&pod, &["fetch", p(&img)], &[&other.id, "other.org/", "example.com/x"]);
}

#[test]
fn tampered_image_is_refused() {
    let (pod, key) = seeded();
    let img = image(&pod, "example.com/x");
    pod.sign(&key, &img);
    let mut bytes = read(&img);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&img, bytes).unwrap();
    refused(&pod, &["fetch", p(&img)], &["bad signature"]);
}

#[test]
fn signature_of_another_image_is_refused() {
    let (pod, key) = seeded();
    let a = image(&pod, "example.com/a");
    let b = image(&pod, "example.com/b");
    pod.sign(&key, &b);
    fs::copy(sig_of(&b), sig_of(&a)).unwrap();
    refused(&pod, &["fetch", p(&a)], &["bad signature"]);
}

/// A source that serves example.com/b's (validly signed) file for the name
/// example.com/a: the name asked for is what must arrive.
#[test]
fn image_named_differently_than_requested_is_refused() {
    let (pod, key) = seeded();
    let b = image(&pod, "example.com/b");
    pod.sign(&key, &b);
    pod.ok(&["source", "add", "--prefix", "example.com/a", &format!("file://{}", p(&b))]);
    let err = refused(&pod, &["fetch", "example.com/a:1"], &["example.com/a", "example.com/b"]);
    assert_mentions_any(&err, &["requested", "names", "mismatch"]);
}

#[test]
fn insecure_image_option_fetches_unsigned_with_a_warning() {
    let (pod, _key) = seeded();
    let img = image(&pod, "example.com/unsigned");
    let args = ["fetch", "--insecure-options=image", p(&img)];
    let out = pod.run(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = assert_id(&String::from_utf8_lossy(&out.stdout));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["NOT verified"]);
    let list = pod.list();
    let entry = list.iter().find(|e| e["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in {list:?}"));
    assert_eq!(entry["name"], "example.com/unsigned");
    assert!(entry["signer"].is_null(), "signer of an unverified image: {}", entry["signer"]);
    let table = pod.ok(&["image", "list"]);
    assert_mentions(&table, &["unverified"]);
}
