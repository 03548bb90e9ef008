//! The client against a fake registry (canned responses on 127.0.0.1), and
//! once against a real `docker-registry` when it is installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::test_server::{serve, serve_tls, Pki, Req, Resp, Server};
use super::*;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Options for a plain-http fake, with an auth file in `dir` holding
/// `entries` (key, user:pass).
fn opts(dir: &Path, entries: &[(&str, &str)]) -> ClientOptions {
    let auths: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(k, up)| ((*k).to_owned(), serde_json::json!({ "auth": b64(up) }))).collect();
    let path = dir.join("auth.json");
    std::fs::write(&path, serde_json::json!({ "auths": auths }).to_string()).expect("auth file");
    ClientOptions { plain_http: true, auth_file: Some(path), ..ClientOptions::default() }
}

fn client(srv: &Server, dir: &Path, entries: &[(&str, &str)]) -> RegistryClient {
    RegistryClient::new(&format!("127.0.0.1:{}", srv.port), &opts(dir, entries)).expect("client")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn bearer_challenge(req: &Req, realm_host: &str) -> Resp {
    let realm = format!("http://{realm_host}:{}/token", req.port);
    Resp::new(401)
        .header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}",service="svc",scope="repository:r:pull""#))
        .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"auth required"}]}"#)
}

fn token_registry(realm_host: &'static str) -> Server {
    serve(move |req| {
        if req.path.starts_with("/token?") {
            return Resp::new(200).body(r#"{"access_token":"tok"}"#);
        }
        if req.header("authorization") != Some("Bearer tok") {
            return bearer_challenge(req, realm_host);
        }
        Resp::new(200).header("Content-Type", OCI_MANIFEST).body(MANIFEST)
    })
}

#[test]
fn bearer_flow_sends_registry_credentials_to_a_realm_on_its_host_and_caches_the_token() {
    let srv = token_registry("127.0.0.1");
    let dir = tmp();
    let c = client(&srv, dir.path(), &[(&format!("127.0.0.1:{}", srv.port), "alice:s3cret")]);
    let m = c.get_manifest("r", "latest").expect("manifest");
    assert_eq!((m.media_type.as_str(), m.bytes.as_slice()), (OCI_MANIFEST, MANIFEST.as_bytes()));
    assert_eq!(m.digest, Digest::sha256(MANIFEST.as_bytes()).to_string());
    c.clone().get_manifest("r", "latest").expect("again, from a clone");

    let reqs = srv.requests();
    let tokens: Vec<&Req> = reqs.iter().filter(|r| r.path.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 1, "the token is cached: {reqs:?}");
    assert!(tokens[0].path.contains("service=svc") && tokens[0].path.contains("scope=repository%3Ar%3Apull"));
    assert_eq!(tokens[0].header("authorization"), Some(format!("Basic {}", b64("alice:s3cret")).as_str()));
    assert_eq!(reqs.len(), 4, "401, token, retry, cached: {reqs:?}");
}

#[test]
fn a_token_realm_on_another_host_gets_no_credentials_unless_the_auth_file_names_it() {
    let srv = token_registry("localhost");
    let dir = tmp();
    let registry_key = format!("127.0.0.1:{}", srv.port);
    let c = client(&srv, dir.path(), &[(&registry_key, "alice:s3cret")]);
    c.get_manifest("r", "latest").expect("manifest");
    let token = srv.requests().into_iter().find(|r| r.path.starts_with("/token")).expect("token request");
    assert_eq!(token.header("authorization"), None, "registry credentials leaked to another host");

    let srv = token_registry("localhost");
    let realm_key = format!("localhost:{}", srv.port);
    let c = client(&srv, dir.path(), &[(&registry_key, "alice:s3cret"), (&realm_key, "bob:other")]);
    c.get_manifest("r", "latest").expect("manifest");
    let token = srv.requests().into_iter().find(|r| r.path.starts_with("/token")).expect("token request");
    assert_eq!(token.header("authorization"), Some(format!("Basic {}", b64("bob:other")).as_str()));
}

fn basic_registry(blob: &'static [u8]) -> Server {
    serve(move |req| {
        let want = format!("Basic {}", b64("alice:s3cret"));
        if req.path.starts_with("/cdn/") {
            return Resp::new(200).body(blob);
        }
        if req.header("authorization") != Some(want.as_str()) {
            return Resp::new(401).header("WWW-Authenticate", r#"Basic realm="Registry Realm""#);
        }
        match req.path.as_str() {
            p if p.starts_with("/v2/r/blobs/") => {
                Resp::new(307).header("Location", &format!("http://localhost:{}/cdn/blob?X-Sig=secret", req.port))
            }
            _ => Resp::new(404).body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
        }
    })
}

#[test]
fn basic_auth_and_a_redirect_to_another_host_without_authorization() {
    const BLOB: &[u8] = b"layer bytes";
    let srv = basic_registry(BLOB);
    let dir = tmp();
    let c = client(&srv, dir.path(), &[(&format!("127.0.0.1:{}", srv.port), "alice:s3cret")]);
    let digest = Digest::sha256(BLOB).to_string();
    let mut out = Vec::new();
    let mut seen = 0;
    let n = c.get_blob("r", &digest, Some(BLOB.len() as u64), &mut out, &mut |p| seen = p).expect("blob");
    assert_eq!((n, out.as_slice(), seen), (BLOB.len() as u64, BLOB, BLOB.len() as u64));
    let reqs = srv.requests();
    let cdn = reqs.iter().find(|r| r.path.starts_with("/cdn/")).expect("redirected");
    assert_eq!(cdn.header("authorization"), None, "Authorization followed a redirect to another host");
    assert_eq!(cdn.header("host"), Some(format!("localhost:{}", srv.port).as_str()));

    // A missing manifest is NotFound, and so exits.
    let e = c.get_manifest("r", "sha256-00.sig").expect_err("missing");
    assert!(matches!(e, RegistryError::NotFound { .. }) && e.exit() == Exit::NotFound, "{e}");
    assert!(e.to_string().contains("MANIFEST_UNKNOWN") && e.to_string().contains("/r:sha256-00.sig"), "{e}");
}

#[test]
fn basic_challenge_without_credentials_is_denied_naming_the_auth_file_only() {
    let srv = basic_registry(b"");
    let dir = tmp();
    let c = client(&srv, dir.path(), &[("elsewhere.example", "alice:s3cret")]);
    let e = c.get_manifest("r", "latest").expect_err("denied");
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Denied { .. }) && e.exit() == Exit::Network, "{msg}");
    assert!(msg.contains("auth.json") && !msg.contains("s3cret"), "{msg}");
}

