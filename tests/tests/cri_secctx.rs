//! The CRI's Linux security context and namespace options, driven by the
//! real crictl against `pod cri serve` with the busybox example image: each
//! container prints what it is (`id`, /proc/self/status, its namespaces)
//! and the test reads its log. As root; SKIPs visibly without crictl or
//! root. Nothing here changes the host: the containers only read, and the
//! one with the host's namespaces reads its own links.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

/// A CRI server and a ready sandbox with `linux` as its Linux config.
struct Sandbox {
    live: Live,
    s: CriServer,
    id: String,
    json: std::path::PathBuf,
}

fn sandbox(name: &str, linux: Value) -> Option<Sandbox> {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return None;
    }
    let live = Live::new(&[Example::Busybox]);
    let s = match CriServer::start(&live, &[]) {
        Ok(s) => s,
        Err(Skip(why)) => {
            eprintln!("SKIP: {why}");
            return None;
        }
    };
    let json = live.work.join("sandbox.json");
    let config = json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "linux": linux});
    std::fs::write(&json, config.to_string()).unwrap();
    let id = s.ok(&["runp", p(&json)]).trim().to_owned();
    Some(Sandbox { live, s, id, json })
}

impl Sandbox {
    fn container_file(&self, name: &str, script: &str, security: Value) -> std::path::PathBuf {
        self.container_file_of(name, Example::Busybox.reference(), script, security)
    }

    fn container_file_of(&self, name: &str, image: &str, script: &str, security: Value) -> std::path::PathBuf {
        let f = self.live.work.join(format!("{name}.json"));
        let c = json!({
            "metadata": {"name": name},
            "image": {"image": image},
            "command": ["/bin/sh", "-c", script],
            "linux": {"security_context": security}
        });
        std::fs::write(&f, c.to_string()).unwrap();
        f
    }

    /// Runs `script` in a container with this security context; its log once exited.
    fn run(&self, name: &str, script: &str, security: Value) -> String {
        self.run_image(name, Example::Busybox.reference(), script, security)
    }

    fn run_image(&self, name: &str, image: &str, script: &str, security: Value) -> String {
        let f = self.container_file_of(name, image, script, security);
        let id = self.s.ok(&["create", &self.id, p(&f), p(&self.json)]).trim().to_owned();
        self.s.ok(&["start", &id]);
        wait_state(&self.s, &id, "CONTAINER_EXITED");
        self.live.ok(&["logs", &self.id, name])
    }

    /// Creating a container with this security context fails; the error.
    fn refused(&self, name: &str, security: Value) -> String {
        let f = self.container_file(name, "true", security);
        self.s.fails(&["create", &self.id, p(&f), p(&self.json)])
    }

    fn finish(self) {
        self.s.ok(&["stopp", &self.id]);
        self.s.ok(&["rmp", &self.id]);
        let left = leftovers_of(&self.live, &self.id);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// The hex value of a /proc/self/status line (`CapEff`, `CapBnd`) in `log`.
fn status_hex(log: &str, field: &str) -> u64 {
    let line = log.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field} in {log}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn status_field<'a>(log: &'a str, field: &str) -> &'a str {
    let line = log.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field} in {log}"));
    line.split_whitespace().nth(1).unwrap()
}

#[test]
fn run_as_user_group_and_supplementary_groups() {
    let Some(sb) = sandbox("ids", json!({})) else { return };
    let ids = json!({"run_as_user": {"value": 1001}, "run_as_group": {"value": 1002},
        "supplemental_groups": [1234, 5678]});
    let log = sb.run("ids", "id -u; id -g; id -G", ids);
    assert_eq!(log.lines().collect::<Vec<_>>(), ["1001", "1002", "1002 1234 5678"], "{log}");
    // By name, with the user's primary group from the image's /etc/passwd.
    let log = sb.run("named", "id -nu; id -g", json!({"run_as_username": "nobody"}));
    assert_eq!(log.lines().collect::<Vec<_>>(), ["nobody", "65534"], "{log}");
    // A group without a user is refused at create, naming the field.
    let err = sb.refused("group-alone", json!({"run_as_group": {"value": 1002}}));
    assert_mentions(&err, &["InvalidArgument", "run_as_group"]);
    sb.finish();
}

