//! `pod cri serve` driven by the real crictl (cri-tools v1.37.0, built by
//! scripts/build-cri-tools.sh): Version and Status, the ImageService
//! against a real registry (Debian's docker-registry over TLS from the test
//! CA) with cosign-signed images, and the sandbox and container lifecycle
//! (as root) with the busybox example image, and the whole flow (pull,
//! runp, create, start, exec, logs, port-forward, stop, rm, rmp) with a
//! signed image from a local registry. SKIPs visibly when crictl,
//! cosign, the registry, umoci or skopeo is missing, or without root.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

use serde_json::json;

#[test]
fn version_and_status() {
    let pod = Pod::new();
    let s = or_skip!(CriServer::start(&pod, &[]));
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

    // The cgroup driver kubelet is to use (RuntimeConfig).
    assert_mentions(&s.ok(&["runtime-config"]), &["CGROUPFS"]);

    // Calls not served yet say so (checkpointing is nobody's yet).
    let err = s.fails(&["checkpoint", "--export", p(&pod.work.join("c.tar")), "no-such-container"]);
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

    let s = or_skip!(CriServer::start(&pod, &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json())]));
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
    let s = or_skip!(CriServer::start(
        &pod,
        &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json()), "--insecure-prefix", &prefix]
    ));
    s.ok(&["pull", &reg.image_ref("dev/tool:v1")]);
    assert_eq!(images(&s)[0]["id"], digest.as_str());
    assert_mentions(&s.log(), &["WITHOUT signature verification"]);
}

