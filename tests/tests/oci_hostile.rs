//! Hostile OCI input end to end: registries that lie about digests, sizes,
//! redirects and token realms; manifests, configs and indexes written by
//! hand to contradict themselves; layers built entry by entry with the raw
//! tar writer to escape their tree, smuggle devices or inflate past the
//! limit; cosign signatures of other images. Each image is served by the
//! real registry (pushed through its API, or written into its storage) or,
//! for what distribution will not serve, by the scripted fake registry.
//!
//! Every case must fail with its documented exit code and a message naming
//! the image, blob or entry, leaving a store that already holds an image
//! byte-identical, and nothing written outside it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;
use kit::{
    config_of, env, fake, fake_fetch_args, files, find_named, gz, plain, refused, seeded, top_level, Image, Layer,
};

#[path = "oci_hostile/kit.rs"]
mod kit;

const REPO: &str = "evil/app";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const BLOCKDEV: u8 = b'4';

// ---------------------------------------------------------------------------
// Digests and sizes.

#[test]
fn layer_blob_whose_bytes_do_not_match_its_digest_is_refused() {
    let e = or_skip!(env());
    let img = Image::new(vec![files(&[("app/bin", b"the real layer\n")])]);
    img.push(&e.reg, REPO, "v1");
    let layer = img.layer_digest(0);
    // Same length, other bytes: only the digest can tell.
    let mut forged = img.layers[0].blob.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    e.reg.overwrite_blob(&layer, &forged);
    e.refused(&format!("{REPO}:v1"), &[], EXIT_VERIFICATION, &[&layer, "digest", REPO]);
}

#[test]
fn descriptor_sizes_that_differ_from_the_blob_are_refused() {
    let e = or_skip!(env());
    let img = Image::new(vec![files(&[("app/bin", b"sized\n")])]);
    img.push(&e.reg, REPO, "v1");
    for (what, pointer) in [("config", "/config/size"), ("layer", "/layers/0/size")] {
        let mut bad = img.clone();
        let size = bad.manifest.pointer(pointer).unwrap().as_u64().unwrap();
        *bad.manifest.pointer_mut(pointer).unwrap() = json!(size + 1);
        let tag = format!("{what}-plus-one");
        let (status, body) = e.reg.put_manifest(REPO, &tag, OCI_MANIFEST, &bad.manifest_bytes());
        assert!(status < 300, "the registry refused a manifest with a wrong {what} size: {status} {body}");
        let digest = bad.manifest.pointer(&pointer.replace("size", "digest")).unwrap().as_str().unwrap().to_owned();
        let err = e.refused(&format!("{REPO}:{tag}"), &[], EXIT_VERIFICATION, &[&digest]);
        assert_mentions(&err, &[&(size + 1).to_string()]);
    }
}

#[test]
fn manifests_whose_bytes_differ_from_their_digest_are_refused() {
    let pod = or_skip!(seeded());
    let fake = or_skip!(fake(&pod, "fake"));
    let real = Image::new(vec![files(&[("app/bin", b"real\n")])]);
    let liar = Image::new(vec![files(&[("app/bin", b"substituted\n")])]);
    real.serve(&fake, REPO, "real");
    liar.serve(&fake, REPO, "liar");
    let (want, got) = (real.digest(), liar.digest());
    let host = fake.host();

    // By digest: the body served for @sha256:REAL is another manifest.
    fake.manifest(REPO, &want, OCI_MANIFEST, &liar.manifest_bytes(), &want);
    let by_digest = format!("docker://{host}/{REPO}@{want}");
    refused(&pod, &fake_fetch_args(&fake, &by_digest), EXIT_VERIFICATION, &[&want, &got]);

    // By tag, Docker-Content-Digest naming another digest than the body's.
    fake.manifest(REPO, "v1", OCI_MANIFEST, &liar.manifest_bytes(), &want);
    let by_tag = format!("docker://{host}/{REPO}:v1");
    refused(&pod, &fake_fetch_args(&fake, &by_tag), EXIT_VERIFICATION, &["Docker-Content-Digest", &want, &got]);

    // Through an index: its linux/amd64 entry names REAL; the registry
    // answers for REAL with LIAR's bytes.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": want, "size": real.manifest_bytes().len(),
            "platform": { "os": "linux", "architecture": "amd64" },
        }],
    });
    let index = serde_json::to_vec(&index).unwrap();
    fake.manifest(REPO, "multi", OCI_INDEX, &index, &sha256_digest(&index));
    let by_index = format!("docker://{host}/{REPO}:multi");
    refused(&pod, &fake_fetch_args(&fake, &by_index), EXIT_VERIFICATION, &[&want, &got]);
}

