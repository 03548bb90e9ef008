//! Signing against an in-memory fake registry on 127.0.0.1: what is pushed,
//! where, and that nothing is when signing fails. Interop with the real
//! cosign and registry is in tests/tests/oci_sign.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::oci::registry::test_server::{serve, Req, Resp, Server};
use crate::oci::registry::{OCI_INDEX, OCI_MANIFEST};
use crate::trust::{Scope, TrustedKey};

const IMAGE_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[derive(Debug, Default)]
struct State {
    /// Reference (tag or digest) → (media type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    /// Answer 500 to GETs of this reference.
    broken: Option<String>,
}

/// A registry of repository `r` that stores what is pushed.
fn fake() -> (Server, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State::default()));
    let s = state.clone();
    let srv = serve(move |req: &Req| {
        let mut st = s.lock().expect("state");
        let path = req.path.as_str();
        let unknown = |code: &str| Resp::new(404).body(format!(r#"{{"errors":[{{"code":"{code}"}}]}}"#));
        match req.method.as_str() {
            "GET" | "HEAD" if path.starts_with("/v2/r/manifests/") => {
                let reference = &path["/v2/r/manifests/".len()..];
                if st.broken.as_deref() == Some(reference) {
                    return Resp::new(500).body("boom");
                }
                match st.manifests.get(reference) {
                    Some((mt, b)) => Resp::new(200)
                        .header("Content-Type", mt)
                        .header("Docker-Content-Digest", &Digest::sha256(b).to_string())
                        .body(b.clone()),
                    None => unknown("MANIFEST_UNKNOWN"),
                }
            }
            "HEAD" if path.starts_with("/v2/r/blobs/") => {
                if st.blobs.contains_key(&path["/v2/r/blobs/".len()..]) {
                    Resp::new(200)
                } else {
                    Resp::new(404)
                }
            }
            "GET" if path.starts_with("/v2/r/blobs/") => match st.blobs.get(&path["/v2/r/blobs/".len()..]) {
                Some(b) => Resp::new(200).body(b.clone()),
                None => unknown("BLOB_UNKNOWN"),
            },
            "POST" if path == "/v2/r/blobs/uploads/" => Resp::new(202).header("Location", "/v2/r/blobs/uploads/u1"),
            "PUT" if path.starts_with("/v2/r/blobs/uploads/u1?digest=") => {
                let digest = path["/v2/r/blobs/uploads/u1?digest=".len()..].replace("%3A", ":");
                st.blobs.insert(digest, req.body.clone());
                Resp::new(201)
            }
            "PUT" if path.starts_with("/v2/r/manifests/") => {
                let reference = path["/v2/r/manifests/".len()..].to_owned();
                let mt = req.header("content-type").unwrap_or_default().to_owned();
                let digest = Digest::sha256(&req.body).to_string();
                st.manifests.insert(digest.clone(), (mt.clone(), req.body.clone()));
                st.manifests.insert(reference, (mt, req.body.clone()));
                Resp::new(201).header("Docker-Content-Digest", &digest)
            }
            _ => Resp::new(400),
        }
    });
    (srv, state)
}

fn put(state: &Arc<Mutex<State>>, reference: &str, media_type: &str, bytes: &[u8]) -> String {
    let digest = Digest::sha256(bytes).to_string();
    let mut st = state.lock().expect("state");
    st.manifests.insert(reference.to_owned(), (media_type.to_owned(), bytes.to_vec()));
    st.manifests.insert(digest.clone(), (media_type.to_owned(), bytes.to_vec()));
    digest
}

fn signer() -> Signer {
    let key = CosignPrivateKey::generate().expect("key");
    let opts = ClientOptions {
        plain_http: true,
        auth_file: Some(PathBuf::from("/nonexistent/auth.json")),
        ..ClientOptions::default()
    };
    Signer::new(key, opts)
}

fn reference(srv: &Server, r: &str) -> Reference {
    Reference::parse(&format!("127.0.0.1:{}/{r}", srv.port)).expect("reference")
}

/// The (payload, signature) pairs at the signature tag of `digest`.
fn signatures(state: &Arc<Mutex<State>>, digest: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let st = state.lock().expect("state");
    let tag = sigstore::signature_tag(digest).expect("tag");
    let (mt, bytes) = st.manifests.get(&tag).expect("signature manifest");
    assert_eq!(mt, OCI_MANIFEST);
    let layers = sigstore::parse_signature_manifest(bytes, "r").expect("parse");
    layers.into_iter().map(|l| (st.blobs.get(&l.digest).expect("payload pushed").clone(), l.signature)).collect()
}

fn trusted(s: &Signer, prefix: &str) -> TrustedKey {
    TrustedKey { scope: Scope::prefix(prefix).expect("scope"), key: s.key.public_key() }
}

fn writes(srv: &Server) -> Vec<String> {
    srv.requests().into_iter().filter(|r| r.method == "PUT" || r.method == "POST").map(|r| r.path).collect()
}

#[test]
fn signs_the_digest_the_tag_names_and_pushes_what_verifies() {
    let (srv, state) = fake();
    let digest = put(&state, "v1", OCI_MANIFEST, IMAGE_MANIFEST.as_bytes());
    let s = signer();
    let image = reference(&srv, "r:v1");
    let signed = s.sign(&image).expect("sign");
    assert_eq!(signed.digest, digest);
    assert!(signed.added);
    assert_eq!(signed.signature_tag, format!("{}.sig", digest.replace(':', "-")));
    assert_eq!(signed.image, format!("127.0.0.1:{}/r:v1", srv.port));

    let sigs = signatures(&state, &digest);
    assert_eq!(sigs.len(), 1);
    let name = format!("127.0.0.1:{}/r", srv.port);
    assert_eq!(sigs[0].0, sigstore::simple_signing_payload(&name, &digest), "the payload names the repository");
    let v = sigstore::verify(&name, &digest, &[trusted(&s, &name)], &sigs).expect("verifies");
    assert_eq!(&v.key_id, s.key_id());
    let st = state.lock().expect("state");
    assert_eq!(Digest::sha256(&st.manifests[&signed.signature_tag].1).to_string(), signed.signature_manifest);
}

#[test]
fn a_second_key_appends_and_signing_again_pushes_nothing() {
    let (srv, state) = fake();
    let digest = put(&state, "v1", OCI_MANIFEST, IMAGE_MANIFEST.as_bytes());
    let image = reference(&srv, "r:v1");
    let name = format!("127.0.0.1:{}/r", srv.port);
    let (a, b) = (signer(), signer());
    a.sign(&image).expect("sign with a");
    let first = signatures(&state, &digest);
    assert!(b.sign(&image).expect("sign with b").added);
    let both = signatures(&state, &digest);
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], first[0], "the first signature is kept as it was");
    for k in [&a, &b] {
        let v = sigstore::verify(&name, &digest, &[trusted(k, &name)], &both).expect("each key verifies");
        assert_eq!(&v.key_id, k.key_id());
    }

    let before = writes(&srv).len();
    let again = a.sign(&image).expect("sign again");
    assert!(!again.added);
    assert_eq!(writes(&srv).len(), before, "nothing pushed for a signature already there");
    assert_eq!(signatures(&state, &digest).len(), 2);
}

