//! The CRI's sandbox and container settings beyond the security context,
//! driven by the real crictl against `pod cri serve`: a sandbox's hostname,
//! DNS config and namespaced sysctls as its app sees them, a host port
//! reached with curl on 127.0.0.1, host-path mounts (read, written,
//! read-only refused, a symlinked host path), a memory limit in the app's
//! cgroup, the OOM killer's victim reported as OOMKilled with 137, and the
//! refusals (a host-wide or unknown sysctl, a bad recursive read-only mount,
//! a device) with nothing left behind. SKIPs visibly without root, crictl or
//! (for the network test) the tools of a test network.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn write_json(dir: &Path, name: &str, value: &Value) -> String {
    let f = dir.join(name);
    std::fs::write(&f, value.to_string()).unwrap();
    p(&f).to_owned()
}

fn busybox(name: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "image": {"image": Example::Busybox.reference()},
        "command": ["/bin/sh", "-c", script],
    })
}

/// `pod logs` of the sandbox's app until it holds `want` (or 30 s pass).
fn logs_with(live: &Live, sandbox: &str, app: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = live.ok(&["logs", sandbox, app]);
        if log.contains(want) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {want:?} in the log of {app}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_sandbox(live: &Live, s: &CriServer, sandbox: &str) {
    s.ok(&["stopp", sandbox]);
    s.ok(&["rmp", sandbox]);
    let left = leftovers_of(live, sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `curl -s http://127.0.0.1:PORT/` until it answers (or 30 s pass).
fn curl_until(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl").args(["-sS", "--max-time", "2", &url]).output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sandbox_hostname_dns_sysctls_and_a_host_port_on_loopback() {
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    if which("curl").is_none() {
        eprintln!("SKIP: curl not found");
        return;
    }
    let live = Live::with_net(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
    let host_mq = std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max").unwrap();
    let port = free_port();
    let sandbox = json!({
        "metadata": {"name": "cfg", "namespace": "default", "uid": "u-cfg"},
        "hostname": "web-0",
        "dns_config": {"servers": ["10.10.10.10"], "searches": ["example.test"], "options": ["ndots:8"]},
        "port_mappings": [
            {"container_port": 80, "host_port": port, "host_ip": "127.0.0.1"},
            {"container_port": 8080}
        ],
        "linux": {"sysctls": {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100"}}
    });
    let sandbox_json = write_json(&live.work, "sandbox.json", &sandbox);
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();

    let script = "echo host=$(hostname); cat /etc/resolv.conf; echo shm=$(cat /proc/sys/kernel/shm_rmid_forced); \
                  echo mq=$(cat /proc/sys/fs/mqueue/msg_max); mkdir -p /www; echo hello-from-the-pod > /www/index.html; \
                  echo serving; exec httpd -f -p 80 -h /www";
    let container_json = write_json(&live.work, "web.json", &busybox("web", script));
    let container = s.ok(&["create", &sandbox, &container_json, &sandbox_json]).trim().to_owned();
    s.ok(&["start", &container]);
    wait_state(&s, &container, "CONTAINER_RUNNING");
    let log = logs_with(&live, &sandbox, "web", "serving");
    assert_mentions(
        &log,
        &["host=web-0", "nameserver 10.10.10.10", "search example.test", "options ndots:8", "shm=1", "mq=100"],
    );
    // The pod's values, not the host's: its own namespaces took them.
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap(), host_shm);
    assert_eq!(std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max").unwrap(), host_mq);

    // The host port, on loopback, reaches busybox httpd in the pod.
    assert_eq!(curl_until(port), "hello-from-the-pod\n");
    remove_sandbox(&live, &s, &sandbox);
    assert!(refused(port), "127.0.0.1:{port} still open after the sandbox was removed");
}

#[test]
fn host_path_mounts_resources_and_refusals() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write_json(
        &live.work,
        "sandbox.json",
        &json!({"metadata": {"name": "m", "namespace": "default", "uid": "u-m"}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();

    let shared = live.work.join("shared");
    let ro = live.work.join("ro");
    for d in [&shared, &ro] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(shared.join("in.txt"), "from the host\n").unwrap();
    std::fs::write(ro.join("keep.txt"), "kept\n").unwrap();
    // A file, as kubelet mounts its termination-log.
    let termination = live.work.join("termination-log");
    std::fs::write(&termination, "").unwrap();
    // The host path given is a symlink: the directory it names is mounted.
    let link = live.work.join("shared-link");
    std::os::unix::fs::symlink(&shared, &link).unwrap();

    let script = "cat /data/in.txt; echo from-the-app > /data/out.txt; echo adj=$(cat /proc/self/oom_score_adj); \
                  echo last words > /dev/termination-log; \
                  if echo x > /ro/new.txt; then echo RO-WRITTEN; else echo ro-refused; fi; echo done; exec sleep 1000";
    let mut config = busybox("vols", script);
    config["mounts"] = json!([
        {"container_path": "/data", "host_path": p(&link)},
        {"container_path": "/ro", "host_path": p(&ro), "readonly": true},
        {"container_path": "/dev/termination-log", "host_path": p(&termination)}
    ]);
    config["linux"] = json!({"resources": {
        "memory_limit_in_bytes": 64 << 20, "cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512, "oom_score_adj": 500
    }});
    let config_json = write_json(&live.work, "vols.json", &config);
    let container = s.ok(&["create", &sandbox, &config_json, &sandbox_json]).trim().to_owned();
    let st = s.json(&["inspect", "-o", "json", &container]);
    let mounts = st["status"]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{st}");
    assert_eq!(mounts[0]["hostPath"], p(&link), "{st}");
    assert_eq!(mounts[1]["readonly"], true, "{st}");
    s.ok(&["start", &container]);
    wait_state(&s, &container, "CONTAINER_RUNNING");
    let log = logs_with(&live, &sandbox, "vols", "done");
    assert_mentions(&log, &["from the host", "ro-refused", "adj=500"]);
    assert!(!log.contains("RO-WRITTEN"), "{log}");
    assert_eq!(std::fs::read_to_string(shared.join("out.txt")).unwrap(), "from-the-app\n");
    assert_eq!(std::fs::read_to_string(&termination).unwrap(), "last words\n");
    assert!(!ro.join("new.txt").exists());

    // The memory limit is the app's cgroup's (v1 or v2, as the host has it).
    let leaves: Vec<_> = cgroup_dirs_of(&sandbox).into_iter().map(|d| d.join("vols")).collect();
    let limit = leaves
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .unwrap_or_else(|| panic!("no memory limit file under {leaves:?}"));
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let read =
        |names: &[&str]| leaves.iter().find_map(|d| names.iter().find_map(|n| std::fs::read_to_string(d.join(n)).ok()));
    let quota = read(&["cpu.cfs_quota_us", "cpu.max"]).unwrap();
    assert!(quota.starts_with("50000"), "cpu quota {quota:?}");
    // v1's shares as given, or v2's weight for them.
    let weight = read(&["cpu.shares", "cpu.weight"]).unwrap();
    assert!(["512", "20"].contains(&weight.trim()), "cpu weight {weight:?}");

    // Refused at create, naming what is wrong; nothing recorded.
    let refusals = [
        (json!([{"container_path": "/x", "host_path": p(&ro), "recursive_read_only": true}]), "needs readonly"),
        (
            json!([{"container_path": "/x", "host_path": p(&ro), "readonly": true, "recursive_read_only": true, "propagation": 1}]),
            "needs PROPAGATION_PRIVATE",
        ),
        (json!([{"container_path": "/x", "host_path": p(&live.work.join("nowhere"))}]), "nowhere"),
    ];
    for (i, (mounts, why)) in refusals.into_iter().enumerate() {
        let mut bad = busybox(&format!("bad-{i}"), "true");
        bad["mounts"] = mounts;
        let err = s.fails(&["create", &sandbox, &write_json(&live.work, "bad.json", &bad), &sandbox_json]);
        assert_mentions(&err, &[why]);
    }
    // A device whose host path is no device (devices that work: cri_devcg.rs).
    let mut dev = busybox("dev", "true");
    dev["devices"] = json!([{"container_path": "/dev/x", "host_path": p(&shared), "permissions": "rwm"}]);
    let err = s.fails(&["create", &sandbox, &write_json(&live.work, "dev.json", &dev), &sandbox_json]);
    assert_mentions(&err, &["devices[0].host_path", "not a character or block device"]);
    assert_eq!(s.json(&["ps", "-a", "-o", "json"])["containers"].as_array().unwrap().len(), 1);

    // Removing the container unmounts its host paths; the host's files stay.
    s.ok(&["stop", &container]);
    s.ok(&["rm", &container]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(p(&shared)), "{mountinfo}");
    assert_eq!(std::fs::read_to_string(shared.join("in.txt")).unwrap(), "from the host\n");
    remove_sandbox(&live, &s, &sandbox);
}

#[test]
fn the_oom_killers_victim_is_oomkilled_with_137() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write_json(
        &live.work,
        "sandbox.json",
        &json!({"metadata": {"name": "oom", "namespace": "default", "uid": "u-oom"}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    let mut config = busybox("hog", "dd if=/dev/zero of=/dev/null bs=64M");
    config["linux"] = json!({"resources": {"memory_limit_in_bytes": 16 << 20, "memory_swap_limit_in_bytes": 16 << 20}});
    let container = s.ok(&["create", &sandbox, &write_json(&live.work, "hog.json", &config), &sandbox_json]);
    let container = container.trim().to_owned();
    s.ok(&["start", &container]);
    let st = wait_state(&s, &container, "CONTAINER_EXITED");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut st = st;
    while st["status"]["reason"] != "OOMKilled" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        st = s.json(&["inspect", "-o", "json", &container]);
    }
    assert_eq!(st["status"]["reason"], "OOMKilled", "{st}");
    assert_eq!(st["status"]["exitCode"], 137, "{st}");
    remove_sandbox(&live, &s, &sandbox);
}

#[test]
fn a_host_wide_or_unknown_sysctl_is_refused_and_leaves_nothing() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let host_panic = std::fs::read_to_string("/proc/sys/kernel/panic").unwrap();
    for (sysctl, why) in
        [("kernel.panic", "not namespaced"), ("net.ipv4.no_such_parameter", "net.ipv4.no_such_parameter")]
    {
        let sandbox = json!({"metadata": {"name": "bad", "namespace": "default", "uid": sysctl}, "linux": {"sysctls": {sysctl: "1"}}});
        let err = s.fails(&["runp", &write_json(&live.work, "bad.json", &sandbox)]);
        assert_mentions(&err, &[sysctl, why]);
        // A pod that got as far as its start is named in the error: none of
        // it may remain (directory, mounts, cgroups).
        let named = err.split(|c: char| !(c.is_ascii_hexdigit() || c == '-')).find(|w| is_uuid(w));
        // The unknown one is refused by the kernel, at the pod's start.
        assert_eq!(named.is_some(), sysctl.starts_with("net."), "{err}");
        if let Some(uuid) = named {
            let left = leftovers_of(&live, uuid);
            assert!(left.is_empty(), "left behind: {left:#?}");
        }
        assert!(s.json(&["pods", "-o", "json"])["items"].as_array().unwrap().is_empty(), "a sandbox is listed");
        assert!(live.pods().is_empty(), "a pod remains: {:?}", live.pods());
    }
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/panic").unwrap(), host_panic);
    let left: Vec<_> = ["embryo", "prepared", "run", "exited", "garbage"]
        .iter()
        .flat_map(|d| std::fs::read_dir(live.data.join("pods").join(d)).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "pod directories left: {left:?}");
    assert!(live.tmp_entries().is_empty(), "temp files left: {:?}", live.tmp_entries());
}

/// `mount ARGS` on the host, for the propagation test's own directories.
fn host_mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().unwrap();
    assert!(out.status.success(), "{}", describe(&["mount"], &out));
}

/// Detaches the test's host mounts, innermost first, whatever happened.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[test]
fn host_mounts_reach_rslave_and_rshared_containers_not_private_ones() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let sandbox_json = write_json(
        &live.work,
        "sandbox.json",
        &json!({"metadata": {"name": "prop", "namespace": "default", "uid": "u-p"}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    // As critest does: the host path is a shared mount of its own.
    let mnt = live.work.join("mnt");
    let src = live.work.join("src");
    let mut unmount = Unmount(Vec::new());
    for (i, propagation) in [(0, "private"), (1, "rslave"), (2, "rshared")] {
        let point = mnt.join(propagation).join("later");
        std::fs::create_dir_all(&point).unwrap();
        let top = mnt.join(propagation);
        host_mount(&["--bind", p(&top), p(&top)]);
        unmount.0.push(top.clone());
        host_mount(&["--make-rshared", p(&top)]);
        let script =
            "for i in $(seq 50); do [ -e /m/later/flag ] && { echo found-it; exec sleep 1000; }; sleep 0.1; done; \
                      echo never-found; exec sleep 1000";
        let mut config = busybox(propagation, script);
        config["mounts"] = json!([{"container_path": "/m", "host_path": p(&top), "propagation": i}]);
        let c = s.ok(&["create", &sandbox, &write_json(&live.work, "c.json", &config), &sandbox_json]);
        s.ok(&["start", c.trim()]);
        wait_state(&s, c.trim(), "CONTAINER_RUNNING");
    }
    // Mounted on the host after the containers started.
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("flag"), "x").unwrap();
    for propagation in ["private", "rslave", "rshared"] {
        let point = mnt.join(propagation).join("later");
        host_mount(&["--bind", p(&src), p(&point)]);
        unmount.0.push(point);
    }
    for propagation in ["rslave", "rshared"] {
        let log = logs_with(&live, &sandbox, propagation, "found");
        assert!(log.contains("found-it"), "{propagation}: the host's new mount did not reach it: {log}");
    }
    let private = logs_with(&live, &sandbox, "private", "found");
    assert!(private.contains("never-found"), "a private mount saw the host's new mount: {private}");
    remove_sandbox(&live, &s, &sandbox);
    drop(unmount);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(p(&mnt)), "{mountinfo}");
}

#[test]
fn recursive_read_only_mounts_reach_the_mounts_below() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = or_skip!(CriServer::start(&live, &[]));
    let info = s.json(&["info"]);
    let handlers = info["runtimeHandlers"].as_array().cloned().unwrap_or_default();
    // crictl prints the proto's field names and leaves the empty default name out.
    let default = handlers
        .iter()
        .find(|h| h["name"].as_str().unwrap_or_default().is_empty())
        .unwrap_or_else(|| panic!("no default handler: {info}"));
    if default["features"]["recursive_read_only_mounts"] != true {
        eprintln!("SKIP: this kernel has no mount_setattr (Linux 5.12): {info}");
        return;
    }
    let sandbox_json = write_json(
        &live.work,
        "sandbox.json",
        &json!({"metadata": {"name": "rro", "namespace": "default", "uid": "u-r"}}),
    );
    let sandbox = s.ok(&["runp", &sandbox_json]).trim().to_owned();
    // As critest does: a tmpfs mounted below the host path.
    let host = live.work.join("rro");
    let below = host.join("tmpfs");
    std::fs::create_dir_all(&below).unwrap();
    host_mount(&["-t", "tmpfs", "none", p(&below)]);
    let unmount = Unmount(vec![below.clone()]);
    let script = "touch /plain/tmpfs/a && echo plain-writable; touch /rro/tmpfs/b 2>&1; echo done; exec sleep 1000";
    let mut config = busybox("rro", script);
    config["mounts"] = json!([
        {"container_path": "/plain", "host_path": p(&host), "readonly": true},
        {"container_path": "/rro", "host_path": p(&host), "readonly": true, "recursive_read_only": true}
    ]);
    let c = s.ok(&["create", &sandbox, &write_json(&live.work, "rro.json", &config), &sandbox_json]);
    s.ok(&["start", c.trim()]);
    let log = logs_with(&live, &sandbox, "rro", "done");
    assert_mentions(&log, &["plain-writable", "Read-only file system"]);
    assert!(!below.join("b").exists());
    remove_sandbox(&live, &s, &sandbox);
    drop(unmount);
}

#[test]
fn an_rshared_mount_carries_the_apps_own_mounts_to_the_host() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    // `pod app add --app-keys`: the app may mount (CAP_SYS_ADMIN, no
    // seccomp filter), as a privileged CRI container may.
    let live = Live::new(&[Example::Busybox]);
    let uuid = live.start(&live.pod_file("box", "name: box\nnetwork: none\napps: []\n"));
    let top = live.work.join("shared");
    let made = top.join("made");
    std::fs::create_dir_all(&made).unwrap();
    host_mount(&["--bind", p(&top), p(&top)]);
    let mut unmount = Unmount(vec![top.clone()]);
    host_mount(&["--make-rshared", p(&top)]);
    unmount.0.push(made.clone());
    let keys = json!({
        "capabilities": {"add": ["SYS_ADMIN"]},
        "seccomp": "unconfined",
        "mounts": [{"host": p(&top), "path": "/m", "propagation": "rshared"}]
    });
    let script =
        "mount -t tmpfs -o size=1m none /m/made && echo from-the-app > /m/made/flag && echo mounted; exec sleep 1000";
    let keys = keys.to_string();
    let args = [
        "app",
        "add",
        &uuid,
        "--name",
        "mounter",
        "--image",
        Example::Busybox.reference(),
        "--app-keys",
        &keys,
        "--exec",
        "/bin/sh",
        "-c",
        script,
    ];
    live.ok(&args);
    assert_mentions(&logs_with(&live, &uuid, "mounter", "mounted"), &["mounted"]);
    // The app's tmpfs is the host's too.
    assert_eq!(std::fs::read_to_string(made.join("flag")).unwrap(), "from-the-app\n");
    live.ok(&["stop", &uuid]);
    drop(unmount);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(p(&top)), "{mountinfo}");
}