#[test]
fn huge_manifest_is_refused_without_reading_it() {
    let pod = or_skip!(seeded());
    let fake = or_skip!(fake(&pod, "fake"));
    // 6 MiB of valid JSON: a manifest with a padded annotation.
    let pad = "x".repeat(6 << 20);
    let huge = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(b"{}"), "size": 2 },
        "layers": [], "annotations": { "pad": pad },
    }))
    .unwrap();
    fake.manifest(REPO, "huge", OCI_MANIFEST, &huge, &sha256_digest(&huge));
    let reference = format!("docker://{}/{REPO}:huge", fake.host());
    refused(&pod, &fake_fetch_args(&fake, &reference), EXIT_INVALID, &[REPO, "huge", "limit"]);

    // The same announced, then never sent: refused on the Content-Length
    // alone, not after waiting for the body.
    let len = huge.len().to_string();
    let headers = [("Content-Type", OCI_MANIFEST), ("Content-Length", len.as_str())];
    fake.stall(&format!("/v2/{REPO}/manifests/stalled"), &headers, &huge, 0);
    let reference = format!("docker://{}/{REPO}:stalled", fake.host());
    let before = pod.snapshot();
    let start = Instant::now();
    let cmd = pod.cmd(&fake_fetch_args(&fake, &reference));
    let out = output_within(cmd, Duration::from_secs(20), "fetch of a stalled huge manifest");
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&["fetch", &reference], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["stalled", "limit"]);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    pod.assert_untouched(&before, "a stalled huge manifest");
}

// ---------------------------------------------------------------------------
// Layers.

#[test]
fn layer_that_inflates_past_the_size_limit_is_refused() {
    let e = or_skip!(env());
    let mut t = RawTar::new();
    t.file("zeros", &vec![0u8; 4 << 20]);
    let bomb = gz(&t.finish());
    assert!(bomb.blob.len() < 64 << 10, "the bomb is small compressed: {}", bomb.blob.len());
    let img = Image::new(vec![bomb]);
    img.push(&e.reg, REPO, "bomb");
    let layer = img.layer_digest(0);
    e.refused(&format!("{REPO}:bomb"), &["--max-image-size", "1M"], EXIT_INVALID, &[&layer, "1048576"]);
}

#[test]
fn layers_that_together_inflate_past_the_size_limit_are_refused() {
    // Each layer unpacks to 400 KiB, under the 1 MiB limit; the three
    // together do not fit: the limit is the image's.
    let e = or_skip!(env());
    let layers: Vec<Layer> = (0..3)
        .map(|i| {
            let mut t = RawTar::new();
            t.file(&format!("zeros-{i}"), &vec![0u8; 400 << 10]);
            gz(&t.finish())
        })
        .collect();
    let img = Image::new(layers);
    img.push(&e.reg, REPO, "bombs");
    e.refused(&format!("{REPO}:bombs"), &["--max-image-size", "1M"], EXIT_INVALID, &["1048576"]);
}

