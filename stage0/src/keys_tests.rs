use super::*;

#[test]
fn sign_and_verify() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = generate().unwrap_or_else(|e| panic!("{e}"));
    let public = write_keypair(dir.path(), "k", &key, "test key").unwrap_or_else(|e| panic!("{e}"));
    let mode = fs::metadata(dir.path().join("k.key")).map(|m| m.permissions().mode() & 0o777).ok();
    assert_eq!(mode, Some(0o600));
    let loaded = PublicKey::load(&dir.path().join("k.pub")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.id, public.id);
    assert_eq!(loaded.comment, "test key");
    let secret = load_secret(&dir.path().join("k.key")).unwrap_or_else(|e| panic!("{e}"));

    let image = dir.path().join("x.aci");
    fs::write(&image, b"image bytes").unwrap_or_else(|e| panic!("{e}"));
    let sig_path = sign_file(&secret, &image).unwrap_or_else(|e| panic!("{e}"));
    let sig =
        ImageSignature::parse(&fs::read(&sig_path).unwrap_or_default(), &sig_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sig.key_id, public.id);
    let h = |b: &[u8]| prehash(b).unwrap_or_else(|e| panic!("{e}"));
    assert!(verify(&loaded.key, h(b"image bytes"), &sig));
    assert!(!verify(&loaded.key, h(b"image bytez"), &sig));
    let other = generate().unwrap_or_else(|e| panic!("{e}"));
    assert!(!verify(&KeyMaterial::PodEd25519(other.verifying_key()), h(b"image bytes"), &sig));
    assert!(matches!(write_keypair(dir.path(), "k", &key, ""), Err(KeyError::Exists { .. })));
}

#[test]
fn rejects_loose_secret_and_garbage() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = generate().unwrap_or_else(|e| panic!("{e}"));
    write_keypair(dir.path(), "k", &key, "").unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path().join("k.key");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(load_secret(&p), Err(KeyError::Permissions { .. })));
    let junk = Path::new("junk");
    assert!(PublicKey::parse("ssh-ed25519 AAAA", junk).is_err());
    assert!(PublicKey::parse("pod-ed25519-public !!!", junk).is_err());
    assert!(PublicKey::parse("pod-ed25519-public AAAA", junk).is_err());
    assert!(ImageSignature::parse(b"pod-ed25519-signature abc xyz", junk).is_err());
}

#[test]
fn trusted_keys_must_be_writable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = generate().unwrap_or_else(|e| panic!("{e}"));
    write_keypair(dir.path(), "k", &key, "").unwrap_or_else(|e| panic!("{e}"));
    let public = dir.path().join("k.pub");
    let chmod =
        |p: &Path, mode| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("{e}"));
    chmod(&public, 0o644);
    assert!(PublicKey::load_trusted(&public).is_ok());
    for mode in [0o664, 0o646, 0o666] {
        chmod(&public, mode);
        let err = PublicKey::load_trusted(&public).err().unwrap_or_else(|| panic!("mode {mode:o} accepted"));
        assert!(matches!(err, KeyError::Writable { .. }), "{err}");
        assert_eq!(err.exit(), Exit::InvalidInput);
        assert!(err.to_string().contains("k.pub"), "{err}");
    }
    chmod(&public, 0o644);
    chmod(dir.path(), 0o1777);
    assert!(matches!(check_owner_only(dir.path(), "directory"), Err(KeyError::Writable { .. })));
    chmod(dir.path(), 0o700);
    let secret = dir.path().join("k.key");
    chmod(&secret, 0o620);
    assert!(matches!(load_secret(&secret), Err(KeyError::Permissions { .. })));
    if nix::unistd::geteuid().is_root() {
        chmod(&secret, 0o600);
        std::os::unix::fs::chown(&secret, Some(4242), None).unwrap_or_else(|e| panic!("{e}"));
        let err = load_secret(&secret).err().unwrap_or_else(|| panic!("another user's key accepted"));
        assert!(matches!(err, KeyError::Owner { uid: 4242, .. }), "{err}");
    }
}

