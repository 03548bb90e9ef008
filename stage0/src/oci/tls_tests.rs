//! The verifier against certificates made by the openssl CLI, served by an
//! in-test rustls server on 127.0.0.1.

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
