//! cosign's encrypted private key files (`cosign.key`), read and written
//! byte-compatibly with `cosign generate-key-pair`.
//!
//! A PEM block of type `ENCRYPTED SIGSTORE PRIVATE KEY` (cosign v2; v1's
//! `ENCRYPTED COSIGN PRIVATE KEY` is read too) whose body is the JSON of
//! go-securesystemslib's `encrypted` package:
//!
//! ```text
//! {"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"<b64, 32 bytes>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<b64, 24 bytes>"},"ciphertext":"<b64>"}
//! ```
//!
//! The secretbox key is scrypt(password, salt, 32 bytes); the plaintext is
//! the PKCS#8 DER private key. cosign v2.6 writes N = 2^16 ("standard"); the
//! reader accepts exactly the three parameter sets that library accepts
//! (2^15, 2^16, 2^17 with r = 8, p = 1), so a hostile file cannot make
//! scrypt take gigabytes.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::der::pem::{self, LineEnding};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, PrivateKeyInfo};
use serde::{Deserialize, Serialize};

use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{self, KeyError, KeyMaterial, PublicKey};

const LABEL_V2: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const LABEL_V1: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The environment variable cosign reads the password from.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// go-securesystemslib's legacy, standard and OWASP scrypt parameters.
const ACCEPTED_SCRYPT: [(u64, u32, u32); 3] = [(1 << 15, 8, 1), (1 << 16, 8, 1), (1 << 17, 8, 1)];
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
/// What cosign v2 writes.
const WRITTEN_LOG_N: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum CosignKeyError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a cosign private key ({why})")]
    Format { path: PathBuf, why: String },
    #[error("{path}: wrong password (or a damaged key file); set {PASSWORD_ENV} to the password it was made with")]
    WrongPassword { path: PathBuf },
    #[error("{path}: a cosign key of algorithm {algorithm}; pod signs with ECDSA P-256 keys only (cosign's default)")]
    Unsupported { path: PathBuf, algorithm: String },
    #[error("{0}")]
    Password(String),
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("could not get randomness from the OS: {0}")]
    Random(String),
    #[error("encrypting the private key failed: {0}")]
    Encrypt(String),
}

impl ExitCodeOf for CosignKeyError {
    fn exit(&self) -> Exit {
        match self {
            Self::Key(e) => e.exit(),
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Exit::NotFound,
            Self::Format { .. } | Self::Unsupported { .. } => Exit::InvalidInput,
            Self::WrongPassword { .. } => Exit::Verification,
            Self::Password(_) => Exit::Usage,
            Self::Exists { .. } => Exit::Conflict,
            Self::Io { .. } | Self::Random(_) | Self::Encrypt(_) => Exit::Failure,
        }
    }
}

/// An ECDSA P-256 signing key, as cosign makes them.
pub struct CosignPrivateKey {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for CosignPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: only which public key it belongs to.
        f.debug_struct("CosignPrivateKey").field("public", &self.public_key().id).finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

/// Go's encoding of `[]byte` in JSON: standard base64 with padding.
mod b64 {
    use super::{Engine, B64};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

fn random(buf: &mut [u8]) -> Result<(), CosignKeyError> {
    getrandom::getrandom(buf).map_err(|e| CosignKeyError::Random(e.to_string()))
}

fn scrypt_key(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<Zeroizing<[u8; 32]>, String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| e.to_string())?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, salt, &params, out.as_mut()).map_err(|e| e.to_string())?;
    Ok(out)
}

