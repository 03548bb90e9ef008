//! Signing keys, key files and detached image signatures.
//!
//! Key files are one line of text, so they can be read, diffed and pasted:
//!
//! ```text
//! pod-ed25519-public <base64 of the 32-byte public key> [comment]
//! pod-ed25519-secret <base64 of the 32-byte seed> [comment]
//! ```
//!
//! A key's ID (its fingerprint, shown to users) is the first 20 bytes of
//! SHA-256 over the public key, in hex. A signature file (`IMAGE.aci.sig`) is
//! one line, `pod-ed25519-signature <key ID> <base64 of 64 bytes>`, holding an
//! Ed25519ph (RFC 8032, SHA-512 prehash) signature with context
//! `pod-image-v1` over the image file's bytes, exactly as fetched. Prehashing
//! lets a multi-gigabyte image be signed and verified in one streaming pass.
//!
//! Public keys may also be PEM files holding a DER SubjectPublicKeyInfo
//! (`-----BEGIN PUBLIC KEY-----`), as `cosign generate-key-pair` writes
//! `cosign.pub`: ECDSA P-256 (cosign's default) or Ed25519. The format is
//! told from the file's content. A PEM key's ID is the first 20 bytes of
//! SHA-256 over its DER SubjectPublicKeyInfo (re-encoded canonically, so an
//! EC point given compressed gets the same ID), in hex. Those keys verify
//! cosign signatures (see `oci::sigstore`); other algorithms (RSA, P-384,
//! P-521) are refused by name rather than half-supported.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::Document;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding, ObjectIdentifier, SubjectPublicKeyInfoRef};
use sha2::{Digest, Sha256};

use crate::exit::{Exit, ExitCodeOf};
use crate::sha512::Sha512;

const PUBLIC_TAG: &str = "pod-ed25519-public";
const SECRET_TAG: &str = "pod-ed25519-secret";
const SIG_TAG: &str = "pod-ed25519-signature";
/// Domain separation: a pod image signature can't be replayed as anything else.
const CONTEXT: &[u8] = b"pod-image-v1";
/// Key and signature files are tiny; anything larger is not one.
const MAX_KEY_FILE: u64 = 4096;
const PEM_PUBLIC_LABEL: &str = "PUBLIC KEY";

// Algorithm OIDs of a SubjectPublicKeyInfo (RFC 5480, RFC 8410, RFC 3279).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a {what} file ({why})")]
    Format { path: PathBuf, what: &'static str, why: String },
    #[error("{path}: private key is readable or writable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    /// A key file (or a directory of trusted keys) that someone other than
    /// its owner could replace, as ssh refuses such an authorized_keys.
    #[error(
        "{path}: {what} is writable by group or others (mode {mode:o}), so anyone could replace it; chmod go-w it"
    )]
    Writable { path: PathBuf, what: &'static str, mode: u32 },
    #[error("{path}: {what} is owned by uid {uid}, neither root nor the user running pod (uid {me}); chown it")]
    Owner { path: PathBuf, what: &'static str, uid: u32, me: u32 },
    /// A well-formed key of an algorithm pod does not verify with.
    #[error(
        "{path}: {algorithm} keys are not supported; pod trusts ECDSA P-256 keys (what `cosign generate-key-pair` \
         and `pod key gen --format cosign` write), Ed25519 PEM keys and pod-ed25519 keys"
    )]
    Unsupported { path: PathBuf, algorithm: String },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("could not get randomness from the OS: {0}")]
    Random(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl ExitCodeOf for KeyError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Exit::NotFound,
            Self::Format { .. }
            | Self::Unsupported { .. }
            | Self::Permissions { .. }
            | Self::Writable { .. }
            | Self::Owner { .. } => Exit::InvalidInput,
            Self::Exists { .. } => Exit::Conflict,
            _ => Exit::Failure,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io { op, path: path.to_owned(), source }
}