#[test]
fn redirect_loops_and_chains_fail_naming_the_url() {
    let srv = serve(|req| match req.path.as_str() {
        p if p.starts_with("/v2/loop/blobs/") => Resp::new(302).header("Location", "/a"),
        "/a" => Resp::new(302).header("Location", "/b"),
        "/b" => Resp::new(302).header("Location", "/a"),
        p if p.starts_with("/v2/chain/blobs/") => Resp::new(302).header("Location", "/hop/0"),
        p => {
            let n: u32 = p.trim_start_matches("/hop/").parse().unwrap_or(0);
            Resp::new(302).header("Location", &format!("/hop/{}", n + 1))
        }
    });
    let dir = tmp();
    let c = client(&srv, dir.path(), &[]);
    let d = Digest::sha256(b"x").to_string();
    let e = c.get_blob("loop", &d, None, &mut Vec::new(), &mut |_| {}).expect_err("loop");
    assert!(e.to_string().contains("redirect loop at http://127.0.0.1"), "{e}");
    let e = c.get_blob("chain", &d, None, &mut Vec::new(), &mut |_| {}).expect_err("chain");
    assert!(e.to_string().contains("more than 5 redirects") && e.to_string().contains("/hop/"), "{e}");
    assert!(srv.requests().len() <= 12);
}

fn blob_server(body: &'static [u8], stream: Option<u64>) -> Server {
    serve(move |_| Resp { stream, ..Resp::new(200).body(body) })
}

#[test]
fn blobs_with_a_wrong_digest_or_size_fail() {
    let dir = tmp();
    let good = Digest::sha256(b"hello").to_string();

    let c = client(&blob_server(b"hellO", None), dir.path(), &[]);
    let e = c.get_blob("r", &good, Some(5), &mut Vec::new(), &mut |_| {}).expect_err("wrong digest");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }) && e.exit() == Exit::Verification, "{e}");

    // Announced longer than the descriptor: refused before reading.
    let c = client(&blob_server(b"hello!", None), dir.path(), &[]);
    let e = c.get_blob("r", &good, Some(5), &mut Vec::new(), &mut |_| {}).expect_err("long");
    assert!(matches!(e, RegistryError::SizeMismatch { .. }) && e.exit() == Exit::Verification, "{e}");

    // Streamed with no length: stops as soon as there is one byte too many.
    let srv = blob_server(b"hello", Some(64 << 20));
    let c = client(&srv, dir.path(), &[]);
    let mut out = Vec::new();
    let e = c.get_blob("r", &good, Some(5), &mut out, &mut |_| {}).expect_err("extra bytes");
    assert!(matches!(e, RegistryError::SizeMismatch { .. }), "{e}");
    assert!(out.len() <= 5, "wrote {} bytes past the size", out.len());
    std::thread::sleep(Duration::from_millis(200));
    assert!(srv.streamed.load(std::sync::atomic::Ordering::SeqCst) < 64 << 20, "the client read it all");

    let c = client(&blob_server(b"hell", None), dir.path(), &[]);
    let e = c.get_blob("r", &good, Some(5), &mut Vec::new(), &mut |_| {}).expect_err("short");
    assert!(matches!(e, RegistryError::SizeMismatch { .. }), "{e}");

    let e = c.get_blob("r", "sha256:nothex", None, &mut Vec::new(), &mut |_| {}).expect_err("bad digest");
    assert_eq!(e.exit(), Exit::InvalidInput, "{e}");
    let e = c.get_blob("../x", &good, None, &mut Vec::new(), &mut |_| {}).expect_err("bad repo");
    assert_eq!(e.exit(), Exit::InvalidInput, "{e}");
}

