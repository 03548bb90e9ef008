//! `pod image sign` of images in a real registry (Debian's docker-registry
//! over TLS from the test CA), judged by the real cosign (`cosign verify
//! --key`, offline) and by pod's own fetch. Each test SKIPs visibly when
//! cosign, the registry, umoci or skopeo is missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::Value;

const EXIT_VERIFICATION: i32 = 3;
const EXIT_NOT_FOUND: i32 = 4;
const REPO: &str = "app/hello";

/// A registry holding a one-layer image at `app/hello:v1`; its digest.
struct Setup {
    pod: Pod,
    reg: Registry,
    digest: String,
}

fn setup() -> Result<Setup, Skip> {
    cosign_bin()?;
    let pod = Pod::new();
    let reg = Registry::start(&pod.work.join("registry"), RegistryOpts::https())?;
    let img = OciImage::new(&pod.work.join("layout"), "v1")?
        .layer(&[("hello", b"hello from a signed image\n")])
        .entrypoint(&["/hello"]);
    let digest = reg.push(&img, &format!("{REPO}:v1"));
    Ok(Setup { pod, reg, digest })
}

impl Setup {
    /// `pod image sign --key KEY docker://HOST/REFERENCE` with the registry's
    /// CA and auth file, `password` in COSIGN_PASSWORD.
    fn sign(&self, key: &Path, password: &str, reference: &str) -> Output {
        self.pod
            .cmd(&[
                "image",
                "sign",
                "--key",
                p(key),
                "--ca-cert",
                p(self.reg.ca_cert()),
                "--authfile",
                p(self.reg.auth_json()),
                &self.reg.docker_ref(reference),
            ])
            .env("COSIGN_PASSWORD", password)
            .output()
            .unwrap()
    }

