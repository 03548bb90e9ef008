//! The appc metadata service (appc's ace.md): every app of a pod gets
//! `AC_METADATA_URL`, where the pod's manifest, uuid and annotations and
//! each app's image manifest, ID and annotations are served, and an HMAC
//! identity endpoint signs for the pod and verifies another pod's
//! signatures. A pod reaches its own pod's data only. Asked from inside
//! pods with busybox's wget, as an app would. Needs root; reports a skip
//! without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// `wget` of an endpoint with the header the spec asks for; prints the
/// body, or `FAILED <status line>` if the request fails.
const GET: &str = r#"get() { wget -q -S -O - --header 'Metadata-Flavor: AppContainer' "$AC_METADATA_URL/acMetadata/v1/$1" 2>/tmp/err || echo "FAILED $(grep -o 'HTTP/1.1 [0-9]*' /tmp/err | tail -1)"; }
post() { wget -q -S -O - --header 'Metadata-Flavor: AppContainer' --post-data "$2" "$AC_METADATA_URL/acMetadata/v1/$1" 2>/tmp/err || echo "FAILED $(grep -o 'HTTP/1.1 [0-9]*' /tmp/err | tail -1)"; }
"#;

/// A pod of one busybox app running `script` (after [`GET`]), with the
/// host directory `out` at /out; its network `network`.
fn pod_yaml(name: &str, script: &str, out: &std::path::Path, network: &str) -> String {
    let script = serde_json::to_string(&format!("{GET}{script}")).unwrap();
    format!(
        "name: {name}\nnetwork: {network}\nannotations: {{ example.com/owner: ops, example.com/tier: db }}\napps:\n  \
         - name: probe\n    image: example.com/busybox:1.35\n    exec: [/bin/sh, -c, {script}]\n    \
         mounts: [{{ volume: out, path: /out }}]\nvolumes:\n  - {{ name: out, kind: host, source: {} }}\n",
        out.display()
    )
}

fn read(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

#[test]
fn apps_read_their_pods_metadata() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let script = "echo \"$AC_METADATA_URL\" > /out/url; get pod/uuid > /out/uuid; get pod/annotations > /out/annotations; \
                  get pod/manifest > /out/manifest; get apps/probe/image/id > /out/image-id; \
                  get apps/probe/image/manifest > /out/image-manifest; get apps/nosuch/image/id > /out/nosuch; \
                  wget -q -O - \"$AC_METADATA_URL/acMetadata/v1/pod/uuid\" > /out/no-header 2>&1 || echo refused >> /out/no-header";
    let file = live.pod_file("meta", &pod_yaml("meta", script, &out, "none"));
    let run = live.run_within(&["run", p(&file)], LIMIT);
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    let uuid = live.ok(&["list", "--format", "json"]);
    let pods: Vec<Value> = serde_json::from_str(&uuid).unwrap();
    let uuid = pods[0]["uuid"].as_str().unwrap();

    let url = read(&out, "url");
    assert!(url.starts_with("http://127.0.0.1:2375/") && url.len() == "http://127.0.0.1:2375/".len() + 32, "{url}");
    assert_eq!(read(&out, "uuid"), uuid, "pod/uuid is the pod's");
    let annotations: Value = serde_json::from_str(&read(&out, "annotations")).unwrap();
    assert_eq!(
        annotations,
        serde_json::json!([{ "name": "example.com/owner", "value": "ops" }, { "name": "example.com/tier", "value": "db" }])
    );
    let manifest: Value = serde_json::from_str(&read(&out, "manifest")).unwrap();
    assert_eq!(
        (manifest["acKind"].as_str(), manifest["apps"][0]["name"].as_str()),
        (Some("PodManifest"), Some("probe"))
    );
    let image_id = read(&out, "image-id");
    assert!(image_id.starts_with("sha512-"), "{image_id}");
    assert_eq!(
        manifest["apps"][0]["image"]["id"].as_str(),
        Some(image_id.as_str()),
        "the manifest names the image by ID"
    );
    let images = live.ok(&["image", "list", "--format", "json"]);
    assert!(images.contains(&image_id), "the image ID is the store's: {images}");
    let image: Value = serde_json::from_str(&read(&out, "image-manifest")).unwrap();
    assert_eq!(image["name"].as_str(), Some("example.com/busybox"), "{image}");
    assert_eq!(read(&out, "nosuch"), "FAILED HTTP/1.1 404");
    assert_mentions(&read(&out, "no-header"), &["refused"]);
    assert!(!read(&out, "no-header").contains(uuid), "no answer without the Metadata-Flavor header");
}