#[test]
fn oversized_manifests_are_refused_without_reading_them() {
    let dir = tmp();
    let mut o = opts(dir.path(), &[]);
    o.max_manifest_bytes = 4096;

    let announced = serve(|_| Resp { stream: Some(64 << 20), ..Resp::new(200).header("Content-Length", "67108864") });
    let c = RegistryClient::new(&format!("127.0.0.1:{}", announced.port), &o).expect("client");
    let e = c.get_manifest("r", "big").expect_err("announced too large");
    assert!(matches!(e, RegistryError::TooLarge { limit: 4096, .. }) && e.exit() == Exit::InvalidInput, "{e}");

    let unannounced = serve(|_| Resp { stream: Some(64 << 20), ..Resp::new(200) });
    let c = RegistryClient::new(&format!("127.0.0.1:{}", unannounced.port), &o).expect("client");
    let e = c.get_manifest("r", "big").expect_err("too large");
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    for srv in [&announced, &unannounced] {
        assert!(srv.streamed.load(std::sync::atomic::Ordering::SeqCst) < 64 << 20, "the client read it all");
    }
}

#[test]
fn manifest_digests_are_checked() {
    let dir = tmp();
    let srv = serve(|req| {
        let r = Resp::new(200).body(r#"{"schemaVersion":2}"#).header("Content-Type", DOCKER_MANIFEST);
        if req.path.ends_with("/lying") {
            return r.header("Docker-Content-Digest", &Digest::sha256(b"other").to_string());
        }
        r
    });
    let c = client(&srv, dir.path(), &[]);
    let m = c.get_manifest("r", "t").expect("manifest");
    assert_eq!(m.media_type, DOCKER_MANIFEST, "from the Content-Type when the body has none");
    let by_digest = c.get_manifest("r", &m.digest).expect("by digest");
    assert_eq!(by_digest, m);

    let other = Digest::sha256(b"other").to_string();
    let e = c.get_manifest("r", &other).expect_err("digest mismatch");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }) && e.exit() == Exit::Verification, "{e}");
    let e = c.get_manifest("r", "lying").expect_err("Docker-Content-Digest mismatch");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
}

