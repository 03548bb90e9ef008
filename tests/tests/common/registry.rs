//! A real OCI registry on loopback for the OCI tests: Debian's
//! `docker-registry` (distribution 2.8) with filesystem storage in the
//! test's dir, over plain http, TLS from the test CA, or TLS with a
//! self-signed leaf; optionally behind token auth served by a small python
//! token server that records every request (`token.rs`). Images are built
//! with umoci (`image.rs`), pushed with skopeo, signed with cosign
//! (`cosign.rs`). Hostile tests write the registry's storage or API
//! directly (`raw.rs`), or script a fake registry (`fake.rs`) for what
//! distribution will not serve.
//!
//! Every constructor that needs a tool returns `Err(Skip)` when the tool is
//! missing; tests turn it into a visible `SKIP:` line with `or_skip!`.
//! Everything listens on 127.0.0.1 only and is killed on drop.
//!
//! ```text
//! let pod = Pod::new();
//! let reg = or_skip!(Registry::start(&pod.work.join("registry"), RegistryOpts::https().token_auth()));
//! let img = or_skip!(OciImage::new(&pod.work.join("layout"), "v1"))
//!     .layer(&[("hello", b"hi\n")])
//!     .entrypoint(&["/bin/cat", "/hello"]);
//! let digest = reg.push(&img, "app/hello:v1");
//! let key = or_skip!(cosign_generate_key_pair(&pod.work.join("cosign"), "pw"));
//! cosign_sign(&key, &reg.image_ref(&format!("app/hello@{digest}")), &reg);
//! pod.ok(&["fetch", "--ca-cert", p(reg.ca_cert()), &reg.docker_ref("app/hello:v1")]);
//! assert!(reg.token_requests().iter().any(|r| r.authorization == Some(reg.basic_auth_header())));
//! ```

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{openssl, p, Ca};

mod cosign;
mod debian;
mod fake;
mod image;
mod raw;
mod token;
// Each test file uses a different subset.
#[allow(unused_imports)]
pub use cosign::*;
#[allow(unused_imports)]
pub use debian::*;
#[allow(unused_imports)]
pub use fake::*;
#[allow(unused_imports)]
pub use image::*;
#[allow(unused_imports)]
pub use token::TokenRequest;
use token::TokenServer;

/// The registry binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The test credentials of token-auth registries.
pub const TEST_USER: &str = "pod-tester";
pub const TEST_PASSWORD: &str = "s3cret-pass";
/// The `service` and `issuer` of token-auth registries.
pub const TOKEN_SERVICE: &str = "pod-e2e-registry";
pub const TOKEN_ISSUER: &str = "pod-e2e-token-issuer";
/// The User-Agent of the harness's own token requests, which
/// `token_requests()` leaves out.
pub(crate) const HARNESS_AGENT: &str = "pod-e2e-harness";

/// Why a test cannot run here: a tool is missing. Printed as `SKIP: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `let x = or_skip!(expr);`: the value of an `Ok`, or on `Err(skip)` prints
/// `SKIP: <why>` and returns from the test.
#[macro_export]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(skip) => {
                eprintln!("SKIP: {skip}");
                return;
            }
        }
    };
}

/// `Err(Skip("<tool> not found ..."))` unless every one of `tools` (a path or
/// a name on PATH) can be run.
pub fn need_tools(tools: &[&str]) -> Result<(), Skip> {
    for tool in tools {
        if which(tool).is_none() {
            return Err(Skip(format!("{tool} not found (scripts/install-deps.sh installs it)")));
        }
    }
    Ok(())
}

/// `tool` as an executable path: itself if it has a '/', else from PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if tool.contains('/') {
        return runnable(Path::new(tool)).then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| runnable(p))
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{}", describe_cmd(cmd, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's line, status and output, for failure messages.
pub fn describe_cmd(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Standard base64 with padding (auth.json, Basic auth).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `skopeo` command isolated from the host's containers configuration:
/// no signature policy, no registries.conf mirrors, no stored logins.
pub fn skopeo(args: &[&str]) -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy")
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .env_remove("REGISTRY_AUTH_FILE");
    no_internet(&mut c);
    c
}

/// Points every proxy variable at a closed loopback port with loopback
/// exempt: a tool that tries to reach anything but 127.0.0.1 fails at once
/// instead of leaving the machine.
pub fn no_internet(c: &mut Command) {
    let dead = "http://127.0.0.1:9";
    for v in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        c.env(v, dead);
    }
    c.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
}