#[test]
fn capabilities_added_dropped_and_all() {
    let Some(sb) = sandbox("caps", json!({})) else { return };
    let status = "grep -E '^Cap(Eff|Bnd)' /proc/self/status";
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    let log = sb.run("default", status, json!({}));
    let default_eff = status_hex(&log, "CapEff");
    assert_eq!(default_eff & (NET_ADMIN | NET_RAW), NET_RAW, "{log}");
    let log = sb.run("added", status, json!({"capabilities": {"add_capabilities": ["NET_ADMIN"]}}));
    assert_eq!(status_hex(&log, "CapEff"), default_eff | NET_ADMIN, "{log}");
    let log = sb.run("dropped", status, json!({"capabilities": {"drop_capabilities": ["NET_RAW"]}}));
    assert_eq!(status_hex(&log, "CapEff"), default_eff & !NET_RAW, "{log}");
    let log = sb.run("none", status, json!({"capabilities": {"drop_capabilities": ["ALL"]}}));
    assert_eq!((status_hex(&log, "CapEff"), status_hex(&log, "CapBnd")), (0, 0), "{log}");
    let log = sb.run("all", status, json!({"capabilities": {"add_capabilities": ["ALL"]}}));
    assert_ne!(status_hex(&log, "CapBnd") & (1 << 21), 0, "CAP_SYS_ADMIN with ALL: {log}");
    let err = sb.refused("bogus", json!({"capabilities": {"add_capabilities": ["NOT_A_CAP"]}}));
    assert_mentions(&err, &["NOT_A_CAP"]);
    sb.finish();
}

#[test]
fn read_only_rootfs_masked_and_read_only_paths() {
    let Some(sb) = sandbox("paths", json!({})) else { return };
    let write = "touch /probe.txt && echo wrote; touch /tmp/probe.txt && echo wrote-tmp; wc -c < /proc/cpuinfo";
    let log = sb.run("writable", write, json!({}));
    assert_mentions(&log, &["wrote", "wrote-tmp"]);
    assert_ne!(log.lines().last().unwrap().trim(), "0", "cpuinfo is not masked by default: {log}");
    let log = sb.run("read-only", write, json!({"readonly_rootfs": true}));
    assert_mentions(&log, &["Read-only file system"]);
    assert!(!log.contains("wrote"), "{log}");
    let log = sb.run("masked", write, json!({"masked_paths": ["/proc/cpuinfo"], "readonly_paths": ["/tmp"]}));
    assert_mentions(&log, &["wrote", "Read-only file system"]);
    assert!(!log.contains("wrote-tmp"), "{log}");
    assert_eq!(log.lines().last().unwrap().trim(), "0", "cpuinfo masked: {log}");
    sb.finish();
}