#[test]
fn sandbox_and_container_lifecycle_with_crictl() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let logs = live.work.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_json = live.work.join("sandbox.json");
    std::fs::write(
        &sandbox_json,
        json!({
            "metadata": {"name": "Web_Sandbox", "namespace": "default", "uid": "uid-1", "attempt": 0},
            "log_directory": p(&logs),
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "kept"},
            "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    let container_json = live.work.join("container.json");
    std::fs::write(
        &container_json,
        json!({
            "metadata": {"name": "Busy.Box"},
            "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", "echo \"hello $GREETING\"; exec sleep 1000"],
            "envs": [{"key": "GREETING", "value": "cri"}],
            "labels": {"role": "main"},
            "annotations": {"c": "d"},
            "log_path": "busybox.log"
        })
        .to_string(),
    )
    .unwrap();

    // (The VM handler, pod-vm: cri_vm.rs.)
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    assert!(is_uuid(&sandbox), "runp printed {sandbox:?}");
    let pods = s.json(&["pods", "-o", "json"]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{pods}");
    assert_eq!(items[0]["id"], sandbox.as_str());
    assert_eq!(items[0]["state"], "SANDBOX_READY", "{pods}");
    assert_eq!(items[0]["metadata"]["name"], "Web_Sandbox", "{pods}");
    // Filters: by label, by state, by id.
    assert_eq!(s.json(&["pods", "-o", "json", "--label", "app=web"])["items"].as_array().unwrap().len(), 1);
    assert!(s.json(&["pods", "-o", "json", "--label", "app=db"])["items"].as_array().unwrap().is_empty());
    assert!(s.json(&["pods", "-o", "json", "--state", "NotReady"])["items"].as_array().unwrap().is_empty());
    assert_eq!(s.json(&["pods", "-o", "json", "--id", &sandbox[..8]])["items"].as_array().unwrap().len(), 1);

    let st = s.json(&["inspectp", "-o", "json", &sandbox]);
    assert_eq!(st["status"]["state"], "SANDBOX_READY", "{st}");
    assert_eq!(st["status"]["metadata"]["uid"], "uid-1", "{st}");
    assert_eq!(st["status"]["metadata"]["namespace"], "default", "{st}");
    assert_eq!(st["status"]["labels"]["tier"], "front", "{st}");
    assert_eq!(st["status"]["annotations"]["note"], "kept", "{st}");
    assert_ne!(st["status"]["createdAt"], "0", "{st}");
    // The sandbox is a pod pod itself lists.
    assert_eq!(live.listed(&sandbox).unwrap()["state"], "running");

    // A container: created (recorded), then started (added to the pod).
    let out = s.ok(&["create", &sandbox, p(&container_json), p(&sandbox_json)]);
    let container = out.trim().to_owned();
    assert!(container.starts_with(&sandbox), "{container}");
    let st = s.json(&["inspect", "-o", "json", &container]);
    assert_eq!(st["status"]["state"], "CONTAINER_CREATED", "{st}");
    assert_eq!(st["status"]["logPath"], p(&logs.join("busybox.log")), "{st}");
    assert_eq!(st["status"]["labels"]["role"], "main", "{st}");
    // The same name again is refused.
    assert_mentions_any(&s.fails(&["create", &sandbox, p(&container_json), p(&sandbox_json)]), &["already"]);

    s.ok(&["start", &container]);
    let st = wait_state(&s, &container, "CONTAINER_RUNNING");
    assert_ne!(st["status"]["startedAt"], "0", "{st}");
    let ps = s.json(&["ps", "-o", "json"]);
    let cs = ps["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "{ps}");
    assert_eq!(cs[0]["id"], container.as_str());
    assert_eq!(cs[0]["podSandboxId"], sandbox.as_str());
    assert_eq!(cs[0]["metadata"]["name"], "Busy.Box");
    assert_eq!(s.json(&["ps", "-o", "json", "--label", "role=main"])["containers"].as_array().unwrap().len(), 1);
    assert!(s.json(&["ps", "-o", "json", "--state", "Exited"])["containers"].as_array().unwrap().is_empty());
    assert_eq!(s.json(&["ps", "-o", "json", "-p", &sandbox])["containers"].as_array().unwrap().len(), 1);
    // pod's own view: the app runs in the sandbox pod, with the env given.
    let app = live.app_status(&sandbox, "busy-box");
    assert_mentions_any(app["state"].as_str().unwrap(), &["running", "ready"]);
    let log = live.ok(&["logs", &sandbox, "busy-box"]);
    assert_mentions(&log, &["hello cri"]);

    // A restarted server rebuilds everything from the pods directory.
    drop(s);
    let s = or_skip!(CriServer::start(&live, &[]));
    assert_eq!(s.json(&["inspectp", "-o", "json", &sandbox])["status"]["labels"]["app"], "web");
    assert_eq!(s.json(&["inspect", "-o", "json", &container])["status"]["state"], "CONTAINER_RUNNING");

    s.ok(&["stop", "--timeout", "5", &container]);
    let st = wait_state(&s, &container, "CONTAINER_EXITED");
    assert_ne!(st["status"]["finishedAt"], "0", "{st}");
    assert_eq!(s.json(&["pods", "-o", "json"])["items"][0]["state"], "SANDBOX_READY", "the sandbox outlives it");
    s.ok(&["rm", &container]);
    assert!(s.json(&["ps", "-a", "-o", "json"])["containers"].as_array().unwrap().is_empty());
    assert!(s.fails(&["inspect", &container]).contains("not found"));

    // A container removed before it ever started leaves nothing; one left
    // running is stopped with its sandbox.
    let write_container = |name: &str| {
        let f = live.work.join(format!("{name}.json"));
        let c = json!({
            "metadata": {"name": name},
            "image": {"image": Example::Busybox.reference()},
            "command": ["/bin/sh", "-c", "exec sleep 1000"]
        });
        std::fs::write(&f, c.to_string()).unwrap();
        f
    };
    let idle = s.ok(&["create", &sandbox, p(&write_container("idle")), p(&sandbox_json)]).trim().to_owned();
    s.ok(&["rm", &idle]);
    assert!(s.fails(&["inspect", &idle]).contains("not found"));
    // One whose command is not there fails to start, says why, and is
    // exited, not running.
    let bad_json = live.work.join("bad.json");
    let bad = json!({"metadata": {"name": "bad"}, "image": {"image": Example::Busybox.reference()},
        "command": ["/no/such/binary"]});
    std::fs::write(&bad_json, bad.to_string()).unwrap();
    let bad = s.ok(&["create", &sandbox, p(&bad_json), p(&sandbox_json)]).trim().to_owned();
    assert_mentions(&s.fails(&["start", &bad]), &["/no/such/binary"]);
    assert_eq!(s.json(&["inspect", "-o", "json", &bad])["status"]["state"], "CONTAINER_EXITED");
    s.ok(&["rm", &bad]);
    let last = s.ok(&["create", &sandbox, p(&write_container("last")), p(&sandbox_json)]).trim().to_owned();
    s.ok(&["start", &last]);
    wait_state(&s, &last, "CONTAINER_RUNNING");

    s.ok(&["stopp", &sandbox]);
    assert_eq!(s.json(&["inspectp", "-o", "json", &sandbox])["status"]["state"], "SANDBOX_NOTREADY");
    assert_eq!(s.json(&["inspect", "-o", "json", &last])["status"]["state"], "CONTAINER_EXITED");
    assert_eq!(s.json(&["pods", "-o", "json", "--state", "NotReady"])["items"].as_array().unwrap().len(), 1);
    s.ok(&["rmp", &sandbox]);
    assert!(s.json(&["pods", "-o", "json"])["items"].as_array().unwrap().is_empty());
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// The zombie children of process `pid` (each thread's children, by pid).
fn zombie_children(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let children: Vec<String> = tasks
        .flatten()
        .flat_map(|t| {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            c.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    children
        .into_iter()
        .filter(|c| {
            // The state follows the command's closing parenthesis.
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .collect()
}

#[test]
fn the_server_reaps_the_stage1_of_each_stopped_sandbox() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = live.work.join("sandbox.json");
    let sandbox = json!({"metadata": {"name": "reaped", "namespace": "default", "uid": "u4"}, "linux": {}});
    std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
    for _ in 0..2 {
        let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
        s.ok(&["stopp", &sandbox]);
        s.ok(&["rmp", &sandbox]);
    }
    // A long-lived server keeps no zombie per sandbox it ran.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !zombie_children(s.child.id()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let zombies = zombie_children(s.child.id());
    assert!(zombies.is_empty(), "zombie children of pod cri serve: {zombies:?}");
}

/// The whole flow the issue asks of crictl, as one user walks it: a
/// cosign-signed image pulled from a local registry, `runp`, `create`,
/// `start`, `exec` (output and exit code), `logs`, `port-forward` (busybox
/// httpd in the container, fetched with curl through the forwarded local
/// port), `stop`, `rm`, `rmp`, and nothing left behind.
#[test]
fn the_whole_crictl_flow_with_a_signed_image_from_a_local_registry() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    or_skip!(cosign_bin());
    if which("curl").is_none() {
        eprintln!("SKIP: no curl");
        return;
    }
    let live = Live::new(&[]);
    let reg = or_skip!(Registry::start(&live.work.join("registry"), RegistryOpts::https()));
    let img = or_skip!(or_skip!(OciImage::new(&live.work.join("layout"), "v1")).busybox())
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo from oci; mkdir -p /tmp/www && echo served-by-bb > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]);
    let digest = reg.push(&img, "team/bb:v1");
    let key = cosign_generate_key_pair(&live.work.join("cosign"), "pw").unwrap();
    cosign_sign(&key, &reg.image_ref(&format!("team/bb@{digest}")), &reg);
    live.ok(&["trust", "add", "--prefix", &reg.image_ref("team"), p(&key.public)]);
    let s = or_skip!(CriServer::start(&live, &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json())]));
    let image = reg.image_ref("team/bb:v1");
    assert_mentions(&s.ok(&["pull", &image]), &[&digest]);

    let logs = live.work.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_json = live.work.join("sandbox.json");
    let sandbox = json!({"metadata": {"name": "oci", "namespace": "default", "uid": "u2"}, "log_directory": p(&logs), "linux": {}});
    std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
    // The image's entrypoint and cmd, as pulled.
    let container_json = live.work.join("container.json");
    let container = json!({"metadata": {"name": "bb"}, "image": {"image": image}, "log_path": "bb.log"});
    std::fs::write(&container_json, container.to_string()).unwrap();
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let container = s.ok(&["create", &sandbox, p(&container_json), p(&sandbox_json)]).trim().to_owned();
    assert_eq!(s.json(&["inspect", "-o", "json", &container])["status"]["imageRef"], digest.as_str());
    s.ok(&["start", &container]);
    wait_state(&s, &container, "CONTAINER_RUNNING");

    // exec: the command's output, and its exit code as crictl's own.
    let out = s.ok(&["exec", &container, "/bin/sh", "-c", "echo in-$(cat /tmp/www/index.html)"]);
    assert_eq!(out.trim(), "in-served-by-bb", "{out}");
    // crictl fails on a non-zero exit and names the code, streamed
    // (Exec) and synchronous (ExecSync) alike.
    assert_mentions(&s.fails(&["exec", &container, "/bin/sh", "-c", "exit 7"]), &["exit code 7"]);
    assert_mentions(&s.fails(&["exec", "-s", &container, "/bin/sh", "-c", "exit 7"]), &["exited with 7"]);
    assert_eq!(s.ok(&["exec", "-s", &container, "/bin/sh", "-c", "echo sync"]).trim(), "sync");

    // logs: what the container printed, read by crictl from the CRI log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.ok(&["logs", &container]).contains("from oci") {
        assert!(Instant::now() < deadline, "no output in crictl logs:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // port-forward: curl through a local port reaches httpd in the pod.
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = s.socket.with_file_name("crictl.yaml");
    let mut fwd = std::process::Command::new(&s.crictl)
        .arg("--config")
        .arg(&config)
        .args(["port-forward", &sandbox, &format!("{local}:8080")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(fwd.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_mentions(&line, &["Forwarding from"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{local}/"))
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() >= deadline {
            let _ = fwd.kill();
            let _ = fwd.wait();
            panic!("curl through port-forward failed: {}\n{}", describe(&["curl"], &out), s.log());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = fwd.kill();
    let _ = fwd.wait();
    drop(stdout);
    assert_eq!(body, "served-by-bb\n");

    s.ok(&["stop", "--timeout", "5", &container]);
    wait_state(&s, &container, "CONTAINER_EXITED");
    s.ok(&["rm", &container]);
    assert!(s.json(&["ps", "-a", "-o", "json"])["containers"].as_array().unwrap().is_empty());
    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    assert!(s.json(&["pods", "-o", "json"])["items"].as_array().unwrap().is_empty());
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn a_sandbox_joins_the_cni_network_and_reports_its_ip() {
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = live.work.join("sandbox.json");
    let sandbox = json!({"metadata": {"name": "net", "namespace": "default", "uid": "u3"}, "linux": {}});
    std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let st = s.json(&["inspectp", "-o", "json", &sandbox]);
    let prefix = &live.net.as_ref().unwrap().prefix;
    let ip = st["status"]["network"]["ip"].as_str().unwrap_or_default();
    assert!(ip.starts_with(prefix.as_str()), "pod IP {ip:?} not in {prefix}0/24: {st}");
    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    let bridge = &live.net.as_ref().unwrap().bridge;
    assert!(links_on(bridge).is_empty(), "veths left on {bridge}: {:?}", links_on(bridge));
    assert!(!netns_file(&sandbox).exists());
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
