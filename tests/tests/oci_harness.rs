//! Self-tests of the OCI harness (common/registry.rs) with the real tools
//! only, no pod: a TLS registry from the test CA, images built with umoci
//! (layers, whiteouts, config) and pushed with skopeo, a token-auth registry
//! that refuses pushes without credentials, cosign sign and verify through
//! the registry, indexes, archives, the raw storage helpers, and the
//! scripted fake registry.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pod-oci-harness-").tempdir().unwrap()
}

/// A two-layer image: files, then a layer deleting one of them.
fn two_layers(layout: &std::path::Path, tag: &str) -> Result<OciImage, Skip> {
    Ok(OciImage::new(layout, tag)?
        .layer(&[("etc/keep", b"keep\n"), ("etc/gone", b"gone\n"), ("data/x/y", b"y\n")])
        .whiteout(&["etc/gone"])
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .env(&["A=1", "B=two words"])
        .workdir("/data")
        .user("1000:1000")
        .exposed_ports(&["8080/tcp"])
        .volumes(&["/data"])
        .stop_signal("SIGINT"))
}

#[test]
fn tls_registry_push_and_inspect_a_two_layer_image_with_a_whiteout() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let img = or_skip!(two_layers(&t.path().join("layout"), "v1"));
    assert_eq!(img.layer_count(), 2);
    let base = img.layer_entries(0);
    assert!(base.iter().any(|e| e == "etc/gone"), "{base:?}");
    let top = img.layer_entries(1);
    assert!(!top.iter().any(|e| e == "etc/keep"), "a layer holds only what changed: {top:?}");
    assert!(top.iter().any(|e| e == "etc/.wh.gone"), "the second layer whites out etc/gone: {top:?}");
    let cfg = img.config_json();
    assert_eq!(cfg["config"]["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["config"]["WorkingDir"], "/data");
    assert_eq!(cfg["config"]["User"], "1000:1000");
    assert_eq!(cfg["config"]["StopSignal"], "SIGINT");
    assert!(cfg["config"]["ExposedPorts"]["8080/tcp"].is_object(), "{cfg}");

    let digest = reg.push(&img, "test/two:v1");
    assert_eq!(digest, img.manifest_digest(), "skopeo pushed the OCI manifest as it is");

    let info = reg.inspect("test/two:v1", false);
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Layers"], serde_json::json!(img.layer_digests()));
    // umoci's manifests name no mediaType: the registry serves them as OCI.
    assert_eq!(reg.inspect("test/two:v1", true), img.manifest());

    // The CA is needed: curl without it fails, with it the tag resolves.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", &format!("{}/v2/", reg.base_url())])
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl trusted the test CA without --cacert");
    let (status, body) = reg.get(&format!("/v2/test/two/manifests/{digest}"), OCI_MANIFEST, "");
    assert_eq!(status, 200);
    assert_eq!(sha256_digest(&body), digest);
}

#[test]
fn busybox_based_image() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let img = or_skip!(or_skip!(OciImage::new(&t.path().join("layout"), "v1")).busybox())
        .layer(&[("app/run.sh", b"#!/bin/sh\necho app\n")])
        .whiteout(&["bin/vi"])
        .entrypoint(&["/bin/sh", "/app/run.sh"]);
    assert_eq!(img.layer_count(), 3);
    let base = img.layer_entries(0);
    for f in ["bin/busybox", "bin/sh", "bin/vi", "etc/passwd"] {
        assert!(base.iter().any(|e| e == f), "{f} not in the base layer: {base:?}");
    }
    assert!(img.layer_entries(2).iter().any(|e| e == "bin/.wh.vi"));
    let digest = reg.push(&img, "busybox/app:v1");
    assert_eq!(reg.inspect("busybox/app:v1", false)["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(reg.inspect("busybox/app:v1", false)["Digest"], digest.as_str());
}

#[test]
fn token_auth_needs_credentials_and_records_them() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https().token_auth()));
    let img = or_skip!(OciImage::new(&t.path().join("layout"), "v1")).layer(&[("hello", b"hello\n")]);

    let out = reg.try_push_ref(&img.reference(), "private/app:v1", false);
    assert!(!out.status.success(), "pushed without credentials");
    let anon = reg.token_requests();
    assert!(!anon.is_empty(), "skopeo never asked the token server");
    assert!(anon.iter().all(|r| r.authorization.is_none()), "{anon:?}");

    let digest = reg.push(&img, "private/app:v1");
    let with_creds: Vec<_> = reg.token_requests().into_iter().skip(anon.len()).collect();
    assert!(
        with_creds.iter().any(|r| r.authorization.as_deref() == Some(reg.basic_auth_header().as_str())),
        "no request carried the test credentials: {with_creds:?}"
    );
    let scopes: Vec<&str> = with_creds.iter().flat_map(|r| r.param("scope")).collect();
    assert!(scopes.iter().any(|s| s.starts_with("repository:private/app:") && s.contains("push")), "{scopes:?}");
    assert!(with_creds.iter().all(|r| r.param("service") == [TOKEN_SERVICE]), "{with_creds:?}");

    assert_eq!(reg.inspect("private/app:v1", false)["Digest"], digest.as_str());
    // The harness's raw access gets its own token, and is not recorded.
    let before = reg.token_requests().len();
    let (status, _) = reg.get("/v2/private/app/manifests/v1", OCI_MANIFEST, "repository:private/app:pull");
    assert_eq!(status, 200);
    assert_eq!(reg.token_requests().len(), before);
    // Without a token the registry answers 401 with the realm.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--cacert", p(reg.ca_cert()), "-D", "-", "-o", "/dev/null"])
        .arg(format!("{}/v2/private/app/manifests/v1", reg.base_url()))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(headers.lines().next().is_some_and(|l| l.starts_with("http/") && l.contains(" 401")), "{headers}");
    assert!(headers.contains(&reg.realm().unwrap().to_lowercase()), "{headers}");
}