// ---------------------------------------------------------------------------
// Options.

/// How the registry serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain http.
    Plain,
    /// https with a certificate for 127.0.0.1/localhost from the test CA.
    Ca,
    /// https with a self-signed certificate for 127.0.0.1/localhost.
    SelfSigned,
}

#[derive(Debug, Clone)]
pub struct RegistryOpts {
    pub tls: Tls,
    /// Bearer-token auth through the harness's token server.
    pub token_auth: bool,
    /// With token auth: requests without credentials get `pull` (like a
    /// public repository on Docker Hub); else an empty grant.
    pub anonymous_pull: bool,
}

impl RegistryOpts {
    /// https with the test CA, no auth.
    pub fn https() -> Self {
        Self { tls: Tls::Ca, token_auth: false, anonymous_pull: false }
    }
    pub fn http() -> Self {
        Self { tls: Tls::Plain, ..Self::https() }
    }
    pub fn self_signed() -> Self {
        Self { tls: Tls::SelfSigned, ..Self::https() }
    }
    pub fn token_auth(mut self) -> Self {
        self.token_auth = true;
        self
    }
    pub fn anonymous_pull(mut self) -> Self {
        self.anonymous_pull = true;
        self
    }
}

impl Default for RegistryOpts {
    fn default() -> Self {
        Self::https()
    }
}

// ---------------------------------------------------------------------------
// The registry.

/// A running registry (and token server); both killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    token: Option<TokenServer>,
    opts: RegistryOpts,
    port: u16,
    dir: PathBuf,
    ca: Ca,
    /// What clients trust: the CA, or the self-signed leaf.
    trust: Option<PathBuf>,
    cert_dir: PathBuf,
    auth_json: PathBuf,
    no_auth_json: PathBuf,
    docker_config: PathBuf,
}