#[test]
fn a_pod_proves_its_identity_to_another_which_cannot_read_its_data() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let (out_a, out_b) = (live.out_dir("a"), live.out_dir("b"));
    // A signs and waits (running) for B to be done.
    let sign = "get pod/uuid > /out/uuid; post pod/hmac/sign 'content=hello+world' > /out/signature; \
                echo \"$AC_METADATA_URL\" > /out/url; while [ ! -e /out/done ]; do sleep 0.1; done";
    let a = live.start(&live.pod_file("a", &pod_yaml("a", sign, &out_a, "none")));
    live.wait_all_up(&a, LIMIT);
    let wait_for = |path: &std::path::Path| {
        let deadline = std::time::Instant::now() + LIMIT;
        while fs::read_to_string(path).map_or(true, |s| s.trim().is_empty()) {
            assert!(std::time::Instant::now() < deadline, "{} never written", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&out_a.join("url"));
    let (uuid_a, signature, url_a) = (read(&out_a, "uuid"), read(&out_a, "signature"), read(&out_a, "url"));
    assert_eq!(uuid_a, a);
    let token_a = url_a.rsplit('/').next().unwrap();
    // B: verifies A's signature as A's, as its own, tampered; asks for A's
    // data with A's token.
    let form = |uuid: &str, content: &str| {
        format!(
            "content={content}&uuid={uuid}&signature={}",
            signature.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        )
    };
    let script = format!(
        "post pod/hmac/verify \"{}\" > /out/as-a; \
         post pod/hmac/verify \"{}\" > /out/as-b; \
         post pod/hmac/verify \"{}\" > /out/tampered; \
         wget -q -S -O - --header 'Metadata-Flavor: AppContainer' \"http://127.0.0.1:2375/{token_a}/acMetadata/v1/pod/uuid\" > /out/a-data 2>/tmp/err \
           || grep -o 'HTTP/1.1 [0-9]*' /tmp/err | tail -1 >> /out/a-data; \
         get pod/uuid > /out/uuid",
        form(&uuid_a, "hello+world"),
        form("$(get pod/uuid)", "hello+world"),
        form(&uuid_a, "hello+there"),
    );
    let b_file = live.pod_file("b", &pod_yaml("b", &script, &out_b, "none"));
    let run = live.run_within(&["run", p(&b_file)], LIMIT);
    fs::write(out_a.join("done"), "").unwrap();
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    let uuid_b = read(&out_b, "uuid");
    assert_ne!(uuid_b, uuid_a);
    // A 200 has an empty body; a refusal writes FAILED and its status.
    assert_eq!(read(&out_b, "as-a"), "", "A's signature verifies as A's, asked from B");
    assert_eq!(read(&out_b, "as-b"), "FAILED HTTP/1.1 403", "and not as B's");
    assert_eq!(read(&out_b, "tampered"), "FAILED HTTP/1.1 403", "nor for other content");
    let a_data = read(&out_b, "a-data");
    assert_eq!(a_data, "HTTP/1.1 403", "B's socket answers B alone, even with A's token");
    let stop = live.run_within(&["stop", &a], LIMIT);
    assert!(stop.status.success(), "{}", describe(&["stop"], &stop));
}

#[test]
fn the_service_lets_go_of_an_ended_pods_socket() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let file = live.pod_file("once", &pod_yaml("once", "get pod/uuid > /out/uuid", &out, "none"));
    let run = live.run_within(&["run", p(&file)], LIMIT);
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    assert!(!read(&out, "uuid").is_empty());
    let pid: i32 = read(&live.data.join("metadata"), "service.pid").parse().unwrap();
    let sockets = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
            .filter(|l| l.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let before = sockets();
    let uuid = live.start(&live.pod_file("sleeper", &pod_yaml("sleeper", "exec sleep 1000", &out, "none")));
    live.wait_all_up(&uuid, LIMIT);
    assert_eq!(sockets(), before + 1, "the running pod's socket is the service's");
    let stop = live.run_within(&["stop", &uuid], LIMIT);
    assert!(stop.status.success(), "{}", describe(&["stop"], &stop));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sockets() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended pod's socket is still held: {} vs {before}",
            sockets()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_app_added_to_a_running_pod_is_served_too() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let uuid = live.start(&live.pod_file("host", &pod_yaml("host", "exec sleep 1000", &out, "none")));
    live.wait_all_up(&uuid, LIMIT);
    let script = format!("{GET}get pod/uuid; echo; get apps/late/image/id; echo; get apps/probe/image/id");
    let args = [
        "app",
        "add",
        &uuid,
        "--name",
        "late",
        "--image",
        "example.com/busybox:1.35",
        "--exec",
        "/bin/sh",
        "-c",
        &script,
    ];
    let added = live.run_within(&args, LIMIT);
    assert!(added.status.success(), "{}", describe(&args, &added));
    let deadline = std::time::Instant::now() + LIMIT;
    let log = loop {
        let log = live.ok(&["logs", &uuid, "late"]);
        if log.lines().count() >= 3 || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first().copied(), Some(uuid.as_str()), "{log}");
    assert!(lines.get(1).is_some_and(|l| l.starts_with("sha512-")), "the added app's own image: {log}");
    assert_eq!(lines.get(1), lines.get(2), "the same image as the first app's: {log}");
    let stop = live.run_within(&["stop", &uuid], LIMIT);
    assert!(stop.status.success(), "{}", describe(&["stop"], &stop));
}

#[test]
fn pod_metadata_service_serves_in_the_foreground_and_pod_run_uses_it() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let mut service = live
        .cmd(&["metadata-service"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = live.data.join("metadata").join("service.sock");
    let deadline = std::time::Instant::now() + LIMIT;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "the service never listened on {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second one for the same data directory is refused.
    let second = live.run(&["metadata-service"]);
    assert_eq!(second.status.code(), Some(7), "{}", describe(&["metadata-service"], &second));
    assert_mentions(&String::from_utf8_lossy(&second.stderr), &["already runs"]);
    let out = live.out_dir("out");
    let file = live.pod_file("fg", &pod_yaml("fg", "get pod/uuid > /out/uuid", &out, "none"));
    let run = live.run_within(&["run", p(&file)], LIMIT);
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    assert!(!read(&out, "uuid").starts_with("FAILED") && !read(&out, "uuid").is_empty());
    let pid: u32 = read(&live.data.join("metadata"), "service.pid").parse().unwrap();
    assert_eq!(pid, service.id(), "pod run used the running service instead of starting one");
    service.kill().unwrap();
    service.wait().unwrap();
}

#[test]
fn pod_run_no_metadata_gives_the_apps_no_url() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let file = live.pod_file("bare", &pod_yaml("bare", "echo \"${AC_METADATA_URL-unset}\" > /out/url", &out, "none"));
    let run = live.run_within(&["run", "--no-metadata", p(&file)], LIMIT);
    assert!(run.status.success(), "{}", describe(&["run", "--no-metadata"], &run));
    assert_eq!(read(&out, "url"), "unset");
    assert!(!live.data.join("metadata").exists(), "no service was started");
}

// A VM pod's apps find the service at the same URL, on the guest's
// loopback: the guest's agent passes each request over a virtio-serial
// port of its own, so a `network: none` VM pod has no network device at
// all (and qemu no user-mode network stack for it).
#[test]
fn a_vm_pods_apps_reach_the_service_without_a_network_device() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let script = "echo \"$AC_METADATA_URL\" > /out/url; ls /sys/class/net > /out/netdevs; get pod/uuid > /out/uuid; \
                  wget -q -S -O /dev/null --header 'Metadata-Flavor: AppContainer' \"$AC_METADATA_URL/acMetadata/v1/pod/uuid\" 2> /out/headers; \
                  get apps/probe/image/id > /out/image-id; get pod/nosuch > /out/nosuch; \
                  sig=$(post pod/hmac/sign 'content=hello+world'); echo \"$sig\" > /out/signature; \
                  enc=$(echo \"$sig\" | sed 's/+/%2B/g; s/\\//%2F/g; s/=/%3D/g'); \
                  post pod/hmac/verify \"content=hello+world&uuid=$(get pod/uuid)&signature=$enc\" > /out/verified; \
                  post pod/hmac/verify \"content=hello+there&uuid=$(get pod/uuid)&signature=$enc\" > /out/tampered";
    let yaml =
        pod_yaml("meta-vm", script, &out, "none").replacen("network: none\n", "network: none\nisolation: vm\n", 1);
    let file = live.pod_file("meta-vm", &yaml);
    let run = live.run_within(&["run", p(&file)], Duration::from_secs(240));
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    let pods: Vec<Value> = serde_json::from_str(&live.ok(&["list", "--format", "json"])).unwrap();
    let uuid = pods[0]["uuid"].as_str().unwrap();

    let url = read(&out, "url");
    assert!(url.starts_with("http://127.0.0.1:2375/") && url.len() == "http://127.0.0.1:2375/".len() + 32, "{url}");
    assert_eq!(read(&out, "netdevs"), "lo", "network none: the guest has loopback only");
    assert_eq!(read(&out, "uuid"), uuid, "pod/uuid is the pod's");
    assert!(read(&out, "image-id").starts_with("sha512-"), "{}", read(&out, "image-id"));
    assert_eq!(read(&out, "nosuch"), "FAILED HTTP/1.1 404");
    assert!(read(&out, "signature").len() > 40, "a signature: {}", read(&out, "signature"));
    assert_eq!(read(&out, "verified"), "", "the pod's signature verifies as its own");
    assert_eq!(read(&out, "tampered"), "FAILED HTTP/1.1 403", "and not for other content");
    // One request per connection in the guest: a client that kept the
    // connection for its next request (Go's does) would be reset.
    assert_mentions(&read(&out, "headers"), &["HTTP/1.1 200", "Connection: close"]);
}