/// A key's fingerprint: 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The ID of a pod-ed25519 key: over its 32 raw bytes.
    pub fn of(key: &VerifyingKey) -> Self {
        Self::of_bytes(key.as_bytes())
    }
    /// The ID of a PEM key: over its DER SubjectPublicKeyInfo.
    pub fn of_spki(der: &[u8]) -> Self {
        Self::of_bytes(der)
    }
    fn of_bytes(b: &[u8]) -> Self {
        let digest = Sha256::digest(b);
        Self(hex::encode(&digest[..20]))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Parses a key ID as written in signature files and on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(s.to_owned()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of public key pod trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A `pod-ed25519-public` line: signs ACI images (Ed25519ph).
    PodEd25519,
    /// An Ed25519 key in SPKI PEM.
    Ed25519,
    /// An ECDSA P-256 key in SPKI PEM (cosign's default).
    EcdsaP256,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodEd25519 => "pod-ed25519",
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa-p256",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key itself, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    PodEd25519(VerifyingKey),
    Ed25519(VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
}

impl KeyMaterial {
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::PodEd25519(_) => KeyKind::PodEd25519,
            Self::Ed25519(_) => KeyKind::Ed25519,
            Self::EcdsaP256(_) => KeyKind::EcdsaP256,
        }
    }
    /// The DER SubjectPublicKeyInfo of a PEM key; `None` for pod-ed25519.
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        let doc = match self {
            Self::PodEd25519(_) => return None,
            Self::Ed25519(k) => k.to_public_key_der(),
            Self::EcdsaP256(k) => k.to_public_key_der(),
        };
        // Encoding a valid key into a buffer sized by the encoder only fails
        // on allocation; an ID-less key would be worse than a visible None.
        doc.ok().map(|d| d.as_bytes().to_vec())
    }
}

/// A public key with its ID and the comment from its file (PEM keys have
/// none).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub key: KeyMaterial,
    pub id: KeyId,
    pub comment: String,
}

impl PublicKey {
    /// A pod-ed25519 key.
    pub fn new(key: VerifyingKey, comment: impl Into<String>) -> Self {
        Self { id: KeyId::of(&key), key: KeyMaterial::PodEd25519(key), comment: comment.into() }
    }
    /// A PEM key (ECDSA P-256 or Ed25519); `None` for a pod-ed25519 key.
    pub fn from_material(key: KeyMaterial) -> Option<Self> {
        let id = KeyId::of_spki(&key.spki_der()?);
        Some(Self { key, id, comment: String::new() })
    }
    pub fn kind(&self) -> KeyKind {
        self.key.kind()
    }
    /// The key file's text: the one line of a pod-ed25519 key, or the PEM
    /// block of any other.
    pub fn to_file_text(&self) -> String {
        match &self.key {
            KeyMaterial::PodEd25519(key) => {
                let mut s = format!("{PUBLIC_TAG} {}", B64.encode(key.as_bytes()));
                if !self.comment.is_empty() {
                    s.push(' ');
                    s.push_str(&self.comment);
                }
                s.push('\n');
                s
            }
            KeyMaterial::Ed25519(_) | KeyMaterial::EcdsaP256(_) => self
                .key
                .spki_der()
                .and_then(|der| Document::try_from(der).ok())
                .and_then(|doc| doc.to_pem(PEM_PUBLIC_LABEL, LineEnding::LF).ok())
                .unwrap_or_default(),
        }
    }
    /// Parses a public key file's text, a pod-ed25519 line or a PEM
    /// SubjectPublicKeyInfo; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyError> {
        if text.contains("-----BEGIN ") {
            return parse_pem(text, path);
        }
        let (bytes, comment) = parse_line(text, PUBLIC_TAG, path, "public key")?;
        let key = ed25519_from_bytes(&bytes, path)?;
        Ok(Self::new(key, comment))
    }
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_small(path)?, path)
    }
    /// Loads a key to be trusted, or trusted already: the file must be
    /// owned by root or the user running pod and writable by no one else
    /// (see [`check_owner_only`]).
    pub fn load_trusted(path: &Path) -> Result<Self, KeyError> {
        check_owner_only(path, "public key file")?;
        Self::load(path)
    }
}

fn ed25519_from_bytes(bytes: &[u8; 32], path: &Path) -> Result<VerifyingKey, KeyError> {
    let bad = |why: String| KeyError::Format { path: path.to_owned(), what: "public key", why };
    let key = VerifyingKey::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    if key.is_weak() {
        return Err(bad("weak key".into()));
    }
    Ok(key)
}