#[test]
fn an_index_tag_signs_the_index_and_a_pinned_digest_signs_itself() {
    let (srv, state) = fake();
    let manifest_digest = put(&state, "m", OCI_MANIFEST, IMAGE_MANIFEST.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":{}}}]}}"#,
        IMAGE_MANIFEST.len()
    );
    let index_digest = put(&state, "multi", OCI_INDEX, index.as_bytes());
    let s = signer();
    assert_eq!(s.sign(&reference(&srv, "r:multi")).expect("sign index").digest, index_digest);
    let pinned = s.sign(&reference(&srv, &format!("r@{manifest_digest}"))).expect("sign by digest");
    assert_eq!(pinned.digest, manifest_digest);
    assert_eq!(signatures(&state, &index_digest).len(), 1);
    assert_eq!(signatures(&state, &manifest_digest).len(), 1);
}

#[test]
fn a_missing_image_is_not_found_and_nothing_is_pushed() {
    let (srv, _state) = fake();
    let e = signer().sign(&reference(&srv, "r:nope")).expect_err("no such tag");
    assert_eq!(e.exit(), Exit::NotFound, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{}/r:nope", srv.port)), "names the image: {msg}");
    assert!(writes(&srv).is_empty(), "{:?}", writes(&srv));
}

#[test]
fn a_registry_error_reading_signatures_stops_before_any_push() {
    let (srv, state) = fake();
    let digest = put(&state, "v1", OCI_MANIFEST, IMAGE_MANIFEST.as_bytes());
    state.lock().expect("state").broken = sigstore::signature_tag(&digest);
    let e = signer().sign(&reference(&srv, "r:v1")).expect_err("500");
    assert_eq!(e.exit(), Exit::Network, "{e}");
    assert!(e.to_string().contains("reading its signatures"), "{e}");
    assert!(writes(&srv).is_empty(), "{:?}", writes(&srv));
}

#[test]
fn a_garbage_signature_manifest_is_refused_not_overwritten() {
    let (srv, state) = fake();
    let digest = put(&state, "v1", OCI_MANIFEST, IMAGE_MANIFEST.as_bytes());
    let tag = sigstore::signature_tag(&digest).expect("tag");
    put(&state, &tag, OCI_MANIFEST, b"{not json");
    let e = signer().sign(&reference(&srv, "r:v1")).expect_err("garbage");
    assert_eq!(e.exit(), Exit::InvalidInput, "{e}");
    assert!(writes(&srv).is_empty(), "{:?}", writes(&srv));
}

#[test]
fn docker_reference_is_what_cosign_writes() {
    let r = |s: &str| Reference::parse(s).expect("reference");
    assert_eq!(docker_reference(&r("busybox:1")), "index.docker.io/library/busybox");
    let pinned = format!("docker.io/foo/bar@sha256:{}", "0".repeat(64));
    assert_eq!(docker_reference(&r(&pinned)), "index.docker.io/foo/bar");
    assert_eq!(docker_reference(&r("127.0.0.1:5000/team/web:v1")), "127.0.0.1:5000/team/web");
}

#[test]
fn targets_are_registry_images_or_aci_files() {
    assert_eq!(SignTarget::parse("img.aci"), Ok(SignTarget::Aci(PathBuf::from("img.aci"))));
    assert!(matches!(SignTarget::parse("docker://127.0.0.1:5000/a/b:v1"), Ok(SignTarget::Registry(_))));
    let e = SignTarget::parse("oci:/srv/layout:v1").expect_err("layouts have nowhere to attach a signature");
    assert!(e.contains("registry"), "{e}");
}