impl Registry {
    /// Starts a registry in `dir` (created; its storage, certificates,
    /// configuration and logs live there) and waits until `/v2/` answers.
    pub fn start(dir: &Path, opts: RegistryOpts) -> Result<Self, Skip> {
        need_tools(&[REGISTRY_BIN, "openssl", "curl", "/usr/bin/python3"])?;
        fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        // The CA signs the registry's certificate (Tls::Ca), the token
        // server's, and the token server's JWT signing certificate.
        let ca = Ca::new(&dir.join("ca"));
        let (cert, key, trust) = match opts.tls {
            Tls::Plain => (None, None, None),
            Tls::Ca => (Some(ca.server_cert.clone()), Some(ca.server_key.clone()), Some(ca.cert.clone())),
            Tls::SelfSigned => {
                let d = dir.join("self-signed");
                fs::create_dir_all(&d).unwrap();
                openssl(
                    &d,
                    "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key \
                     -out leaf.pem -days 2 -subj /CN=localhost \
                     -addext subjectAltName=IP:127.0.0.1,DNS:localhost -addext extendedKeyUsage=serverAuth",
                );
                (Some(d.join("leaf.pem")), Some(d.join("leaf.key")), Some(d.join("leaf.pem")))
            }
        };
        // skopeo's --cert-dir: every *.crt in it is a trusted CA.
        let cert_dir = dir.join("certs.d");
        fs::create_dir_all(&cert_dir).unwrap();
        if let Some(t) = &trust {
            fs::copy(t, cert_dir.join("ca.crt")).unwrap();
        }
        let token = if opts.token_auth { Some(TokenServer::start(&dir, &ca, opts.anonymous_pull)?) } else { None };

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = registry_config(&dir, port, cert.as_deref(), key.as_deref(), token.as_ref(), &ca);
            let config_path = dir.join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log = fs::File::create(dir.join("registry.log")).unwrap();
            let mut child = Command::new(REGISTRY_BIN)
                .args(["serve", p(&config_path)])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .map_err(|e| Skip(format!("{REGISTRY_BIN}: {e}")))?;
            match wait_until_up(&mut child, port, trust.is_some(), &dir.join("registry.log")) {
                Ok(()) => {
                    let mut reg = Self {
                        child,
                        token,
                        opts,
                        port,
                        auth_json: dir.join("auth.json"),
                        no_auth_json: dir.join("no-auth.json"),
                        docker_config: dir.join("docker-config"),
                        dir,
                        ca,
                        trust,
                        cert_dir,
                    };
                    reg.write_auth_files();
                    return Ok(reg);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!("{e}\n{}", fs::read_to_string(dir.join("registry.log")).unwrap_or_default());
                }
            }
        }
        panic!("the registry did not start: {last_err}");
    }

    fn write_auth_files(&mut self) {
        let auths = if self.opts.token_auth {
            json!({ self.host(): { "auth": base64(format!("{TEST_USER}:{TEST_PASSWORD}").as_bytes()) } })
        } else {
            json!({})
        };
        let doc = serde_json::to_vec_pretty(&json!({ "auths": auths })).unwrap();
        fs::write(&self.auth_json, &doc).unwrap();
        fs::write(&self.no_auth_json, br#"{"auths":{}}"#).unwrap();
        // cosign (go-containerregistry) reads DOCKER_CONFIG/config.json.
        fs::create_dir_all(&self.docker_config).unwrap();
        fs::write(self.docker_config.join("config.json"), &doc).unwrap();
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn opts(&self) -> &RegistryOpts {
        &self.opts
    }
    /// `https://127.0.0.1:PORT` (http for `Tls::Plain`).
    pub fn base_url(&self) -> String {
        let scheme = if self.opts.tls == Tls::Plain { "http" } else { "https" };
        format!("{scheme}://{}", self.host())
    }
    /// `HOST/REPO:TAG` or `HOST/REPO@DIGEST`, as pod and cosign take it;
    /// `reference` is `REPO:TAG` or `REPO@DIGEST`.
    pub fn image_ref(&self, reference: &str) -> String {
        format!("{}/{reference}", self.host())
    }
    /// `docker://HOST/REFERENCE`, as skopeo takes it.
    pub fn docker_ref(&self, reference: &str) -> String {
        format!("docker://{}", self.image_ref(reference))
    }
    /// The PEM file clients must trust: the test CA (`Tls::Ca`) or the
    /// self-signed leaf. Panics for plain http.
    pub fn ca_cert(&self) -> &Path {
        self.trust.as_deref().expect("a plain-http registry has no certificate")
    }
    /// The test CA, whatever the registry serves with: it also signs the
    /// token server's certificate.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }
    /// A directory with `ca.crt`, for skopeo's `--cert-dir` options (empty
    /// for plain http).
    pub fn cert_dir(&self) -> &Path {
        &self.cert_dir
    }
    /// containers-auth.json with the test credentials for `host()` (no
    /// entries when the registry has no auth).
    pub fn auth_json(&self) -> &Path {
        &self.auth_json
    }
    /// A Docker config dir (`DOCKER_CONFIG`) with the same credentials.
    pub fn docker_config(&self) -> &Path {
        &self.docker_config
    }
    /// `Basic base64(user:password)`: the header a client with the test
    /// credentials sends to the token server.
    pub fn basic_auth_header(&self) -> String {
        format!("Basic {}", base64(format!("{TEST_USER}:{TEST_PASSWORD}").as_bytes()))
    }
    /// The token server's realm, when there is one.
    pub fn realm(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("https://127.0.0.1:{}/token", t.port))
    }
    /// Every request the token server got from the tools and pod, in order
    /// (the harness's own are left out).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        let Some(t) = &self.token else { return Vec::new() };
        let log = fs::read_to_string(&t.log).unwrap_or_default();
        log.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let s = |k: &str| v[k].as_str().map(str::to_owned);
                TokenRequest {
                    method: s("method").unwrap(),
                    path: s("path").unwrap(),
                    params: v["params"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|kv| (kv[0].as_str().unwrap().to_owned(), kv[1].as_str().unwrap().to_owned()))
                        .collect(),
                    authorization: s("authorization"),
                    user_agent: s("user_agent"),
                }
            })
            .filter(|r| r.user_agent.as_deref() != Some(HARNESS_AGENT))
            .collect()
    }
    /// The registry's filesystem storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
    /// The registry's log (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// skopeo's TLS and credential options for this registry, `side` being
    /// "src", "dest" or "" (inspect).
    pub fn skopeo_opts(&self, side: &str, creds: bool) -> Vec<String> {
        let o = |name: &str| if side.is_empty() { format!("--{name}") } else { format!("--{side}-{name}") };
        let mut v = Vec::new();
        if self.opts.tls == Tls::Plain {
            v.push(format!("{}=false", o("tls-verify")));
        } else {
            v.push(o("cert-dir"));
            v.push(p(&self.cert_dir).to_owned());
        }
        v.push(o("authfile"));
        v.push(p(if creds { &self.auth_json } else { &self.no_auth_json }).to_owned());
        v
    }

    /// `skopeo copy --all SRC docker://HOST/DEST` with the test credentials;
    /// `src` is a skopeo reference (`OciImage::reference()`, `oci-archive:F`,
    /// ...). Returns the pushed manifest's digest.
    pub fn push_ref(&self, src: &str, dest: &str) -> String {
        self.push_ref_with(src, dest, &[])
    }

    /// `push_ref` with more `skopeo copy` options, e.g.
    /// `["--format", "v2s2"]` (Docker schema2 media types) or
    /// `["--dest-compress-format", "zstd"]`.
    pub fn push_ref_with(&self, src: &str, dest: &str, extra: &[&str]) -> String {
        let out = self.try_push_ref_with(src, dest, true, extra);
        assert!(out.status.success(), "skopeo copy {src} -> {dest} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        fs::read_to_string(self.dir.join("push.digest")).unwrap().trim().to_owned()
    }

    /// The same push, with or without the test credentials, not asserted.
    pub fn try_push_ref(&self, src: &str, dest: &str, creds: bool) -> Output {
        self.try_push_ref_with(src, dest, creds, &[])
    }

    fn try_push_ref_with(&self, src: &str, dest: &str, creds: bool, extra: &[&str]) -> Output {
        let digestfile = self.dir.join("push.digest");
        let _ = fs::remove_file(&digestfile);
        let mut args: Vec<String> = vec!["copy".into(), "--all".into(), "--digestfile".into(), p(&digestfile).into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(self.skopeo_opts("dest", creds));
        args.push(src.to_owned());
        args.push(self.docker_ref(dest));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo(&args).stdin(Stdio::null()).output().expect("skopeo")
    }

    /// Pushes `image` as `dest` (`REPO:TAG`); returns the manifest digest.
    pub fn push(&self, image: &OciImage, dest: &str) -> String {
        self.push_ref(&image.reference(), dest)
    }

    /// `skopeo inspect [--raw] docker://HOST/REFERENCE` as JSON.
    pub fn inspect(&self, reference: &str, raw: bool) -> Value {
        let mut args: Vec<String> = vec!["inspect".into()];
        if raw {
            args.push("--raw".into());
        }
        args.extend(self.skopeo_opts("", true));
        args.push(self.docker_ref(reference));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&run_ok(&mut skopeo(&args))).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The token server's Drop follows.
    }
}

