//! The token server of token-auth registries, and what it records.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{openssl, p, Ca, Skip, TEST_PASSWORD, TEST_USER, TOKEN_ISSUER, TOKEN_SERVICE};

/// One request the token server got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    /// The path without the query, e.g. `/token`.
    pub path: String,
    /// Query parameters (and the form fields of a POST), in order.
    pub params: Vec<(String, String)>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
}

impl TokenRequest {
    /// The values of parameter `name` (`scope` may repeat).
    pub fn param(&self, name: &str) -> Vec<&str> {
        self.params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// The token server: python's http.server over TLS from the test CA. It
/// checks Basic credentials (GET, as Docker clients do) or the form of an
/// OAuth2 password grant (POST, as some Go clients do), grants what the
/// scope asks for (anonymous requests: nothing, or pull with
/// `anonymous_pull`), answers 401 to wrong credentials, and logs every
/// request as a JSON line. JWTs are RS256, signed by `openssl dgst` with a
/// key whose certificate (from the test CA) rides in the `x5c` header.
const TOKEN_PY: &str = r#"
import base64, datetime, http.server, json, os, ssl, subprocess, sys, threading, time, urllib.parse
log, cert, key, sign_key, sign_cert, issuer, service, user, password, anon_pull = sys.argv[1:11]
x5c = base64.b64encode(open(sign_cert, "rb").read()).decode()
lock = threading.Lock()
def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def jwt(sub, access):
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
    claims = {"iss": issuer, "sub": sub, "aud": service, "exp": now + 600, "nbf": now - 60, "iat": now,
              "jti": b64u(os.urandom(12)), "access": access}
    signing_input = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", sign_key], input=signing_input.encode(),
                         capture_output=True, check=True).stdout
    return signing_input + "." + b64u(sig)
def grants(scopes, full):
    access = []
    for scope in scopes:
        for s in scope.split():
            parts = s.split(":")
            if len(parts) < 3:
                continue
            actions = [a for a in parts[-1].split(",") if a]
            if not full:
                actions = [a for a in actions if a == "pull" and anon_pull == "1"]
            access.append({"type": parts[0], "name": ":".join(parts[1:-1]), "actions": actions})
    return access
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="pod-e2e"')
        self.end_headers()
        self.wfile.write(data)
    def serve(self, params):
        auth = self.headers.get("Authorization")
        with lock, open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": urllib.parse.urlsplit(self.path).path,
                                "params": params, "authorization": auth,
                                "user_agent": self.headers.get("User-Agent")}) + "\n")
        if urllib.parse.urlsplit(self.path).path != "/token":
            return self.answer(404, {"error": "not found"})
        q = dict(params)
        who = None
        if auth and auth.startswith("Basic "):
            try:
                u, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                u, pw = None, None
            if (u, pw) != (user, password):
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            who = u
        elif q.get("grant_type") == "password":
            if (q.get("username"), q.get("password")) != (user, password):
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            who = user
        elif auth:
            return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "unsupported authorization"}]})
        scopes = [v for k, v in params if k == "scope"]
        token = jwt(who or "", grants(scopes, who is not None))
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.answer(200, {"token": token, "access_token": token, "expires_in": 600, "issued_at": now})
    def do_GET(self):
        self.serve(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        form = self.rfile.read(n).decode(errors="replace")
        self.serve(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query) + urllib.parse.parse_qsl(form))
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

#[derive(Debug)]
pub(super) struct TokenServer {
    child: Child,
    pub(super) port: u16,
    pub(super) log: PathBuf,
}

impl TokenServer {
    pub(super) fn start(dir: &Path, ca: &Ca, anonymous_pull: bool) -> Result<Self, Skip> {
        let d = dir.join("token");
        fs::create_dir_all(&d).unwrap();
        // The JWT signing key: RSA, certified by the test CA (the registry's
        // rootcertbundle), no extended key usage.
        openssl(&d, "genrsa -out sign.key 2048");
        openssl(&d, "req -new -key sign.key -out sign.csr -subj /CN=pod-e2e-token-signer");
        openssl(
            &d,
            &format!(
                "x509 -req -in sign.csr -CA {} -CAkey {} -CAcreateserial -out sign.pem -days 2",
                p(&ca.cert),
                p(&ca.cert.with_file_name("ca.key"))
            ),
        );
        openssl(&d, "x509 -in sign.pem -outform DER -out sign.der");
        let log = d.join("requests.jsonl");
        fs::write(&log, "").unwrap();
        let stderr = fs::File::create(d.join("token.stderr")).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .args(["-u", "-c", TOKEN_PY])
            .args([
                p(&log),
                p(&ca.server_cert),
                p(&ca.server_key),
                p(&d.join("sign.key")),
                p(&d.join("sign.der")),
                TOKEN_ISSUER,
                TOKEN_SERVICE,
                TEST_USER,
                TEST_PASSWORD,
                if anonymous_pull { "1" } else { "0" },
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Skip(format!("/usr/bin/python3: {e}")))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        match line.trim().parse() {
            Ok(port) => Ok(Self { child, port, log }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "token server did not start: {}",
                    fs::read_to_string(d.join("token.stderr")).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
