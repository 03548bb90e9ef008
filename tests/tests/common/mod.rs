//! Shared helpers for the end-to-end tests: an isolated `pod` environment,
//! images made through the real CLI, a raw tar writer for hostile archives,
//! store snapshots, and local http(s) servers with a test CA.
//!
//! Every test gets its own temp dir holding the data dir (`POD_DIR`), the
//! config dir (`POD_CONFIG`), a scratch dir, an `images/` dir that servers
//! serve, and an `outside/` dir that hostile archives aim at.
// Each test file uses a different subset of these helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod cri;
mod host;
mod pods;
mod registry;
#[allow(unused_imports)] // Only the CRI tests use these.
pub use cri::*;
#[allow(unused_imports)] // Only the tests that run pods use these.
pub use host::*;
#[allow(unused_imports)]
pub use pods::*;
#[allow(unused_imports)] // Only the OCI tests use these.
pub use registry::*;

/// Exit codes from stage0/src/exit.rs.
pub const EXIT_VERIFICATION: i32 = 3;
pub const EXIT_NOT_FOUND: i32 = 4;
pub const EXIT_INVALID: i32 = 5;
pub const EXIT_NETWORK: i32 = 6;
pub const EXIT_CONFLICT: i32 = 7;

/// The workspace root (where `manifests/` and `target/` are).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    let workspace = workspace();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    }
}

/// The `pod` binary built by `cargo build --workspace`.
pub fn pod_bin() -> PathBuf {
    let bin = target_dir().join("debug").join("pod");
    assert!(bin.is_file(), "{} is missing: run `cargo build --workspace` first", bin.display());
    bin
}

/// A path as a `&str` for argument lists (temp paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An isolated pod environment.
#[derive(Debug)]
pub struct Pod {
    tmp: tempfile::TempDir,
    /// `POD_DIR`: the store.
    pub data: PathBuf,
    /// `POD_CONFIG`: trust and sources.
    pub config: PathBuf,
    /// Scratch: recipes, keys, hand-made archives.
    pub work: PathBuf,
    /// Built and signed images; what the test servers serve.
    pub images: PathBuf,
    /// Next to the store; hostile archives aim here, it must stay as it was.
    pub outside: PathBuf,
}

