//! `pod cri serve` driven by the real crictl (cri-tools v1.37.0, built by
//! scripts/build-cri-tools.sh): Version and Status, and the ImageService
//! against a real registry (Debian's docker-registry over TLS from the test
//! CA) with cosign-signed images. SKIPs visibly when crictl, cosign, the
//! registry, umoci or skopeo is missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CRICTL_INSTALLED: &str = "/usr/local/lib/pod-test/bin/crictl";

fn crictl_bin() -> Result<PathBuf, Skip> {
    if let Some(c) = std::env::var_os("POD_TEST_CRICTL") {
        return which(&c.to_string_lossy()).ok_or_else(|| Skip(format!("crictl not found: POD_TEST_CRICTL={c:?}")));
    }
    which(CRICTL_INSTALLED)
        .or_else(|| which("crictl"))
        .ok_or_else(|| Skip("crictl not found (scripts/build-cri-tools.sh builds it)".into()))
}

/// `pod cri serve` on a socket of its own; killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    crictl: PathBuf,
}

impl Server {
    fn start(pod: &Pod, extra: &[&str]) -> Result<Self, Skip> {
        let crictl = crictl_bin()?;
        let socket = pod.work.join("cri/cri.sock");
        let log = pod.work.join("cri.log");
        let listen = format!("unix://{}", socket.display());
        let mut args = vec!["cri", "serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let child = pod.cmd(&args).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let mut s = Self { child, socket, log, crictl };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.socket.exists() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("pod cri serve exited with {status}:\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "no socket after 20 s:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn crictl(&self, args: &[&str]) -> Output {
        let endpoint = format!("unix://{}", self.socket.display());
        // A crictl.yaml of its own: none of the host's.
        let config = self.socket.with_file_name("crictl.yaml");
        std::fs::write(&config, format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"))
            .unwrap();
        let mut c = Command::new(&self.crictl);
        c.arg("--config").arg(&config).args(args).stdin(Stdio::null());
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(out.status.success(), "{}\nserver log:\n{}", describe(&["crictl"], &out), self.log());
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(!out.status.success(), "crictl {args:?} succeeded:\n{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn images(s: &Server) -> Vec<Value> {
    s.json(&["images", "-o", "json"])["images"].as_array().unwrap().clone()
}

#[test]
fn version_and_status() {
    let pod = Pod::new();
    let s = or_skip!(Server::start(&pod, &[]));
    let v = s.ok(&["version"]);
    assert_mentions(&v, &["RuntimeName:  pod", "RuntimeApiVersion:  v1"]);

    let info = s.json(&["info"]);
    let conditions = info["status"]["conditions"].as_array().unwrap();
    let cond = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap_or_else(|| panic!("{t} in {info}")).clone();
    assert_eq!(cond("RuntimeReady")["status"], true, "{info}");
    assert_eq!(cond("NetworkReady")["status"], false, "no CNI config yet: {info}");
    assert_mentions(cond("NetworkReady")["message"].as_str().unwrap(), &["net.d"]);

    // A CNI network configuration makes the network ready.
    std::fs::create_dir_all(pod.config.join("net.d")).unwrap();
    std::fs::write(pod.config.join("net.d/10-test.conflist"), "{}").unwrap();
    let info = s.json(&["info"]);
    let ready = info["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "NetworkReady" && c["status"] == true);
    assert!(ready, "{info}");

    // The sandbox and container calls are not served yet, and say so.
    let err = s.fails(&["pods"]);
    assert_mentions_any(&err, &["Unimplemented", "unimplemented"]);
}

#[test]
fn images_pulled_verified_listed_inspected_removed() {
    or_skip!(cosign_bin());
    let pod = Pod::new();
    let reg = or_skip!(Registry::start(&pod.work.join("registry"), RegistryOpts::https()));
    let signed = or_skip!(OciImage::new(&pod.work.join("signed"), "v1"))
        .layer(&[("hello", b"hello from a signed image\n")])
        .entrypoint(&["/hello"]);
    let unsigned = or_skip!(OciImage::new(&pod.work.join("unsigned"), "v1")).layer(&[("evil", b"unsigned\n")]);
    let digest = reg.push(&signed, "team/app:v1");
    reg.push(&unsigned, "team/other:v1");
    let key = cosign_generate_key_pair(&pod.work.join("cosign"), "pw").unwrap();
    cosign_sign(&key, &reg.image_ref(&format!("team/app@{digest}")), &reg);
    pod.ok(&["trust", "add", "--prefix", &reg.image_ref("team"), p(&key.public)]);

    let s = or_skip!(Server::start(&pod, &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json())]));
    let fsinfo = s.json(&["imagefsinfo", "-o", "json"]);
    let used_before: u64 =
        fsinfo["status"]["imageFilesystems"][0]["usedBytes"]["value"].as_str().unwrap().parse().unwrap();

    // An unsigned image is refused, and the store is left as it was.
    let before = pod.snapshot();
    let err = s.fails(&["pull", &reg.image_ref("team/other:v1")]);
    assert_mentions(&err, &["PermissionDenied", "not signed"]);
    pod.assert_untouched(&before, "a refused CRI pull");
    assert!(images(&s).is_empty());

    // The signed one is pulled, and shows with its tag and digest.
    let tagged = reg.image_ref("team/app:v1");
    let out = s.ok(&["pull", &tagged]);
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_mentions(&out, &[&digest]);
    let list = images(&s);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], digest.as_str());
    assert_eq!(list[0]["repoTags"][0], tagged.as_str(), "{list:?}");
    assert_eq!(list[0]["repoDigests"][0], reg.image_ref(&format!("team/app@{digest}")).as_str(), "{list:?}");
    assert_ne!(list[0]["size"], "0", "{list:?}");
    let table = s.ok(&["images"]);
    assert_mentions(&table, &[&reg.image_ref("team/app"), "v1", &hex[..13]]);

    // inspecti by tag, by digest reference and by ID.
    for name in [tagged.clone(), reg.image_ref(&format!("team/app@{digest}")), digest.clone()] {
        let i = s.json(&["inspecti", "-o", "json", &name]);
        assert_eq!(i["status"]["id"], digest.as_str(), "{name}: {i}");
        assert!(i["info"]["signer"].is_string(), "{i}");
    }
    let fsinfo = s.json(&["imagefsinfo", "-o", "json"]);
    let fs = &fsinfo["status"]["imageFilesystems"][0];
    let used: u64 = fs["usedBytes"]["value"].as_str().unwrap().parse().unwrap();
    assert!(used > used_before, "{fsinfo}");
    assert_eq!(fs["fsId"]["mountpoint"], p(&pod.data), "{fsinfo}");

    // rmi removes it; crictl then finds no such image.
    s.ok(&["rmi", &tagged]);
    assert!(images(&s).is_empty());
    assert!(pod.list().is_empty(), "pod's own list agrees: {:?}", pod.list());
    assert_mentions(&s.fails(&["rmi", &digest]), &["no such image"]);
}

#[test]
fn insecure_prefixes_pull_unsigned_images_and_say_so() {
    let pod = Pod::new();
    let reg = or_skip!(Registry::start(&pod.work.join("registry"), RegistryOpts::https()));
    let img = or_skip!(OciImage::new(&pod.work.join("layout"), "v1")).layer(&[("x", b"x\n")]);
    let digest = reg.push(&img, "dev/tool:v1");
    let prefix = reg.image_ref("dev");
    let s = or_skip!(Server::start(
        &pod,
        &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json()), "--insecure-prefix", &prefix]
    ));
    s.ok(&["pull", &reg.image_ref("dev/tool:v1")]);
    assert_eq!(images(&s)[0]["id"], digest.as_str());
    assert_mentions(&s.log(), &["WITHOUT signature verification"]);
}
