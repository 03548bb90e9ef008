//! Helpers for the tests that run pods: the example images (built and signed
//! once, cached under `target/` by content), an environment that cleans up
//! the pods and the test network it made, commands with a time limit, and
//! HTTP probes.
//!
//! Network rules kept by every test: nothing writes to /proc/sys, traffic
//! goes only to loopback and to the pods' own addresses, and each test has
//! its own CNI network (a bridge without gateway, masquerade or SNAT, so the
//! plugins never turn on ip_forward or route_localnet) which is deleted
//! after its pods are stopped and collected.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{describe, link_exists, p, pod_bin, target_dir, wait_for, workspace, Key, Pod};

/// The CNI plugin directory stage0 searches first.
const CNI_PLUGINS: &str = "/usr/lib/cni";

// ---------------------------------------------------------------------------
// Skips.

/// Why this host cannot run pods (with a network when `net`), if it cannot.
/// Tests print `SKIP: <why>` and return: a reported skip, never a silent pass.
pub fn skip_reason(net: bool) -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("running pods needs root".into());
    }
    for bin in ["pod-stage1-ns", "pod-init"] {
        let path = target_dir().join("debug").join(bin);
        if !path.is_file() {
            return Some(format!("{} is missing: run `cargo build --workspace` first", path.display()));
        }
    }
    if net {
        for plugin in ["bridge", "host-local", "portmap"] {
            if !Path::new(CNI_PLUGINS).join(plugin).is_file() {
                return Some(format!("{CNI_PLUGINS}/{plugin} is missing (containernetworking-plugins)"));
            }
        }
        for tool in ["ip", "iptables-save", "ip6tables-save"] {
            if Command::new(tool).arg("--version").output().is_err() {
                return Some(format!("{tool} is missing"));
            }
        }
    }
    None
}

/// Why VM pods cannot run here, if they cannot: [`skip_reason`], the VM
/// stage1 binary, the guest kernel, qemu.
pub fn skip_reason_vm() -> Option<String> {
    if let Some(why) = skip_reason(false) {
        return Some(why);
    }
    let stage1 = target_dir().join("debug").join("pod-stage1-vm");
    if !stage1.is_file() {
        return Some(format!("{} is missing: run `cargo build --workspace` first", stage1.display()));
    }
    let kernel = std::env::var("POD_GUEST_KERNEL").unwrap_or_else(|_| "/usr/lib/pod/guest/vmlinuz".into());
    if !Path::new(&kernel).is_file() {
        return Some(format!("no guest kernel at {kernel} (scripts/install-deps.sh installs one)"));
    }
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        return Some("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)".into());
    }
    None
}

/// The pids of processes whose command line has `word` as an argument
/// (a VM pod's qemu runs as `-name pod-<uuid>`).
pub fn processes_with_arg(word: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|w| w == word.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

// ---------------------------------------------------------------------------
// Example images.

/// An image from `manifests/images/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Example {
    Busybox,
    Redis,
    Web,
    Openjdk,
}

impl Example {
    fn recipe(self) -> &'static str {
        match self {
            Self::Busybox => "busybox.yaml",
            Self::Redis => "redis.yaml",
            Self::Web => "web.yaml",
            Self::Openjdk => "openjdk.yaml",
        }
    }

    /// The name a pod file uses for it.
    pub fn reference(self) -> &'static str {
        match self {
            Self::Busybox => "example.com/busybox:1.35",
            Self::Redis => "example.com/redis:7.0",
            Self::Web => "example.com/web:1.0",
            Self::Openjdk => "example.com/openjdk:17",
        }
    }
}

