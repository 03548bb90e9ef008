//! Reading and checking registry responses: capped bodies, media types,
//! `Docker-Content-Digest`, the registry's error codes.

use std::io::Read;

use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, CONTENT_TYPE};

use super::{tls, Digest, RegistryError, MAX_SMALL_BODY};

/// Reads at most `limit` bytes, one more is an error; a body announced
/// larger is refused before reading any of it.
pub(super) fn read_capped(resp: Response, limit: u64, what: &str) -> Result<(Vec<u8>, HeaderMap), RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::TooLarge { what: what.to_owned(), limit });
    }
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    resp.take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| RegistryError::Network { what: what.to_owned(), why: tls::error_chain(&e) })?;
    if body.len() as u64 > limit {
        return Err(RegistryError::TooLarge { what: what.to_owned(), limit });
    }
    Ok((body, headers))
}

pub(super) fn media_type_of(body: &[u8], headers: &HeaderMap) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    if let Some(mt) = v.get("mediaType") {
        return mt.as_str().map(str::to_owned).ok_or_else(|| "mediaType is not a string".to_owned());
    }
    let ct = headers.get(CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or_default();
    let ct = ct.split(';').next().unwrap_or_default().trim();
    if ct.is_empty() {
        return Err("no mediaType in the body and no Content-Type".to_owned());
    }
    Ok(ct.to_owned())
}

/// `Docker-Content-Digest`, when sent, must be the digest of the bytes.
pub(super) fn check_content_digest(headers: &HeaderMap, body: &[u8], what: &str) -> Result<(), RegistryError> {
    let Some(h) = headers.get("docker-content-digest") else { return Ok(()) };
    let h = h.to_str().unwrap_or_default();
    let claimed = Digest::parse(h).map_err(|why| RegistryError::Malformed {
        what: what.to_owned(),
        why: format!("Docker-Content-Digest: {why}"),
    })?;
    let actual = Digest::of(claimed.algorithm, body);
    if actual != claimed {
        return Err(RegistryError::DigestMismatch {
            what: format!("{what} (Docker-Content-Digest)"),
            expected: claimed.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// The registry's error codes and messages from an error body, for a message.
pub(super) fn error_detail(resp: Response) -> String {
    let mut body = Vec::new();
    if resp.take(MAX_SMALL_BODY).read_to_end(&mut body).is_err() {
        return String::new();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else { return String::new() };
    let parts: Vec<String> = v
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errs| {
            errs.iter()
                .take(4)
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                    let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    let msg: String = msg.chars().filter(|c| !c.is_control()).take(200).collect();
                    format!("{code} {msg}").trim().to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}