/// A PEM SubjectPublicKeyInfo: exactly one `PUBLIC KEY` block.
fn parse_pem(text: &str, path: &Path) -> Result<PublicKey, KeyError> {
    let bad = |why: String| KeyError::Format { path: path.to_owned(), what: "public key", why };
    let unsupported = |algorithm: &str| KeyError::Unsupported { path: path.to_owned(), algorithm: algorithm.into() };
    let (label, der) =
        p256::pkcs8::der::pem::decode_vec(text.trim().as_bytes()).map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if label != PEM_PUBLIC_LABEL {
        let hint = if label.contains("PRIVATE") { "; this is a private key, give its .pub file" } else { "" };
        return Err(bad(format!("PEM block is {label:?}, expected {PEM_PUBLIC_LABEL:?}{hint}")));
    }
    let der = der.as_slice();
    let spki = SubjectPublicKeyInfoRef::try_from(der).map_err(|e| bad(format!("not a SubjectPublicKeyInfo: {e}")))?;
    let key = match spki.algorithm.oid {
        OID_EC_PUBLIC_KEY => {
            let curve = spki.algorithm.parameters_oid().map_err(|_| bad("EC key without a named curve".into()))?;
            match curve {
                OID_P256 => KeyMaterial::EcdsaP256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(der)
                        .map_err(|e| bad(format!("invalid P-256 key: {e}")))?,
                ),
                OID_P384 => return Err(unsupported("ECDSA P-384")),
                OID_P521 => return Err(unsupported("ECDSA P-521")),
                other => return Err(unsupported(&format!("EC (curve {other})"))),
            }
        }
        OID_ED25519 => {
            let raw: [u8; 32] = spki
                .subject_public_key
                .as_bytes()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("Ed25519 key is not 32 bytes".into()))?;
            KeyMaterial::Ed25519(ed25519_from_bytes(&raw, path)?)
        }
        OID_RSA => return Err(unsupported("RSA")),
        other => return Err(unsupported(&format!("algorithm {other}"))),
    };
    PublicKey::from_material(key).ok_or_else(|| bad("cannot re-encode the key".into()))
}

/// Refuses `path` (a key file, or a directory holding trusted keys) when
/// someone other than its owner could change it — writable by group or
/// others — or when its owner is neither root nor the user running pod: ssh's
/// rule for authorized_keys. Symlinks are followed: what counts is the file
/// the key is read from.
pub fn check_owner_only(path: &Path, what: &'static str) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let mode = meta.permissions().mode() & 0o7777;
    // The sticky bit (/tmp) does not stop others adding files, so it does
    // not excuse a writable directory here.
    if mode & 0o022 != 0 {
        return Err(KeyError::Writable { path: path.to_owned(), what, mode });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(KeyError::Owner { path: path.to_owned(), what, uid: meta.uid(), me });
    }
    Ok(())
}

/// Reads a key file of at most 4 KiB as text.
pub(crate) fn read_small(path: &Path) -> Result<String, KeyError> {
    let f = fs::File::open(path).map_err(io_err("open", path))?;
    let mut text = String::new();
    f.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(io_err("read", path))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::Format { path: path.to_owned(), what: "key", why: "file too large".into() });
    }
    Ok(text)
}

fn parse_line(text: &str, tag: &str, path: &Path, what: &'static str) -> Result<([u8; 32], String), KeyError> {
    let bad = |why: &str| KeyError::Format { path: path.to_owned(), what, why: why.to_owned() };
    let line = text.lines().find(|l| !l.trim().is_empty() && !l.starts_with('#')).ok_or_else(|| bad("empty"))?;
    let mut parts = line.splitn(3, ' ');
    if parts.next() != Some(tag) {
        return Err(bad(&format!("expected a line starting with {tag:?}")));
    }
    let b64 = parts.next().ok_or_else(|| bad("missing key material"))?;
    let raw = B64.decode(b64.trim()).map_err(|_| bad("key material is not base64"))?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| bad("key material is not 32 bytes"))?;
    Ok((bytes, parts.next().unwrap_or("").trim().to_owned()))
}

/// Generates a new keypair from the OS's randomness.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.pub`; refuses to
/// overwrite either. Returns the public key.
pub fn write_keypair(dir: &Path, name: &str, key: &SigningKey, comment: &str) -> Result<PublicKey, KeyError> {
    let public = PublicKey::new(key.verifying_key(), comment);
    let secret_line = format!("{SECRET_TAG} {} {comment}\n", B64.encode(key.to_bytes()));
    write_key_files(dir, &format!("{name}.key"), &secret_line, &format!("{name}.pub"), &public.to_file_text())?;
    Ok(public)
}

