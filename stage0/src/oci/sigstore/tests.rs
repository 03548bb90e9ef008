//! Fixed vectors (made with cosign v2.6.5) and interop with a real `cosign`
//! binary, which report `SKIP: cosign not found` when there is none.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::*;
use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{KeyKind, PublicKey};
use crate::trust::{Scope, TrustedKey};

const IMAGE: &str = "127.0.0.1:5000/team/web";
const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const OTHER_DIGEST: &str = "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

/// `COSIGN_PASSWORD=x cosign generate-key-pair` (cosign v2.6.5).
const COSIGN_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiIzVUR1S0Fza3ZNdE5JZDJKRS9QQk5PVEswRzhpT1Vt
am9Fa2ZOUEZ5MzdjPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJUMHNHbmxrWXJVN0tKblFzbWpHU2xQSnVJZEt2V0pNbiJ9LCJj
aXBoZXJ0ZXh0IjoiUDlOWnU3ME9ES0s4RThMVlQ5OUpWY2dUTHBhZ2FMQkc3ZmVD
cXA1U01jU0cyUTZ1azRlMmhnWEplRHpGM3E2bHRlYmd3OHJ2QUhsRG1aSjJ4d3I5
VGFFZEJ3Y1VYd1JCOE0rOWVIRXZ3dkJiellEay90MkpydEQzRUQvK3A4MmpxRFFm
eHB2ZmF0enpyblkyTTR5Szl1WlhVeGRnaXJGMnZ4Q2dpL3BSQ1N1ZllibktBZFU3
d01FNzNQTDl4YjliNnplUXp0bmJqMmVCb2c9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";
const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMxbOrxFH/fZvjcoW9HfmYQrxL7Wh
p2JytzYuk+ydpNZ3WXrGq701ExqulCuqlLufuIqHVrNH3opEYdoTDtDMRQ==
-----END PUBLIC KEY-----
";
/// `cosign sign-blob --key cosign.key` of `simple_signing_payload(IMAGE, DIGEST)`.
const COSIGN_SIG: &str =
    "MEUCIHG41GwlME3+pHkHqC4WvOaak2jQdoO2QOY6WZ+zZpW0AiEAm7mNig85Agpf14mVdADrha5aCAYHDusCL0AMIyG/8bk=";

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn trusted(prefix: &str, pem: &str) -> TrustedKey {
    let scope = if prefix.is_empty() { Scope::Root } else { ok(Scope::prefix(prefix)) };
    TrustedKey { scope, key: ok(PublicKey::parse(pem, Path::new("test.pub"))) }
}

fn sig_bytes(b64: &str) -> Vec<u8> {
    ok(B64.decode(b64))
}

#[test]
fn payload_is_cosigns() {
    let expected = format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{IMAGE}\"}},\"image\":{{\"docker-manifest-digest\":\"{DIGEST}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
    );
    assert_eq!(String::from_utf8(simple_signing_payload(IMAGE, DIGEST)).ok(), Some(expected));
    assert_eq!(signature_tag(DIGEST).as_deref(), Some(&format!("sha256-{}.sig", &DIGEST[7..])[..]));
    assert_eq!(signature_tag("sha256:ABC"), None);
}

#[test]
fn cosign_key_vector_loads_and_verifies() {
    let key = ok(CosignPrivateKey::parse(COSIGN_KEY, b"x", Path::new("cosign.key")));
    let public = ok(PublicKey::parse(COSIGN_PUB, Path::new("cosign.pub")));
    assert_eq!(key.public_key().id, public.id);
    assert_eq!(key.public_key().to_file_text(), COSIGN_PUB);
    let err = CosignPrivateKey::parse(COSIGN_KEY, b"y", Path::new("/k/cosign.key")).err();
    let err = err.unwrap_or_else(|| panic!("wrong password accepted"));
    assert!(matches!(err, CosignKeyError::WrongPassword { .. }));
    assert!(err.to_string().contains("/k/cosign.key") && err.to_string().contains("COSIGN_PASSWORD"), "{err}");
    let v1 = COSIGN_KEY.replace("SIGSTORE", "COSIGN");
    assert!(CosignPrivateKey::parse(&v1, b"x", Path::new("old.key")).is_ok(), "cosign v1 label");
    let payload = simple_signing_payload(IMAGE, DIGEST);
    let keys = [trusted("127.0.0.1:5000/team/", COSIGN_PUB)];
    let v = ok(verify(IMAGE, DIGEST, &keys, &[(payload.clone(), sig_bytes(COSIGN_SIG))]));
    assert_eq!(v.key_id, public.id);
    // And a signature pod makes with cosign's key verifies the same way.
    let mine = sign(&key, &payload);
    assert_eq!(ok(verify(IMAGE, DIGEST, &keys, &[(payload, sig_bytes(&mine))])).key_id, public.id);
}