    fn sign_ok(&self, key: &Path, password: &str) -> String {
        let out = self.sign(key, password, &format!("{REPO}:v1"));
        assert!(out.status.success(), "{}", describe(&["image", "sign"], &out));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(stdout, self.digest, "prints the digest the tag names");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `cosign verify --key PUB HOST/app/hello:v1`.
    fn cosign_verify(&self, public: &Path) -> Output {
        cosign_verify(public, &self.reg.image_ref(&format!("{REPO}:v1")), &self.reg)
    }

    fn assert_cosign_verifies(&self, public: &Path) {
        let out = self.cosign_verify(public);
        assert!(
            out.status.success(),
            "cosign verify --key {}: {}",
            public.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let payloads: Value = serde_json::from_slice(&out.stdout).unwrap();
        let critical = &payloads[0]["critical"];
        assert_eq!(critical["image"]["docker-manifest-digest"], self.digest.as_str(), "{payloads}");
        assert_eq!(critical["identity"]["docker-reference"], self.reg.image_ref(REPO), "{payloads}");
    }

    /// The layers of the signature manifest, as the registry serves it.
    fn signature_layers(&self) -> Vec<Value> {
        let sig = self.reg.inspect(&format!("{REPO}:{}", cosign_sig_tag(&self.digest)), true);
        assert_eq!(sig["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{sig}");
        sig["layers"].as_array().unwrap().clone()
    }

    /// The registry's status for the signature tag (404: nothing pushed).
    fn signature_status(&self) -> u16 {
        let path = format!("/v2/{REPO}/manifests/{}", cosign_sig_tag(&self.digest));
        self.reg.get(&path, OCI_MANIFEST, "").0
    }
}

/// `pod key gen --format cosign --out DIR` with `password`: (key, pub, ID).
fn pod_cosign_key(pod: &Pod, dir: &Path, password: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let out = pod.cmd(&["key", "gen", "--format", "cosign", "--out", p(dir)]).env("COSIGN_PASSWORD", password).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", describe(&["key", "gen"], &out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (dir.join("cosign.key"), dir.join("cosign.pub"), id)
}

#[test]
fn cosign_verifies_what_pod_signs_with_a_cosign_made_key() {
    let s = or_skip!(setup());
    let key = cosign_generate_key_pair(&s.pod.work.join("cosign"), "cosign-made").unwrap();
    assert!(!s.cosign_verify(&key.public).status.success(), "cosign verified an unsigned image");
    assert_eq!(s.signature_status(), 404);

    let stderr = s.sign_ok(&key.key, &key.password);
    assert_mentions(&stderr, &[&s.digest, "with key", &cosign_sig_tag(&s.digest)]);
    s.assert_cosign_verifies(&key.public);
    let layers = s.signature_layers();
    assert_eq!(layers.len(), 1, "{layers:?}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
    assert!(layers[0]["annotations"]["dev.cosignproject.cosign/signature"].is_string(), "{layers:?}");
}

#[test]
fn pod_made_keys_sign_and_signatures_append_with_cosigns_own() {
    let s = or_skip!(setup());
    let (key_a, pub_a, id_a) = pod_cosign_key(&s.pod, &s.pod.work.join("a"), "pw-a");
    let (key_b, pub_b, id_b) = pod_cosign_key(&s.pod, &s.pod.work.join("b"), "pw-b");

    assert_mentions(&s.sign_ok(&key_a, "pw-a"), &[&id_a]);
    s.assert_cosign_verifies(&pub_a);
    assert_mentions(&s.sign_ok(&key_b, "pw-b"), &[&id_b]);
    assert_eq!(s.signature_layers().len(), 2, "the second signature is appended");
    s.assert_cosign_verifies(&pub_a);
    s.assert_cosign_verifies(&pub_b);

    // Signing again with a key that signed adds nothing (ECDSA with RFC 6979
    // nonces gives the same signature).
    assert_mentions(&s.sign_ok(&key_a, "pw-a"), &["nothing pushed"]);
    assert_eq!(s.signature_layers().len(), 2);

    // cosign appends to what pod wrote, and pod to what cosign wrote.
    let c = cosign_generate_key_pair(&s.pod.work.join("c"), "pw-c").unwrap();
    cosign_sign(&c, &s.reg.image_ref(&format!("{REPO}@{}", s.digest)), &s.reg);
    let (key_d, pub_d, _) = pod_cosign_key(&s.pod, &s.pod.work.join("d"), "pw-d");
    s.sign_ok(&key_d, "pw-d");
    assert_eq!(s.signature_layers().len(), 4);
    for public in [&pub_a, &pub_b, &c.public, &pub_d] {
        s.assert_cosign_verifies(public);
    }
}

#[test]
fn cosign_refuses_a_key_that_did_not_sign() {
    let s = or_skip!(setup());
    let (key_a, _, _) = pod_cosign_key(&s.pod, &s.pod.work.join("a"), "pw-a");
    let other = cosign_generate_key_pair(&s.pod.work.join("other"), "pw-other").unwrap();
    s.sign_ok(&key_a, "pw-a");
    let out = s.cosign_verify(&other.public);
    assert!(
        !out.status.success(),
        "cosign verified with a key that did not sign:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_wrong_password_or_a_missing_image_pushes_nothing() {
    let s = or_skip!(setup());
    let (key, _, _) = pod_cosign_key(&s.pod, &s.pod.work.join("a"), "right");
    let image = s.reg.docker_ref(&format!("{REPO}:v1"));

    let out = s.sign(&key, "wrong", &format!("{REPO}:v1"));
    assert_eq!(out.status.code(), Some(EXIT_VERIFICATION), "{}", describe(&["image", "sign"], &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(&stderr, &["wrong password", "COSIGN_PASSWORD", &image, p(&key)]);
    assert!(out.stdout.is_empty());
    assert_eq!(s.signature_status(), 404, "a signature tag appeared after a wrong password");

    let out = s.sign(&key, "right", &format!("{REPO}:nope"));
    assert_eq!(out.status.code(), Some(EXIT_NOT_FOUND), "{}", describe(&["image", "sign"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &[&s.reg.image_ref(&format!("{REPO}:nope")), "not found"]);
    assert_eq!(s.signature_status(), 404);

    // ACI files and registry images need different keys: not both at once.
    s.pod.fails(&["image", "sign", "--key", p(&key), "some.aci", &image], 2);
}

#[test]
fn pod_fetch_verifies_what_pod_signs() {
    let s = or_skip!(setup());
    let (key, public, id) = pod_cosign_key(&s.pod, &s.pod.work.join("a"), "pw");
    let name = s.reg.image_ref(REPO);
    let image = s.reg.docker_ref(&format!("{REPO}:v1"));
    s.pod.ok(&["trust", "add", "--prefix", &name, p(&public)]);
    let fetch = ["fetch", "--ca-cert", p(s.reg.ca_cert()), "--authfile", p(s.reg.auth_json()), &image];

    let err = s.pod.fails(&fetch, EXIT_VERIFICATION);
    assert_mentions(&err, &["not signed"]);

    s.sign_ok(&key, "pw");
    s.pod.ok(&fetch);
    let list = s.pod.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], s.digest.as_str(), "{list:?}");
    assert_eq!(list[0]["signer"], id.as_str(), "{list:?}");
}

#[test]
fn token_auth_registries_take_the_auth_files_credentials_for_the_push() {
    or_skip!(cosign_bin());
    let pod = Pod::new();
    let reg = or_skip!(Registry::start(&pod.work.join("registry"), RegistryOpts::https().token_auth()));
    let img = or_skip!(OciImage::new(&pod.work.join("layout"), "v1")).layer(&[("hello", b"private\n")]);
    let digest = reg.push(&img, &format!("{REPO}:v1"));
    let (key, public, _) = pod_cosign_key(&pod, &pod.work.join("a"), "pw");
    let no_creds = pod.work.join("no-creds.json");
    std::fs::write(&no_creds, r#"{"auths":{}}"#).unwrap();
    let image = reg.docker_ref(&format!("{REPO}:v1"));
    let sign = |auth: &Path| {
        let args = ["image", "sign", "--key", p(&key), "--ca-cert", p(reg.ca_cert()), "--authfile", p(auth), &image];
        pod.cmd(&args).env("COSIGN_PASSWORD", "pw").output().unwrap()
    };

    let out = sign(&no_creds);
    assert!(!out.status.success(), "signed without credentials: {}", describe(&["image", "sign"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &[&reg.image_ref(&format!("{REPO}:v1"))]);

    let out = sign(reg.auth_json());
    assert!(out.status.success(), "{}", describe(&["image", "sign"], &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let verified = cosign_verify(&public, &reg.image_ref(&format!("{REPO}:v1")), &reg);
    assert!(verified.status.success(), "cosign verify: {}", String::from_utf8_lossy(&verified.stderr));
}
