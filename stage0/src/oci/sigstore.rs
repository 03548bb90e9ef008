//! sigstore/cosign signatures of OCI images, checked offline against keys in
//! the trust store.
//!
//! cosign's "simple signing" scheme: for an image whose manifest has digest
//! `sha256:<hex>`, the registry holds, at tag `sha256-<hex>.sig` of the same
//! repository, an OCI image manifest whose layers (media type
//! [`SIMPLE_SIGNING_MEDIA_TYPE`]) are small JSON payloads naming the image
//! ([`simple_signing_payload`]), each with its signature in the layer
//! annotation [`SIGNATURE_ANNOTATION`] (base64). A signature is ECDSA P-256
//! with SHA-256, ASN.1 DER (cosign's default key), or plain Ed25519, over the
//! payload bytes exactly as stored.
//!
//! An image verifies when one payload is signed by a key trusted for the
//! image's name and names that very name and manifest digest ([`verify`]).
//! Transparency-log (Rekor) entries and Fulcio certificates are not checked:
//! pod runs on machines that may be offline, so trust rests on the keys in
//! the trust store alone ([`TLOG_NOTE`] says so to the user).
//!
//! Keys: cosign's encrypted private key files ([`CosignPrivateKey`]); public
//! keys are `keys::PublicKey` PEM keys.

mod key;
mod manifest;
mod verify;

#[cfg(test)]
mod tests;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p256::ecdsa::signature::Signer;

pub use key::{password, CosignKeyError, CosignPrivateKey, PASSWORD_ENV};
pub use manifest::{
    add_signature, parse_signature_manifest, signature_manifest, SignatureLayer, SignatureManifest,
    MAX_SIGNATURE_LAYERS, MAX_SIGNATURE_MANIFEST,
};
pub use verify::{verify, SignatureError, Verified};

/// The media type of a cosign simple-signing layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature over the layer blob.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a simple-signing payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Printed by the CLI when it verifies cosign signatures.
pub const TLOG_NOTE: &str = "note: cosign signatures are checked against trusted keys only; \
transparency-log (Rekor) entries are not checked";

/// The tag cosign stores an image's signatures at: `sha256-<hex>.sig` for
/// manifest digest `sha256:<hex>`; `None` for a malformed digest.
pub fn signature_tag(manifest_digest: &str) -> Option<String> {
    let hex = manifest_digest.strip_prefix("sha256:")?;
    is_sha256_hex(hex).then(|| format!("sha256-{hex}.sig"))
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for `sha256:` and 64 lowercase hex digits.
pub(crate) fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(is_sha256_hex)
}

/// The payload cosign signs for an image, byte for byte as cosign writes it:
/// `{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":DIGEST},"type":"cosign container image signature"},"optional":null}`.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    // serde_json's string escaping is JSON's; Go's additionally escapes <, >
    // and &, which a repository name or digest cannot contain.
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{}}},\"image\":{{\"docker-manifest-digest\":{}}},\"type\":{}}},\"optional\":null}}",
        q(docker_reference),
        q(manifest_digest),
        q(PAYLOAD_TYPE)
    )
    .into_bytes()
}

/// Signs `payload` as cosign does: ECDSA P-256 over SHA-256 of the bytes
/// (RFC 6979 nonces), ASN.1 DER, base64 — the value of
/// [`SIGNATURE_ANNOTATION`].
pub fn sign(key: &CosignPrivateKey, payload: &[u8]) -> String {
    let sig: p256::ecdsa::Signature = key.signing_key().sign(payload);
    B64.encode(sig.to_der().as_bytes())
}