#[test]
fn cosign_signs_and_verifies_through_the_registry() {
    let t = tmp();
    let key = or_skip!(cosign_generate_key_pair(&t.path().join("keys"), "pod-test-password"));
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https().token_auth()));
    let img = or_skip!(OciImage::new(&t.path().join("layout"), "v1")).layer(&[("hello", b"hello\n")]);
    let digest = reg.push(&img, "signed/app:v1");
    let by_digest = reg.image_ref(&format!("signed/app@{digest}"));

    let unsigned = cosign_verify(&key.public, &by_digest, &reg);
    assert!(!unsigned.status.success(), "verified an unsigned image");

    cosign_sign(&key, &by_digest, &reg);
    let sig = reg.inspect(&format!("signed/app:{}", cosign_sig_tag(&digest)), true);
    let layer = &sig["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json", "{sig}");
    assert!(layer["annotations"]["dev.cosignproject.cosign/signature"].is_string(), "{sig}");

    let ok = cosign_verify(&key.public, &by_digest, &reg);
    assert!(ok.status.success(), "cosign verify: {}", String::from_utf8_lossy(&ok.stderr));
    let payloads: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(payloads[0]["critical"]["image"]["docker-manifest-digest"], digest.as_str());

    // Another key does not verify it.
    let other = cosign_generate_key_pair(&t.path().join("other"), "x").unwrap();
    assert!(!cosign_verify(&other.public, &by_digest, &reg).status.success());
}

#[test]
fn index_archives_and_raw_storage() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::http()));
    let layout = t.path().join("layout");
    let amd64 = or_skip!(OciImage::new(&layout, "amd64")).layer(&[("arch", b"amd64\n")]);
    let arm64 = OciImage::new(&layout, "arm64").unwrap().layer(&[("arch", b"arm64\n")]).platform("linux", "arm64");
    let index = OciIndex::new("multi", &[&amd64, &arm64]);
    let digest = reg.push_ref(&index.reference(), "multi/app:v1");
    assert_eq!(digest, index.digest());
    let raw = reg.inspect("multi/app:v1", true);
    assert_eq!(raw["mediaType"], OCI_INDEX);
    let archs: Vec<&str> =
        raw["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    // Each platform's manifest was pushed with it.
    let (status, _) = reg.get(&format!("/v2/multi/app/manifests/{}", arm64.manifest_digest()), OCI_MANIFEST, "");
    assert_eq!(status, 200);

    // Archives.
    let oci = amd64.oci_archive(&t.path().join("img.oci.tar"));
    let docker = amd64.docker_archive(&t.path().join("img.docker.tar"), "example.com/app:v1");
    let list = |f: &std::path::Path| {
        String::from_utf8_lossy(&std::process::Command::new("tar").args(["-tf", p(f)]).output().unwrap().stdout)
            .into_owned()
    };
    assert!(list(&oci).contains("index.json"), "{}", list(&oci));
    assert!(list(&docker).contains("manifest.json"), "{}", list(&docker));

    // Raw storage: a layer whose bytes do not match its digest is served
    // as it is; so is a manifest larger than the API would take.
    let layer = amd64.layer_digests()[0].clone();
    reg.push(&amd64, "raw/app:v1");
    reg.overwrite_blob(&layer, b"not the layer");
    let (status, body) = reg.get(&format!("/v2/raw/app/blobs/{layer}"), "*/*", "");
    assert_eq!((status, body.as_slice()), (200, &b"not the layer"[..]));
    // distribution reads at most 4 MiB of a manifest (its API takes no
    // more either): just below is served, above is a 500.
    let padded = |size: usize| {
        let mut m = amd64.manifest();
        m["annotations"] = serde_json::json!({ "padding": "x".repeat(size) });
        serde_json::to_vec(&m).unwrap()
    };
    let big = padded((4 << 20) - 4096);
    let big_digest = reg.write_manifest_raw("raw/app", "big", &big);
    let (status, body) = reg.get("/v2/raw/app/manifests/big", OCI_MANIFEST, "");
    assert_eq!(status, 200, "{}", reg.log().lines().rfind(|l| l.contains("level=error")).unwrap_or(""));
    assert_eq!(sha256_digest(&body), big_digest);
    reg.write_manifest_raw("raw/app", "huge", &padded(5 << 20));
    assert_eq!(reg.get("/v2/raw/app/manifests/huge", OCI_MANIFEST, "").0, 500);
    // Through the API: a blob, and a manifest the registry checks.
    let cfg = reg.put_blob("api/app", b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2 },
        "layers": [],
    });
    let (status, answer) = reg.put_manifest("api/app", "v1", OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    assert_eq!(status, 201, "{answer}");
    let bad = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(b"absent"), "size": 6 },
        "layers": [],
    });
    let (status, _) = reg.put_manifest("api/app", "bad", OCI_MANIFEST, &serde_json::to_vec(&bad).unwrap());
    assert_eq!(status, 400, "the registry checks what the API is given");
}

