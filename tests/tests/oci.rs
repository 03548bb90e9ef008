//! OCI images end to end, against real peers: images built with umoci,
//! pushed with skopeo into Debian's docker-registry on loopback (TLS from a
//! test CA, a self-signed certificate, token auth), signed with the real
//! cosign; `pod fetch` verifies and stores them, `pod run` runs them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::Value;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pod-oci-").tempdir().unwrap()
}

/// busybox, then a layer adding files, then a layer deleting one of them
/// and making /opt/dir opaque-replaced: three layers, one whiteout.
fn app_image(layout: &Path, tag: &str) -> Result<OciImage, Skip> {
    Ok(OciImage::new(layout, tag)?
        .busybox()?
        .layer(&[
            ("srv/keep.txt", b"kept\n"),
            ("srv/gone.txt", b"should be whited out\n"),
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1000:www:/srv:/bin/sh\n"),
            ("etc/group", b"root:x:0:\nwww:x:1000:\n"),
        ])
        .whiteout(&["srv/gone.txt"])
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo user=$(id -u):$(id -g) cwd=$(pwd) greeting=$GREETING; ls /srv; cat /srv/keep.txt; \
             grep -q ' /data ' /proc/mounts && echo data-is-a-volume"])
        .env(&["GREETING=hello from oci", "PATH=/bin:/usr/bin"])
        .workdir("/srv")
        .user("www")
        .exposed_ports(&["8080/tcp"])
        .volumes(&["/data"])
        .stop_signal("SIGINT"))
}

/// A trusted cosign key for `prefix`.
fn trusted_cosign(pod: &Pod, dir: &Path, prefix: &str) -> Result<CosignKey, Skip> {
    let key = cosign_generate_key_pair(dir, "pw")?;
    pod.ok(&["trust", "add", "--prefix", prefix, p(&key.public)]);
    Ok(key)
}