impl Pod {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("pod-e2e-").tempdir().unwrap();
        let root = tmp.path().to_owned();
        let [data, config, work, images, outside] =
            ["data", "config", "work", "images", "outside"].map(|d| root.join(d));
        for d in [&work, &images, &outside] {
            fs::create_dir(d).unwrap();
        }
        Self { tmp, data, config, work, images, outside }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// A `pod` command with this environment's state dirs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(pod_bin());
        c.args(args)
            .env("POD_DIR", &self.data)
            .env("POD_CONFIG", &self.config)
            .env_remove("POD_MAX_IMAGE_SIZE")
            .env_remove("POD_LOG")
            .current_dir(&self.work)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `pod ARGS`, requires success, returns stdout trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{}", describe(args, &out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `pod ARGS`, requires exit `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "wanted exit {code}\n{}", describe(args, &out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `pod key gen`; the key ID is what it prints.
    pub fn keygen(&self, name: &str) -> Key {
        let dir = self.work.join(format!("keys-{name}"));
        let id = self.ok(&["key", "gen", "--out", p(&dir), "--name", name]);
        assert!(id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()), "key ID {id:?}");
        Key { id, secret: dir.join(format!("{name}.key")), public: dir.join(format!("{name}.pub")) }
    }

    pub fn trust(&self, key: &Key, prefix: &str) {
        self.ok(&["trust", "add", "--prefix", prefix, p(&key.public)]);
    }

    pub fn sign(&self, key: &Key, image: &Path) {
        self.ok(&["image", "sign", "--key", p(&key.secret), p(image)]);
        assert!(sig_of(image).is_file(), "no signature beside {}", image.display());
    }

    /// Builds `spec` with `pod image build` into `images/<basename>-<version>.aci`.
    pub fn build(&self, spec: &ImageSpec) -> PathBuf {
        let basename = spec.name.rsplit('/').next().unwrap();
        let stem = format!("{basename}-{}", spec.version);
        let dir = self.work.join(format!("build-{stem}"));
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        for (path, content) in &spec.files {
            let f = rootfs.join(path);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, content).unwrap();
        }
        let mut rootfs_spec = json!({ "dir": "rootfs" });
        if !spec.packages.is_empty() {
            rootfs_spec["packages"] = json!(spec.packages);
        }
        let deps: Vec<Value> =
            spec.deps.iter().map(|(n, v)| json!({ "imageName": n, "labels": { "version": v } })).collect();
        // JSON is YAML: the recipe parser reads it as it is.
        let recipe = json!({
            "name": spec.name,
            "labels": { "version": spec.version },
            "app": { "exec": spec.exec, "user": "0", "group": "0" },
            "rootfs": rootfs_spec,
            "dependencies": deps,
        });
        let recipe_path = dir.join("recipe.yaml");
        fs::write(&recipe_path, serde_json::to_string_pretty(&recipe).unwrap()).unwrap();
        let out = self.images.join(format!("{stem}.aci"));
        let cache = self.work.join("deb-cache");
        self.ok(&["image", "build", p(&recipe_path), "-o", p(&out), "--cache-dir", p(&cache)]);
        assert!(out.is_file(), "pod image build wrote no {}", out.display());
        out
    }

    /// Builds and signs.
    pub fn build_signed(&self, spec: &ImageSpec, key: &Key) -> PathBuf {
        let img = self.build(spec);
        self.sign(key, &img);
        img
    }

    /// Writes `bytes` as `images/<file>` and signs it with `key`.
    pub fn write_signed(&self, file: &str, bytes: &[u8], key: &Key) -> PathBuf {
        let img = self.images.join(file);
        fs::write(&img, bytes).unwrap();
        self.sign(key, &img);
        img
    }

    /// `pod image list --format json`.
    pub fn list(&self) -> Vec<Value> {
        let out = self.ok(&["image", "list", "--format", "json"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("image list --format json printed {out:?}: {other:?}"),
        }
    }

    /// Image directories in the store.
    pub fn image_dirs(&self) -> Vec<PathBuf> {
        read_dir_sorted(&self.data.join("images"))
    }

    /// Entries under the store's `tmp/`.
    pub fn tmp_entries(&self) -> Vec<PathBuf> {
        read_dir_sorted(&self.data.join("tmp"))
    }

    /// Rendered trees: `trees/*/rootfs`.
    pub fn trees(&self) -> Vec<PathBuf> {
        read_dir_sorted(&self.data.join("trees")).into_iter().map(|t| t.join("rootfs")).filter(|r| r.is_dir()).collect()
    }

    /// The one rendered tree containing `file` (relative).
    pub fn tree_with(&self, file: &str) -> PathBuf {
        let hits: Vec<_> = self.trees().into_iter().filter(|t| t.join(file).symlink_metadata().is_ok()).collect();
        assert!(
            !hits.is_empty(),
            "no rendered tree under {} holds {file}; trees: {:?}",
            self.data.join("trees").display(),
            self.trees()
        );
        hits.into_iter().next().unwrap()
    }

    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.data)
    }

    /// Asserts the store is as `before` and `outside/` still empty.
    pub fn assert_untouched(&self, before: &Snapshot, what: &str) {
        assert_same(before, &self.snapshot(), what);
        let outside = read_dir_sorted(&self.outside);
        assert!(outside.is_empty(), "{what}: written outside the store: {outside:?}");
    }
}

