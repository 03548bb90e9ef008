//! Verifying an image's cosign signatures against the trust store's keys.

use ed25519_dalek::Signature as EdSignature;
use p256::ecdsa::signature::Verifier;
use serde::Deserialize;

use super::PAYLOAD_TYPE;
use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{KeyId, KeyMaterial};
use crate::trust::{Scope, TrustedKey};

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{image}: bad signature manifest: {why}")]
    Manifest { image: String, why: String },
    #[error("{image} is not signed: no cosign signature found (sign it with `cosign sign --key cosign.key {image}`)")]
    Unsigned { image: String },
    #[error(
        "{image}: no key is trusted for this name; trust the signer's public key with \
         `pod trust add --prefix {image} cosign.pub` (or a shorter prefix)"
    )]
    NoTrustedKey { image: String },
    #[error(
        "{image} is signed only by keys not trusted for this name: {}; trust one for it with \
         `pod trust add --prefix {image} KEY.pub`",
        .signers.iter().map(|(k, s)| format!("{k} (trusted for {s})")).collect::<Vec<_>>().join(", ")
    )]
    NotTrustedForName { image: String, signers: Vec<(KeyId, Scope)> },
    #[error(
        "{image}: none of its {count} signature(s) verifies with a key trusted for it ({}): the payload was \
         altered, or it was signed by a key pod does not trust",
        .keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    BadSignature { image: String, count: usize, keys: Vec<KeyId> },
    #[error(
        "{image}: the signature by key {key} is for manifest {signed}, not {expected} (the one fetched); \
         the tag may have moved since it was signed, or the signature was copied from another image"
    )]
    WrongDigest { image: String, key: KeyId, expected: String, signed: String },
    #[error(
        "{image}: the signature by key {key} is for image {signed:?}, not this one; it was copied from another \
         repository"
    )]
    WrongName { image: String, key: KeyId, signed: String },
    #[error("{image}: the signature by key {key} is over something other than a cosign image payload: {why}")]
    BadPayload { image: String, key: KeyId, why: String },
}

impl ExitCodeOf for SignatureError {
    fn exit(&self) -> Exit {
        match self {
            Self::Manifest { .. } => Exit::InvalidInput,
            _ => Exit::Verification,
        }
    }
}

/// What verified an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: KeyId,
    /// The scope the key is trusted for that covers the image.
    pub scope: Scope,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// True if `sig` by `key` verifies over `payload`: ECDSA P-256/SHA-256 (DER,
/// or fixed-size r||s) or plain Ed25519. pod-ed25519 keys sign ACI images
/// only (with a context of their own), so they verify no cosign signature.
fn signature_ok(key: &KeyMaterial, payload: &[u8], sig: &[u8]) -> bool {
    match key {
        KeyMaterial::EcdsaP256(k) => {
            let parsed = if sig.len() == 64 {
                p256::ecdsa::Signature::from_slice(sig)
            } else {
                p256::ecdsa::Signature::from_der(sig)
            };
            parsed.is_ok_and(|s| k.verify(payload, &s).is_ok())
        }
        KeyMaterial::Ed25519(k) => {
            <[u8; 64]>::try_from(sig).is_ok_and(|b| k.verify_strict(payload, &EdSignature::from_bytes(&b)).is_ok())
        }
        KeyMaterial::PodEd25519(_) => false,
    }
}

/// True if cosign's `docker-reference` names `image`: the repository
/// itself, or it with a `:tag` or `@digest`.
fn names_image(reference: &str, image: &str) -> bool {
    // cosign writes Docker Hub's repositories as `index.docker.io/...`;
    // pod names them `docker.io/...`, as docker does.
    let reference =
        match reference.strip_prefix("index.docker.io/").or_else(|| reference.strip_prefix("registry-1.docker.io/")) {
            Some(rest) if image.starts_with("docker.io/") => format!("docker.io/{rest}"),
            _ => reference.to_owned(),
        };
    match reference.strip_prefix(image) {
        Some("") => true,
        Some(rest) => (rest.starts_with(':') && !rest.contains('/')) || rest.starts_with('@'),
        None => false,
    }
}