#[test]
fn encrypted_key_round_trip_and_file_rules() {
    let dir = ok(tempfile::tempdir());
    let key = ok(CosignPrivateKey::generate());
    let public = ok(key.write_pair(dir.path(), b"secret"));
    let key_path = dir.path().join("cosign.key");
    let mode = fs::metadata(&key_path).map(|m| m.permissions().mode() & 0o777).ok();
    assert_eq!(mode, Some(0o600));
    let text = ok(fs::read_to_string(&key_path));
    assert!(text.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"), "{text}");
    let (_, body) = ok(p256::pkcs8::der::pem::decode_vec(text.as_bytes()));
    let json: serde_json::Value = ok(serde_json::from_slice(&body));
    assert_eq!(json["kdf"]["name"], "scrypt");
    assert_eq!(json["kdf"]["params"], serde_json::json!({"N": 65536, "r": 8, "p": 1}));
    assert_eq!(json["cipher"]["name"], "nacl/secretbox");
    assert_eq!(json["kdf"]["salt"].as_str().map(|s| B64.decode(s).map(|b| b.len()).ok()), Some(Some(32)));
    assert_eq!(json["cipher"]["nonce"].as_str().map(|s| B64.decode(s).map(|b| b.len()).ok()), Some(Some(24)));
    let loaded = ok(CosignPrivateKey::load(&key_path, b"secret"));
    assert_eq!(loaded.public_key().id, public.id);
    let pub_loaded = ok(PublicKey::load(&dir.path().join("cosign.pub")));
    assert_eq!((pub_loaded.kind(), pub_loaded.id), (KeyKind::EcdsaP256, public.id.clone()));
    assert!(matches!(CosignPrivateKey::load(&key_path, b"wrong"), Err(CosignKeyError::WrongPassword { .. })));
    ok(fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)));
    let err = CosignPrivateKey::load(&key_path, b"secret").err().unwrap_or_else(|| panic!("0640 key accepted"));
    assert_eq!(err.exit(), Exit::InvalidInput);
    assert!(err.to_string().contains("cosign.key"), "{err}");
    assert!(matches!(key.write_pair(dir.path(), b""), Err(CosignKeyError::Exists { .. })));
    // An empty password, given explicitly, works as with cosign.
    let empty = ok(tempfile::tempdir());
    ok(key.write_pair(empty.path(), b""));
    assert!(CosignPrivateKey::load(&empty.path().join("cosign.key"), b"").is_ok());
    assert_eq!(ok(password(Some("".into()), true)).as_slice(), b"");
}

