//! A client of the OCI distribution API v2 (blocking): manifests and blobs
//! verified while they stream in, blob and manifest pushes for signatures.
//!
//! Requests go anonymously first; a 401 is answered once with a Bearer token
//! (cached per scope for the client's life) or Basic credentials from the
//! auth file (see [`crate::oci::auth`]). Redirects are followed here, not by
//! reqwest, so that `Authorization` goes only to the registry itself (blobs
//! are often redirected to a CDN or S3) and https never drops to http.
//!
//! Exit codes: a refusal after authenticating (401/403) is
//! [`Exit::Network`], as any HTTP status is: the content was not judged, and
//! the fix is credentials or the name, not trust. Content that differs from
//! its digest or size is [`Exit::Verification`]; malformed or oversized
//! responses are [`Exit::InvalidInput`].

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};

use crate::exit::{Exit, ExitCodeOf};
use crate::oci::auth::{self, AuthError, AuthFile};
use crate::oci::tls::{self, TlsError};

mod digest;
mod response;
mod session;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

pub use digest::{Algorithm, Digest, Hasher};
use response::{check_content_digest, error_detail, media_type_of, read_capped};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest media types asked for, in order of preference.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;
/// Token responses and error bodies are small.
const MAX_SMALL_BODY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: {why}")]
    Network { what: String, why: String },
    #[error("{what}: HTTP status {status}{detail}")]
    Status { what: String, status: u16, detail: String },
    #[error("{what}: not found{detail}")]
    NotFound { what: String, detail: String },
    #[error("{what}: access denied (HTTP {status}) after trying {tried}; the repository may not exist, or it needs credentials in an auth file")]
    Denied { what: String, status: u16, tried: String },
    #[error("refusing plain http for {url}: use https, or --insecure-options=http to allow it")]
    PlainHttp { url: String },
    #[error("{what}: {why}")]
    Redirect { what: String, why: String },
    #[error("{what}: the content's digest is {actual}, not {expected}: it is not what was asked for")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what}: {why}")]
    SizeMismatch { what: String, why: String },
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: malformed response: {why}")]
    Malformed { what: String, why: String },
    #[error("invalid {what}: {why}")]
    InvalidArgument { what: &'static str, why: String },
    #[error("{what}: writing: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ExitCodeOf for RegistryError {
    fn exit(&self) -> Exit {
        match self {
            Self::Network { .. } | Self::Status { .. } | Self::Denied { .. } | Self::Redirect { .. } => Exit::Network,
            Self::NotFound { .. } => Exit::NotFound,
            Self::PlainHttp { .. } | Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => Exit::Verification,
            Self::TooLarge { .. } | Self::Malformed { .. } | Self::InvalidArgument { .. } => Exit::InvalidInput,
            Self::Write { .. } => Exit::Failure,
            Self::Tls(e) => e.exit(),
            Self::Auth(e) => e.exit(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Plain http to the registry and its token realm (only with
    /// --insecure-options=http); https otherwise, never a silent fallback.
    pub plain_http: bool,
    /// `--ca-cert` PEM files (see [`tls::client_config`]).
    pub ca_certs: Vec<std::path::PathBuf>,
    /// The auth file; None: `$REGISTRY_AUTH_FILE` and the usual places
    /// ([`auth::default_auth_file`]).
    pub auth_file: Option<std::path::PathBuf>,
    pub max_manifest_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { plain_http: false, ca_certs: Vec::new(), auth_file: None, max_manifest_bytes: 4 << 20 }
    }
}

/// A manifest or index as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The body's `mediaType`, else the Content-Type.
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes` (the reference itself when it was a
    /// digest, which `bytes` then matched).
    pub digest: String,
}

/// A client of one registry. Cheap to clone; clones share the token cache.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `host[:port]` as named (auth file keys, messages).
    registry: String,
    /// `scheme://api-host[:port]/`.
    base: Url,
    plain_http: bool,
    http: Client,
    auth: AuthFile,
    /// Scope → the Authorization value that worked, and what it was.
    tokens: Mutex<HashMap<String, (HeaderValue, String)>>,
    max_manifest_bytes: u64,
}

/// One request: retried once after a 401, redirects followed for GET/HEAD.
#[derive(Debug)]
struct Call<'a> {
    method: Method,
    url: Url,
    /// `repository:<repo>:pull` (or `pull,push`).
    scope: String,
    repo: &'a str,
    /// Names the target in messages.
    what: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

fn validate_repo(repo: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| RegistryError::InvalidArgument { what: "repository name", why: format!("{repo:?}: {why}") };
    if repo.is_empty() || repo.len() > 255 {
        return Err(bad("must be 1 to 255 characters"));
    }
    for c in repo.split('/') {
        let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !alnum(c.as_bytes().first()) || !alnum(c.as_bytes().last()) {
            return Err(bad("each path component starts and ends with a lowercase letter or digit"));
        }
        if !c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(bad("only lowercase letters, digits, '.', '_', '-' and '/'"));
        }
    }
    Ok(())
}

/// A tag or a digest.
fn parse_reference(reference: &str) -> Result<Option<Digest>, RegistryError> {
    if reference.contains(':') {
        return Digest::parse(reference)
            .map(Some)
            .map_err(|why| RegistryError::InvalidArgument { what: "digest", why });
    }
    let ok = reference.len() <= 128
        && reference.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(RegistryError::InvalidArgument {
            what: "tag",
            why: format!("{reference:?}: up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"),
        });
    }
    Ok(None)
}