#[test]
fn malformed_challenges_are_invalid_input() {
    let dir = tmp();
    let srv = serve(|_| Resp::new(401).header("WWW-Authenticate", r#"Bearer realm="unterminated"#));
    let e = client(&srv, dir.path(), &[]).get_manifest("r", "t").expect_err("malformed");
    assert!(matches!(e, RegistryError::Malformed { .. }) && e.exit() == Exit::InvalidInput, "{e}");
}

#[test]
fn https_registries_refuse_plain_http_redirects_and_realms() {
    let Some(pki) = Pki::new("https_registries_refuse_plain_http_redirects_and_realms") else { return };
    let (ca, _) = pki.ca();
    let (chain, key) = pki.leaf("reg", "DNS:localhost");
    let srv = serve_tls(&chain, &key, |req| {
        if req.path.contains("/blobs/") {
            return Resp::new(302).header("Location", &format!("http://localhost:{}/plain", req.port));
        }
        bearer_challenge(req, "localhost")
    });
    let dir = tmp();
    let o = ClientOptions { plain_http: false, ca_certs: vec![ca], ..opts(dir.path(), &[]) };
    let c = RegistryClient::new(&format!("localhost:{}", srv.port), &o).expect("client");
    let e = c.get_blob("r", &Digest::sha256(b"").to_string(), None, &mut Vec::new(), &mut |_| {}).expect_err("http");
    assert!(e.to_string().contains("from https to plain http"), "{e}");
    let e = c.get_manifest("r", "t").expect_err("http realm");
    assert!(matches!(e, RegistryError::PlainHttp { .. }) && e.exit() == Exit::Verification, "{e}");
}

#[test]
fn the_client_is_shared_between_threads() {
    fn assert_bounds<T: Clone + Send + Sync>() {}
    assert_bounds::<RegistryClient>();
}

/// A `docker-registry serve` on 127.0.0.1, killed on drop.
struct RealRegistry {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(pki: &Pki) -> Option<RealRegistry> {
    let (_ca, _) = pki.ca();
    let (chain, key) = pki.leaf("registry", "DNS:localhost,IP:127.0.0.1");
    let port = super::test_server::free_port();
    let storage = pki.path("storage");
    let config = pki.path("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            storage.display(),
            chain.display(),
            key.display()
        ),
    )
    .expect("config");
    let log = pki.path("registry.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("docker-registry");
    let reg = RealRegistry { child, port, log };
    if !super::test_server::wait_listening(port, 10) {
        panic!("docker-registry did not listen: {}", std::fs::read_to_string(&reg.log).unwrap_or_default());
    }
    Some(reg)
}

#[test]
fn push_and_pull_against_a_real_docker_registry() {
    if !Path::new("/usr/bin/docker-registry").exists() {
        eprintln!("SKIP: push_and_pull_against_a_real_docker_registry: /usr/bin/docker-registry is not installed");
        return;
    }
    let Some(pki) = Pki::new("push_and_pull_against_a_real_docker_registry") else { return };
    let Some(reg) = start_registry(&pki) else { return };
    let o = ClientOptions {
        plain_http: false,
        ca_certs: vec![pki.path("ca.pem")],
        auth_file: Some(pki.path("no-auth.json")),
        ..ClientOptions::default()
    };
    let c = RegistryClient::new(&format!("localhost:{}", reg.port), &o).expect("client");
    let repo = "test/app";
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = vec![7u8; 300 * 1024];
    let (cd, ld) = (Digest::sha256(config).to_string(), Digest::sha256(&layer).to_string());
    assert!(!c.blob_exists(repo, &ld).expect("exists?"));
    c.push_blob(repo, &cd, config).expect("push config");
    c.push_blob(repo, &ld, &layer).expect("push layer");
    c.push_blob(repo, &ld, &layer).expect("push again: already there");
    assert!(c.blob_exists(repo, &ld).expect("exists?"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    })
    .to_string();
    let md = c.put_manifest(repo, "v1", OCI_MANIFEST, manifest.as_bytes()).expect("put manifest");

    let m = c.get_manifest(repo, "v1").expect("get by tag");
    assert_eq!(
        (m.media_type.as_str(), m.bytes.as_slice(), m.digest.as_str()),
        (OCI_MANIFEST, manifest.as_bytes(), md.as_str())
    );
    assert_eq!(c.get_manifest(repo, &md).expect("get by digest"), m);
    let mut out = Vec::new();
    let n = c.get_blob(repo, &ld, Some(layer.len() as u64), &mut out, &mut |_| {}).expect("get layer");
    assert_eq!((n, out == layer), (layer.len() as u64, true));

    let sig_tag = format!("{}.sig", md.replace(':', "-"));
    let e = c.get_manifest(repo, &sig_tag).expect_err("no signature yet");
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    let e = c.get_blob(repo, &Digest::sha256(b"absent").to_string(), None, &mut Vec::new(), &mut |_| {});
    assert!(matches!(e, Err(RegistryError::NotFound { .. })), "{e:?}");
}

#[test]
fn pushes_post_then_put_to_the_upload_location() {
    let srv = serve(|req| match (req.method.as_str(), req.path.as_str()) {
        ("HEAD", _) => Resp::new(404),
        ("POST", "/v2/r/blobs/uploads/") => Resp::new(202).header("Location", "/upload/1?state=abc"),
        ("PUT", p) if p.starts_with("/upload/1?state=abc&digest=sha256%3A") => Resp::new(201),
        ("PUT", "/v2/r/manifests/sha256-00.sig") => Resp::new(201),
        _ => Resp::new(400),
    });
    let dir = tmp();
    let c = client(&srv, dir.path(), &[]);
    let blob = b"signature payload";
    c.push_blob("r", &Digest::sha256(blob).to_string(), blob).expect("push blob");
    let e = c.push_blob("r", &Digest::sha256(b"other").to_string(), blob).expect_err("bytes not of the digest");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    let d = c.put_manifest("r", "sha256-00.sig", OCI_MANIFEST, MANIFEST.as_bytes()).expect("put manifest");
    assert_eq!(d, Digest::sha256(MANIFEST.as_bytes()).to_string());

    let reqs = srv.requests();
    let put = reqs.iter().find(|r| r.path.starts_with("/upload/")).expect("blob PUT");
    assert_eq!((put.body.as_slice(), put.header("content-type")), (&blob[..], Some("application/octet-stream")));
    let m = reqs.iter().find(|r| r.path.contains("/manifests/")).expect("manifest PUT");
    assert_eq!((m.body.as_slice(), m.header("content-type")), (MANIFEST.as_bytes(), Some(OCI_MANIFEST)));
}