#[test]
fn self_signed_and_plain_registries_and_docker_media_types() {
    let t = tmp();
    let img = or_skip!(OciImage::new(&t.path().join("layout"), "v1")).layer(&[("hello", b"hello\n")]);
    for opts in [RegistryOpts::self_signed(), RegistryOpts::http()] {
        let reg = or_skip!(Registry::start(&t.path().join(format!("reg-{:?}", opts.tls)), opts.clone()));
        assert_eq!(reg.base_url().starts_with("https://"), opts.tls != Tls::Plain);
        let digest = reg.push(&img, "app/one:v1");
        assert_eq!(reg.inspect("app/one:v1", false)["Digest"], digest.as_str());
        // Docker schema2 media types, as Docker Hub serves most images.
        let docker = reg.push_ref_with(&img.reference(), "app/docker:v1", &["--format", "v2s2"]);
        let raw = reg.inspect(&format!("app/docker@{docker}"), true);
        assert_eq!(raw["mediaType"], "application/vnd.docker.distribution.manifest.v2+json", "{raw}");
        assert_eq!(raw["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
    }
    // The self-signed leaf is not from the test CA.
    let reg = Registry::start(&t.path().join("reg-again"), RegistryOpts::self_signed()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--cacert", p(&reg.ca().cert), &format!("{}/v2/", reg.base_url())])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the test CA vouched for the self-signed registry");
}

#[test]
fn token_auth_with_anonymous_pull() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https().token_auth().anonymous_pull()));
    let img = or_skip!(OciImage::new(&t.path().join("layout"), "v1")).layer(&[("hello", b"hello\n")]);
    assert!(!reg.try_push_ref(&img.reference(), "public/app:v1", false).status.success(), "anonymous push");
    reg.push(&img, "public/app:v1");
    let before = reg.token_requests().len();
    let mut args = vec!["inspect".to_owned()];
    args.extend(reg.skopeo_opts("", false));
    args.push(reg.docker_ref("public/app:v1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = skopeo(&args).output().unwrap();
    assert!(out.status.success(), "anonymous pull: {}", String::from_utf8_lossy(&out.stderr));
    let anon: Vec<_> = reg.token_requests().into_iter().skip(before).collect();
    assert!(!anon.is_empty() && anon.iter().all(|r| r.authorization.is_none()), "{anon:?}");
}

#[test]
fn fake_registry_serves_what_it_is_told() {
    let t = tmp();
    let fake = or_skip!(FakeRegistry::start(&t.path().join("fake"), true));
    let huge = vec![b'x'; 6 << 20];
    fake.manifest("big/app", "v1", OCI_MANIFEST, &huge, &sha256_digest(b"a lie"));
    fake.stall("/v2/big/app/blobs/sha256:00", &[], &[7u8; 4096], 100);
    let curl = |path: &str, extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--cacert", p(fake.ca_cert()), "-D", "-", "-o", "/dev/null"])
            .args(extra)
            .arg(format!("{}{path}", fake.base_url()))
            .output()
            .unwrap()
    };
    let out = curl("/v2/big/app/manifests/v1", &["-H", "Authorization: Bearer x"]);
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.status.success() && headers.contains(" 200"), "{headers}");
    assert!(headers.contains(&format!("content-length: {}", 6 << 20)), "{headers}");
    assert!(headers.contains(&format!("docker-content-digest: {}", sha256_digest(b"a lie"))), "{headers}");
    let out = curl("/v2/big/app/blobs/sha256:00", &["--max-time", "1"]);
    assert!(!out.status.success(), "the stalled blob completed");
    assert!(curl("/v2/other/manifests/v1", &[]).stdout.starts_with(b"HTTP/1.1 404"));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer x"));
}
