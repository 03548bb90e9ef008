//! The signature check of a pull, before any blob is fetched: cosign's
//! attachment in the registry (the `sha256-<hex>.sig` tag, on the image's
//! manifest or on the index it was picked from), a detached payload and
//! signature (`--signature`, for layouts and archives), or none
//! (`--insecure-options=image`, loudly).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::pull::{BlobSource, Request, Verify};
use super::sigstore::{self, SignatureError};
use super::OciError;
use crate::exit::ExitCodeOf;

/// Largest signature payload fetched (cosign's are a few hundred bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

fn sig_err(e: SignatureError) -> OciError {
    OciError::Other { exit: e.exit(), message: e.to_string() }
}

/// Checks the signature `req` asks for; returns the key ID that verified.
/// `manifest_digest` is the image manifest's; `index_digest` the index's
/// it was picked from, if any: a signature of either will do, as cosign
/// signs whichever digest the tag named.
pub fn check(
    src: &dyn BlobSource,
    req: &Request<'_>,
    manifest_digest: &str,
    index_digest: Option<&str>,
) -> Result<Option<String>, OciError> {
    let name = req.name.as_str();
    let candidates: Vec<&str> = std::iter::once(manifest_digest).chain(index_digest).collect();
    match &req.verify {
        Verify::Skip => {
            tracing::warn!(image = %req.location, "--insecure-options=image: the signature is NOT verified");
            Ok(None)
        }
        Verify::Detached { trust, payload, signature } => {
            let trusted = trust.list().map_err(|e| OciError::Other { exit: e.exit(), message: e.to_string() })?;
            let text = String::from_utf8_lossy(signature);
            let sig = B64.decode(text.trim()).map_err(|e| {
                OciError::Signature(format!("{}: the --signature file is not base64: {e}", req.location))
            })?;
            let mut last = None;
            for digest in &candidates {
                match sigstore::verify(name, digest, &trusted, &[(payload, &sig)]) {
                    Ok(v) => {
                        eprintln!("{}", sigstore::TLOG_NOTE);
                        return Ok(Some(v.key_id.to_string()));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map_or_else(|| OciError::Signature(format!("{name}: not signed")), sig_err))
        }
        Verify::Attached(trust) => {
            let trusted = trust.list().map_err(|e| OciError::Other { exit: e.exit(), message: e.to_string() })?;
            let mut last = None;
            let mut found = false;
            for digest in &candidates {
                let Some(tag) = sigstore::signature_tag(digest) else { continue };
                let sig_manifest = match src.manifest(&tag) {
                    Ok(m) => m,
                    Err(OciError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                found = true;
                let layers = sigstore::parse_signature_manifest(&sig_manifest.bytes, name).map_err(sig_err)?;
                let mut pairs = Vec::with_capacity(layers.len());
                for l in &layers {
                    if l.size > MAX_PAYLOAD {
                        continue;
                    }
                    let mut payload = Vec::new();
                    src.blob(&l.digest, l.size, &mut payload, &mut |_| {})?;
                    pairs.push((payload, l.signature.clone()));
                }
                match sigstore::verify(name, digest, &trusted, &pairs) {
                    Ok(v) => {
                        tracing::info!(image = name, key = %v.key_id, scope = %v.scope, "cosign signature verified");
                        eprintln!("{}", sigstore::TLOG_NOTE);
                        return Ok(Some(v.key_id.to_string()));
                    }
                    Err(e) => last = Some(e),
                }
            }
            if !found {
                return Err(OciError::Signature(format!(
                    "{} is not signed: no cosign signature ({}) in the registry for {manifest_digest}{}; sign it \
                     with `cosign sign --key cosign.key` or `pod image sign`, or pass --insecure-options=image to \
                     skip verification (not recommended)",
                    req.location,
                    sigstore::signature_tag(manifest_digest).unwrap_or_default(),
                    index_digest.map(|d| format!(" or its index {d}")).unwrap_or_default(),
                )));
            }
            Err(last.map_or_else(|| OciError::Signature(format!("{name}: not signed")), sig_err))
        }
    }
}