/// A port free on 127.0.0.1 a moment ago (retried by the caller if lost).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn registry_config(
    dir: &Path,
    port: u16,
    cert: Option<&Path>,
    key: Option<&Path>,
    token: Option<&TokenServer>,
    ca: &Ca,
) -> String {
    let mut c = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: pod-e2e-not-secret\n",
        p(&dir.join("storage"))
    );
    if let (Some(cert), Some(key)) = (cert, key) {
        c += &format!("  tls:\n    certificate: {}\n    key: {}\n", p(cert), p(key));
    }
    if let Some(t) = token {
        c += &format!(
            "auth:\n  token:\n    realm: https://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            t.port,
            p(&ca.cert)
        );
    }
    c
}

/// Waits until the registry logs that it listens and `/v2/` answers (200,
/// or 401 under auth); fails if it exits or 20 s pass.
fn wait_until_up(child: &mut Child, port: u16, tls: bool, log: &Path) -> Result<(), String> {
    let url = format!("{}://127.0.0.1:{port}/v2/", if tls { "https" } else { "http" });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the registry exited: {status}"));
        }
        // Ours, not another test's that got the same free port first.
        let listening = format!("listening on 127.0.0.1:{port}");
        if !fs::read_to_string(log).unwrap_or_default().contains(&listening) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // -k: only "is it up" here; the tests check TLS for real.
        let out = Command::new("curl")
            .args(["-sk", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let code = String::from_utf8_lossy(&out.stdout);
        if code == "200" || code == "401" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{url} did not answer within 20 s"))
}