#[test]
fn seccomp_profiles_and_no_new_privs() {
    let Some(sb) = sandbox("seccomp", json!({})) else { return };
    let profile = sb.live.work.join("block-chmod.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat","fchmodat2"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let script = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; chmod 700 /tmp && echo chmod-ok; true";
    // No profile: unconfined, as CRI says; no_new_privs off.
    let log = sb.run("nil", script, json!({}));
    assert_eq!((status_field(&log, "Seccomp"), status_field(&log, "NoNewPrivs")), ("0", "0"), "{log}");
    assert_mentions(&log, &["chmod-ok"]);
    let log = sb.run("runtime-default", script, json!({"seccomp": {"profile_type": 0}, "no_new_privs": true}));
    assert_eq!((status_field(&log, "Seccomp"), status_field(&log, "NoNewPrivs")), ("2", "1"), "{log}");
    // Without no_new_privs the filter goes in before the user is taken.
    let as_user = json!({"seccomp": {"profile_type": 0}, "run_as_user": {"value": 1001}});
    let log = sb.run("default-as-user", &format!("{script}; id -u"), as_user);
    assert_eq!((status_field(&log, "Seccomp"), status_field(&log, "NoNewPrivs")), ("2", "0"), "{log}");
    assert_eq!(log.lines().last(), Some("1001"), "{log}");
    let localhost = json!({"seccomp": {"profile_type": 2, "localhost_ref": p(&profile)}});
    let log = sb.run("localhost", script, localhost);
    assert_eq!(status_field(&log, "Seccomp"), "2", "{log}");
    assert_mentions(&log, &["Operation not permitted"]);
    assert!(!log.contains("chmod-ok"), "{log}");
    // A profile that is not there, or not a profile, fails the create.
    let missing = json!({"seccomp": {"profile_type": 2, "localhost_ref": "/no/such/profile.json"}});
    assert_mentions(&sb.refused("missing", missing), &["InvalidArgument", "/no/such/profile.json"]);
    std::fs::write(&profile, "{}").unwrap();
    let bad = json!({"seccomp": {"profile_type": 2, "localhost_ref": p(&profile)}});
    assert_mentions(&sb.refused("bad", bad), &["defaultAction"]);
    // AppArmor: none here, so a profile asked for is refused.
    assert_mentions(&sb.refused("apparmor", json!({"apparmor": {"profile_type": 0}})), &["AppArmor"]);
    sb.finish();
}

#[test]
fn privileged_containers_in_privileged_sandboxes() {
    let Some(sb) = sandbox("privileged", json!({"security_context": {"privileged": true}})) else { return };
    let script = "grep -E '^(CapBnd|Seccomp):' /proc/self/status; ls /dev | wc -l; touch /sys/probe 2>&1; true";
    let log = sb.run("privileged", script, json!({"privileged": true}));
    assert_eq!(status_hex(&log, "CapBnd") & (1 << 21), 1 << 21, "CAP_SYS_ADMIN: {log}");
    assert_eq!(status_field(&log, "Seccomp"), "0", "{log}");
    assert!(!log.contains("Read-only file system"), "/sys is writable: {log}");
    let plain = sb.run("plain", script, json!({}));
    let devices = |l: &str| l.lines().find_map(|x| x.trim().parse::<u32>().ok()).unwrap();
    assert!(devices(&log) > devices(&plain), "the host's devices: {log} vs {plain}");
    sb.finish();

    let Some(sb) = sandbox("unprivileged", json!({})) else { return };
    assert_mentions(&sb.refused("privileged", json!({"privileged": true})), &["privileged"]);
    sb.finish();
}

#[test]
fn host_network_pid_and_ipc_namespaces() {
    let own = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().display().to_string();
    let script = "for ns in net pid ipc; do readlink /proc/self/ns/$ns; done";
    let host = json!({"security_context": {"namespace_options": {"network": 2, "pid": 2, "ipc": 2}}});
    let Some(sb) = sandbox("host-ns", host) else { return };
    let log = sb.run("host", script, json!({}));
    for ns in ["net", "pid", "ipc"] {
        assert!(log.contains(&own(ns)), "{ns} is the host's: {log}");
    }
    sb.finish();

    let Some(sb) = sandbox("pod-ns", json!({})) else { return };
    let log = sb.run("pod", script, json!({}));
    for ns in ["net", "pid", "ipc"] {
        assert!(!log.contains(&own(ns)), "{ns} is the pod's own: {log}");
    }
    // A pid namespace per container (Kubernetes' default): the app is its
    // PID 1 and sees only its own processes, with /proc masked as before.
    let script = "echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; \
        wc -c < /proc/timer_list; grep -c . /proc/sys/kernel/hostname; echo x > /proc/sys/kernel/domainname; true";
    let log = sb.run("own-pid", script, json!({"namespace_options": {"pid": 1}}));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "pid=1", "{log}");
    assert!(lines[1].starts_with("/bin/sh -c"), "PID 1 is the app: {log}");
    assert!(lines[2].trim().parse::<u32>().unwrap() <= 3, "only its own processes: {log}");
    assert_eq!(lines[3].trim(), "0", "/proc/timer_list still masked: {log}");
    assert_mentions(&log, &["Read-only file system"]);
    // Its user is the app's, not the waiter's, and it stops (SIGKILL after
    // the timeout: as any PID 1 it ignores SIGTERM without a handler).
    let own = json!({"namespace_options": {"pid": 1}, "run_as_user": {"value": 1001}});
    let f = sb.container_file("own-pid-sleeps", "exec sleep 1000", own);
    let id = sb.s.ok(&["create", &sb.id, p(&f), p(&sb.json)]).trim().to_owned();
    sb.s.ok(&["start", &id]);
    let st = wait_state(&sb.s, &id, "CONTAINER_RUNNING");
    assert_eq!(st["status"]["user"]["linux"]["uid"], "1001", "{st}");
    sb.s.ok(&["stop", "--timeout", "1", &id]);
    wait_state(&sb.s, &id, "CONTAINER_EXITED");
    let log = sb.run("pod-pid", "cat /proc/1/cmdline | tr '\\0' ' '", json!({}));
    assert!(log.contains("pod-init"), "the pod's PID 1: {log}");
    let err = sb.refused("target-pid", json!({"namespace_options": {"pid": 3}}));
    assert_mentions(&err, &["Unimplemented", "TARGET"]);
    sb.finish();
}