#[test]
fn whiteouts_that_escape_the_layer_are_refused() {
    let e = or_skip!(env());
    let outside = p(&e.pod.outside).to_owned();

    let mut t = RawTar::new();
    t.file("innocent", b"").file("../.wh.x", b"");
    Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, "dotdot");
    e.refused(&format!("{REPO}:dotdot"), &[], EXIT_INVALID, &["../.wh.x"]);

    let mut t = RawTar::new();
    t.symlink("lnk", &outside).file("lnk/.wh.victim", b"");
    Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, "through-symlink");
    e.refused(&format!("{REPO}:through-symlink"), &[], EXIT_INVALID, &["lnk/.wh.victim", "symlink"]);

    // The opaque marker through a relative symlink out of the tree.
    let mut t = RawTar::new();
    t.symlink("up", "../../../../outside").file("up/.wh..wh..opq", b"");
    Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, "opaque-through-symlink");
    e.refused(&format!("{REPO}:opaque-through-symlink"), &[], EXIT_INVALID, &["up/.wh..wh..opq", "symlink"]);
    assert!(find_named(e.pod.root(), "victim").is_empty());
}

#[test]
fn symlink_in_one_layer_is_not_written_through_by_the_next() {
    let e = or_skip!(env());
    let target = e.pod.root().join("symlink-target");
    fs::create_dir(&target).unwrap();
    let cases = [
        ("absolute", p(&target).to_owned()),
        ("root", "/".to_owned()),
        ("relative", "../../../../symlink-target".to_owned()),
    ];
    for (tag, link) in &cases {
        let mut t = RawTar::new();
        t.symlink("evil", link);
        let lower = gz(&t.finish());
        let mut t = RawTar::new();
        if *tag == "root" {
            // evil/<the target's absolute path>/pwned: lands in the target
            // if evil were followed to /.
            t.file(&format!("evil{}/pwned", p(&target)), b"pwned\n");
        } else {
            t.file("evil/pwned", b"pwned\n");
        }
        let upper = gz(&t.finish());
        let img = Image::new(vec![lower, upper]);
        img.push(&e.reg, REPO, tag);
        let args = e.fetch_args(&format!("{REPO}:{tag}"));
        let out = e.pod.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            fs::read_dir(&target).unwrap().next().is_none(),
            "{tag}: written through the symlink into {}",
            target.display()
        );
        assert!(top_level(&e.pod.outside).is_empty(), "{tag}: written outside");
        for hit in find_named(e.pod.root(), "pwned") {
            assert!(hit.starts_with(e.pod.data.join("layers")), "{tag}: pwned at {}", hit.display());
            let parent = fs::symlink_metadata(hit.parent().unwrap()).unwrap();
            assert!(parent.is_dir(), "{tag}: {} is under a symlink", hit.display());
            assert!(fs::symlink_metadata(&hit).unwrap().is_file());
        }
        if out.status.success() {
            let upper_tree = e.pod.data.join(format!("layers/sha256-{}/rootfs", &img.layer_digest(1)[7..]));
            let lower_tree = e.pod.data.join(format!("layers/sha256-{}/rootfs", &img.layer_digest(0)[7..]));
            assert!(fs::symlink_metadata(lower_tree.join("evil")).unwrap().is_symlink(), "{tag}");
            assert!(fs::symlink_metadata(upper_tree.join("evil")).unwrap().is_dir(), "{tag}: evil in layer 2");
            let pwned = if *tag == "root" { format!("evil{}/pwned", p(&target)) } else { "evil/pwned".into() };
            assert_eq!(fs::read(upper_tree.join(pwned)).unwrap(), b"pwned\n", "{tag}");
        } else {
            eprintln!("{tag}: refused: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(EXIT_INVALID), "{}", describe(&["fetch"], &out));
        }
    }
}

#[test]
fn hardlinks_out_of_the_layer_are_refused() {
    let e = or_skip!(env());
    for (tag, target) in [("dotdot", "../../etc/passwd"), ("absolute", "/etc/passwd"), ("missing", "nowhere")] {
        let mut t = RawTar::new();
        t.file("innocent", b"").hardlink("link", target);
        Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, tag);
        e.refused(&format!("{REPO}:{tag}"), &[], EXIT_INVALID, &["link", target]);
    }
}