/// Checks a payload whose signature verified.
fn check_payload(payload: &[u8], image: &str, digest: &str, key: &KeyId) -> Result<(), SignatureError> {
    let p: Payload = serde_json::from_slice(payload).map_err(|e| SignatureError::BadPayload {
        image: image.to_owned(),
        key: key.clone(),
        why: format!("not simple-signing JSON: {e}"),
    })?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(SignatureError::BadPayload {
            image: image.to_owned(),
            key: key.clone(),
            why: format!("type {:?}, expected {PAYLOAD_TYPE:?}", p.critical.kind),
        });
    }
    if p.critical.image.docker_manifest_digest != digest {
        return Err(SignatureError::WrongDigest {
            image: image.to_owned(),
            key: key.clone(),
            expected: digest.to_owned(),
            signed: p.critical.image.docker_manifest_digest,
        });
    }
    if !names_image(&p.critical.identity.docker_reference, image) {
        return Err(SignatureError::WrongName {
            image: image.to_owned(),
            key: key.clone(),
            signed: p.critical.identity.docker_reference,
        });
    }
    Ok(())
}

/// Verifies the cosign signatures of `image` (a repository such as
/// `127.0.0.1:5000/team/web`, as its trust prefixes are written) whose
/// manifest has `manifest_digest` (`sha256:<hex>`, the digest the fetch
/// resolved and checked).
///
/// `trusted` is the trust store's keys: those whose scope covers `image` can
/// verify it; any others only explain a failure (give `TrustStore::list` to
/// have "trusted for another prefix" reported, or `TrustStore::keys_for`).
/// `signatures` are (payload blob, signature) pairs, the payloads fetched by
/// the digests of [`super::parse_signature_manifest`] and checked against
/// them.
///
/// Succeeds iff one signature verifies with a covering key over its payload
/// exactly, and that payload is a cosign image payload naming `image` and
/// `manifest_digest`. Rekor entries are not checked (see [`super::TLOG_NOTE`]).
pub fn verify<P: AsRef<[u8]>, S: AsRef<[u8]>>(
    image: &str,
    manifest_digest: &str,
    trusted: &[TrustedKey],
    signatures: &[(P, S)],
) -> Result<Verified, SignatureError> {
    if signatures.is_empty() {
        return Err(SignatureError::Unsigned { image: image.to_owned() });
    }
    let (covering, others): (Vec<&TrustedKey>, Vec<&TrustedKey>) = trusted.iter().partition(|t| t.scope.covers(image));
    // The most telling failure is kept: a valid signature over the wrong
    // payload beats one by a key trusted elsewhere, which beats none.
    let mut payload_err = None;
    let mut elsewhere: Vec<(KeyId, Scope)> = Vec::new();
    for (payload, sig) in signatures {
        let (payload, sig) = (payload.as_ref(), sig.as_ref());
        for t in &covering {
            if signature_ok(&t.key.key, payload, sig) {
                match check_payload(payload, image, manifest_digest, &t.key.id) {
                    Ok(()) => {
                        tracing::debug!(image, key = %t.key.id, scope = %t.scope, "cosign signature verified");
                        return Ok(Verified { key_id: t.key.id.clone(), scope: t.scope.clone() });
                    }
                    Err(e) => payload_err = payload_err.or(Some(e)),
                }
            }
        }
        for t in &others {
            if signature_ok(&t.key.key, payload, sig) && !elsewhere.iter().any(|(k, s)| *k == t.key.id && *s == t.scope)
            {
                elsewhere.push((t.key.id.clone(), t.scope.clone()));
            }
        }
    }
    if let Some(e) = payload_err {
        return Err(e);
    }
    if !elsewhere.is_empty() {
        return Err(SignatureError::NotTrustedForName { image: image.to_owned(), signers: elsewhere });
    }
    if covering.is_empty() {
        return Err(SignatureError::NoTrustedKey { image: image.to_owned() });
    }
    let mut keys: Vec<KeyId> = covering.iter().map(|t| t.key.id.clone()).collect();
    keys.sort();
    keys.dedup();
    Err(SignatureError::BadSignature { image: image.to_owned(), count: signatures.len(), keys })
}

#[cfg(test)]
mod name_tests {
    use super::names_image;

    #[test]
    fn references_name_their_image() {
        assert!(names_image("127.0.0.1:5000/team/web", "127.0.0.1:5000/team/web"));
        assert!(names_image("127.0.0.1:5000/team/web:1.0", "127.0.0.1:5000/team/web"));
        assert!(names_image("127.0.0.1:5000/team/web@sha256:00", "127.0.0.1:5000/team/web"));
        assert!(!names_image("127.0.0.1:5000/team/webx", "127.0.0.1:5000/team/web"));
        assert!(!names_image("127.0.0.1:5000/team/web/x", "127.0.0.1:5000/team/web"));
        // cosign's spelling of Docker Hub.
        assert!(names_image("index.docker.io/library/busybox", "docker.io/library/busybox"));
        assert!(!names_image("index.docker.io/library/busybox", "example.com/library/busybox"));
    }
}
