//! Test support: a tiny HTTP(S) server on 127.0.0.1 serving canned
//! responses from a closure, and certificates made by the `openssl` CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A request as the server saw it; header names lowercased.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The port the request came in on (servers may share a handler).
    pub port: u16,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Instead of `body`: this many filler bytes, streamed in chunks with no
    /// Content-Length (the connection's end marks the body's end).
    pub stream: Option<u64>,
}

impl Resp {
    pub fn new(status: u16) -> Self {
        Self { status, ..Self::default() }
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Req>>>,
    /// Bytes of streamed bodies written (to see a client stop early).
    pub streamed: Arc<AtomicU64>,
}

impl Server {
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Serves plain HTTP, one request per connection, until the test ends.
pub(crate) fn serve(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Server {
    serve_with(Arc::new(handler), None)
}

/// Serves HTTPS with this certificate chain and key (PEM files).
pub(crate) fn serve_tls(chain: &Path, key: &Path, handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Server {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(chain).expect("chain").collect::<Result<_, _>>().expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    serve_with(Arc::new(handler), Some(Arc::new(config)))
}

fn serve_with(handler: Arc<Handler>, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local addr").port();
    let server = Server { port, log: Arc::default(), streamed: Arc::default() };
    let s = server.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (handler, s, tls) = (handler.clone(), s.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                None => handle(conn, &*handler, &s),
                Some(config) => {
                    let Ok(c) = rustls::ServerConnection::new(config) else { return };
                    handle(rustls::StreamOwned::new(c, conn), &*handler, &s);
                }
            });
        }
    });
    server
}

fn handle<S: Read + Write>(stream: S, handler: &Handler, s: &Server) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let req = Req { method, path, headers, body, port: s.port };
    if let Ok(mut l) = s.log.lock() {
        l.push(req.clone());
    }
    let resp = handler(&req);
    let mut out = r.into_inner();
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_len = resp.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if resp.stream.is_none() && !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    if req.method != "HEAD" {
        let _ = out.write_all(&resp.body);
    }
    if let Some(total) = resp.stream {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < total {
            let n = chunk.len().min(usize::try_from(total - sent).unwrap_or(usize::MAX));
            if out.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n as u64;
            s.streamed.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = out.flush();
}

/// A free port on 127.0.0.1 (bound then released: a small race, fine here).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until something listens on 127.0.0.1:port.
pub(crate) fn wait_listening(port: u16, secs: u64) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Whether `tool` runs; prints a visible SKIP line when it does not.
pub(crate) fn have_tool(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool).arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("SKIP: {test}: `{tool}` is not installed");
    }
    ok
}

/// Certificates made with the openssl CLI in a temp dir.
#[derive(Debug)]
pub(crate) struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// None (after a SKIP line) when there is no openssl CLI.
    pub fn new(test: &str) -> Option<Self> {
        if !have_tool("openssl", test) {
            return None;
        }
        Some(Self { dir: tempfile::tempdir().expect("tempdir") })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `name.pem` + `name.key`: a self-signed certificate for `san`
    /// (`DNS:localhost,IP:127.0.0.1`), CA:TRUE or CA:FALSE.
    pub fn self_signed(&self, name: &str, san: &str, ca: bool) -> (PathBuf, PathBuf) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        let bc = if ca { "basicConstraints=critical,CA:TRUE" } else { "basicConstraints=critical,CA:FALSE" };
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            bc,
        ]);
        (self.path(&pem), self.path(&key))
    }

    /// `ca.pem` + `ca.key`: a test CA.
    pub fn ca(&self) -> (PathBuf, PathBuf) {
        self.self_signed("ca", "DNS:test-ca.invalid", true)
    }

    /// `name.pem` (leaf then CA: the chain a server sends) + `name.key`,
    /// issued by `ca()` (call it first) for `san`.
    pub fn leaf(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let (csr, key, crt, ext) =
            (format!("{name}.csr"), format!("{name}.key"), format!("{name}.crt"), format!("{name}.ext"));
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        std::fs::write(
            self.path(&ext),
            format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("ext file");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        let mut chain = std::fs::read(self.path(&crt)).expect("leaf");
        chain.extend(std::fs::read(self.path("ca.pem")).expect("ca"));
        let pem = self.path(&format!("{name}.pem"));
        std::fs::write(&pem, chain).expect("chain");
        (pem, self.path(&key))
    }
}