#[test]
fn device_nodes_in_a_layer_are_refused() {
    let e = or_skip!(env());
    let mut t = RawTar::new();
    t.chardev("dev/mem", 1, 1);
    Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, "char");
    e.refused(&format!("{REPO}:char"), &[], EXIT_INVALID, &["dev/mem", "device"]);

    let mut t = RawTar::new();
    t.entry("dev/sda", BLOCKDEV, b"", "", 0o660, (8, 0));
    Image::new(vec![gz(&t.finish())]).push(&e.reg, REPO, "block");
    e.refused(&format!("{REPO}:block"), &[], EXIT_INVALID, &["dev/sda", "device"]);
}

// ---------------------------------------------------------------------------
// Indexes, redirects, token realms.

#[test]
fn index_without_the_host_platform_names_the_platforms_it_has() {
    let pod = or_skip!(seeded());
    let fake = or_skip!(fake(&pod, "fake"));
    let entry = |os: &str, arch: &str, variant: Option<&str>| {
        let mut platform = json!({ "os": os, "architecture": arch });
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        json!({
            "mediaType": OCI_MANIFEST, "digest": sha256_digest(format!("{os}{arch}").as_bytes()), "size": 100,
            "platform": platform,
        })
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry("linux", "arm64", Some("v8")), entry("linux", "s390x", None), entry("windows", "amd64", None)],
    }))
    .unwrap();
    fake.manifest(REPO, "v1", OCI_INDEX, &index, &sha256_digest(&index));
    let reference = format!("docker://{}/{REPO}:v1", fake.host());
    refused(
        &pod,
        &fake_fetch_args(&fake, &reference),
        EXIT_INVALID,
        &[REPO, "linux/amd64", "linux/arm64/v8", "linux/s390x", "windows/amd64", "--platform"],
    );
    // Nothing but the index was asked for.
    let asked: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(asked.iter().all(|a| a == "/v2/" || a.ends_with("/manifests/v1")), "{asked:?}");
}

#[test]
fn blob_redirect_loop_is_refused() {
    let pod = or_skip!(seeded());
    let fake = or_skip!(fake(&pod, "fake"));
    let img = Image::new(vec![files(&[("x", b"x\n")])]);
    img.serve(&fake, REPO, "v1");
    let config = format!("/v2/{REPO}/blobs/{}", sha256_digest(&img.config));
    let url = format!("{}{config}", fake.base_url());
    fake.respond(&config, 307, &[("Location", &url)], b"");
    let reference = format!("docker://{}/{REPO}:v1", fake.host());
    refused(&pod, &fake_fetch_args(&fake, &reference), EXIT_NETWORK, &["redirect", &sha256_digest(&img.config)]);

    // A loop through a second URL.
    let layer = format!("/v2/{REPO}/blobs/{}", img.layer_digest(0));
    let hop = format!("/elsewhere/{}", img.layer_digest(0));
    fake.respond(&config, 200, &[("Content-Type", "application/octet-stream")], &img.config);
    fake.respond(&layer, 302, &[("Location", &format!("{}{hop}", fake.base_url()))], b"");
    fake.respond(&hop, 302, &[("Location", &format!("{}{layer}", fake.base_url()))], b"");
    refused(&pod, &fake_fetch_args(&fake, &reference), EXIT_NETWORK, &["redirect", &img.layer_digest(0)]);
}