impl Default for Pod {
    fn default() -> Self {
        Self::new()
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// `IMAGE.sig`.
pub fn sig_of(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// The command, exit status, stdout and stderr, for failure messages.
pub fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "pod {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts `haystack` (an error message) contains every one of `words`,
/// ignoring case.
pub fn assert_mentions(haystack: &str, words: &[&str]) {
    let lower = haystack.to_lowercase();
    for w in words {
        assert!(lower.contains(&w.to_lowercase()), "message does not mention {w:?}:\n{haystack}");
    }
}

/// Asserts `haystack` contains at least one of `words`, ignoring case.
pub fn assert_mentions_any(haystack: &str, words: &[&str]) {
    let lower = haystack.to_lowercase();
    assert!(words.iter().any(|w| lower.contains(&w.to_lowercase())), "message mentions none of {words:?}:\n{haystack}");
}

/// Asserts `s` is one `sha512-` image ID and returns it.
pub fn assert_id(s: &str) -> String {
    let id = s.trim();
    let hex = id.strip_prefix("sha512-").unwrap_or_else(|| panic!("{id:?} is not an image ID"));
    assert!(hex.len() == 128 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?} is not an image ID");
    id.to_owned()
}

#[derive(Debug)]
pub struct Key {
    /// As printed by `pod key gen`.
    pub id: String,
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// What `Pod::build` puts in a recipe.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub version: String,
    pub exec: Vec<String>,
    pub files: Vec<(String, Vec<u8>)>,
    pub deps: Vec<(String, String)>,
    pub packages: Vec<String>,
}

impl ImageSpec {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            exec: vec!["/bin/true".to_owned()],
            files: Vec::new(),
            deps: Vec::new(),
            packages: Vec::new(),
        }
    }
    /// A file in the rootfs, `path` relative.
    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.files.push((path.to_owned(), content.as_ref().to_vec()));
        self
    }
    pub fn dep(mut self, name: &str, version: &str) -> Self {
        self.deps.push((name.to_owned(), version.to_owned()));
        self
    }
    pub fn package(mut self, deb: &str) -> Self {
        self.packages.push(deb.to_owned());
        self
    }
    pub fn exec(mut self, argv: &[&str]) -> Self {
        self.exec = argv.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

/// A valid appc image manifest for hand-made archives.
pub fn manifest_json(name: &str, version: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [
            { "name": "version", "value": version },
            { "name": "os", "value": "linux" },
            { "name": "arch", "value": "amd64" },
        ],
        "app": { "exec": ["/bin/true"], "user": "0", "group": "0" },
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------
// A raw ustar writer. `tar` crates and the tar CLI refuse (or sanitise) the
// entries below; hostile archives need them written as they are.

pub const REG: u8 = b'0';
pub const HARDLINK: u8 = b'1';
pub const SYMLINK: u8 = b'2';
pub const CHARDEV: u8 = b'3';
pub const DIR: u8 = b'5';

/// One ustar header block.
pub fn tar_header(name: &str, kind: u8, size: u64, link: &str, mode: u32, dev: (u32, u32)) -> [u8; 512] {
    fn put(h: &mut [u8], at: usize, len: usize, v: &[u8]) {
        assert!(v.len() <= len, "tar field too long: {}", String::from_utf8_lossy(v));
        h[at..at + v.len()].copy_from_slice(v);
    }
    fn octal(h: &mut [u8], at: usize, len: usize, v: u64) {
        put(h, at, len, format!("{v:0w$o}\0", w = len - 1).as_bytes());
    }
    let mut h = [0u8; 512];
    // Long names go into the ustar prefix field, split at a '/'.
    let (prefix, short) = if name.len() <= 100 {
        ("", name)
    } else {
        let cut = name[..name.len().min(156)].rfind('/').unwrap();
        (&name[..cut], &name[cut + 1..])
    };
    put(&mut h, 0, 100, short.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[148..156].fill(b' ');
    h[156] = kind;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    put(&mut h, 265, 32, b"root");
    put(&mut h, 297, 32, b"root");
    octal(&mut h, 329, 8, u64::from(dev.0));
    octal(&mut h, 337, 8, u64::from(dev.1));
    put(&mut h, 345, 155, prefix.as_bytes());
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A store holding one image, `example.com/seed` (`rootfs/etc/seed` and a
/// symlink to it), and the key trusted for `example.com/` that signed it:
/// so that "the store is untouched" means something.
pub fn seeded() -> (Pod, Key) {
    let pod = Pod::new();
    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let mut t = RawTar::with_manifest("example.com/seed");
    t.dir("rootfs/etc").file("rootfs/etc/seed", b"seed\n").symlink("rootfs/etc/link", "seed");
    let seed = pod.write_signed("seed.aci", &t.finish(), &key);
    assert_id(&pod.ok(&["fetch", p(&seed)]));
    (pod, key)
}

/// An uncompressed tar built entry by entry, exactly as told.
#[derive(Debug, Default)]
pub struct RawTar {
    buf: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tar that starts with a valid manifest and `rootfs/`.
    pub fn with_manifest(name: &str) -> Self {
        let mut t = Self::new();
        t.file("manifest", &manifest_json(name, "1")).dir("rootfs");
        t
    }

    pub fn entry(&mut self, name: &str, kind: u8, data: &[u8], link: &str, mode: u32, dev: (u32, u32)) -> &mut Self {
        self.buf.extend_from_slice(&tar_header(name, kind, data.len() as u64, link, mode, dev));
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().div_ceil(512) * 512, 0);
        self
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, REG, data, "", 0o644, (0, 0))
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, DIR, b"", "", 0o755, (0, 0))
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, SYMLINK, b"", target, 0o777, (0, 0))
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, HARDLINK, b"", target, 0o644, (0, 0))
    }
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(name, CHARDEV, b"", "", 0o666, (major, minor))
    }
    /// Raw bytes, e.g. a header whose data never comes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }
    /// The archive with its two zero end blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.buf.clone();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
    /// The archive as written so far, without end blocks.
    pub fn unfinished(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

/// Pipes `input` through a compressor CLI (`zstd -q -c`, `gzip -c`, ...).
pub fn compress(argv: &[&str], input: &[u8]) -> Vec<u8> {
    let data = input.to_vec();
    compress_with(argv, move |w| w.write_all(&data))
}

/// Pipes what `feed` writes through a compressor CLI, streaming, so inputs
/// far larger than the output need not be held in memory.
pub fn compress_with(
    argv: &[&str],
    feed: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
) -> Vec<u8> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{argv:?} failed");
    out.stdout
}

// ---------------------------------------------------------------------------
// Snapshots of a directory tree.

/// Per relative path: file type, permission bits, length, and the SHA-256 of
/// the content (files), the link target (symlinks) or the device number.
pub type Snapshot = BTreeMap<String, (char, u32, u64, String)>;

/// Walks `dir` without following symlinks. Ignored, as no content: the
/// top-level `store.lock`, and the top-level `images/`, `trees/` and `tmp/`
/// while empty (the store creates them when opened).
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.remove("store.lock");
    for top in ["images", "trees", "tmp"] {
        let prefix = format!("{top}/");
        if out.get(top).is_some_and(|e| e.0 == 'd') && !out.keys().any(|k| k.starts_with(&prefix)) {
            out.remove(top);
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let (kind, len, digest) = if ft.is_dir() {
            ('d', 0, String::new())
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ('l', md.len(), target.to_string_lossy().into_owned())
        } else if ft.is_file() {
            let content = fs::read(&path).unwrap();
            ('f', md.len(), hex::encode(Sha256::digest(&content)))
        } else if ft.is_char_device() {
            ('c', 0, md.rdev().to_string())
        } else if ft.is_block_device() {
            ('b', 0, md.rdev().to_string())
        } else if ft.is_fifo() {
            ('p', 0, String::new())
        } else {
            ('s', 0, String::new())
        };
        out.insert(rel, (kind, mode, len, digest));
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Asserts two snapshots are equal, listing what differs.
pub fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => writeln!(diff, "  removed {k} {v:?}").unwrap(),
            Some(w) if w != v => writeln!(diff, "  changed {k}: {v:?} -> {w:?}").unwrap(),
            Some(_) => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            writeln!(diff, "  added {k} {v:?}").unwrap();
        }
    }
    panic!("{what}: the store changed:\n{diff}");
}

