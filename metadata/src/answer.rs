//! The endpoints (appc's ace.md), as a pure function of the request and
//! the asking pod's record: no I/O, so every answer is unit-tested.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha512;
use spec::metadata::{PodRecord, PATH_BASE};

/// The `Content-Type`s the spec gives each endpoint.
pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=us-ascii";

/// The largest form body taken (a sign or verify request).
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status: 200, content_type, body: body.into() }
    }

    fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::ok(JSON, body),
            Err(e) => Self::error(500, &format!("rendering JSON: {e}")),
        }
    }

    pub fn error(status: u16, why: &str) -> Self {
        Self { status, content_type: TEXT, body: format!("{why}\n").into_bytes() }
    }
}

/// One request, as the HTTP layer read it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path after the pod's token, e.g. `/acMetadata/v1/pod/uuid`.
    pub path: &'a str,
    /// Whether `Metadata-Flavor: AppContainer` came with it.
    pub flavored: bool,
    pub body: &'a [u8],
}

/// Splits `/TOKEN/rest` into the token and `/rest`.
pub fn split_token(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    })
}

/// Whether `given` is `expected`, in time independent of where they differ.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The pod's HMAC-SHA512 of `content`, base64.
pub fn sign(key_hex: &str, content: &[u8]) -> Result<String, String> {
    let key = hex::decode(key_hex).map_err(|e| format!("the pod's key: {e}"))?;
    let mut mac = Hmac::<Sha512>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(content);
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (base64) is the HMAC of `content` under the key.
fn verify(key_hex: &str, content: &[u8], signature: &str) -> bool {
    let Ok(key) = hex::decode(key_hex) else { return false };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(&key) else { return false };
    mac.update(content);
    mac.verify_slice(&sig).is_ok()
}

/// The answer to `req` from the pod `uuid` whose record is `pod`;
/// `key_of` gives another live pod's HMAC key by uuid (for `verify`).
pub fn answer(uuid: &str, pod: &PodRecord, req: &Request<'_>, key_of: &dyn Fn(&str) -> Option<String>) -> Answer {
    if !req.flavored {
        return Answer::error(400, "requests need the header Metadata-Flavor: AppContainer");
    }
    let Some(endpoint) = req.path.strip_prefix(PATH_BASE) else {
        return Answer::error(404, &format!("no such endpoint (they are under {PATH_BASE}/)"));
    };
    let get = req.method == "GET";
    let post = req.method == "POST";
    let parts: Vec<&str> = endpoint.trim_start_matches('/').split('/').collect();
    match (parts.as_slice(), get, post) {
        (["pod", "annotations"], true, _) => {
            Answer::json(pod.manifest.get("annotations").unwrap_or(&serde_json::Value::Array(Vec::new())))
        }
        (["pod", "manifest"], true, _) => Answer::json(&pod.manifest),
        (["pod", "uuid"], true, _) => Answer::ok(TEXT, uuid),
        (["pod", "hmac", "sign"], _, true) => {
            let Some(content) = form_value(req.body, "content") else {
                return Answer::error(400, "sign: the form has no content");
            };
            match sign(&pod.hmac_key, content.as_bytes()) {
                Ok(sig) => Answer::ok(TEXT, sig),
                Err(e) => Answer::error(500, &e),
            }
        }
        (["pod", "hmac", "verify"], _, true) => {
            let (Some(content), Some(signer), Some(signature)) =
                (form_value(req.body, "content"), form_value(req.body, "uuid"), form_value(req.body, "signature"))
            else {
                return Answer::error(400, "verify: the form needs content, uuid and signature");
            };
            let key = if signer == uuid { Some(pod.hmac_key.clone()) } else { key_of(&signer) };
            match key {
                Some(key) if verify(&key, content.as_bytes(), &signature) => Answer::ok(TEXT, ""),
                Some(_) => Answer::error(403, "the signature does not verify for that pod"),
                None => Answer::error(403, "no running pod has that uuid"),
            }
        }
        (["apps", name, rest @ ..], true, _) => {
            let Some(app) = pod.apps.iter().find(|a| a.name == *name) else {
                return Answer::error(404, &format!("the pod has no app {name:?}"));
            };
            match rest {
                ["annotations"] => Answer::json(&app.annotations),
                ["image", "manifest"] => Answer::json(&app.image_manifest),
                ["image", "id"] => Answer::ok(TEXT, app.image_id.clone()),
                _ => Answer::error(404, "no such endpoint"),
            }
        }
        (["pod", "annotations" | "manifest" | "uuid"] | ["apps", ..], false, _)
        | (["pod", "hmac", "sign" | "verify"], _, false) => Answer::error(405, "method not allowed"),
        _ => Answer::error(404, "no such endpoint"),
    }
}

/// The value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::metadata::{Annotation, AppRecord};

    fn record() -> PodRecord {
        PodRecord {
            token: "t0k3n".into(),
            hmac_key: hex::encode([7u8; 64]),
            manifest: serde_json::json!({ "acKind": "PodManifest", "annotations": [{ "name": "a", "value": "b" }] }),
            apps: vec![AppRecord {
                name: "web".into(),
                image_id: "sha512-abc".into(),
                image_manifest: serde_json::json!({ "acKind": "ImageManifest", "name": "example.com/web" }),
                annotations: vec![Annotation { name: "x".into(), value: "y".into() }],
            }],
        }
    }

    fn get(path: &str) -> Answer {
        let req = Request { method: "GET", path, flavored: true, body: b"" };
        answer("u-1", &record(), &req, &|_| None)
    }

    fn post(path: &str, body: &str, key_of: &dyn Fn(&str) -> Option<String>) -> Answer {
        let req = Request { method: "POST", path, flavored: true, body: body.as_bytes() };
        answer("u-1", &record(), &req, key_of)
    }

    #[test]
    fn the_pod_and_app_endpoints_answer_from_the_record() {
        let a = get("/acMetadata/v1/pod/uuid");
        assert_eq!((a.status, a.content_type, a.body.as_slice()), (200, TEXT, b"u-1".as_slice()));
        let a = get("/acMetadata/v1/pod/annotations");
        assert_eq!((a.status, a.content_type), (200, JSON));
        assert_eq!(String::from_utf8_lossy(&a.body), r#"[{"name":"a","value":"b"}]"#);
        assert_eq!(get("/acMetadata/v1/pod/manifest").status, 200);
        assert_eq!(get("/acMetadata/v1/apps/web/image/id").body, b"sha512-abc");
        assert_eq!(
            String::from_utf8_lossy(&get("/acMetadata/v1/apps/web/annotations").body),
            r#"[{"name":"x","value":"y"}]"#
        );
        assert_eq!(get("/acMetadata/v1/apps/web/image/manifest").content_type, JSON);
        assert_eq!(get("/acMetadata/v1/apps/db/image/id").status, 404, "another pod's or no app");
        assert_eq!(get("/acMetadata/v1/nothing").status, 404);
        assert_eq!(get("/etc/passwd").status, 404);
        assert_eq!(post("/acMetadata/v1/pod/uuid", "", &|_| None).status, 405);
    }

    #[test]
    fn requests_without_the_flavor_header_are_refused() {
        let req = Request { method: "GET", path: "/acMetadata/v1/pod/uuid", flavored: false, body: b"" };
        assert_eq!(answer("u-1", &record(), &req, &|_| None).status, 400);
    }

    #[test]
    fn a_signature_verifies_for_its_pod_only() {
        let sig = post("/acMetadata/v1/pod/hmac/sign", "content=Old+MacDonald", &|_| None);
        assert_eq!((sig.status, sig.content_type), (200, TEXT));
        let sig = String::from_utf8(sig.body).expect("base64 is ascii");
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&sig).map(|s| s.len()), Ok(64), "HMAC-SHA512");
        let form = |uuid: &str, content: &str| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("content", content)
                .append_pair("uuid", uuid)
                .append_pair("signature", &sig)
                .finish()
        };
        // As its own pod, and as another pod would ask with its uuid.
        assert_eq!(post("/acMetadata/v1/pod/hmac/verify", &form("u-1", "Old MacDonald"), &|_| None).status, 200);
        let other_key = hex::encode([9u8; 64]);
        let key_of = |u: &str| (u == "u-2").then(|| other_key.clone());
        assert_eq!(post("/acMetadata/v1/pod/hmac/verify", &form("u-2", "Old MacDonald"), &key_of).status, 403);
        assert_eq!(post("/acMetadata/v1/pod/hmac/verify", &form("u-1", "Old MacDonalds"), &key_of).status, 403);
        assert_eq!(post("/acMetadata/v1/pod/hmac/verify", &form("u-3", "Old MacDonald"), &key_of).status, 403);
        assert_eq!(post("/acMetadata/v1/pod/hmac/verify", "content=x", &key_of).status, 400);
    }

    #[test]
    fn the_token_is_the_first_path_segment() {
        assert_eq!(split_token("/abc/acMetadata/v1/pod/uuid"), Some(("abc", "/acMetadata/v1/pod/uuid")));
        assert_eq!(split_token("/abc"), Some(("abc", "")));
        assert_eq!(split_token("abc"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