fn parse_digest(digest: &str) -> Result<Digest, RegistryError> {
    Digest::parse(digest).map_err(|why| RegistryError::InvalidArgument { what: "digest", why })
}

/// A URL fit for a message: no user info, no query (pre-signed URLs carry
/// credentials in it).
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl RegistryClient {
    /// A client of `registry` (`host[:port]`; `docker.io` is reached at
    /// `registry-1.docker.io`).
    pub fn new(registry: &str, opts: &ClientOptions) -> Result<Self, RegistryError> {
        let bad = |why: &str| RegistryError::InvalidArgument { what: "registry", why: format!("{registry:?}: {why}") };
        if registry.is_empty() || registry.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad("expected host[:port]"));
        }
        let api_host = match registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        let scheme = if opts.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|e| bad(&e.to_string()))?;
        let auth_path = match &opts.auth_file {
            Some(p) => Some(p.clone()),
            None => auth::default_auth_file(|k| std::env::var_os(k), |p| p.is_file()),
        };
        let auth = match &auth_path {
            Some(p) => AuthFile::load(p)?,
            None => AuthFile::default(),
        };
        tracing::debug!(registry, base = %base, auth_file = %auth.describe(), "registry client");
        let http = tls::http_client(&opts.ca_certs, !opts.plain_http, reqwest::redirect::Policy::none())?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry: registry.to_owned(),
                base,
                plain_http: opts.plain_http,
                http,
                auth,
                tokens: Mutex::default(),
                max_manifest_bytes: opts.max_manifest_bytes,
            }),
        })
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.inner
            .base
            .join(path)
            .map_err(|e| RegistryError::InvalidArgument { what: "request path", why: format!("{path}: {e}") })
    }

    fn call<'a>(
        &self,
        method: Method,
        repo: &'a str,
        path: &str,
        push: bool,
        what: String,
    ) -> Result<Call<'a>, RegistryError> {
        validate_repo(repo)?;
        let action = if push { "pull,push" } else { "pull" };
        Ok(Call {
            method,
            url: self.url(&format!("v2/{repo}/{path}"))?,
            scope: format!("repository:{repo}:{action}"),
            repo,
            what,
            headers: HeaderMap::new(),
            body: None,
        })
    }

    /// Fetches a manifest or index by tag or digest, verified against the
    /// digest (when `reference` is one) and `Docker-Content-Digest`, and read
    /// no further than `max_manifest_bytes`.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Manifest, RegistryError> {
        let wanted = parse_reference(reference)?;
        let sep = if wanted.is_some() { '@' } else { ':' };
        let what = format!("manifest {}/{repo}{sep}{reference}", self.inner.registry);
        let mut call = self.call(Method::GET, repo, &format!("manifests/{reference}"), false, what.clone())?;
        let accept = HeaderValue::from_str(&MANIFEST_TYPES.join(", "))
            .map_err(|e| RegistryError::InvalidArgument { what: "Accept header", why: e.to_string() })?;
        call.headers.insert(ACCEPT, accept);
        let resp = self.expect_success(&call, self.execute(&call)?)?;
        let limit = self.inner.max_manifest_bytes;
        let (body, headers) = read_capped(resp, limit, &what)?;
        let media_type =
            media_type_of(&body, &headers).map_err(|why| RegistryError::Malformed { what: what.clone(), why })?;
        let digest = match wanted {
            Some(d) => {
                let actual = Digest::of(d.algorithm, &body);
                if actual != d {
                    return Err(RegistryError::DigestMismatch {
                        what,
                        expected: d.to_string(),
                        actual: actual.to_string(),
                    });
                }
                d.to_string()
            }
            None => Digest::sha256(&body).to_string(),
        };
        check_content_digest(&headers, &body, &what)?;
        Ok(Manifest { media_type, bytes: body, digest })
    }

    /// Streams blob `digest` into `out` while hashing it; `progress` is
    /// called with the count of bytes received so far. Fails at once when
    /// more than `expected_size` bytes arrive, and at the end when fewer did
    /// or the digest differs: `out` holds garbage then, so write it to a
    /// temporary file and use that only after success.
    pub fn get_blob(
        &self,
        repo: &str,
        digest: &str,
        expected_size: Option<u64>,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RegistryError> {
        let wanted = parse_digest(digest)?;
        let what = format!("blob {}/{repo}@{digest}", self.inner.registry);
        let call = self.call(Method::GET, repo, &format!("blobs/{digest}"), false, what.clone())?;
        let mut resp = self.expect_success(&call, self.execute(&call)?)?;
        let size_err = |why: String| RegistryError::SizeMismatch { what: what.clone(), why };
        if let (Some(exp), Some(len)) = (expected_size, resp.content_length()) {
            if len != exp {
                return Err(size_err(format!("the registry announces {len} bytes, the descriptor says {exp}")));
            }
        }
        let mut hasher = Hasher::new(wanted.algorithm);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RegistryError::Network { what, why: tls::error_chain(&e) }),
            };
            total += n as u64;
            if let Some(exp) = expected_size.filter(|&exp| total > exp) {
                return Err(size_err(format!("more than the {exp} bytes of its descriptor arrived")));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|source| RegistryError::Write { what: what.clone(), source })?;
            progress(total);
        }
        if let Some(exp) = expected_size.filter(|&exp| total != exp) {
            return Err(size_err(format!("{total} bytes arrived, its descriptor says {exp}")));
        }
        let actual = hasher.finish();
        if actual != wanted {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_owned(),
                actual: actual.to_string(),
            });
        }
        Ok(total)
    }

    /// Whether the registry has blob `digest` in `repo`.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        parse_digest(digest)?;
        let what = format!("blob {}/{repo}@{digest}", self.inner.registry);
        let call = self.call(Method::HEAD, repo, &format!("blobs/{digest}"), false, what)?;
        let resp = self.execute(&call)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.expect_success(&call, resp).map(|_| true)
    }

    /// Uploads `bytes` as blob `digest` (a POST, then one monolithic PUT),
    /// unless the registry has it already. The bytes are in memory: this is
    /// for signatures and small configs, not layers.
    pub fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let wanted = parse_digest(digest)?;
        let what = format!("blob {}/{repo}@{digest}", self.inner.registry);
        let actual = Digest::of(wanted.algorithm, bytes);
        if actual != wanted {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_owned(),
                actual: actual.to_string(),
            });
        }
        if self.blob_exists(repo, digest)? {
            tracing::debug!(%what, "blob already in the registry");
            return Ok(());
        }
        let start = self.call(Method::POST, repo, "blobs/uploads/", true, what.clone())?;
        let resp = self.expect_success(&start, self.execute(&start)?)?;
        let location = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).ok_or_else(|| {
            RegistryError::Malformed { what: what.clone(), why: "upload started without a Location".into() }
        })?;
        let mut url = resp
            .url()
            .join(location)
            .map_err(|e| RegistryError::Malformed { what: what.clone(), why: format!("upload Location: {e}") })?;
        url.query_pairs_mut().append_pair("digest", digest);
        let mut put = self.call(Method::PUT, repo, "blobs/uploads/", true, what)?;
        put.url = url;
        put.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        put.body = Some(bytes.to_vec());
        self.expect_success(&put, self.execute(&put)?).map(drop)
    }

    /// Uploads a manifest under `reference` (a tag, or its own digest);
    /// returns its sha256 digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let wanted = parse_reference(reference)?;
        let what = format!("manifest {}/{repo}:{reference}", self.inner.registry);
        if let Some(d) = wanted {
            let actual = Digest::of(d.algorithm, bytes);
            if actual != d {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: d.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let mut call = self.call(Method::PUT, repo, &format!("manifests/{reference}"), true, what.clone())?;
        let ct = HeaderValue::from_str(media_type)
            .map_err(|e| RegistryError::InvalidArgument { what: "media type", why: format!("{media_type:?}: {e}") })?;
        call.headers.insert(CONTENT_TYPE, ct);
        call.body = Some(bytes.to_vec());
        let resp = self.expect_success(&call, self.execute(&call)?)?;
        check_content_digest(resp.headers(), bytes, &what)?;
        Ok(Digest::sha256(bytes).to_string())
    }

    /// Maps a final response's status to an error (404 and the registry's
    /// *_UNKNOWN codes: NotFound; 401/403: Denied).
    fn expect_success(&self, call: &Call<'_>, resp: Response) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let tried = self.tried(&call.scope);
        let detail = error_detail(resp);
        let unknown = ["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"].iter().any(|c| detail.contains(c));
        let what = call.what.clone();
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound { what, detail },
            _ if unknown => RegistryError::NotFound { what, detail },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                RegistryError::Denied { what, status: status.as_u16(), tried }
            }
            _ => RegistryError::Status { what, status: status.as_u16(), detail },
        })
    }
}
