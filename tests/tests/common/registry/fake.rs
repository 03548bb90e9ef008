//! A scripted registry for what a real one will not serve: answers written
//! per path by the test (any status, headers and body: a manifest over
//! distribution's 4 MiB, a wrong `Docker-Content-Digest`, a redirect, a
//! Content-Length that lies, a body that never ends). python's http.server
//! over TLS from the test CA (or plain http) on 127.0.0.1; logs requests.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::{need_tools, p, Ca, Skip};

const FAKE_PY: &str = r#"
import http.server, json, os, ssl, sys, threading, time, urllib.parse
root, log, cert, key = sys.argv[1:5]
lock = threading.Lock()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def serve(self, head):
        path = urllib.parse.urlsplit(self.path).path
        with lock, open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "authorization": self.headers.get("Authorization"),
                                "accept": self.headers.get("Accept")}) + "\n")
        base = os.path.join(root, path.lstrip("/").replace("/", "%2F"))
        meta = {"status": 404, "headers": {"Content-Type": "application/json"}}
        body = b'{"errors":[{"code":"NOT_FOUND"}]}'
        if path == "/v2/" or path == "/v2":
            meta, body = {"status": 200, "headers": {"Content-Type": "application/json"}}, b"{}"
        if os.path.exists(base + ".meta"):
            meta = json.load(open(base + ".meta"))
            body = open(base + ".body", "rb").read() if os.path.exists(base + ".body") else b""
        self.send_response(meta["status"])
        headers = meta.get("headers", {})
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        stall = meta.get("stall_after")
        if stall is not None:
            self.wfile.write(body[:stall]); self.wfile.flush()
            time.sleep(3600)
        self.wfile.write(body)
    def do_GET(self):
        self.serve(False)
    def do_HEAD(self):
        self.serve(True)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A scripted registry: `/v2/` answers 200, other paths 404 until the test
/// sets an answer with `respond`. Killed on drop.
#[derive(Debug)]
pub struct FakeRegistry {
    child: Child,
    port: u16,
    tls: bool,
    root: PathBuf,
    log: PathBuf,
    ca: Option<Ca>,
}

/// One request the fake registry got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRequest {
    pub method: String,
    /// With the query.
    pub path: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
}

impl FakeRegistry {
    /// Starts it in `dir` (created), over https with a certificate from a
    /// test CA made there (`tls`), or over plain http.
    pub fn start(dir: &Path, tls: bool) -> Result<Self, Skip> {
        need_tools(&["/usr/bin/python3", "openssl"])?;
        fs::create_dir_all(dir).unwrap();
        let root = dir.join("answers");
        fs::create_dir_all(&root).unwrap();
        let log = dir.join("requests.jsonl");
        fs::write(&log, "").unwrap();
        let ca = tls.then(|| Ca::new(&dir.join("ca")));
        let (cert, key) = ca
            .as_ref()
            .map_or((String::new(), String::new()), |c| (p(&c.server_cert).to_owned(), p(&c.server_key).to_owned()));
        let stderr = fs::File::create(dir.join("fake.stderr")).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .args(["-u", "-c", FAKE_PY, p(&root), p(&log), &cert, &key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Skip(format!("/usr/bin/python3: {e}")))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fake registry did not start: {}", fs::read_to_string(dir.join("fake.stderr")).unwrap_or_default());
        };
        Ok(Self { child, port, tls, root, log, ca })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.host())
    }
    /// The CA to trust (https only).
    pub fn ca_cert(&self) -> &Path {
        &self.ca.as_ref().expect("a plain-http fake registry has no CA").cert
    }

    /// Answers GET and HEAD of `path` (e.g. `/v2/REPO/manifests/TAG`, no
    /// query) with `status`, `headers` and `body`. Content-Length is the
    /// body's unless `headers` sets one.
    pub fn respond(&self, path: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let h: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        self.write_answer(path, &json!({ "status": status, "headers": h }), body);
    }

    /// 200 with `body` as a manifest of `media_type`, with the
    /// `Docker-Content-Digest` a registry sends (given, so it may lie).
    pub fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8], digest: &str) {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.respond(&path, 200, &[("Content-Type", media_type), ("Docker-Content-Digest", digest)], body);
    }

    /// 200 with `body` as blob `digest` of `repo`.
    pub fn blob(&self, repo: &str, digest: &str, body: &[u8]) {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.respond(
            &path,
            200,
            &[("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", digest)],
            body,
        );
    }

    /// Sends the headers and the first `after` bytes of `body`, then
    /// nothing (the connection stays open for an hour, or until drop).
    pub fn stall(&self, path: &str, headers: &[(&str, &str)], body: &[u8], after: usize) {
        let h: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        self.write_answer(path, &json!({ "status": 200, "headers": h, "stall_after": after }), body);
    }

    fn write_answer(&self, path: &str, meta: &Value, body: &[u8]) {
        let base = self.root.join(path.trim_start_matches('/').replace('/', "%2F"));
        fs::write(base.with_extension_raw("body"), body).unwrap();
        fs::write(base.with_extension_raw("meta"), serde_json::to_vec(meta).unwrap()).unwrap();
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let s = |k: &str| v[k].as_str().map(str::to_owned);
                FakeRequest {
                    method: s("method").unwrap(),
                    path: s("path").unwrap(),
                    authorization: s("authorization"),
                    accept: s("accept"),
                }
            })
            .collect()
    }
}

/// `PATH.EXT` appended, whatever dots PATH has.
trait WithExtensionRaw {
    fn with_extension_raw(&self, ext: &str) -> PathBuf;
}

impl WithExtensionRaw for PathBuf {
    fn with_extension_raw(&self, ext: &str) -> PathBuf {
        let mut s = self.as_os_str().to_owned();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