fn e2e_dir() -> PathBuf {
    let d = target_dir().join("e2e-images");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Moves a finished temp dir to `dest` unless another process got there
/// first (rename(2) of a directory onto a non-empty one fails): either way
/// `dest` is complete afterwards.
fn publish_dir(tmp: tempfile::TempDir, dest: &Path) {
    let staged = tmp.keep();
    if fs::rename(&staged, dest).is_err() {
        assert!(dest.is_dir(), "could not move {} to {}", staged.display(), dest.display());
        let _ = fs::remove_dir_all(&staged);
    }
}

/// The key that signs the example images, made once and kept under
/// `target/e2e-images/key/` (test material only).
pub fn e2e_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = e2e_dir().join("key");
        if !dir.join("e2e.pub").is_file() {
            let tmp = tempfile::Builder::new().prefix(".key-").tempdir_in(e2e_dir()).unwrap();
            let out = Command::new(pod_bin())
                .args(["key", "gen", "--out", p(tmp.path()), "--name", "e2e", "--comment", "pod-e2e test key"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", describe(&["key", "gen"], &out));
            publish_dir(tmp, &dir);
        }
        Key { id: String::new(), secret: dir.join("e2e.key"), public: dir.join("e2e.pub") }
    })
}

/// What an image build depends on: every file of `manifests/images/`, the
/// `pod` binary (a rebuilt builder rebuilds the images) and the key.
fn build_inputs_digest(example: Example) -> String {
    fn walk(dir: &Path, h: &mut Sha256) {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for e in entries {
            h.update(e.to_string_lossy().as_bytes());
            if e.is_dir() {
                walk(&e, h);
            } else {
                h.update(fs::read(&e).unwrap());
            }
        }
    }
    let mut h = Sha256::new();
    h.update(example.recipe());
    walk(&workspace().join("manifests/images"), &mut h);
    let md = fs::metadata(pod_bin()).unwrap();
    let mtime = md.modified().unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    h.update(format!("{} {}", md.len(), mtime.as_nanos()));
    h.update(fs::read(&e2e_key().public).unwrap());
    hex::encode(h.finalize())[..16].to_owned()
}

/// The signed `.aci` of an example image (`IMAGE.sig` beside it). Built with
/// `pod image build` at most once per test binary, and reused across runs
/// while its inputs are unchanged; `.deb`s are cached in `target/e2e-debs`.
pub fn example_image(example: Example) -> PathBuf {
    static BUILT: Mutex<BTreeMap<Example, Arc<OnceLock<PathBuf>>>> = Mutex::new(BTreeMap::new());
    let cell = Arc::clone(BUILT.lock().unwrap().entry(example).or_default());
    cell.get_or_init(|| build_example(example)).clone()
}

fn build_example(example: Example) -> PathBuf {
    let stem = example.recipe().trim_end_matches(".yaml");
    let dest = e2e_dir().join(format!("{stem}-{}", build_inputs_digest(example)));
    let aci = dest.join(format!("{stem}.aci"));
    if super::sig_of(&aci).is_file() {
        return aci;
    }
    let tmp = tempfile::Builder::new().prefix(&format!(".{stem}-")).tempdir_in(e2e_dir()).unwrap();
    let out_aci = tmp.path().join(format!("{stem}.aci"));
    let recipe = workspace().join("manifests/images").join(example.recipe());
    let cache = target_dir().join("e2e-debs");
    let started = Instant::now();
    let args = ["image", "build", p(&recipe), "-o", p(&out_aci), "--cache-dir", p(&cache)];
    let out = Command::new(pod_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "building the example image\n{}", describe(&args, &out));
    let args = ["image", "sign", "--key", p(&e2e_key().secret), p(&out_aci)];
    let out = Command::new(pod_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "{}", describe(&args, &out));
    eprintln!("built {} in {:.1?}", example.reference(), started.elapsed());
    publish_dir(tmp, &dest);
    // Builds for an older `pod` are of no further use (ten minutes leave any
    // test binary still running with one time to fetch it).
    for entry in fs::read_dir(e2e_dir()).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if path != dest && name.starts_with(&format!("{stem}-")) && old.is_some_and(|a| a > Duration::from_secs(600)) {
            let _ = fs::remove_dir_all(&path);
        }
    }
    aci
}

// ---------------------------------------------------------------------------
// Randomness without a crate: names, ports and subnets unique per test.

/// Random bytes from the kernel.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A free TCP port in 20000..32000 (below the ephemeral range), never handed
/// out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = 20_000 + u16::try_from(random_u64() % 12_000).unwrap();
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() && GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------
// The test network.