impl CosignPrivateKey {
    /// A new key from the OS's randomness.
    pub fn generate() -> Result<Self, CosignKeyError> {
        // A random 32-byte string is a valid scalar but with probability
        // ~2^-32; retry rather than bias.
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            random(bytes.as_mut())?;
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(bytes.as_ref()) {
                return Ok(Self { key });
            }
        }
    }

    pub(super) fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.key
    }

    /// The public key (what `cosign.pub` holds), with its key ID.
    pub fn public_key(&self) -> PublicKey {
        let material = KeyMaterial::EcdsaP256(*self.key.verifying_key());
        // An ECDSA key always has an SPKI encoding, hence an ID.
        PublicKey::from_material(material.clone()).unwrap_or_else(|| PublicKey {
            key: material,
            id: keys::KeyId::of_spki(&[]),
            comment: String::new(),
        })
    }

    /// Loads `path`, refusing a file group or others can access (as pod's
    /// own private keys), and decrypts it with `password`.
    pub fn load(path: &Path, password: &[u8]) -> Result<Self, CosignKeyError> {
        keys::check_secret_file(path)?;
        let text = keys::read_small(path)?;
        Self::parse(&text, password, path)
    }

    /// Decrypts a cosign private key file's text; `path` names it in errors.
    pub fn parse(text: &str, password: &[u8], path: &Path) -> Result<Self, CosignKeyError> {
        let bad = |why: String| CosignKeyError::Format { path: path.to_owned(), why };
        let (label, body) = pem::decode_vec(text.trim().as_bytes()).map_err(|e| bad(format!("malformed PEM: {e}")))?;
        if label != LABEL_V2 && label != LABEL_V1 {
            return Err(bad(format!("PEM block is {label:?}, expected {LABEL_V2:?}")));
        }
        let enc: Encrypted = serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
        if enc.kdf.name != "scrypt" {
            return Err(bad(format!("key derivation {:?}, expected \"scrypt\"", enc.kdf.name)));
        }
        if enc.cipher.name != "nacl/secretbox" {
            return Err(bad(format!("cipher {:?}, expected \"nacl/secretbox\"", enc.cipher.name)));
        }
        let ScryptParams { n, r, p } = enc.kdf.params;
        if !ACCEPTED_SCRYPT.contains(&(n, r, p)) {
            return Err(bad(format!("unsupported scrypt parameters N={n} r={r} p={p}")));
        }
        let nonce: [u8; NONCE_LEN] =
            enc.cipher.nonce.as_slice().try_into().map_err(|_| bad(format!("nonce is not {NONCE_LEN} bytes")))?;
        let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| bad("scrypt N".into()))?;
        let box_key = scrypt_key(password, &enc.kdf.salt, log_n, r, p).map_err(bad)?;
        let cipher = XSalsa20Poly1305::new(box_key.as_ref().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(&nonce.into(), enc.ciphertext.as_slice())
                .map_err(|_| CosignKeyError::WrongPassword { path: path.to_owned() })?,
        );
        let info = PrivateKeyInfo::try_from(plain.as_slice()).map_err(|e| bad(format!("not PKCS#8: {e}")))?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|c| c.to_string());
        if oid != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
            let algorithm = match oid.as_str() {
                "1.2.840.113549.1.1.1" => "RSA".to_owned(),
                "1.3.101.112" => "Ed25519".to_owned(),
                OID_EC_PUBLIC_KEY => format!("ECDSA on curve {}", curve.unwrap_or_default()),
                other => other.to_owned(),
            };
            return Err(CosignKeyError::Unsupported { path: path.to_owned(), algorithm });
        }
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&plain).map_err(|e| bad(format!("bad P-256 key: {e}")))?;
        Ok(Self { key })
    }

    /// The key file's text, encrypted with `password` as cosign v2 does.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, CosignKeyError> {
        let plain = self.key.to_pkcs8_der().map_err(|e| CosignKeyError::Encrypt(e.to_string()))?;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut salt)?;
        random(&mut nonce)?;
        let (r, p) = (8, 1);
        let box_key = scrypt_key(password, &salt, WRITTEN_LOG_N, r, p).map_err(CosignKeyError::Encrypt)?;
        let ciphertext = XSalsa20Poly1305::new(box_key.as_ref().into())
            .encrypt(&nonce.into(), plain.as_bytes())
            .map_err(|e| CosignKeyError::Encrypt(e.to_string()))?;
        let enc = Encrypted {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams { n: 1 << WRITTEN_LOG_N, r, p },
                salt: salt.to_vec(),
            },
            cipher: Cipher { name: "nacl/secretbox".into(), nonce: nonce.to_vec() },
            ciphertext,
        };
        let json = serde_json::to_vec(&enc).map_err(|e| CosignKeyError::Encrypt(e.to_string()))?;
        pem::encode_string(LABEL_V2, LineEnding::LF, &json).map_err(|e| CosignKeyError::Encrypt(e.to_string()))
    }

    /// Writes `<dir>/cosign.key` (mode 0600, encrypted with `password`) and
    /// `<dir>/cosign.pub`, as `cosign generate-key-pair` does; refuses to
    /// overwrite either. Returns the public key.
    pub fn write_pair(&self, dir: &Path, password: &[u8]) -> Result<PublicKey, CosignKeyError> {
        let pem = self.to_encrypted_pem(password)?;
        let public = self.public_key();
        crate::keys::write_key_files(dir, "cosign.key", &pem, "cosign.pub", &public.to_file_text()).map_err(
            |e| match e {
                KeyError::Exists { path } => CosignKeyError::Exists { path },
                other => CosignKeyError::Key(other),
            },
        )?;
        Ok(public)
    }
}

/// The password for a cosign key, as cosign finds it: `env` (the value of
/// [`PASSWORD_ENV`], which may be explicitly empty), else a prompt on the
/// terminal — asked twice when `confirm` (a new key). With neither, an error
/// saying how to give one.
pub fn password(env: Option<OsString>, confirm: bool) -> Result<Zeroizing<Vec<u8>>, CosignKeyError> {
    use std::os::unix::ffi::OsStringExt;
    if let Some(v) = env {
        return Ok(Zeroizing::new(v.into_vec()));
    }
    let no_tty = || {
        CosignKeyError::Password(format!(
            "no password for the cosign key: set {PASSWORD_ENV} (empty for none) or run on a terminal"
        ))
    };
    if !io::stdin().is_terminal() {
        return Err(no_tty());
    }
    let tty = Path::new("/dev/tty");
    let first = prompt(tty, "Enter password for private key: ").map_err(|_| no_tty())?;
    if confirm {
        let again = prompt(tty, "Enter password for private key again: ").map_err(|_| no_tty())?;
        if *again != *first {
            return Err(CosignKeyError::Password("the passwords do not match".into()));
        }
    }
    Ok(first)
}

/// Reads one line from the terminal without echo. `stty` does the echo
/// switching: stage0 forbids unsafe code, so no termios calls of its own.
fn prompt(tty: &Path, text: &str) -> io::Result<Zeroizing<Vec<u8>>> {
    let stty = |arg: &str| -> io::Result<()> {
        let input = fs::File::open(tty)?;
        let st = Command::new("stty").arg(arg).stdin(input).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if st.success() {
            Ok(())
        } else {
            Err(io::Error::other("stty failed"))
        }
    };
    let mut out = fs::OpenOptions::new().write(true).open(tty)?;
    out.write_all(text.as_bytes())?;
    stty("-echo")?;
    let mut line = Zeroizing::new(Vec::new());
    let read = io::BufReader::new(fs::File::open(tty)?).read_until(b'\n', &mut line);
    let restored = stty("echo");
    out.write_all(b"\n")?;
    read?;
    restored?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}