// Fixed vectors made with openssl (`openssl ec -pubout`, `openssl pkey -pubout`).
const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuUluwuUK3kNZq6kgMSI26oa4icaQ
a0evC8SdEsaa5OQm6Wdgfcro8JaKPAXGBD6q0XTasMYmWKLHz7bNuAbrbQ==
-----END PUBLIC KEY-----
";
/// `sha256sum` of the DER above, first 40 hex digits.
const P256_ID: &str = "f5549ba424bbce96246c3e5f395d2a43ac572158";
/// The same key with its point compressed.
const P256_COMPRESSED_PEM: &str = "-----BEGIN PUBLIC KEY-----
MDkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDIgADuUluwuUK3kNZq6kgMSI26oa4icaQ
a0evC8SdEsaa5OQ=
-----END PUBLIC KEY-----
";
const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAHlpirpkPfh7k7QURjVWoUu9HXzRfkA/mdKwae5SwWRE=
-----END PUBLIC KEY-----
";
const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEtrWpNkdJhYySSjahUjkYeMMFkgRHErmK
x4md83zvUu6hxJZvl3rgtkY81bZ/GT90Zdb1Xth9Vx93/rNWPNonTUoAAyBOc8VX
mifGG/6mM1s1ysAAlWJp2gomYCgCAF8k
-----END PUBLIC KEY-----
";
const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCYQFDZFRJT9nVghJAdHrDdp3Rh
3QnNxgJsdTVYRBDjofUi1lCq1Btrk/2WQB8mtB2+UwjScR9kbVFmm1j7IvO7W234
vuChu2UZwHWRPhVMM4P/SuyjMXVOu2cC4qL6WAhjb63E6WG/liiR1rNA4bs8rt0b
v5D7PxGPfUC47AyVmwIDAQAB
-----END PUBLIC KEY-----
";

#[test]
fn pem_public_keys() {
    let path = Path::new("cosign.pub");
    let k = PublicKey::parse(P256_PEM, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.kind(), KeyKind::EcdsaP256);
    assert_eq!(k.id.as_str(), P256_ID);
    assert_eq!(k.to_file_text(), P256_PEM, "re-encoded PEM is cosign's");
    let c = PublicKey::parse(P256_COMPRESSED_PEM, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.id.as_str(), P256_ID, "the ID does not depend on the point encoding");
    let e = PublicKey::parse(ED25519_PEM, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.kind(), KeyKind::Ed25519);
    assert_eq!(e.to_file_text(), ED25519_PEM);
    assert_eq!(PublicKey::parse(&e.to_file_text(), path).map(|k| k.id).ok(), Some(e.id));
    for (pem, algorithm) in [(P384_PEM, "P-384"), (RSA_PEM, "RSA")] {
        let err = PublicKey::parse(pem, path).err().unwrap_or_else(|| panic!("{algorithm} accepted"));
        assert!(matches!(err, KeyError::Unsupported { .. }), "{err}");
        assert_eq!(err.exit(), Exit::InvalidInput);
        let msg = err.to_string();
        assert!(msg.contains("cosign.pub") && msg.contains(algorithm), "{msg}");
    }
    let private =
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n";
    let err = PublicKey::parse(private, path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("private key"), "{err}");
    assert!(PublicKey::parse("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n", path).is_err());
}

#[test]
fn pem_keys_follow_the_file_rules() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path().join("cosign.pub");
    fs::write(&p, P256_PEM).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(PublicKey::load_trusted(&p).map(|k| k.kind()).ok(), Some(KeyKind::EcdsaP256));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(PublicKey::load_trusted(&p), Err(KeyError::Writable { .. })));
    let big = format!("{P256_PEM}{}", " ".repeat(5000));
    fs::write(&p, big).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
    let err = PublicKey::load_trusted(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("too large"), "{err}");
}