fn image_json(pod: &Pod, id: &str) -> Value {
    let list: Value = serde_json::from_str(&pod.ok(&["image", "list", "--format", "json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

#[test]
fn signed_image_from_a_tls_registry_is_verified_stored_and_runs() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let img = or_skip!(app_image(&t.path().join("layout"), "v1"));
    let digest = reg.push(&img, "team/app:v1");
    let pod = Pod::new();
    let key = or_skip!(trusted_cosign(&pod, &t.path().join("keys"), &format!("{}/team/", reg.host())));
    cosign_sign(&key, &reg.image_ref(&format!("team/app@{digest}")), &reg);

    let reference = reg.docker_ref("team/app:v1");
    // The second verifier agrees: cosign accepts what pod is about to.
    let cosign = cosign_verify(&key.public, &reg.image_ref("team/app:v1"), &reg);
    assert!(cosign.status.success(), "cosign verify: {}", String::from_utf8_lossy(&cosign.stderr));
    let out = pod.run(&["fetch", "--ca-cert", p(reg.ca_cert()), &reference]);
    assert!(out.status.success(), "{}", describe(&["fetch", &reference], &out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id, format!("sha256-{}", &digest["sha256:".len()..]), "the image ID is the manifest digest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(&stderr, &["Rekor", "not checked"]);

    let m = image_json(&pod, &id);
    assert_eq!(m["kind"], "oci");
    assert_eq!(m["digest"], digest.as_str());
    assert_eq!(m["name"], format!("{}/team/app", reg.host()));
    assert_eq!(m["labels"]["version"], "v1");
    assert_eq!(m["signature"], "cosign");
    assert!(m["signer"].as_str().is_some_and(|s| s.len() == 40), "{m}");
    assert_eq!(m["layers"].as_array().unwrap().len(), 3);
    assert_eq!(m["source"], reference.as_str());
    pod.ok(&["image", "verify", &id]);
    let cat: Value = serde_json::from_str(&pod.ok(&["image", "cat-manifest", &id])).unwrap();
    assert_eq!(cat, img.manifest());

    // Run it: the app is the config's, every layer stacked, the whiteout
    // honoured, the user resolved in the image's /etc/passwd.
    let file = pod.work.join("app.yaml");
    fs::write(&file, format!("name: oci-app\nnetwork: none\napps:\n  - name: app\n    image: \"{reference}\"\n"))
        .unwrap();
    let out = pod.run(&["run", "--ca-cert", p(reg.ca_cert()), p(&file)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", describe(&["run", p(&file)], &out));
    assert_mentions(&text, &["user=1000:1000", "cwd=/srv", "greeting=hello from oci", "keep.txt", "kept"]);
    // The image's Volumes: an empty volume of its own, as docker gives.
    assert_mentions(&text, &["data-is-a-volume"]);
    assert!(!text.contains("gone.txt"), "the whiteout hid srv/gone.txt:\n{text}");
    pod.ok(&["gc"]);

    // The same image again: no fetch (store hit), same ID.
    assert_eq!(pod.ok(&["fetch", "--ca-cert", p(reg.ca_cert()), &reference]), id);
}

#[test]
fn unsigned_untrusted_and_foreign_signatures_are_refused_and_leave_the_store_alone() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let img = or_skip!(app_image(&t.path().join("layout"), "v1"));
    let digest = reg.push(&img, "team/app:v1");
    let other = or_skip!(OciImage::new(&t.path().join("other"), "v1")).layer(&[("x", b"x\n")]);
    let other_digest = reg.push(&other, "team/other:v1");
    let pod = Pod::new();
    let ca = p(reg.ca_cert()).to_owned();
    let reference = reg.docker_ref("team/app:v1");

    // Unsigned.
    let key = or_skip!(trusted_cosign(&pod, &t.path().join("keys"), &format!("{}/team/", reg.host())));
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", "--ca-cert", &ca, &reference], EXIT_VERIFICATION);
    assert_mentions(&err, &["not signed", "team/app", "--insecure-options=image"]);
    pod.assert_untouched(&before, "after an unsigned image");
    let cosign_refuses = |what: &str| {
        let out = cosign_verify(&key.public, &reg.image_ref("team/app:v1"), &reg);
        assert!(!out.status.success(), "cosign verify accepted what pod refused ({what})");
    };
    cosign_refuses("unsigned");

    // Signed by a key trusted only for another prefix.
    let stranger = cosign_generate_key_pair(&t.path().join("stranger"), "pw").unwrap();
    pod.ok(&["trust", "add", "--prefix", "example.com/", p(&stranger.public)]);
    cosign_sign(&stranger, &reg.image_ref(&format!("team/app@{digest}")), &reg);
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", "--ca-cert", &ca, &reference], EXIT_VERIFICATION);
    assert_mentions(&err, &["team/app", "example.com/"]);
    pod.assert_untouched(&before, "after a key trusted for another prefix");
    cosign_refuses("signed by another key");

    // A valid signature of another image, copied to this one's tag.
    cosign_sign(&key, &reg.image_ref(&format!("team/other@{other_digest}")), &reg);
    let (status, sig) =
        reg.get(&format!("/v2/team/other/manifests/{}", cosign_sig_tag(&other_digest)), OCI_MANIFEST, "");
    assert_eq!(status, 200);
    // Its blobs (config, payloads) live in team/other: copy them first.
    let manifest: Value = serde_json::from_slice(&sig).unwrap();
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()));
    for d in digests {
        reg.put_blob("team/app", &fs::read(reg.blob_path(&d)).unwrap());
    }
    let (status, body) = reg.put_manifest("team/app", &cosign_sig_tag(&digest), OCI_MANIFEST, &sig);
    assert!(status < 300, "{status} {body}");
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", "--ca-cert", &ca, &reference], EXIT_VERIFICATION);
    assert_mentions_any(&err, &["team/other", &other_digest]);
    pod.assert_untouched(&before, "after a signature of another image");
    cosign_refuses("a signature of another image");

    // --insecure-options=image lets it in, loudly, and it is listed so.
    let out = pod.run(&["fetch", "--ca-cert", &ca, "--insecure-options=image", &reference]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["NOT verified"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(image_json(&pod, &id)["signer"].is_null());
    assert_mentions(&pod.ok(&["image", "list"]), &["INSECURE"]);
}

#[test]
fn images_sharing_base_layers_store_and_render_them_once_even_when_pulled_concurrently() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let base = or_skip!(or_skip!(OciImage::new(&t.path().join("layout"), "base")).busybox());
    let a = OciImage::based_on(&base, "a").layer(&[("a.txt", b"a\n")]);
    let b = OciImage::based_on(&base, "b").layer(&[("b.txt", b"b\n")]);
    assert_eq!(a.layer_digests()[0], b.layer_digests()[0], "both start from the same busybox layer");
    reg.push(&a, "team/a:v1");
    reg.push(&b, "team/b:v1");
    let pod = Pod::new();
    let ca = p(reg.ca_cert()).to_owned();
    let refs = [reg.docker_ref("team/a:v1"), reg.docker_ref("team/b:v1")];
    let children: Vec<_> = (0..10)
        .map(|i| {
            pod.cmd(&["fetch", "--ca-cert", &ca, "--insecure-options=image", &refs[i % 2]])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let blobs: Vec<_> = fs::read_dir(pod.data.join("blobs/sha256")).unwrap().flatten().collect();
    let layers: Vec<_> = fs::read_dir(pod.data.join("layers")).unwrap().flatten().collect();
    // busybox + a.txt + b.txt.
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    assert_eq!(layers.len(), 3, "{layers:?}");
    assert_eq!(pod.image_dirs().len(), 2);
    assert!(pod.tmp_entries().is_empty(), "{:?}", pod.tmp_entries());
    pod.ok(&["image", "verify"]);

    // rm one: its own layer goes at gc, the shared one stays.
    pod.ok(&["image", "rm", &format!("{}/team/a:v1", reg.host())]);
    pod.ok(&["image", "gc"]);
    assert_eq!(fs::read_dir(pod.data.join("blobs/sha256")).unwrap().count(), 2);
    assert_eq!(fs::read_dir(pod.data.join("layers")).unwrap().count(), 2);
    pod.ok(&["image", "verify"]);
}

#[test]
fn token_auth_self_signed_certificates_and_plain_http() {
    let t = tmp();
    // Token auth: credentials from an auth.json reach the token server.
    let reg = or_skip!(Registry::start(&t.path().join("tok"), RegistryOpts::https().token_auth()));
    let img = or_skip!(OciImage::new(&t.path().join("layout"), "v1")).layer(&[("x", b"x\n")]);
    reg.push(&img, "team/x:v1");
    let pod = Pod::new();
    let reference = reg.docker_ref("team/x:v1");
    let ca = p(reg.ca_cert()).to_owned();
    let err = pod.fails(
        &["fetch", "--ca-cert", &ca, "--insecure-options=image", "--authfile", "/nonexistent", &reference],
        EXIT_NETWORK,
    );
    assert_mentions_any(&err, &["401", "denied", "unauthorized", "credentials", "anonymous"]);
    pod.ok(&["fetch", "--ca-cert", &ca, "--insecure-options=image", "--authfile", p(reg.auth_json()), &reference]);
    let tokens = reg.token_requests();
    assert!(tokens.iter().any(|r| r.authorization.as_deref() == Some(reg.basic_auth_header().as_str())), "{tokens:?}");

    // A registry's own self-signed certificate as --ca-cert.
    let ss = or_skip!(Registry::start(&t.path().join("ss"), RegistryOpts::self_signed()));
    ss.push(&img, "team/x:v1");
    let reference = ss.docker_ref("team/x:v1");
    let err = pod.fails(&["fetch", "--insecure-options=image", &reference], EXIT_NETWORK);
    assert_mentions(&err, &[&ss.host(), "--ca-cert"]);
    pod.ok(&["fetch", "--insecure-options=image", "--ca-cert", p(ss.ca_cert()), &reference]);

    // Plain http only when asked for.
    let plain = or_skip!(Registry::start(&t.path().join("plain"), RegistryOpts::http()));
    plain.push(&img, "team/x:v1");
    let reference = plain.docker_ref("team/x:v1");
    pod.fails(&["fetch", "--insecure-options=image", &reference], EXIT_NETWORK);
    pod.ok(&["fetch", "--insecure-options=image,http", &reference]);
}

#[test]
fn layouts_and_archives_need_a_detached_signature_or_insecure() {
    let t = tmp();
    let img = or_skip!(app_image(&t.path().join("layout"), "v1"));
    let pod = Pod::new();
    let layout = format!("oci:{}:v1", img.layout().display());
    let before = pod.snapshot();
    let err = pod.fails(&["fetch", &layout], EXIT_VERIFICATION);
    assert_mentions(&err, &["--signature", "--insecure-options=image"]);
    pod.assert_untouched(&before, "after an unsigned layout");

    // Signed detached: `cosign generate` writes the payload, `cosign
    // sign-blob` signs it; the name is the payload's docker-reference.
    let key = or_skip!(trusted_cosign(&pod, &t.path().join("keys"), "example.com/team/"));
    let payload = t.path().join("payload.json");
    let out = std::process::Command::new(cosign_bin().unwrap())
        .args(["generate", &format!("example.com/team/app@{}", img.manifest_digest())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(&payload, &out.stdout).unwrap();
    let sig = t.path().join("payload.json.sig");
    let out = std::process::Command::new(cosign_bin().unwrap())
        .args([
            "sign-blob",
            "--yes",
            "--tlog-upload=false",
            "--key",
            p(&key.key),
            "--output-signature",
            p(&sig),
            p(&payload),
        ])
        .env("COSIGN_PASSWORD", &key.password)
        .env("HOME", t.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = pod.ok(&["fetch", "--signature", p(&sig), &layout]);
    assert_eq!(image_json(&pod, &id)["name"], "example.com/team/app");

    // The same signature does not cover another image.
    let other = or_skip!(OciImage::new(&t.path().join("other"), "v1")).layer(&[("y", b"y\n")]);
    let before = pod.snapshot();
    pod.fails(&["fetch", "--signature", p(&sig), &format!("oci:{}:v1", other.layout().display())], EXIT_VERIFICATION);
    pod.assert_untouched(&before, "after a signature of another image");

    // Archives: oci-archive and docker-archive (insecure).
    let pod = Pod::new();
    let oa = img.oci_archive(&t.path().join("app.oci.tar"));
    let id_a = pod.ok(&["fetch", "--insecure-options=image", &format!("oci-archive:{}:v1", oa.display())]);
    assert_eq!(id_a, id, "an oci-archive holds the same manifest");
    let da = img.docker_archive(&t.path().join("app.docker.tar"), "example.com/team/app:v1");
    let id_d = pod.ok(&["fetch", "--insecure-options=image", &format!("docker-archive:{}", da.display())]);
    let m = image_json(&pod, &id_d);
    assert_eq!(m["name"], "example.com/team/app");
    assert_eq!(m["labels"]["version"], "v1");
    pod.ok(&["image", "verify"]);

    // Export round trip: pod's oci-archive fetches back to the same ID.
    let exported = t.path().join("exported.tar");
    pod.ok(&["image", "export", &id_a, p(&exported)]);
    let again = Pod::new();
    assert_eq!(again.ok(&["fetch", "--insecure-options=image", &format!("oci-archive:{}", exported.display())]), id_a);
}

#[test]
fn an_index_picks_the_platform_or_says_which_it_has() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let amd = or_skip!(OciImage::new(&t.path().join("multi"), "amd"))
        .layer(&[("arch", b"amd64\n")])
        .platform("linux", "amd64");
    let arm = or_skip!(OciImage::new(&t.path().join("multi"), "arm"))
        .layer(&[("arch", b"arm64\n")])
        .platform("linux", "arm64");
    let both = OciIndex::new("multi", &[&amd, &arm]);
    reg.push_ref(&both.reference(), "team/multi:v1");
    let only_arm = OciIndex::new("armonly", &[&arm]);
    reg.push_ref(&only_arm.reference(), "team/armonly:v1");
    let pod = Pod::new();
    let ca = p(reg.ca_cert()).to_owned();
    let id = pod.ok(&["fetch", "--ca-cert", &ca, "--insecure-options=image", &reg.docker_ref("team/multi:v1")]);
    assert_eq!(id, format!("sha256-{}", &amd.manifest_digest()["sha256:".len()..]));
    let id_arm = pod.ok(&[
        "fetch",
        "--ca-cert",
        &ca,
        "--insecure-options=image",
        "--platform",
        "linux/arm64",
        &reg.docker_ref("team/multi:v1"),
    ]);
    assert_eq!(id_arm, format!("sha256-{}", &arm.manifest_digest()["sha256:".len()..]));
    let before = pod.snapshot();
    let err = pod.fails(
        &["fetch", "--ca-cert", &ca, "--insecure-options=image", &reg.docker_ref("team/armonly:v1")],
        EXIT_INVALID,
    );
    assert_mentions(&err, &["linux/amd64", "linux/arm64", "--platform"]);
    pod.assert_untouched(&before, "after an index without the host's platform");
}

#[test]
fn a_source_maps_a_name_prefix_to_a_registry() {
    let t = tmp();
    let reg = or_skip!(Registry::start(&t.path().join("reg"), RegistryOpts::https()));
    let img = or_skip!(app_image(&t.path().join("layout"), "v1"));
    let digest = reg.push(&img, "team/app:2.0");
    let pod = Pod::new();
    let key = or_skip!(trusted_cosign(&pod, &t.path().join("keys"), &format!("{}/team/", reg.host())));
    cosign_sign(&key, &reg.image_ref(&format!("team/app@{digest}")), &reg);
    pod.ok(&[
        "source",
        "add",
        "--prefix",
        "example.com/",
        &format!("docker://{}/team/{{basename}}:{{version}}", reg.host()),
    ]);
    // The name resolves through the source; the signature is checked for
    // the registry's name, which the key is trusted for.
    let id = pod.ok(&["fetch", "--ca-cert", p(reg.ca_cert()), "example.com/app:2.0"]);
    assert_eq!(id, format!("sha256-{}", &digest["sha256:".len()..]));
    let file = pod.work.join("named.yaml");
    fs::write(&file, "name: named\nnetwork: none\napps:\n  - name: app\n    image: example.com/app:2.0\n").unwrap();
    let out = pod.run(&["run", "--ca-cert", p(reg.ca_cert()), p(&file)]);
    assert!(out.status.success(), "{}", describe(&["run", p(&file)], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stdout), &["greeting=hello from oci"]);
    pod.ok(&["gc"]);
}
