//! A real OCI registry on loopback for the OCI tests: Debian's
//! `docker-registry` (distribution 2.8) with filesystem storage in the
//! test's dir, over plain http, TLS from the test CA, or TLS with a
//! self-signed leaf; optionally behind token auth served by a small python
//! token server that records every request. Images are built with umoci
//! (`image.rs`), pushed with skopeo, signed with cosign (`cosign.rs`).
//!
//! Every constructor that needs a tool returns `Err(Skip)` when the tool is
//! missing; tests turn it into a visible `SKIP:` line with `or_skip!`.
//! Everything listens on 127.0.0.1 only and is killed on drop.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{openssl, p, Ca};

mod cosign;
mod image;
pub use cosign::*;
pub use image::*;

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
const HARNESS_AGENT: &str = "pod-e2e-harness";

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
    c.arg("--insecure-policy").args(args).env("CONTAINERS_REGISTRIES_CONF", "/dev/null").env_remove("REGISTRY_AUTH_FILE");
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
            match wait_until_up(&mut child, port, trust.is_some()) {
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
        let out = self.try_push_ref(src, dest, true);
        assert!(out.status.success(), "skopeo copy {src} -> {dest} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let digest = fs::read_to_string(self.dir.join("push.digest")).unwrap();
        digest.trim().to_owned()
    }

    /// The same push, with or without the test credentials, not asserted.
    pub fn try_push_ref(&self, src: &str, dest: &str, creds: bool) -> Output {
        let digestfile = self.dir.join("push.digest");
        let _ = fs::remove_file(&digestfile);
        let mut args: Vec<String> = vec!["copy".into(), "--all".into(), "--digestfile".into(), p(&digestfile).into()];
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

    // -- Raw access, for hostile tests ---------------------------------------

    /// A curl command for `path` on the registry (with a bearer token for
    /// `scope`, e.g. `repository:REPO:pull,push`, under token auth).
    pub fn curl(&self, path: &str, scope: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--noproxy", "*", "-A", HARNESS_AGENT]);
        if let Some(t) = &self.trust {
            c.args(["--cacert", p(t)]);
        }
        if self.token.is_some() {
            c.args(["-H", &format!("Authorization: Bearer {}", self.token_for(scope))]);
        }
        c.arg(format!("{}{path}", self.base_url()));
        c
    }

    /// A token from the token server for `scope`, with the test credentials.
    pub fn token_for(&self, scope: &str) -> String {
        let realm = self.realm().expect("no token server");
        let url = format!("{realm}?service={TOKEN_SERVICE}&scope={scope}");
        let out = run_ok(Command::new("curl").args([
            "-sSf",
            "--noproxy",
            "*",
            "-A",
            HARNESS_AGENT,
            "--cacert",
            p(&self.ca.cert),
            "-u",
            &format!("{TEST_USER}:{TEST_PASSWORD}"),
            &url,
        ]));
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Uploads `bytes` as a blob of `repo` through the API; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let scope = format!("repository:{repo}:pull,push");
        let headers = run_ok(self.curl(&format!("/v2/{repo}/blobs/uploads/"), &scope).args([
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ]));
        let location = headers
            .lines()
            .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
            .unwrap_or_else(|| panic!("no upload location in {headers}"))
            .trim()
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let path = location.strip_prefix(&self.base_url()).unwrap_or(&location);
        let file = self.scratch_file(bytes);
        let status = run_ok(self.curl(&format!("{path}{sep}digest={digest}"), &scope).args([
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", p(&file)),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]));
        assert_eq!(status, "201", "blob upload of {digest} to {repo}:\n{}", self.log());
        digest
    }

    /// PUTs a manifest (or index) through the API, where the registry checks
    /// it; returns (HTTP status, the registry's answer).
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> (u16, String) {
        let file = self.scratch_file(bytes);
        let out = run_ok(self.curl(&format!("/v2/{repo}/manifests/{reference}"), &format!("repository:{repo}:pull,push")).args([
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", p(&file)),
            "-w",
            "\n%{http_code}",
        ]));
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_owned())
    }

    /// GETs `path` (e.g. `/v2/REPO/manifests/TAG`) from the registry:
    /// (status, body).
    pub fn get(&self, path: &str, accept: &str, scope: &str) -> (u16, Vec<u8>) {
        let out = self
            .curl(path, scope)
            .args(["-H", &format!("Accept: {accept}"), "-w", "\n%{http_code}"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let body = out.stdout;
        let cut = body.iter().rposition(|&b| b == b'\n').unwrap();
        let status = String::from_utf8_lossy(&body[cut + 1..]).trim().parse().unwrap();
        (status, body[..cut].to_vec())
    }

    fn scratch_file(&self, bytes: &[u8]) -> PathBuf {
        let f = self.dir.join(format!("upload-{}", hex::encode(&Sha256::digest(bytes)[..8])));
        fs::write(&f, bytes).unwrap();
        f
    }

    fn v2(&self) -> PathBuf {
        self.storage().join("docker/registry/v2")
    }

    /// The storage file of blob `digest` (`sha256:HEX`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.v2().join("blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Writes `bytes` straight into storage as blob `digest` of `repo`,
    /// whether or not they hash to it: the registry serves them as they are.
    pub fn write_blob_raw(&self, repo: &str, digest: &str, bytes: &[u8]) {
        let data = self.blob_path(digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let hex = &digest["sha256:".len()..];
        write_link(&self.v2().join("repositories").join(repo).join("_layers/sha256").join(hex), digest);
    }

    /// Replaces the content of an existing blob (every repository sees it).
    pub fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        let data = self.blob_path(digest);
        assert!(data.is_file(), "no blob {digest} in the registry");
        fs::write(&data, bytes).unwrap();
    }

    /// Writes `bytes` straight into storage as the manifest tagged `tag` of
    /// `repo`, bypassing the API's checks and its 4 MiB limit; returns its
    /// digest. The registry answers with the media type the JSON names. At
    /// most 4 MiB: distribution reads no more (a 500, "read exceeds limit").
    pub fn write_manifest_raw(&self, repo: &str, tag: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let hex = &digest["sha256:".len()..];
        let data = self.blob_path(&digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let m = self.v2().join("repositories").join(repo).join("_manifests");
        write_link(&m.join("revisions/sha256").join(hex), &digest);
        write_link(&m.join("tags").join(tag).join("current"), &digest);
        write_link(&m.join("tags").join(tag).join("index/sha256").join(hex), &digest);
        digest
    }
}

fn write_link(dir: &Path, digest: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("link"), digest).unwrap();
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

fn registry_config(dir: &Path, port: u16, cert: Option<&Path>, key: Option<&Path>, token: Option<&TokenServer>, ca: &Ca) -> String {
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

/// Polls `/v2/` until it answers (200, or 401 under auth), or the registry
/// exits, or 20 s pass.
fn wait_until_up(child: &mut Child, port: u16, tls: bool) -> Result<(), String> {
    let url = format!("{}://127.0.0.1:{port}/v2/", if tls { "https" } else { "http" });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the registry exited: {status}"));
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

// ---------------------------------------------------------------------------
// The token server.

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
struct TokenServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TokenServer {
    fn start(dir: &Path, ca: &Ca, anonymous_pull: bool) -> Result<Self, Skip> {
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
                panic!("token server did not start: {}", fs::read_to_string(d.join("token.stderr")).unwrap_or_default());
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