#[test]
fn verify_failures_are_distinct() {
    let key = ok(CosignPrivateKey::parse(COSIGN_KEY, b"x", Path::new("cosign.key")));
    let other = ok(CosignPrivateKey::generate());
    let other_pub = other.public_key().to_file_text();
    let team = trusted("127.0.0.1:5000/team/", COSIGN_PUB);
    let payload = simple_signing_payload(IMAGE, DIGEST);
    let good = sig_bytes(&sign(&key, &payload));
    let check = |keys: &[TrustedKey], pairs: &[(Vec<u8>, Vec<u8>)]| {
        let e = verify(IMAGE, DIGEST, keys, pairs).err().unwrap_or_else(|| panic!("verified"));
        assert_eq!(e.exit(), Exit::Verification, "{e}");
        assert!(e.to_string().contains(IMAGE), "{e}");
        e
    };
    let none: &[(Vec<u8>, Vec<u8>)] = &[];
    assert!(matches!(check(std::slice::from_ref(&team), none), SignatureError::Unsigned { .. }));
    // Tampered payload (one byte of the digest changed).
    let mut tampered = payload.clone();
    let at = tampered.len() - 30;
    tampered[at] ^= 1;
    let e = check(std::slice::from_ref(&team), &[(tampered, good.clone())]);
    assert!(matches!(e, SignatureError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains(team.key.id.as_str()), "{e}");
    // Validly signed, but for another digest: both named.
    let for_other = simple_signing_payload(IMAGE, OTHER_DIGEST);
    let e = check(std::slice::from_ref(&team), &[(for_other.clone(), sig_bytes(&sign(&key, &for_other)))]);
    assert!(matches!(e, SignatureError::WrongDigest { .. }), "{e}");
    assert!(e.to_string().contains(DIGEST) && e.to_string().contains(OTHER_DIGEST), "{e}");
    // Validly signed for another repository (and a name that only shares a prefix).
    for name in ["127.0.0.1:5000/team/db", "127.0.0.1:5000/team/webx", "127.0.0.1:5000/team/web/x"] {
        let p = simple_signing_payload(name, DIGEST);
        let e = check(std::slice::from_ref(&team), &[(p.clone(), sig_bytes(&sign(&key, &p)))]);
        assert!(matches!(e, SignatureError::WrongName { .. }), "{e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    // Signed by a key trusted only for another prefix: named, with that prefix.
    let elsewhere = trusted("127.0.0.1:5000/other/", &other_pub);
    let by_other = sig_bytes(&sign(&other, &payload));
    let e = check(&[team.clone(), elsewhere.clone()], &[(payload.clone(), by_other.clone())]);
    assert!(matches!(e, SignatureError::NotTrustedForName { .. }), "{e}");
    assert!(e.to_string().contains(elsewhere.key.id.as_str()) && e.to_string().contains("127.0.0.1:5000/other/"));
    // Signed by a key not in the store at all.
    let e = check(std::slice::from_ref(&team), &[(payload.clone(), by_other.clone())]);
    assert!(matches!(e, SignatureError::BadSignature { .. }), "{e}");
    // No key trusted for the name at all.
    let e = check(std::slice::from_ref(&elsewhere), &[(payload.clone(), good.clone())]);
    assert!(matches!(e, SignatureError::NoTrustedKey { .. }), "{e}");
    // A signature over something that is not a cosign payload.
    let junk = b"{\"critical\":{}}".to_vec();
    let e = check(std::slice::from_ref(&team), &[(junk.clone(), sig_bytes(&sign(&key, &junk)))]);
    assert!(matches!(e, SignatureError::BadPayload { .. }), "{e}");
    // One good signature among bad ones is enough; Root trust covers all.
    let pairs = [(payload.clone(), by_other), (payload.clone(), good.clone())];
    assert!(verify(IMAGE, DIGEST, &[elsewhere, team], &pairs).is_ok());
    assert!(verify(IMAGE, DIGEST, &[trusted("", COSIGN_PUB)], &pairs).is_ok());
    // Tag and digest suffixes of the same repository are accepted.
    for reference in [format!("{IMAGE}:v1"), format!("{IMAGE}@{DIGEST}")] {
        let p = simple_signing_payload(&reference, DIGEST);
        let s = sig_bytes(&sign(&key, &p));
        assert!(verify(IMAGE, DIGEST, &[trusted("", COSIGN_PUB)], &[(p, s)]).is_ok(), "{reference}");
    }
}

#[test]
fn signature_encodings_and_ed25519() {
    let payload = simple_signing_payload(IMAGE, DIGEST);
    let der = sig_bytes(COSIGN_SIG);
    let fixed = ok(p256::ecdsa::Signature::from_der(&der)).to_bytes().to_vec();
    let keys = [trusted("", COSIGN_PUB)];
    assert!(verify(IMAGE, DIGEST, &keys, &[(payload.clone(), fixed)]).is_ok(), "r||s accepted");
    // Plain Ed25519 over the payload, for an Ed25519 PEM key.
    let ed = ok(crate::keys::generate());
    let pem = ok(p256::pkcs8::EncodePublicKey::to_public_key_pem(&ed.verifying_key(), p256::pkcs8::LineEnding::LF));
    let ed_sig = ed25519_dalek::Signer::sign(&ed, &payload).to_bytes().to_vec();
    let ed_keys = [trusted("127.0.0.1:5000/", &pem)];
    assert!(verify(IMAGE, DIGEST, &ed_keys, &[(payload.clone(), ed_sig)]).is_ok());
    // A pod-ed25519 key (Ed25519ph, ACI images) never verifies a cosign signature.
    let pod_keys = [TrustedKey { scope: Scope::Root, key: PublicKey::new(ed.verifying_key(), "") }];
    let sig = ed25519_dalek::Signer::sign(&ed, &payload).to_bytes().to_vec();
    assert!(verify(IMAGE, DIGEST, &pod_keys, &[(payload, sig)]).is_err());
}

#[test]
fn signature_manifests() {
    let key = ok(CosignPrivateKey::generate());
    let p1 = simple_signing_payload(IMAGE, DIGEST);
    let s1 = sign(&key, &p1);
    let m = signature_manifest(&[(p1.clone(), s1.clone())]);
    let json: serde_json::Value = ok(serde_json::from_slice(&m.manifest));
    assert_eq!(json["schemaVersion"], 2);
    assert_eq!(json["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(json["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    assert_eq!(json["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
    assert_eq!(json["layers"][0]["annotations"][SIGNATURE_ANNOTATION], s1.as_str());
    let text = String::from_utf8_lossy(&m.manifest).into_owned();
    assert!(text.starts_with("{\"schemaVersion\":2,\"mediaType\":"), "go-containerregistry's field order: {text}");
    let config_digest = json["config"]["digest"].as_str().unwrap_or_default().to_owned();
    let layer_digest = json["layers"][0]["digest"].as_str().unwrap_or_default().to_owned();
    let config = m.blobs.get(&config_digest).map(|b| String::from_utf8_lossy(b).into_owned());
    assert_eq!(
        config,
        Some(format!(
            "{{\"architecture\":\"\",\"created\":\"0001-01-01T00:00:00Z\",\"history\":[{{\"created\":\"0001-01-01T00:00:00Z\"}}],\"os\":\"\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{layer_digest}\"]}},\"config\":{{}}}}"
        ))
    );
    assert_eq!(m.blobs.get(&layer_digest), Some(&p1));
    let layers = ok(parse_signature_manifest(&m.manifest, IMAGE));
    assert_eq!(layers.len(), 1);
    assert_eq!((layers[0].digest.as_str(), layers[0].size), (layer_digest.as_str(), p1.len() as u64));
    assert_eq!(layers[0].signature, sig_bytes(&s1));

    // Appending: the old layer stays, the config is rebuilt, a repeat is a no-op.
    let other = ok(CosignPrivateKey::generate());
    let s2 = sign(&other, &p1);
    let m2 = ok(add_signature(&m.manifest, IMAGE, &p1, &s2));
    assert!(m2.added);
    let layers2 = ok(parse_signature_manifest(&m2.manifest, IMAGE));
    assert_eq!(layers2.iter().map(|l| l.signature.clone()).collect::<Vec<_>>(), [sig_bytes(&s1), sig_bytes(&s2)]);
    assert_eq!(m2.blobs.len(), 2, "new config and the payload");
    let again = ok(add_signature(&m2.manifest, IMAGE, &p1, &s2));
    assert!(!again.added && again.manifest == m2.manifest && again.blobs.is_empty());

    // Limits and garbage, each naming the image.
    let many: Vec<_> = (0..=MAX_SIGNATURE_LAYERS).map(|i| (format!("p{i}").into_bytes(), s1.clone())).collect();
    let big = signature_manifest(&many);
    let e = parse_signature_manifest(&big.manifest, IMAGE).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("more than 64") && e.contains(IMAGE), "{e}");
    let huge = vec![b' '; MAX_SIGNATURE_MANIFEST + 1];
    let e = parse_signature_manifest(&huge, IMAGE).err().unwrap_or_else(|| panic!("huge manifest accepted"));
    assert_eq!(e.exit(), Exit::InvalidInput);
    assert!(parse_signature_manifest(b"{}", IMAGE).is_err());
    let bad_sig = String::from_utf8_lossy(&m.manifest).replace(&s1, "!!not base64!!");
    assert!(parse_signature_manifest(bad_sig.as_bytes(), IMAGE).is_err());
}

// ---- interop with the real cosign -------------------------------------------------

/// The cosign binary on PATH (or where `go install` puts it), if any.
fn cosign() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join("go/bin"));
    }
    let found = dirs.into_iter().map(|d| d.join("cosign")).find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: cosign not found (on PATH or in ~/go/bin); cosign interop not tested");
    }
    found
}

fn run_cosign(bin: &Path, dir: &Path, password: &str, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", password)
        // Offline: no TUF root to fetch, no cache in the user's home.
        .env("HOME", dir)
        .env("TUF_ROOT", dir.join("tuf"))
        .output();
    let out = out.unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(out.status.success(), "cosign {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn cosign_generated_keys_load_in_pod() {
    let Some(bin) = cosign() else { return };
    let dir = ok(tempfile::tempdir());
    run_cosign(&bin, dir.path(), "x", &["generate-key-pair"]);
    let key = ok(CosignPrivateKey::load(&dir.path().join("cosign.key"), b"x"));
    let public = ok(PublicKey::load_trusted(&dir.path().join("cosign.pub")));
    assert_eq!(public.kind(), KeyKind::EcdsaP256);
    assert_eq!(key.public_key().id, public.id);
    assert!(matches!(
        CosignPrivateKey::load(&dir.path().join("cosign.key"), b"y"),
        Err(CosignKeyError::WrongPassword { .. })
    ));
}

#[test]
fn pod_keys_and_signatures_work_in_cosign() {
    let Some(bin) = cosign() else { return };
    let dir = ok(tempfile::tempdir());
    let key = ok(CosignPrivateKey::generate());
    ok(key.write_pair(dir.path(), b"pw"));
    let payload = simple_signing_payload(IMAGE, DIGEST);
    ok(fs::write(dir.path().join("payload.json"), &payload));
    // cosign signs with pod's key file...
    let args =
        ["sign-blob", "--key", "cosign.key", "--tlog-upload=false", "--output-signature", "c.sig", "payload.json"];
    run_cosign(&bin, dir.path(), "pw", &args);
    let c_sig = ok(fs::read_to_string(dir.path().join("c.sig")));
    let keys = [trusted("127.0.0.1:5000/team", &key.public_key().to_file_text())];
    assert!(verify(IMAGE, DIGEST, &keys, &[(payload.clone(), sig_bytes(c_sig.trim()))]).is_ok());
    // ...and accepts pod's signature with pod's public key file.
    ok(fs::write(dir.path().join("p.sig"), sign(&key, &payload)));
    let args =
        ["verify-blob", "--key", "cosign.pub", "--signature", "p.sig", "--insecure-ignore-tlog=true", "payload.json"];
    run_cosign(&bin, dir.path(), "", &args);
    // cosign's payload for an image is byte for byte pod's.
    let out = run_cosign(&bin, dir.path(), "", &["generate", &format!("{IMAGE}@{DIGEST}")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&payload));
}

#[test]
fn cosign_signatures_verify_in_pod() {
    let Some(bin) = cosign() else { return };
    let dir = ok(tempfile::tempdir());
    run_cosign(&bin, dir.path(), "x", &["generate-key-pair"]);
    let pem = ok(fs::read_to_string(dir.path().join("cosign.pub")));
    let sign_blob = |name: &str, payload: &[u8]| -> Vec<u8> {
        ok(fs::write(dir.path().join(name), payload));
        let sig = format!("{name}.sig");
        run_cosign(
            &bin,
            dir.path(),
            "x",
            &["sign-blob", "--key", "cosign.key", "--tlog-upload=false", "--output-signature", &sig, name],
        );
        sig_bytes(ok(fs::read_to_string(dir.path().join(&sig))).trim())
    };
    let payload = simple_signing_payload(IMAGE, DIGEST);
    let sig = sign_blob("p.json", &payload);
    let team = trusted("127.0.0.1:5000/team/", &pem);
    assert_eq!(
        ok(verify(IMAGE, DIGEST, std::slice::from_ref(&team), &[(payload.clone(), sig.clone())])).key_id,
        team.key.id
    );

    let mut tampered = payload.clone();
    let at = tampered.len() - 30;
    tampered[at] ^= 1;
    let e = verify(IMAGE, DIGEST, std::slice::from_ref(&team), &[(tampered, sig.clone())]).err();
    assert!(matches!(e, Some(SignatureError::BadSignature { .. })), "{e:?}");
    let e = verify(IMAGE, OTHER_DIGEST, std::slice::from_ref(&team), &[(payload.clone(), sig.clone())]).err();
    assert!(matches!(e, Some(SignatureError::WrongDigest { .. })), "{e:?}");
    let e =
        verify("127.0.0.1:5000/team/db", DIGEST, std::slice::from_ref(&team), &[(payload.clone(), sig.clone())]).err();
    assert!(matches!(e, Some(SignatureError::WrongName { .. })), "{e:?}");
    let elsewhere = trusted("127.0.0.1:5000/other/", &pem);
    let e = verify(IMAGE, DIGEST, &[elsewhere], &[(payload.clone(), sig.clone())]).err();
    assert!(matches!(e, Some(SignatureError::NotTrustedForName { .. })), "{e:?}");
    let stranger = trusted("127.0.0.1:5000/team/", &ok(CosignPrivateKey::generate()).public_key().to_file_text());
    let e = verify(IMAGE, DIGEST, &[stranger], &[(payload, sig)]).err();
    assert!(matches!(e, Some(SignatureError::BadSignature { .. })), "{e:?}");
}
