//! How one request is sent: the cached Authorization for its scope, one
//! answer to a 401 challenge, and redirects followed by hand.
//!
//! Where credentials go: Basic to the registry itself; to a Bearer token
//! realm only when the realm is on the registry's host, or the auth file has
//! an entry for the realm's own host (whose credentials are then sent), or
//! it is Docker Hub's known pair. Otherwise the token is asked for
//! anonymously. `Authorization` follows a redirect only to the same origin.

use std::io::Read;

use reqwest::blocking::Response;
use reqwest::header::{HeaderValue, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use super::{redact, same_origin, Call, RegistryClient, RegistryError, MAX_REDIRECTS, MAX_SMALL_BODY};
use crate::oci::auth::{self, Credentials};
use crate::oci::tls;

fn sensitive(value: &str, what: &str) -> Result<HeaderValue, RegistryError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| RegistryError::Malformed {
        what: what.to_owned(),
        why: "credentials unfit for a header".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl RegistryClient {
    /// Sends `call` with the cached Authorization of its scope; on a 401
    /// from the registry, authenticates and sends it once more.
    pub(super) fn execute(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        let cached = self.cached(&call.scope);
        let resp = self.send(call, cached.as_ref())?;
        if resp.status() != StatusCode::UNAUTHORIZED || !same_origin(resp.url(), &self.inner.base) {
            return Ok(resp);
        }
        let header = self.authenticate(call, &resp)?;
        self.send(call, Some(&header))
    }

    fn cached(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(scope).map(|(h, _)| h.clone())
    }

    /// What was tried for `scope`, for a message (never the secret).
    pub(super) fn tried(&self, scope: &str) -> String {
        let tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get(scope) {
            Some((_, tried)) => tried.clone(),
            None => format!("anonymous access (auth file: {})", self.inner.auth.describe()),
        }
    }

    /// Sends `call` to its URL, following up to [`MAX_REDIRECTS`] redirects
    /// of a GET or HEAD; `auth` goes only to the registry's own origin.
    fn send(&self, call: &Call<'_>, auth: Option<&HeaderValue>) -> Result<Response, RegistryError> {
        self.send_to(&call.method, call.url.clone(), call, &self.inner.base, auth)
    }

    fn send_to(
        &self,
        method: &Method,
        mut url: Url,
        call: &Call<'_>,
        auth_origin: &Url,
        auth: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let mut seen: Vec<Url> = Vec::new();
        loop {
            if url.scheme() != "https" && !(url.scheme() == "http" && self.inner.plain_http) {
                return Err(RegistryError::PlainHttp { url: redact(&url) });
            }
            let mut rb = self.inner.http.request(method.clone(), url.clone()).headers(call.headers.clone());
            if let Some(a) = auth.filter(|_| same_origin(&url, auth_origin)) {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            if let Some(b) = &call.body {
                rb = rb.body(b.clone());
            }
            let host = url.host_str().unwrap_or_default().to_owned();
            let resp = rb.send().map_err(|e| RegistryError::Network {
                what: format!("{} ({} {})", call.what, method, redact(&url)),
                why: tls::explain(&e, &host),
            })?;
            let follow = matches!(*method, Method::GET | Method::HEAD)
                && resp.status().is_redirection()
                && resp.status() != StatusCode::NOT_MODIFIED;
            if !follow {
                return Ok(resp);
            }
            let redirect_err = |why: String| RegistryError::Redirect { what: call.what.clone(), why };
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| redirect_err(format!("redirect from {} without a usable Location", redact(&url))))?;
            if next.scheme() == "http" && url.scheme() == "https" && !self.inner.plain_http {
                return Err(redirect_err(format!(
                    "refusing the redirect from https to plain http {} (--insecure-options=http allows it)",
                    redact(&next)
                )));
            }
            seen.push(url);
            if seen.contains(&next) {
                return Err(redirect_err(format!("redirect loop at {}", redact(&next))));
            }
            if seen.len() > MAX_REDIRECTS {
                return Err(redirect_err(format!(
                    "more than {MAX_REDIRECTS} redirects, the last to {}",
                    redact(&next)
                )));
            }
            tracing::debug!(what = %call.what, to = %redact(&next), "following a redirect");
            url = next;
        }
    }

    /// Answers the challenge of a 401; caches and returns the Authorization.
    fn authenticate(&self, call: &Call<'_>, resp: &Response) -> Result<HeaderValue, RegistryError> {
        let inner = &self.inner;
        let malformed = |why: String| RegistryError::Malformed { what: call.what.clone(), why };
        let mut challenges = Vec::new();
        for h in resp.headers().get_all(WWW_AUTHENTICATE) {
            let h = h.to_str().map_err(|_| malformed("WWW-Authenticate is not text".into()))?;
            challenges.extend(auth::parse_challenges(h).map_err(|e| malformed(format!("WWW-Authenticate: {e}")))?);
        }
        let denied = |tried: String| RegistryError::Denied { what: call.what.clone(), status: 401, tried };
        let creds = inner.auth.lookup(&inner.registry, call.repo);
        let (header, tried) = if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            self.bearer(call, b)?
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(c) = creds else {
                return Err(denied(format!(
                    "anonymous access; the registry wants a password and {} has none for {}",
                    inner.auth.describe(),
                    inner.registry
                )));
            };
            let tried = format!("the credentials for {} from {}", inner.registry, inner.auth.describe());
            (sensitive(&c.basic(), &call.what)?, tried)
        } else if challenges.is_empty() {
            return Err(malformed("401 without a WWW-Authenticate challenge".into()));
        } else {
            let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
            return Err(denied(format!("anonymous access; unsupported authentication {}", schemes.join(", "))));
        };
        let mut tokens = inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert(call.scope.clone(), (header.clone(), tried));
        Ok(header)
    }

    /// Gets a token from the challenge's realm for `call.scope`.
    fn bearer(&self, call: &Call<'_>, ch: &auth::Challenge) -> Result<(HeaderValue, String), RegistryError> {
        let inner = &self.inner;
        let malformed = |why: String| RegistryError::Malformed { what: call.what.clone(), why };
        let realm = ch.param("realm").ok_or_else(|| malformed("Bearer challenge without a realm".into()))?;
        let mut url = Url::parse(realm).map_err(|e| malformed(format!("token realm {realm:?}: {e}")))?;
        if url.scheme() != "https" && !(url.scheme() == "http" && inner.plain_http) {
            return Err(RegistryError::PlainHttp { url: redact(&url) });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = ch.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &call.scope);
        }
        let realm_host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let realm_authority = match url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host.clone(),
        };
        let registry_host = inner.base.host_str().unwrap_or_default().to_ascii_lowercase();
        let file = inner.auth.describe();
        let creds: Option<(&Credentials, String)> = if realm_host == registry_host
            || (inner.registry == "docker.io" && realm_host == "auth.docker.io")
        {
            inner
                .auth
                .lookup(&inner.registry, call.repo)
                .map(|c| (c, format!("the credentials for {} from {file}", inner.registry)))
        } else if let Some(c) = inner.auth.lookup_host(&realm_authority).or_else(|| inner.auth.lookup_host(&realm_host))
        {
            Some((c, format!("the credentials for {realm_authority} from {file}")))
        } else {
            if inner.auth.lookup(&inner.registry, call.repo).is_some() {
                tracing::debug!(
                    registry = %inner.registry,
                    realm = %realm_authority,
                    "token realm is on another host with no auth file entry of its own: asking for a token anonymously"
                );
            }
            None
        };
        let tried = match &creds {
            Some((_, t)) => format!("a token from {realm_authority} with {t}"),
            None => format!("an anonymous token from {realm_authority} (auth file: {file})"),
        };
        let basic = match &creds {
            Some((c, _)) => Some(sensitive(&c.basic(), &call.what)?),
            None => None,
        };
        let token_call = Call {
            method: Method::GET,
            url: url.clone(),
            scope: call.scope.clone(),
            repo: call.repo,
            what: format!("token for {} from {}", call.scope, redact(&url)),
            headers: Default::default(),
            body: None,
        };
        let resp = self.send_to(&Method::GET, url.clone(), &token_call, &url, basic.as_ref())?;
        match resp.status() {
            s if s.is_success() => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(RegistryError::Denied { what: call.what.clone(), status: s.as_u16(), tried })
            }
            s => {
                return Err(RegistryError::Status { what: token_call.what, status: s.as_u16(), detail: String::new() })
            }
        }
        let mut body = Vec::new();
        resp.take(MAX_SMALL_BODY)
            .read_to_end(&mut body)
            .map_err(|e| RegistryError::Network { what: token_call.what.clone(), why: tls::error_chain(&e) })?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| malformed("the token response is not JSON".into()))?;
        let token = ["token", "access_token"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|t| t.as_str()).filter(|t| !t.is_empty()))
            .ok_or_else(|| malformed("the token response has no \"token\" or \"access_token\"".into()))?;
        Ok((sensitive(&format!("Bearer {token}"), &call.what)?, tried))
    }
}
