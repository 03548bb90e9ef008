//! OCI images as pods run them, after `pod fetch` has verified and stored
//! them: a real multi-layer server (Debian's nginx with a layer of its own
//! configuration and a whiteout of the default site) on a test bridge,
//! reached through its host port and stopped with the image's StopSignal;
//! a layered image in a VM pod, whose guest sees the host's overlay of the
//! layer trees; and a layered image under `userns: auto`, whose layer
//! trees are idmapped into the pod's range. The images come from a TLS
//! registry on loopback, signed with cosign. Needs root, the registry
//! tools (and CNI plugins, qemu, idmapped mounts where a test says so);
//! reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// nginx answers a moment after its pod starts.
const UP_WITHIN: Duration = Duration::from_secs(60);
/// A foreground pod, including a VM booting under TCG.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The image's nginx.conf. `daemon off;` is the Entrypoint's `-g` (nginx
/// refuses the directive twice); logs go to the app's stdout and stderr,
/// which the pod keeps; the pid file lives in the rootfs's /run.
const NGINX_CONF: &str = "\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    access_log /dev/stdout;
    # Debian's default site would be read here: this image whites it out.
    include /etc/nginx/sites-enabled/*;
    server {
        listen 8080 default_server;
        root /srv/www;
        index index.html;
    }
}
";
const INDEX_HTML: &str = "<h1>served by a layered OCI image</h1>\n";

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pod-oci-run-").tempdir().unwrap()
}

/// Debian's nginx (its rootfs, plus the default site's link that
/// nginx-common's postinst would make), then a layer with this test's
/// configuration and page that deletes the default site: two layers, one
/// whiteout.
fn nginx_image(layout: &Path, rootfs: &Path) -> Result<OciImage, Skip> {
    let img = OciImage::new(layout, "v1")?
        .layer_with(|root| {
            let out =
                std::process::Command::new("cp").args(["-a", "--", &format!("{}/.", p(rootfs)), p(root)]).output();
            assert!(out.as_ref().is_ok_and(|o| o.status.success()), "cp -a {}: {out:?}", rootfs.display());
            symlink("/etc/nginx/sites-available/default", root.join("etc/nginx/sites-enabled/default")).unwrap();
        })
        .layer_with(|root| {
            fs::write(root.join("etc/nginx/nginx.conf"), NGINX_CONF).unwrap();
            fs::create_dir_all(root.join("srv/www")).unwrap();
            fs::write(root.join("srv/www/index.html"), INDEX_HTML).unwrap();
            fs::remove_file(root.join("etc/nginx/sites-enabled/default")).unwrap();
        })
        .entrypoint(&["/usr/sbin/nginx", "-g", "daemon off;"])
        .exposed_ports(&["8080/tcp"])
        .stop_signal("SIGQUIT");
    let top = img.layer_entries(1);
    assert!(
        top.iter().any(|e| e.trim_start_matches("./") == "etc/nginx/sites-enabled/.wh.default"),
        "the second layer whites out the default site: {top:?}"
    );
    Ok(img)
}

/// busybox; then files, one owned by uid 1000 in a home of its own; then a
/// layer adding a file and deleting one of the second's: three layers,
/// one whiteout. The app prints what it sees.
fn layered_busybox(layout: &Path) -> Result<OciImage, Skip> {
    Ok(OciImage::new(layout, "v1")?
        .busybox()?
        .layer_with(|root| {
            fs::create_dir_all(root.join("srv")).unwrap();
            fs::write(root.join("srv/two.txt"), "from layer two\n").unwrap();
            fs::write(root.join("srv/gone.txt"), "whited out by layer three\n").unwrap();
            let mut passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
            passwd.push_str("www:x:1000:1000:www:/home/www:/bin/sh\n");
            fs::write(root.join("etc/passwd"), passwd).unwrap();
            let mut group = fs::read_to_string(root.join("etc/group")).unwrap();
            group.push_str("www:x:1000:\n");
            fs::write(root.join("etc/group"), group).unwrap();
            let home = root.join("home/www");
            fs::create_dir_all(&home).unwrap();
            fs::write(home.join("notes"), "www's notes\n").unwrap();
            chown(&home, Some(1000), Some(1000)).unwrap();
            chown(home.join("notes"), Some(1000), Some(1000)).unwrap();
        })
        .layer_with(|root| {
            fs::write(root.join("srv/three.txt"), "from layer three\n").unwrap();
            fs::remove_file(root.join("srv/gone.txt")).unwrap();
        })
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo srv=$(ls /srv | tr '\\n' ,); cat /srv/two.txt /srv/three.txt; echo shell=$(readlink /bin/sh)"])
        .env(&["PATH=/bin"]))
}

/// Pushes `img` as `REPO:v1` to a new TLS registry under `dir` and signs it
/// with a new cosign key that `pod` trusts for the registry's `team/`: the
/// registry (alive while the caller holds it) and the `docker://` reference.
fn publish(pod: &Pod, dir: &Path, img: &OciImage, repo: &str) -> Result<(Registry, String), Skip> {
    let reg = Registry::start(&dir.join("registry"), RegistryOpts::https())?;
    let digest = reg.push(img, &format!("team/{repo}:v1"));
    let key = cosign_generate_key_pair(&dir.join("cosign"), "pw")?;
    pod.ok(&["trust", "add", "--prefix", &format!("{}/team/", reg.host()), p(&key.public)]);
    cosign_sign(&key, &reg.image_ref(&format!("team/{repo}@{digest}")), &reg);
    let reference = reg.docker_ref(&format!("team/{repo}:v1"));
    Ok((reg, reference))
}

/// The uuid `pod run` announces on stderr (`pod <uuid> (<name>)`).
fn announced_uuid(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("pod ").and_then(|r| r.split_whitespace().next()))
        .filter(|u| is_uuid(u))
        .unwrap_or_else(|| panic!("no pod uuid in {}", describe(&["run"], out)))
        .to_owned()
}

/// `key=value` lines of one app's output (`[app] key=value`).
fn values(out: &Output, app: &str) -> BTreeMap<String, String> {
    let prefix = format!("[{app}] ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn nginx_from_a_layered_oci_image_serves_on_its_host_port_and_stops_with_sigquit() {
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let started = Instant::now();
    let t = tmp();
    let rootfs = or_skip!(debian_rootfs("nginx.yaml"));
    let img = or_skip!(nginx_image(&t.path().join("layout"), &rootfs));
    let live = Live::with_net(&[]);
    let net = live.net.clone().unwrap();
    let (reg, reference) = or_skip!(publish(&live, t.path(), &img, "nginx"));
    eprintln!("nginx image built, pushed and signed in {:.1?}", started.elapsed());

    let port = free_port();
    let file = live.pod_file(
        "nginx",
        &format!(
            "name: nginx\nnetwork: {}\napps:\n  - name: web\n    image: \"{reference}\"\n    \
             ports: [{{ name: \"8080\", host: {port} }}]\n    stopTimeout: 10s\n",
            net.name
        ),
    );
    let args = ["run", "-d", "--ca-cert", p(reg.ca_cert()), p(&file)];
    let out = live.run_within(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", describe(&args, &out));
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(is_uuid(&uuid), "pod run -d printed {uuid:?}\n{}", describe(&args, &out));

    // The page of the top layer, through the host port on 127.0.0.1.
    assert_eq!(http_get_ok(port, UP_WITHIN), INDEX_HTML);
    let entry = live.listed(&uuid).unwrap();
    let ports: Vec<&str> = entry["ports"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{port}->8080/tcp"))), "{entry}");
    let ips = entry["ips"].as_array().unwrap();
    assert!(ips.iter().any(|ip| ip.as_str().is_some_and(|ip| ip.starts_with(&net.prefix))), "{entry}");
    live.wait_all_up(&uuid, Duration::from_secs(10));

    // nginx's own view of its configuration: this image's nginx.conf from
    // the top layer, Debian's mime.types from the bottom one, and no
    // default site, which the whiteout hid.
    let dump = ["enter", "--app", "web", &uuid, "/usr/sbin/nginx", "-T"];
    let out = live.run_within(&dump, Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&dump, &out));
    let config = String::from_utf8_lossy(&out.stdout);
    assert_mentions(&config, &["listen 8080 default_server;", "# configuration file /etc/nginx/mime.types:"]);
    assert!(!config.contains("sites-enabled/default"), "the default site was read:\n{config}");

    // Stop: nginx gets SIGQUIT (its graceful shutdown), exits 0, and is
    // stopped, not failed; the network goes with the pod.
    let stopping = Instant::now();
    let out = live.run_within(&["stop", &uuid], Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    assert!(stopping.elapsed() < Duration::from_secs(10), "stop took {:?}", stopping.elapsed());
    let st = live.status(&uuid);
    assert_eq!(st["state"], "exited", "{st}");
    assert_eq!(st["exitCode"], 0, "{st}");
    let web = live.app_status(&uuid, "web");
    assert_eq!(web["state"], "stopped", "{st}");
    let logs = live.ok(&["logs", &uuid, "web"]);
    assert_mentions(&logs, &["signal 3 (SIGQUIT) received", "gracefully shutting down", "\"GET / HTTP/1.0\" 200"]);
    assert!(!logs.contains("SIGTERM"), "stopped with SIGTERM, not the image's StopSignal:\n{logs}");
    assert!(refused(port), "127.0.0.1:{port} still accepts connections after stop");
    assert_eq!(links_on(&net.bridge), Vec::<String>::new(), "veths left on {}", net.bridge);
    assert_eq!(iptables_mentioning(&uuid), Vec::<String>::new(), "iptables rules left after stop");
    assert!(!netns_file(&uuid).exists(), "{} left after stop", netns_file(&uuid).display());

    live.ok(&["gc"]);
    assert!(live.listed(&uuid).is_none(), "gc removed the pod");
    eprintln!("nginx test done in {:.1?}", started.elapsed());
}

#[test]
fn a_layered_oci_image_runs_in_a_vm_pod_with_its_whiteout_honoured() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let t = tmp();
    let img = or_skip!(layered_busybox(&t.path().join("layout")));
    let live = Live::new(&[]);
    let (reg, reference) = or_skip!(publish(&live, t.path(), &img, "layered"));
    let file = live.pod_file(
        "layered-vm",
        &format!("name: layered-vm\nisolation: vm\nnetwork: none\napps:\n  - name: app\n    image: \"{reference}\"\n"),
    );
    let args = ["run", "--ca-cert", p(reg.ca_cert()), p(&file)];
    let started = Instant::now();
    let out = live.run_within(&args, RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&args, &out));
    eprintln!("VM pod ran in {:.1?}:\n{}", started.elapsed(), String::from_utf8_lossy(&out.stdout));
    let v = values(&out, "app");
    // busybox from the first layer, a file of each other, not the one the
    // third deleted.
    assert_eq!(v.get("srv").map(String::as_str), Some("three.txt,two.txt,"), "{}", describe(&args, &out));
    assert_eq!(v.get("shell").map(String::as_str), Some("busybox"), "{}", describe(&args, &out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_mentions(&text, &["[app] from layer two", "[app] from layer three"]);
    let uuid = announced_uuid(&out);
    let entry = live.listed(&uuid).unwrap();
    assert!(entry["isolation"].as_str().is_some_and(|i| i.starts_with("vm/")), "{entry}");
    live.ok(&["gc"]);
}

/// The pod directory of `uuid` while it has one.
fn pod_dir(live: &Live, uuid: &str) -> PathBuf {
    ["run", "prepared", "embryo", "garbage"]
        .iter()
        .map(|s| live.data.join("pods").join(s).join(uuid))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no directory for pod {uuid}"))
}

#[test]
fn userns_auto_idmaps_every_layer_of_an_oci_image() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let t = tmp();
    let img = or_skip!(layered_busybox(&t.path().join("layout")));
    let live = Live::new(&[]);
    let (reg, reference) = or_skip!(publish(&live, t.path(), &img, "layered"));
    // Two apps of one image: its layers are idmapped once and shared.
    // `www` (uid 1000 in the image) changes and adds files in its home,
    // which only works if the layer's 1000 is the pod's 1000; root writes
    // to /.
    let www = "echo id=$(id -u):$(id -g); echo home=$(stat -c %u:%g /home/www); \
        echo notes=$(stat -c %u:%g /home/www/notes); \
        echo more >> /home/www/notes && echo append=ok; echo new > /home/www/new && echo create=ok; \
        echo new_owner=$(stat -c %u:%g /home/www/new); echo srv=$(ls /srv | tr '\\n' ,)";
    let root = "echo id=$(id -u); echo busybox=$(stat -c %u:%g /bin/busybox); \
        echo mine > /written && echo rootfs=ok; echo map=$(cat /proc/self/uid_map)";
    let yaml = format!(
        "name: layered-userns\nnetwork: none\nuserns: auto\napps:\n\
         - name: www\n  image: \"{reference}\"\n  user: \"1000\"\n  group: \"1000\"\n  \
           exec: [/bin/sh, -c, {}]\n\
         - name: root\n  image: \"{reference}\"\n  exec: [/bin/sh, -c, {}]\n",
        serde_json::to_string(www).unwrap(),
        serde_json::to_string(root).unwrap()
    );
    let file = live.pod_file("layered-userns", &yaml);
    let args = ["run", "--ca-cert", p(reg.ca_cert()), p(&file)];
    let out = live.run_within(&args, RUN_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("supports idmapped mounts") {
        eprintln!("SKIP: no idmapped mounts here: {}", stderr.trim());
        return;
    }
    assert!(out.status.success(), "{}", describe(&args, &out));
    let www = values(&out, "www");
    let root = values(&out, "root");
    let say = || describe(&args, &out);
    assert_eq!(www.get("id").map(String::as_str), Some("1000:1000"), "{}", say());
    assert_eq!(www.get("home").map(String::as_str), Some("1000:1000"), "the layer's 1000 is the pod's: {}", say());
    assert_eq!(www.get("notes").map(String::as_str), Some("1000:1000"), "{}", say());
    assert_eq!(www.get("append").map(String::as_str), Some("ok"), "{}", say());
    assert_eq!(www.get("create").map(String::as_str), Some("ok"), "{}", say());
    assert_eq!(www.get("new_owner").map(String::as_str), Some("1000:1000"), "{}", say());
    assert_eq!(www.get("srv").map(String::as_str), Some("three.txt,two.txt,"), "the whiteout holds: {}", say());
    assert_eq!(root.get("id").map(String::as_str), Some("0"), "{}", say());
    assert_eq!(root.get("busybox").map(String::as_str), Some("0:0"), "{}", say());
    assert_eq!(root.get("rootfs").map(String::as_str), Some("ok"), "{}", say());
    let map: Vec<&str> = root["map"].split_whitespace().collect();
    assert!(map.len() == 3 && map[0] == "0" && map[1] != "0", "the pod's root is not host root: {map:?}");

    // On the host, what www wrote is its pod uid's (base + 1000); the
    // shared layer trees are untouched and still host 1000's.
    let uuid = announced_uuid(&out);
    let st = live.status(&uuid);
    let base = u32::try_from(st["userns"]["uid"].as_u64().unwrap_or_else(|| panic!("no userns: {st}"))).unwrap();
    let upper = pod_dir(&live, &uuid).join("apps/www/upper/home/www");
    for f in ["notes", "new"] {
        let md = fs::metadata(upper.join(f)).unwrap_or_else(|e| panic!("{}: {e}", upper.join(f).display()));
        assert_eq!((md.uid(), md.gid()), (base + 1000, base + 1000), "{}", upper.join(f).display());
    }
    let trees: Vec<PathBuf> = fs::read_dir(live.data.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs/home/www/notes"))
        .filter(|f| f.exists())
        .collect();
    assert_eq!(trees.len(), 1, "one layer tree holds home/www/notes: {trees:?}");
    let md = fs::metadata(&trees[0]).unwrap();
    assert_eq!((md.uid(), md.len()), (1000, "www's notes\n".len() as u64), "the layer tree changed");
    live.ok(&["gc"]);
}