/// A service restarted while pods run (a crash, `systemctl restart`)
/// takes them back: each running pod's apps are answered again, as their
/// stage1 registered them (a namespace pod's own loopback, one on the
/// host's network, a VM pod where the host can run one).
#[test]
fn a_restarted_service_adopts_the_running_pods() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    // Each app answers a file `/out/ask-<pod>` with `/out/<pod>`: its pod's
    // uuid as the service tells it, or FAILED.
    let asker = |name: &str| {
        format!(
            "while :; do if [ -e /out/ask-{name} ]; then rm /out/ask-{name}; get pod/uuid > /out/.{name}; \
             mv /out/.{name} /out/{name}; fi; sleep 0.1; done"
        )
    };
    let mut pods = vec![("own", "none", false), ("hostnet", "host", false)];
    match skip_reason_vm() {
        None => pods.push(("vm", "none", true)),
        Some(why) => eprintln!("SKIP (the VM pod's part): {why}"),
    }
    let uuids: Vec<(&str, String)> = pods
        .iter()
        .map(|&(name, network, vm)| {
            let mut yaml = pod_yaml(name, &asker(name), &out, network);
            if vm {
                yaml = yaml.replacen("network: none\n", "network: none\nisolation: vm\n", 1);
            }
            let uuid = live.start(&live.pod_file(name, &yaml));
            live.wait_all_up(&uuid, Duration::from_secs(240));
            (name, uuid)
        })
        .collect();
    let ask = |name: &str| -> String {
        let answer = out.join(name);
        let _ = fs::remove_file(&answer);
        fs::write(out.join(format!("ask-{name}")), "").unwrap();
        let deadline = std::time::Instant::now() + LIMIT;
        while !answer.exists() {
            assert!(std::time::Instant::now() < deadline, "pod {name} never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        read(&out, name)
    };
    for (name, uuid) in &uuids {
        assert_eq!(&ask(name), uuid, "pod {name}, before");
    }

    // The service dies: nothing answers.
    let pid: i32 = read(&live.data.join("metadata"), "service.pid").parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    {
        assert!(std::time::Instant::now() < deadline, "the service did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, _) in &uuids {
        assert!(ask(name).starts_with("FAILED"), "pod {name} was answered with no service");
    }

    // Started again (as `pod run` would, on demand): every pod is back.
    let mut service = live
        .cmd(&["metadata-service"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = live.data.join("metadata").join("service.sock");
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "the service never listened on {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let answers: Vec<(&str, String, String)> = uuids.iter().map(|(n, u)| (*n, u.clone(), ask(n))).collect();
    for (name, _) in &uuids {
        let stop = live.run_within(&["stop", name], LIMIT);
        assert!(stop.status.success(), "{}", describe(&["stop"], &stop));
    }
    service.kill().unwrap();
    let log = service.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&log.stderr);
    for (name, uuid, answer) in answers {
        assert_eq!(answer, uuid, "pod {name}, after the restart; the service's log:\n{log}");
    }
}

/// A service whose socket is removed (its data directory deleted) or
/// replaced ends by itself: nothing could reach it any more.
#[test]
fn the_service_ends_when_its_socket_is_removed() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let out = live.out_dir("out");
    let run = live.run_within(
        &["run", p(&live.pod_file("one", &pod_yaml("one", "get pod/uuid > /out/uuid", &out, "none")))],
        LIMIT,
    );
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    let pid = read(&live.data.join("metadata"), "service.pid");
    let alive = || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(), "the service ended with its socket still there");
    fs::remove_file(live.data.join("metadata").join("service.sock")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive() {
        assert!(std::time::Instant::now() < deadline, "the service {pid} outlived its socket");
        std::thread::sleep(Duration::from_millis(100));
    }
}