/// A CNI network written into an environment's `net.d`.
#[derive(Debug, Clone)]
pub struct TestNet {
    /// The network's name, for `--net` and the pod file's `network:`.
    pub name: String,
    /// The bridge the plugin makes (and never removes).
    pub bridge: String,
    /// `10.213.N.`: every pod address starts with it.
    pub prefix: String,
}

impl TestNet {
    fn new(config: &Path, scratch: &Path) -> Self {
        let (tag, octet) = loop {
            let r = random_u64();
            let tag = format!("{:06x}", r & 0xff_ffff);
            if !link_exists(&format!("pe2e{tag}")) {
                break (tag, (r >> 24) % 250 + 3);
            }
        };
        let net = Self { name: format!("e2e-{tag}"), bridge: format!("pe2e{tag}"), prefix: format!("10.213.{octet}.") };
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    // A gateway or masquerade would make the plugin turn on
                    // ip_forward; the pods are only reached from the host.
                    "isGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": format!("{}0/24", net.prefix) }]],
                        "dataDir": scratch.join("ipam"),
                    }
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    // snat would set route_localnet; loopback is served by
                    // stage1's proxy instead.
                    "snat": false,
                    "conditionsV4": ["!", "-d", "127.0.0.0/8"],
                    "conditionsV6": ["!", "-d", "::1/128"]
                }
            ]
        });
        let dir = config.join("net.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("10-{}.conflist", net.name)), conflist.to_string()).unwrap();
        net
    }
}

// ---------------------------------------------------------------------------
// An environment that runs pods.

/// A [`Pod`] environment that trusts the example key and holds some example
/// images, optionally with its own CNI network. On drop it stops its running
/// pods, collects them, and deletes its bridge.
#[derive(Debug)]
pub struct Live {
    pub pod: Pod,
    pub net: Option<TestNet>,
}

impl std::ops::Deref for Live {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl Live {
    /// Loopback only (`--net none`).
    pub fn new(images: &[Example]) -> Self {
        Self::make(images, false)
    }

    /// With a test network of its own.
    pub fn with_net(images: &[Example]) -> Self {
        Self::make(images, true)
    }

    fn make(images: &[Example], net: bool) -> Self {
        let pod = Pod::new();
        let net = net.then(|| TestNet::new(&pod.config, pod.root()));
        let live = Self { pod, net };
        live.ok(&["trust", "add", "--prefix", "example.com/", p(&e2e_key().public)]);
        let files: Vec<PathBuf> = images.iter().map(|&i| example_image(i)).collect();
        if !files.is_empty() {
            let mut args = vec!["fetch"];
            args.extend(files.iter().map(|f| p(f)));
            live.ok(&args);
        }
        live
    }

    /// `manifests/web-db.yaml` as shipped, on this environment's network and
    /// with `port` as web's host port, written as `<stem>.yaml`.
    pub fn web_db_file(&self, stem: &str, port: u16) -> PathBuf {
        let example = fs::read_to_string(workspace().join("manifests/web-db.yaml")).unwrap();
        let lines: Vec<String> = example
            .lines()
            .map(|l| {
                if l.starts_with("network:") {
                    format!("network: {}", self.net_name())
                } else {
                    l.replace("host: 8080", &format!("host: {port}"))
                }
            })
            .collect();
        let yaml = lines.join("\n") + "\n";
        assert!(
            yaml.contains(&format!("host: {port}")) && yaml.contains(&format!("network: {}", self.net_name())),
            "manifests/web-db.yaml no longer has `network:` and `host: 8080` lines to adapt:\n{example}"
        );
        self.pod_file(stem, &yaml)
    }

    /// The network's name; panics without one.
    pub fn net_name(&self) -> &str {
        &self.net.as_ref().expect("a Live made with_net").name
    }

    /// A scratch directory every user may write (apps of any user leave
    /// their traces there, mounted as a host volume).
    pub fn out_dir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.work.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    /// Writes a pod file into the scratch dir.
    pub fn pod_file(&self, name: &str, yaml: &str) -> PathBuf {
        let f = self.work.join(format!("{name}.yaml"));
        fs::write(&f, yaml).unwrap();
        f
    }

