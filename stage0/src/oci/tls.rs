//! TLS for registries: the system roots plus `--ca-cert` files, a registry's
//! own self-signed certificate accepted when given with `--ca-cert` (as curl
//! and Go accept it), and TLS failures explained in words.
//!
//! rustls refuses a self-signed end-entity certificate even when it is a
//! trust anchor (`CaUsedAsEndEntity`, or `UnknownIssuer` for some shapes), so
//! [`PinnedOrWebPki`] first asks whether the server's certificate is
//! byte-identical to one the user gave; if so the handshake signature, the
//! name and the validity period are still checked, only the chain is not.
//! Every other certificate goes through rustls' WebPki verifier unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::exit::{Exit, ExitCodeOf};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading CA certificate {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CA certificate {path}: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl ExitCodeOf for TlsError {
    fn exit(&self) -> Exit {
        match self {
            Self::Read { .. } | Self::Config(_) | Self::Client(_) => Exit::Failure,
            Self::Pem { .. } => Exit::InvalidInput,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a bundle may hold several).
fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), why: format!("not a PEM certificate: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), why: "no PEM certificate in the file".to_owned() });
    }
    Ok(certs)
}

/// A rustls client configuration trusting the system roots plus each
/// `--ca-cert` PEM file; a server presenting one of those certificates
/// itself is accepted (see the module docs).
pub fn client_config(ca_certs: &[PathBuf]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system root certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    let mut pinned = Vec::new();
    for path in ca_certs {
        for cert in read_pem_certs(path)? {
            // A self-signed leaf is a fine anchor for webpki's purposes too;
            // one that is not an anchor at all is still pinned below.
            if let Err(e) = roots.add(cert.clone()) {
                tracing::debug!(path = %path.display(), error = %e, "--ca-cert not usable as a trust anchor; pinned only");
            }
            pinned.push(cert);
        }
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Some(v)
    };
    let verifier = Arc::new(PinnedOrWebPki { pinned, webpki, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// A blocking HTTP client over [`client_config`]. `https_only` refuses plain
/// http URLs outright; `redirect` is reqwest's policy (the registry client
/// follows redirects itself, with `Policy::none()`).
pub fn http_client(
    ca_certs: &[PathBuf],
    https_only: bool,
    redirect: reqwest::redirect::Policy,
) -> Result<reqwest::blocking::Client, TlsError> {
    let config = client_config(ca_certs)?;
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(3600))
        .https_only(https_only)
        .redirect(redirect)
        .user_agent(concat!("pod/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}

/// Accepts a server certificate byte-identical to a `--ca-cert` one (name,
/// validity and handshake signature still checked); otherwise WebPki.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    /// None when there is no root at all (no system store, no --ca-cert).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            check_validity(end_entity, now)?;
            tracing::debug!(server = ?server_name, "server certificate accepted: it is one given with --ca-cert (pinned)");
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(CertificateError::UnknownIssuer.into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// notBefore <= now <= notAfter, for a pinned certificate (webpki checks
/// this for the others). rustls exposes no validity period, openssl does.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let bad = |_| rustls::Error::from(CertificateError::BadEncoding);
    let x = openssl::x509::X509::from_der(cert.as_ref()).map_err(bad)?;
    let secs = i64::try_from(now.as_secs()).map_err(|_| CertificateError::Expired)?;
    let now_asn1 = openssl::asn1::Asn1Time::from_unix(secs).map_err(bad)?;
    if x.not_before().compare(&now_asn1).map_err(bad)? == std::cmp::Ordering::Greater {
        return Err(CertificateError::NotValidYet.into());
    }
    if x.not_after().compare(&now_asn1).map_err(bad)? == std::cmp::Ordering::Less {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

/// Each error in the chain of `err`. `io::Error::source` skips the error
/// it wraps, so an io error is opened with `get_ref` instead.
fn chain_any<'a>(
    err: &'a (dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&'a (dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if f(e) {
            return true;
        }
        cur = match e.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// The first rustls error under `err`.
fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut found = None;
    chain_any(err, &mut |e| {
        found = e.downcast_ref::<rustls::Error>();
        found.is_some()
    });
    found
}

/// tokio-rustls reports a peer that hangs up mid-handshake as an io error
/// of its own, with no rustls error under it.
fn handshake_eof(err: &(dyn std::error::Error + 'static)) -> bool {
    chain_any(err, &mut |e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof && io.to_string().contains("handshake"))
    })
}

/// The message of `e` and of each of its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

fn unix_date(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} (unix time)"))
}

/// A sentence explaining a failed request to `host`: TLS failures in words
/// with what to pass, the error chain otherwise.
pub fn explain(err: &reqwest::Error, host: &str) -> String {
    match find_rustls(err) {
        Some(r) => explain_rustls(r, host),
        None if handshake_eof(err) => format!(
            "{host} closed the connection during the TLS handshake: it may not serve TLS on this port (for a plain http registry, pass --insecure-options=http) or it refused pod's TLS versions"
        ),
        None if err.is_timeout() => format!("{host}: timed out ({})", error_chain(err)),
        None if err.is_connect() => format!("cannot connect to {host}: {}", error_chain(err)),
        None => error_chain(err),
    }
}

fn explain_rustls(err: &rustls::Error, host: &str) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(c) => explain_cert(c, host),
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        | E::InvalidMessage(rustls::InvalidMessage::InvalidEmptyPayload)
        | E::InvalidMessage(rustls::InvalidMessage::MessageTooLarge) => format!(
            "{host} does not speak TLS on this port (a plain http server?); if the registry serves only plain http, pass --insecure-options=http"
        ),
        E::AlertReceived(alert) => {
            format!("{host} refused the TLS handshake (alert: {alert:?}); it may want a client certificate or a newer TLS version")
        }
        E::PeerIncompatible(p) => {
            format!("{host} and pod have no TLS version, cipher suite or signature scheme in common ({p:?})")
        }
        other => format!("TLS with {host} failed: {other}"),
    }
}

fn explain_cert(c: &CertificateError, host: &str) -> String {
    let ca_hint = "pass --ca-cert FILE with the CA certificate that issued it, or with the registry's own certificate if it is self-signed";
    match c {
        CertificateError::UnknownIssuer => {
            format!("the TLS certificate of {host} is not issued by a trusted authority; {ca_hint}")
        }
        CertificateError::NotValidForName => format!(
            "the TLS certificate of {host} is not valid for the name {host}; use the name the certificate is for, or have it reissued for {host}"
        ),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names = if presented.is_empty() {
                "no name in subjectAltName (the common name alone is not used)".to_owned()
            } else {
                presented.join(", ")
            };
            format!(
                "the TLS certificate of {host} is not valid for the name {host}: it is for {names}; use that name, or have the certificate reissued for {host}"
            )
        }
        CertificateError::Expired => format!("the TLS certificate of {host} has expired"),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("the TLS certificate of {host} expired at {}", unix_date(*not_after))
        }
        CertificateError::NotValidYet => format!("the TLS certificate of {host} is not valid yet (check the clock)"),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the TLS certificate of {host} is not valid before {} (check the clock)",
            unix_date(*not_before)
        ),
        CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => format!(
            "{host} presents a CA certificate as its own server certificate; if it is the registry's self-signed certificate, pass that exact file with --ca-cert FILE"
        ),
        other => format!("the TLS certificate of {host} was refused: {other:?}"),
    }
}