/// The `/proc/PID/stat` lines of the processes named `comm` in `stats`
/// (`cat /proc/[0-9]*/stat` output).
fn stats_of<'a>(stats: &'a str, comm: &str) -> Vec<&'a str> {
    stats.lines().filter(|l| l.contains(&format!(" ({comm}) "))).collect()
}

/// ExecSync in a container with a pid namespace of its own sees what the
/// app sees (its pid and mount namespaces: its /proc, where the app is
/// PID 1), and one that times out is killed and reaped, leaving not even a
/// zombie in the container (whose PID 1, `sleep`, reaps nothing). With
/// the host's IPC namespace, the command is in it too.
#[test]
fn exec_joins_the_containers_own_namespaces() {
    let Some(sb) = sandbox("exec-ns", json!({})) else { return };
    let own = json!({"namespace_options": {"pid": 1}});
    let f = sb.container_file("own-pid", "exec sleep 1000", own);
    let id = sb.s.ok(&["create", &sb.id, p(&f), p(&sb.json)]).trim().to_owned();
    sb.s.ok(&["start", &id]);
    wait_state(&sb.s, &id, "CONTAINER_RUNNING");
    let script = "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; \
        for ns in pid mnt; do [ $(readlink /proc/self/ns/$ns) = $(readlink /proc/1/ns/$ns) ] && echo same-$ns; done; true";
    let out = sb.s.ok(&["exec", "-s", &id, "/bin/sh", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "sleep 1000", "PID 1 is the app: {out}");
    assert!(lines[1].parse::<u32>().unwrap() < 20, "a pid of the app's namespace: {out}");
    assert_mentions(&out, &["same-pid", "same-mnt"]);

    let started = std::time::Instant::now();
    let err = sb.s.fails(&["exec", "-s", "--timeout", "1", &id, "sleep", "4321"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the timeout did not cut it short: {err}");
    let stats = sb.s.ok(&["exec", "-s", &id, "/bin/sh", "-c", "cat /proc/[0-9]*/stat"]);
    let sleeps = stats_of(&stats, "sleep");
    assert_eq!(sleeps.len(), 1, "only the app sleeps, the timed out command is gone (no zombie): {sleeps:#?}");
    assert!(sleeps[0].starts_with("1 "), "{sleeps:#?}");
    sb.finish();

    let host_ipc = json!({"security_context": {"namespace_options": {"ipc": 2}}});
    let Some(sb) = sandbox("exec-host-ipc", host_ipc) else { return };
    let f = sb.container_file("host-ipc", "exec sleep 1000", json!({}));
    let id = sb.s.ok(&["create", &sb.id, p(&f), p(&sb.json)]).trim().to_owned();
    sb.s.ok(&["start", &id]);
    wait_state(&sb.s, &id, "CONTAINER_RUNNING");
    let ipc = sb.s.ok(&["exec", "-s", &id, "/bin/sh", "-c", "readlink /proc/self/ns/ipc"]);
    let host = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_eq!(ipc.trim(), host.display().to_string(), "the host's IPC namespace");
    sb.finish();
}

#[test]
fn supplemental_groups_policy_merge_and_strict_and_the_status_user() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[]);
    let reg = or_skip!(Registry::start(&live.work.join("registry"), RegistryOpts::https()));
    // As critest's image: user 1000, a member of group 50000 in /etc/group.
    let img = or_skip!(or_skip!(OciImage::new(&live.work.join("layout"), "v1")).busybox()).layer(&[
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/:/bin/sh\n"),
        ("etc/group", b"root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
    ]);
    reg.push(&img, "dev/groups:v1");
    let prefix = reg.image_ref("dev");
    let args = ["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json()), "--insecure-prefix", &prefix];
    let s = or_skip!(CriServer::start(&live, &args));
    let image = reg.image_ref("dev/groups:v1");
    s.ok(&["pull", &image]);
    let info = s.json(&["info"]);
    assert_eq!(info["features"]["supplemental_groups_policy"], true, "{info}");

    let sandbox_json = live.work.join("sandbox.json");
    std::fs::write(
        &sandbox_json,
        json!({"metadata": {"name": "groups", "namespace": "default", "uid": "g"}}).to_string(),
    )
    .unwrap();
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let run = |name: &str, policy: u32| {
        let f = live.work.join(format!("{name}.json"));
        let c = json!({
            "metadata": {"name": name},
            "image": {"image": image},
            "command": ["/bin/sh", "-c", "id -G; exec sleep 1000"],
            "linux": {"security_context": {"run_as_user": {"value": 1000}, "supplemental_groups": [1234],
                "supplemental_groups_policy": policy}}
        });
        std::fs::write(&f, c.to_string()).unwrap();
        let id = s.ok(&["create", &sandbox, p(&f), p(&sandbox_json)]).trim().to_owned();
        s.ok(&["start", &id]);
        let st = wait_state(&s, &id, "CONTAINER_RUNNING");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut log = live.ok(&["logs", &sandbox, name]);
        while log.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            log = live.ok(&["logs", &sandbox, name]);
        }
        (st["status"]["user"]["linux"].clone(), log)
    };
    let (user, log) = run("merge", 0);
    assert_eq!(log.trim(), "1000 1234 50000", "{log}");
    assert_eq!(user, json!({"uid": "1000", "gid": "1000", "supplementalGroups": ["1000", "1234", "50000"]}));
    let (user, log) = run("strict", 1);
    assert_eq!(log.trim(), "1000 1234", "{log}");
    assert_eq!(user["supplementalGroups"], json!(["1000", "1234"]), "{user}");
    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// A static program printing its effective uid (critest's nonewprivs
/// image does the same), built with the host's C compiler.
fn euid_program(dir: &std::path::Path) -> Result<std::path::PathBuf, Skip> {
    let cc = which("cc").ok_or_else(|| Skip("no C compiler (cc) to build the setuid test program".into()))?;
    let src = dir.join("euid.c");
    std::fs::write(&src, "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"Effective uid: %d\\n\", (int)geteuid()); return 0; }\n").unwrap();
    let out = dir.join("euid");
    let built = std::process::Command::new(cc).arg("-static").arg("-o").arg(&out).arg(&src).output().unwrap();
    if !built.status.success() {
        return Err(Skip(format!("cc -static failed: {}", String::from_utf8_lossy(&built.stderr))));
    }
    Ok(out)
}

#[test]
fn setuid_binaries_work_only_without_no_new_privs() {
    let Some(sb) = sandbox("nnp", json!({})) else { return };
    let program = or_skip!(euid_program(&sb.live.work));
    suid_image_of(&sb.live, "euid", &program, "euid");
    // A setuid-root program run by uid 1000 is root only when
    // no_new_privs is off (Kubernetes' allowPrivilegeEscalation).
    let user = |nnp: bool| json!({"run_as_user": {"value": 1000}, "no_new_privs": nnp});
    let log = sb.run_image("escalates", "example.com/euid:1", "/suid/euid", user(false));
    assert_eq!(log.trim(), "Effective uid: 0", "{log}");
    let log = sb.run_image("stays", "example.com/euid:1", "/suid/euid", user(true));
    assert_eq!(log.trim(), "Effective uid: 1000", "{log}");
    sb.finish();
}