    /// `pod ARGS` bounded by `limit` (see [`output_within`]).
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Output {
        output_within(self.cmd(args), limit, &args.join(" "))
    }

    /// `pod run -d [--net NET] FILE`: the new pod's uuid.
    pub fn start(&self, file: &Path) -> String {
        self.start_with(file, &[])
    }

    /// `pod run -d [--net NET] ARGS FILE` (`--name N`: a pod's name is
    /// unique among running pods): the new pod's uuid.
    pub fn start_with(&self, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d"];
        args.extend(extra);
        if let Some(net) = &self.net {
            args.extend(["--net", &net.name]);
        }
        args.push(p(file));
        let out = self.run_within(&args, Duration::from_secs(120));
        assert!(out.status.success(), "{}", describe(&args, &out));
        let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(is_uuid(&uuid), "pod run -d printed {uuid:?}\n{}", describe(&args, &out));
        uuid
    }

    /// `pod list --format json`.
    pub fn pods(&self) -> Vec<Value> {
        let out = self.ok(&["list", "--format", "json"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("pod list --format json printed {out:?}: {other:?}"),
        }
    }

    /// This pod's `pod list` entry.
    pub fn listed(&self, uuid: &str) -> Option<Value> {
        self.pods().into_iter().find(|e| e["uuid"] == uuid)
    }

    /// `pod status POD --format json`.
    pub fn status(&self, pod: &str) -> Value {
        let out = self.ok(&["status", pod, "--format", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("pod status --format json printed {out:?}: {e}"))
    }

    /// One app's entry of `pod status`.
    pub fn app_status(&self, pod: &str, app: &str) -> Value {
        let st = self.status(pod);
        st["apps"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["app"] == app).cloned())
            .unwrap_or_else(|| panic!("no app {app} in pod status: {st}"))
    }

    /// Waits until `pod status` says every app has state `ready` or
    /// `running`; panics with the status otherwise.
    pub fn wait_all_up(&self, pod: &str, limit: Duration) -> Value {
        let up = |st: &Value| {
            st["apps"].as_array().is_some_and(|a| {
                !a.is_empty() && a.iter().all(|x| matches!(x["state"].as_str(), Some("ready" | "running")))
            })
        };
        let mut last = Value::Null;
        let ok = wait_for(limit, || {
            last = self.status(pod);
            up(&last)
        });
        assert!(ok, "the apps of {pod} did not all come up within {limit:?}: {last}");
        last
    }
}

/// Ends the metadata services of the data directory `data` (found by
/// their command line: a pid file can name only one).
pub fn stop_metadata_service(data: &Path) {
    let dir = data.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else { return };
    for pid in procs.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok()) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let ours = args.first().is_some_and(|a| a.ends_with("/pod-metadata"))
            && args.windows(2).any(|w| w[0] == "--dir" && w[1] == dir);
        if ours {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Never panic here: a test that failed is unwinding through this.
        if self.data.join("pods").is_dir() {
            let listed = self.run(&["list", "--format", "json"]);
            let pods: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
            for pod in pods.iter().filter(|e| e["state"] == "running") {
                let uuid = pod["uuid"].as_str().unwrap_or_default();
                let out = self.run(&["stop", "--timeout", "5", uuid]);
                if !out.status.success() {
                    eprintln!("cleanup: {}", describe(&["stop", uuid], &out));
                }
            }
            let out = self.run(&["gc"]);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe(&["gc"], &out));
            }
        }
        // The metadata service `pod run` started for this data directory.
        stop_metadata_service(&self.data);
        if let Some(net) = &self.net {
            if link_exists(&net.bridge) {
                match Command::new("ip").args(["link", "del", &net.bridge]).output() {
                    Ok(out) if !out.status.success() => {
                        eprintln!("cleanup: ip link del {}: {}", net.bridge, String::from_utf8_lossy(&out.stderr));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Whether `s` looks like a pod uuid.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() })
}

// ---------------------------------------------------------------------------
// Commands with a time limit.

/// Runs `cmd` to completion, or for at most `limit`: then it gets SIGTERM
/// (stage1 passes it to the pod, which stops its apps), SIGKILL 15 s later,
/// and the test fails showing what it printed.
pub fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Read on threads: a pod's processes may outlive `pod` holding the pipes,
    // so the reads are waited for only briefly once it has exited.
    let reader = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit && !timed_out {
            timed_out = true;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        if start.elapsed() > limit + Duration::from_secs(15) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let collect = |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    let out = Output { status, stdout: collect(stdout), stderr: collect(stderr) };
    assert!(!timed_out, "{what}: still running after {limit:?}\n{}", describe(&[what], &out));
    out
}

// ---------------------------------------------------------------------------
// HTTP.

/// One `GET /` to 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write {addr}: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| format!("read {addr}: {e}"))?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP reply from {addr}: {reply:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line from {addr}: {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// `GET /` until it answers 200 (an app may still be starting), for at most
/// `limit`: the body.
pub fn http_get_ok(port: u16, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let last = match http_get(port) {
            Ok((200, body)) => return body,
            Ok((code, body)) => format!("status {code}: {body}"),
            Err(e) => e,
        };
        assert!(start.elapsed() < limit, "no 200 from 127.0.0.1:{port} within {limit:?}; last: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait, for at most `limit`, until an HTTP server answers on
/// 127.0.0.1:`port` (any status), probing with `HEAD /`, which the
/// counter does not count (it has no HEAD handler). For a VM's forwarded
/// port: qemu's user network accepts the host connection at once and keeps
/// resending its SYN to the guest after the client gave up, so a `GET`
/// sent before the guest listens can arrive seconds later and count.
pub fn http_answering(port: u16, limit: Duration) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    loop {
        let last = (|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            s.write_all(b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
            if reply.starts_with("HTTP/") {
                Ok(())
            } else {
                Err(format!("no HTTP reply: {reply:?}"))
            }
        })();
        match last {
            Ok(()) => return,
            Err(e) => assert!(start.elapsed() < limit, "no HTTP answer from {addr} within {limit:?}; last: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` is refused.
pub fn refused(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// `example.com/suid:1`: busybox (a dependency) plus `/suid/busybox`, a
/// setuid-root copy of it (named so, busybox takes its first argument as
/// the applet).
pub fn suid_image(live: &Live) -> PathBuf {
    suid_image_of(live, "suid", &live.tree_with("bin/busybox").join("bin/busybox"), "busybox")
}

/// `example.com/<name>:1`: busybox (a dependency) plus `/suid/<file>`, a
/// setuid-root copy of `binary`.
pub fn suid_image_of(live: &Live, name: &str, binary: &Path, file: &str) -> PathBuf {
    let dir = live.work.join(format!("{name}-build"));
    let bin = dir.join("rootfs/suid");
    fs::create_dir_all(&bin).unwrap();
    let copy = bin.join(file);
    fs::copy(binary, &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(0), Some(0)).unwrap();
    fs::set_permissions(&copy, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o4755)).unwrap();
    busybox_derived_image(live, name, &dir, serde_json::json!({ "exec": ["/bin/sh"], "user": "0", "group": "0" }))
}

/// `example.com/<name>:1`, built from `dir/rootfs` with `app` as its app
/// section and busybox as its dependency; signed and fetched.
pub fn busybox_derived_image(live: &Live, name: &str, dir: &Path, app: Value) -> PathBuf {
    let recipe = serde_json::json!({
        "name": format!("example.com/{name}"),
        "labels": { "version": "1" },
        "app": app,
        "rootfs": { "dir": "rootfs" },
        "dependencies": [{ "imageName": "example.com/busybox", "labels": { "version": "1.35" } }],
    });
    let recipe_path = dir.join("recipe.yaml");
    fs::write(&recipe_path, serde_json::to_string_pretty(&recipe).unwrap()).unwrap();
    let out = live.images.join(format!("{name}-1.aci"));
    let cache = live.work.join("deb-cache");
    live.ok(&["image", "build", p(&recipe_path), "-o", p(&out), "--cache-dir", p(&cache)]);
    live.sign(e2e_key(), &out);
    live.ok(&["fetch", p(&out)]);
    out
}