/// Writes a key pair's files into `dir` (created): the secret with mode
/// 0600 from its creation, so it is never readable by others, not even for
/// an instant; refuses to overwrite either file.
pub fn write_key_files(
    dir: &Path,
    secret: &str,
    secret_text: &str,
    public: &str,
    public_text: &str,
) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let secret_path = dir.join(secret);
    let public_path = dir.join(public);
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(io_err("create", &secret_path))?;
    f.write_all(secret_text.as_bytes()).map_err(io_err("write", &secret_path))?;
    f.sync_all().map_err(io_err("sync", &secret_path))?;
    fs::write(&public_path, public_text).map_err(io_err("write", &public_path))
}

/// Loads a private key, refusing one that group or others can read or
/// write, or that another user owns.
pub fn load_secret(path: &Path) -> Result<SigningKey, KeyError> {
    check_secret_file(path)?;
    let (seed, _) = parse_line(&read_small(path)?, SECRET_TAG, path, "private key")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The rule for any private key file (pod's or cosign's): no access for
/// group or others, owned by root or the user running pod.
pub fn check_secret_file(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_owned(), mode });
    }
    check_owner_only(path, "private key file")
}

/// A parsed signature file.
#[derive(Debug, Clone)]
pub struct ImageSignature {
    pub key_id: KeyId,
    pub signature: Signature,
}

impl ImageSignature {
    pub fn to_line(&self) -> String {
        format!("{SIG_TAG} {} {}\n", self.key_id, B64.encode(self.signature.to_bytes()))
    }
    /// Parses signature text from an untrusted source; `origin` names it.
    pub fn parse(text: &[u8], origin: &Path) -> Result<Self, KeyError> {
        let bad = |why: &str| KeyError::Format { path: origin.to_owned(), what: "signature", why: why.to_owned() };
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(bad("file too large"));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text"))?;
        let mut parts = text.trim().split(' ');
        if parts.next() != Some(SIG_TAG) {
            return Err(bad(&format!("expected a line starting with {SIG_TAG:?}")));
        }
        let key_id = parts.next().and_then(KeyId::parse).ok_or_else(|| bad("missing or malformed key ID"))?;
        let raw = parts.next().and_then(|s| B64.decode(s).ok()).ok_or_else(|| bad("signature is not base64"))?;
        let bytes: [u8; 64] = raw.try_into().map_err(|_| bad("signature is not 64 bytes"))?;
        if parts.next().is_some() {
            return Err(bad("trailing data"));
        }
        Ok(Self { key_id, signature: Signature::from_bytes(&bytes) })
    }
}

/// SHA-512 state over a whole reader: the prehash that is signed.
pub fn prehash(mut r: impl Read) -> io::Result<Sha512> {
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h)
}

/// Signs a prehashed image.
pub fn sign(key: &SigningKey, prehashed: Sha512) -> Result<ImageSignature, KeyError> {
    let signature = key.sign_prehashed(prehashed, Some(CONTEXT)).map_err(|e| KeyError::Sign(e.to_string()))?;
    Ok(ImageSignature { key_id: KeyId::of(&key.verifying_key()), signature })
}

/// Signs the file at `image`, writing `<image>.sig`. Returns the sig path.
pub fn sign_file(key: &SigningKey, image: &Path) -> Result<PathBuf, KeyError> {
    let f = fs::File::open(image).map_err(io_err("open", image))?;
    let hashed = prehash(io::BufReader::new(f)).map_err(io_err("read", image))?;
    let sig = sign(key, hashed)?;
    let mut sig_path = image.as_os_str().to_owned();
    sig_path.push(".sig");
    let sig_path = PathBuf::from(sig_path);
    fs::write(&sig_path, sig.to_line()).map_err(io_err("write", &sig_path))?;
    Ok(sig_path)
}

/// True if `sig` is a valid signature by `key` over the prehashed image.
/// Only Ed25519 keys sign pod images; an ECDSA key verifies none.
pub fn verify(key: &KeyMaterial, prehashed: Sha512, sig: &ImageSignature) -> bool {
    match key {
        KeyMaterial::PodEd25519(k) | KeyMaterial::Ed25519(k) => {
            k.verify_prehashed_strict(prehashed, Some(CONTEXT), &sig.signature).is_ok()
        }
        KeyMaterial::EcdsaP256(_) => false,
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