/// The verifier against certificates made by the openssl CLI, served by an
/// in-test rustls server on 127.0.0.1.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::oci::registry::test_server::{serve, serve_tls, Pki, Resp};

    fn get(ca: &[PathBuf], url: &str) -> Result<String, reqwest::Error> {
        let c = http_client(ca, true, reqwest::redirect::Policy::none()).expect("client");
        c.get(url).send()?.text()
    }

    fn ok(_: &crate::oci::registry::test_server::Req) -> Resp {
        Resp::new(200).body("ok")
    }

    #[test]
    fn self_signed_leaf_given_with_ca_cert_is_accepted() {
        let Some(pki) = Pki::new("self_signed_leaf_given_with_ca_cert_is_accepted") else { return };
        for ca_flag in [false, true] {
            let (pem, key) = pki.self_signed(&format!("self{ca_flag}"), "DNS:localhost,IP:127.0.0.1", ca_flag);
            let srv = serve_tls(&pem, &key, ok);
            let url = format!("https://localhost:{}/", srv.port);
            assert_eq!(get(std::slice::from_ref(&pem), &url).expect("pinned"), "ok", "CA:{ca_flag}");
            let ip = format!("https://127.0.0.1:{}/", srv.port);
            assert_eq!(get(std::slice::from_ref(&pem), &ip).expect("pinned by IP"), "ok");

            // Without --ca-cert: refused, and the message says what to pass.
            let e = get(&[], &url).expect_err("untrusted");
            let msg = explain(&e, "localhost");
            assert!(msg.contains("--ca-cert FILE") && msg.contains("localhost"), "{msg}");
        }
    }

    #[test]
    fn ca_issued_leaf_goes_through_webpki() {
        let Some(pki) = Pki::new("ca_issued_leaf_goes_through_webpki") else { return };
        let (ca, _) = pki.ca();
        let (chain, key) = pki.leaf("reg", "DNS:localhost");
        let srv = serve_tls(&chain, &key, ok);
        let url = format!("https://localhost:{}/", srv.port);
        assert_eq!(get(std::slice::from_ref(&ca), &url).expect("CA-issued"), "ok");
        // A bundle file with the CA among other certificates works as well.
        let (other, _) = pki.self_signed("other", "DNS:other.invalid", true);
        let bundle = pki.path("bundle.pem");
        let mut b = std::fs::read(&other).expect("other");
        b.extend(std::fs::read(&ca).expect("ca"));
        std::fs::write(&bundle, b).expect("bundle");
        assert_eq!(get(&[bundle], &url).expect("bundle"), "ok");
    }

    #[test]
    fn wrong_name_is_refused_and_explained() {
        let Some(pki) = Pki::new("wrong_name_is_refused_and_explained") else { return };
        let (ca, _) = pki.ca();
        let (chain, key) = pki.leaf("wrong", "DNS:other.example");
        let srv = serve_tls(&chain, &key, ok);
        let e = get(std::slice::from_ref(&ca), &format!("https://localhost:{}/", srv.port)).expect_err("wrong name");
        let msg = explain(&e, "localhost");
        assert!(msg.contains("other.example") && msg.contains("not valid for the name localhost"), "{msg}");

        // A pinned self-signed certificate must name the host too.
        let (pem, key) = pki.self_signed("pinwrong", "DNS:other.example", false);
        let srv = serve_tls(&pem, &key, ok);
        let e = get(&[pem], &format!("https://localhost:{}/", srv.port)).expect_err("pinned, wrong name");
        assert!(explain(&e, "localhost").contains("other.example"), "{}", explain(&e, "localhost"));
    }

    #[test]
    fn plain_http_on_an_https_port_is_explained() {
        // A plain http server answers a ClientHello with a 400 at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                use std::io::Write;
                let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        let e = get(&[], &format!("https://127.0.0.1:{port}/")).expect_err("plain http server");
        let msg = explain(&e, "127.0.0.1");
        assert!(msg.contains("does not speak TLS") && msg.contains("--insecure-options=http"), "{msg}");

        // One that waits for a request line, then hangs up.
        let srv = serve(ok);
        let e = get(&[], &format!("https://127.0.0.1:{}/", srv.port)).expect_err("plain http server");
        let msg = explain(&e, "127.0.0.1");
        assert!(msg.contains("closed the connection during the TLS handshake"), "{msg}");
    }

    #[test]
    fn pinned_validity_period_is_checked() {
        let Some(pki) = Pki::new("pinned_validity_period_is_checked") else { return };
        let (pem, _) = pki.self_signed("v", "DNS:localhost", false);
        let der = read_pem_certs(&pem).expect("pem").remove(0);
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let now = UnixTime::now().as_secs();
        assert!(check_validity(&der, at(now)).is_ok());
        let late = check_validity(&der, at(now + 10 * 86400)).expect_err("expired");
        assert_eq!(late, CertificateError::Expired.into());
        let early = check_validity(&der, at(now - 10 * 86400)).expect_err("not yet valid");
        assert_eq!(early, CertificateError::NotValidYet.into());
    }

    #[test]
    fn ca_cert_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = client_config(std::slice::from_ref(&missing)).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let e = client_config(&[junk]).expect_err("junk");
        assert!(e.to_string().contains("junk.pem") && e.exit() == Exit::InvalidInput, "{e}");
    }
}