// ---------------------------------------------------------------------------
// Local servers.

/// A test CA and a server certificate for 127.0.0.1 and localhost, made with
/// the openssl CLI.
#[derive(Debug)]
pub struct Ca {
    pub cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Runs `openssl ARGS` in `dir`; `args` is split at whitespace.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl").args(args.split_whitespace()).current_dir(dir).output().expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            dir,
            &format!(
                "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=pod-e2e-test-CA \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
        openssl(dir, &format!("req -new {ec} -keyout server.key -out server.csr -subj /CN=localhost"));
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
             -extfile server.ext",
        );
        Self { cert: dir.join("ca.pem"), server_cert: dir.join("server.pem"), server_key: dir.join("server.key") }
    }
}

const SERVER_PY: &str = r#"
import functools, http.server, ssl, sys, threading
root, log, cert, key = sys.argv[1:5]
lock = threading.Lock()
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        with lock, open(log, "a") as f:
            f.write(self.path + "\n")
        super().do_GET()
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
srv.daemon_threads = True
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A python http(s) server on 127.0.0.1 serving one directory, logging each
/// GET path to a file. Killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub port: u16,
    /// `https://127.0.0.1:PORT` (or http).
    pub base: String,
    log: PathBuf,
}

impl Server {
    /// Serves `root` over https with `ca`'s server certificate.
    pub fn https(root: &Path, ca: &Ca, state: &Path) -> Self {
        Self::start(root, Some(ca), state)
    }

    /// Serves `root` over plain http.
    pub fn http(root: &Path, state: &Path) -> Self {
        Self::start(root, None, state)
    }

    fn start(root: &Path, ca: Option<&Ca>, state: &Path) -> Self {
        fs::create_dir_all(state).unwrap();
        let log = state.join("requests.log");
        fs::write(&log, "").unwrap();
        let stderr = fs::File::create(state.join("server.stderr")).unwrap();
        let (cert, key) =
            ca.map_or((String::new(), String::new()), |c| (p(&c.server_cert).to_owned(), p(&c.server_key).to_owned()));
        let mut child = Command::new("/usr/bin/python3")
            .args(["-u", "-c", SERVER_PY, p(root), p(&log), &cert, &key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("/usr/bin/python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = match line.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = fs::read_to_string(state.join("server.stderr")).unwrap_or_default();
                panic!("test server did not start: {line:?}\n{err}");
            }
        };
        let scheme = if ca.is_some() { "https" } else { "http" };
        Self { child, port, base: format!("{scheme}://127.0.0.1:{port}"), log }
    }

    /// `BASE/path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// The GET paths served so far, in order.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).unwrap().lines().map(str::to_owned).collect()
    }

    /// How many times `path` was requested.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| *r == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A `std::fs::read` that names the file on failure.
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