#[test]
fn token_realm_on_another_host_gets_no_credentials() {
    let pod = or_skip!(seeded());
    let registry = or_skip!(fake(&pod, "registry"));
    let realm = or_skip!(fake(&pod, "realm"));
    let manifest = format!("/v2/{REPO}/manifests/v1");
    let realm_port = realm.host().rsplit(':').next().unwrap().to_owned();
    let challenge =
        format!(r#"Bearer realm="https://localhost:{realm_port}/token",service="evil",scope="repository:{REPO}:pull""#);
    registry.respond(&manifest, 401, &[("WWW-Authenticate", &challenge)], br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
    realm.respond("/token", 200, &[("Content-Type", "application/json")], br#"{"token":"realm-token"}"#);
    let secret = "pod-tester:do-not-leak";
    let auth = pod.work.join("auth.json");
    let doc = json!({ "auths": { registry.host(): { "auth": base64(secret.as_bytes()) } } });
    fs::write(&auth, serde_json::to_vec(&doc).unwrap()).unwrap();
    let reference = format!("docker://{}/{REPO}:v1", registry.host());
    let args = [
        "fetch",
        "--ca-cert",
        p(registry.ca_cert()),
        "--ca-cert",
        p(realm.ca_cert()),
        "--insecure-options=image",
        "--authfile",
        p(&auth),
        &reference,
    ];
    let err = refused(&pod, &args, EXIT_NETWORK, &[REPO, "anonymous token", "localhost"]);
    assert!(!err.contains(&base64(secret.as_bytes())) && !err.contains("do-not-leak"), "{err}");

    let asked = realm.requests();
    assert!(asked.iter().any(|r| r.path.starts_with("/token")), "the realm was never asked: {asked:?}");
    for r in &asked {
        assert_eq!(r.authorization, None, "the realm on another host got credentials: {r:?}");
    }
    // The registry itself saw the realm's token, never the password.
    let seen = registry.requests();
    assert!(seen.iter().any(|r| r.authorization.as_deref() == Some("Bearer realm-token")), "{seen:?}");
    assert!(seen.iter().all(|r| !r.authorization.as_deref().unwrap_or("").starts_with("Basic")), "{seen:?}");
}

// ---------------------------------------------------------------------------
// Signatures.

#[test]
fn signatures_of_another_digest_or_by_an_untrusted_key_are_refused() {
    let e = or_skip!(env());
    let (pod, reg) = (&e.pod, &e.reg);
    let trusted = or_skip!(cosign_generate_key_pair(&pod.work.join("trusted"), "pw"));
    pod.ok(&["trust", "add", "--prefix", &format!("{}/evil/", reg.host()), p(&trusted.public)]);
    let app = Image::new(vec![files(&[("app", b"the app\n")])]).push(reg, REPO, "v1");
    let other = Image::new(vec![files(&[("app", b"another build\n")])]).push(reg, REPO, "other");

    // A good signature of another manifest of the same repository, copied
    // to this one's .sig tag: it names the right repository, another digest.
    cosign_sign(&trusted, &reg.image_ref(&format!("{REPO}@{other}")), reg);
    let (status, sig) = reg.get(&format!("/v2/{REPO}/manifests/{}", cosign_sig_tag(&other)), OCI_MANIFEST, "");
    assert_eq!(status, 200);
    let (status, body) = reg.put_manifest(REPO, &cosign_sig_tag(&app), OCI_MANIFEST, &sig);
    assert!(status < 300, "{status} {body}");
    let args = ["fetch", "--ca-cert", &e.ca, &reg.docker_ref(&format!("{REPO}:v1"))];
    let err = refused(pod, &args, EXIT_VERIFICATION, &[REPO]);
    assert_mentions_any(&err, &[&other, &app]);

    // Signed, for the right digest, by a key nobody trusts.
    let stranger = or_skip!(cosign_generate_key_pair(&pod.work.join("stranger"), "pw"));
    let third = Image::new(vec![files(&[("app", b"third\n")])]).push(reg, REPO, "third");
    cosign_sign(&stranger, &reg.image_ref(&format!("{REPO}@{third}")), reg);
    let args = ["fetch", "--ca-cert", &e.ca, &reg.docker_ref(&format!("{REPO}:third"))];
    refused(pod, &args, EXIT_VERIFICATION, &[REPO]);
}

// ---------------------------------------------------------------------------
// Configs that contradict the layers.

#[test]
fn config_diff_ids_that_do_not_match_the_layers_are_refused() {
    let e = or_skip!(env());
    let a = files(&[("a", b"a\n")]);
    let b = files(&[("b", b"b\n")]);

    // Swapped: each diff ID belongs to the other layer.
    let config = config_of(&[b.diff_id.clone(), a.diff_id.clone()]);
    let img = Image::with_config(vec![a.clone(), b.clone()], config);
    img.push(&e.reg, REPO, "swapped");
    e.refused(&format!("{REPO}:swapped"), &[], EXIT_VERIFICATION, &[&b.diff_id, &a.diff_id]);

    // Fewer diff IDs than layers.
    let config = config_of(std::slice::from_ref(&a.diff_id));
    Image::with_config(vec![a.clone(), b.clone()], config).push(&e.reg, REPO, "fewer");
    e.refused(&format!("{REPO}:fewer"), &[], EXIT_INVALID, &["diff_ids", "1", "2"]);

    // More diff IDs than layers.
    let config = config_of(&[a.diff_id.clone(), b.diff_id.clone()]);
    Image::with_config(vec![a], config).push(&e.reg, REPO, "more");
    e.refused(&format!("{REPO}:more"), &[], EXIT_INVALID, &["diff_ids"]);
}

#[test]
fn layers_declared_past_the_size_limit_are_refused_before_they_are_fetched() {
    // Each layer alone is under --max-image-size; the image is not, and
    // the manifest says so before anything is downloaded.
    let e = or_skip!(env());
    let layers: Vec<Layer> = (0..3u8)
        .map(|i| {
            let mut t = RawTar::new();
            t.file(&format!("part{i}"), &vec![i; 400 << 10]);
            plain(&t.finish())
        })
        .collect();
    let img = Image::new(layers);
    img.push(&e.reg, REPO, "big");
    e.refused(
        &format!("{REPO}:big"),
        &["--max-image-size", "1M"],
        EXIT_INVALID,
        &[REPO, "1048576", "--max-image-size"],
    );
    let log = e.reg.log();
    assert!(log.contains(&format!("GET /v2/{REPO}/manifests/big")), "the access log has no requests:\n{log}");
    for digest in (0..3).map(|i| img.layer_digest(i)).chain([sha256_digest(&img.config)]) {
        let get = format!("GET /v2/{REPO}/blobs/{digest}");
        assert!(!log.contains(&get), "{digest} was fetched:\n{log}");
    }
}

#[test]
fn descriptors_with_digests_the_store_cannot_hold_are_refused() {
    // sha512 digests of the real bytes: valid by the image spec, verified
    // by the registry client, but the store names blobs by sha256 only.
    let pod = or_skip!(seeded());
    let fake = or_skip!(fake(&pod, "fake"));
    let img = Image::new(vec![files(&[("x", b"x\n")])]);
    img.serve(&fake, REPO, "v1");
    let sha512 = |bytes: &[u8]| {
        use sha2::Digest as _;
        format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
    };
    for (tag, pointer, bytes) in
        [("config", "/config/digest", &img.config), ("layer", "/layers/0/digest", &img.layers[0].blob)]
    {
        let mut bad = img.clone();
        let digest = sha512(bytes);
        *bad.manifest.pointer_mut(pointer).unwrap() = json!(digest);
        fake.blob(REPO, &digest, bytes);
        let m = bad.manifest_bytes();
        fake.manifest(REPO, tag, OCI_MANIFEST, &m, &sha256_digest(&m));
        let reference = format!("docker://{}/{REPO}:{tag}", fake.host());
        refused(&pod, &fake_fetch_args(&fake, &reference), EXIT_INVALID, &[&digest]);
    }
}
