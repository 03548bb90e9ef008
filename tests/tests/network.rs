//! web-db as a user runs it: redis and the visit counter in one pod on a
//! CNI bridge, the counter reached through its host port on 127.0.0.1; and
//! two such pods at once. Each test has its own bridge network (no gateway,
//! masquerade or SNAT: nothing changes the host's sysctls) and removes it.
//! Needs root and the CNI plugins; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Starting python and redis in a fresh pod takes a second or two.
const UP_WITHIN: Duration = Duration::from_secs(60);

macro_rules! skip_unless_pods {
    () => {
        if let Some(why) = skip_reason(true) {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// `(year, month, day, millisecond of the day)`: enough to order two UTC
/// times without a date library.
type Instant4 = (u32, u32, u32, u64);

fn ms_of_day(hms: &str) -> u64 {
    let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a time: {hms:?}"));
    let parts: Vec<&str> = hms.split(':').collect();
    assert_eq!(parts.len(), 3, "not a time: {hms:?}");
    let (secs, frac) = parts[2].split_once('.').unwrap_or((parts[2], "0"));
    // Milliseconds: the first three digits of the fraction.
    let millis = num(&format!("{frac:0<3}")[..3]);
    ((num(parts[0]) * 60 + num(parts[1])) * 60 + num(secs)) * 1000 + millis
}

/// `2026-11-30T12:40:43.599Z`, as `pod status` prints startedAt.
fn parse_rfc3339(t: &str) -> Instant4 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap_or_else(|| panic!("not a time: {t:?}"));
    let d: Vec<u32> = date.split('-').map(|x| x.parse().unwrap()).collect();
    (d[0], d[1], d[2], ms_of_day(time))
}

/// The time of a redis log line, `2:M 30 Nov 2026 12:40:43.563 * ...`. The
/// redis image has no /etc/localtime, so redis logs UTC.
fn parse_redis_time(line: &str) -> Instant4 {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let f: Vec<&str> = line.split_whitespace().collect();
    let month = MONTHS.iter().position(|m| *m == f[2]).unwrap_or_else(|| panic!("no month in {line:?}"));
    (f[3].parse().unwrap(), u32::try_from(month).unwrap() + 1, f[1].parse().unwrap(), ms_of_day(f[4]))
}

#[test]
fn web_db_counts_visits_and_stops_leaving_nothing() {
    skip_unless_pods!();
    let live = Live::with_net(&[Example::Redis, Example::Web]);
    let net = live.net.clone().unwrap();
    let port = free_port();
    let file = live.web_db_file("web-db", port);
    let uuid = live.start(&file);

    // The counter answers on the host port, and counts: state lives in redis.
    assert_eq!(http_get_ok(port, UP_WITHIN), "visits: 1\n");
    for n in 2..=3 {
        assert_eq!(http_get(port), Ok((200, format!("visits: {n}\n"))));
    }

    // pod list: running, both apps, its address on the test network, the port.
    let entry = live.listed(&uuid).unwrap_or_else(|| panic!("{uuid} not in pod list: {:?}", live.pods()));
    assert_eq!(entry["state"], "running", "{entry}");
    assert_eq!(entry["name"], "web-db", "{entry}");
    assert_eq!(entry["apps"], serde_json::json!(["db", "web"]), "{entry}");
    let ips: Vec<&str> = entry["ips"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(ips.len() == 1 && ips[0].starts_with(&net.prefix), "ips {ips:?}, subnet {}0/24: {entry}", net.prefix);
    let ports: Vec<&str> = entry["ports"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{port}->8080/tcp"))), "{entry}");

    // pod status: both apps up, with a pid, never restarted.
    let st = live.wait_all_up(&uuid, Duration::from_secs(10));
    assert_eq!(st["state"], "running", "{st}");
    for app in st["apps"].as_array().unwrap() {
        assert!(app["pid"].as_u64().is_some(), "{st}");
        assert_eq!(app["restarts"], 0, "{st}");
    }

    // web started only once db accepted connections: redis says it is
    // ready no later than web's start. (redis listens a moment before it
    // logs so, and the probe may catch that moment: 5 ms of slack.)
    let db_log = live.ok(&["logs", &uuid, "db"]);
    let ready = db_log
        .lines()
        .find(|l| l.contains("Ready to accept connections"))
        .unwrap_or_else(|| panic!("redis never said it was ready:\n{db_log}"));
    let (y, mo, d, ready_ms) = parse_redis_time(ready);
    let web_started = parse_rfc3339(live.app_status(&uuid, "web")["startedAt"].as_str().unwrap());
    let db_started = parse_rfc3339(live.app_status(&uuid, "db")["startedAt"].as_str().unwrap());
    assert!(db_started < web_started, "db started at {db_started:?}, web at {web_started:?}");
    assert!(
        (y, mo, d, ready_ms) <= (web_started.0, web_started.1, web_started.2, web_started.3 + 5),
        "web started at {web_started:?}, before redis was ready ({ready:?})"
    );
    let web_log = live.ok(&["logs", &uuid, "web"]);
    assert!(web_log.starts_with("counter listening on :8080"), "{web_log}");
    assert_eq!(web_log.matches("\"GET / HTTP/1.0\" 200").count(), 3, "{web_log}");

    // While it runs, the host holds its cgroups, network namespace, veth and
    // port rules: the checks below look in the right places.
    assert!(!cgroup_dirs_of(&uuid).is_empty(), "no cgroup directory named {uuid}");
    assert!(netns_file(&uuid).exists(), "{} missing", netns_file(&uuid).display());
    assert_eq!(links_on(&net.bridge).len(), 1, "veths on {}: {:?}", net.bridge, links_on(&net.bridge));
    assert!(!iptables_mentioning(&uuid).is_empty(), "no iptables rule mentions {uuid}");

    // pod stop returns within the grace period (stopTimeout 10s, plus 5).
    let started = Instant::now();
    let out = live.run_within(&["stop", &uuid], Duration::from_secs(30));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    assert!(took < Duration::from_secs(15), "pod stop took {took:?}");

    let entry = live.listed(&uuid).unwrap();
    assert_eq!(entry["state"], "exited", "{entry}");
    let st = live.status(&uuid);
    for app in st["apps"].as_array().unwrap() {
        assert!(!matches!(app["state"].as_str(), Some("ready" | "running")), "still up after stop: {st}");
        assert!(app["pid"].is_null(), "{st}");
    }
    assert!(refused(port), "127.0.0.1:{port} still accepts connections after stop");
    assert_eq!(cgroup_dirs_of(&uuid), Vec::<std::path::PathBuf>::new(), "cgroups left after stop");
    assert!(!netns_file(&uuid).exists(), "{} left after stop", netns_file(&uuid).display());
    assert_eq!(links_on(&net.bridge), Vec::<String>::new(), "veths left on {}", net.bridge);
    assert_eq!(iptables_mentioning(&uuid), Vec::<String>::new(), "iptables rules left after stop");
}

#[test]
fn two_pods_of_one_file_serve_on_their_own_ports_at_once() {
    skip_unless_pods!();
    let live = Live::with_net(&[Example::Redis, Example::Web]);
    let net = live.net.clone().unwrap();
    let (p1, p2) = (free_port(), free_port());
    // Named apart: a pod's name is unique among running pods.
    let u1 = live.start_with(&live.web_db_file("one", p1), &["--name", "web-db-1"]);
    let u2 = live.start_with(&live.web_db_file("two", p2), &["--name", "web-db-2"]);
    assert_ne!(u1, u2);

    // Each pod has its own redis: each counts from 1.
    assert_eq!(http_get_ok(p1, UP_WITHIN), "visits: 1\n");
    assert_eq!(http_get_ok(p2, UP_WITHIN), "visits: 1\n");
    assert_eq!(http_get(p1), Ok((200, "visits: 2\n".to_owned())));
    assert_eq!(http_get(p1), Ok((200, "visits: 3\n".to_owned())));
    assert_eq!(http_get(p2), Ok((200, "visits: 2\n".to_owned())));

    let ip = |uuid: &str| {
        let e = live.listed(uuid).unwrap();
        assert_eq!(e["state"], "running", "{e}");
        e["ips"][0].as_str().unwrap_or_else(|| panic!("no ip: {e}")).to_owned()
    };
    let (ip1, ip2) = (ip(&u1), ip(&u2));
    assert!(ip1.starts_with(&net.prefix) && ip2.starts_with(&net.prefix) && ip1 != ip2, "{ip1} {ip2}");
    assert_eq!(links_on(&net.bridge).len(), 2, "{:?}", links_on(&net.bridge));

    // Stopping one leaves the other serving.
    let out = live.run_within(&["stop", &u1], Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&["stop", &u1], &out));
    assert!(refused(p1), "127.0.0.1:{p1} still open after its pod stopped");
    assert_eq!(http_get(p2), Ok((200, "visits: 3\n".to_owned())));
}

/// `pod ARGS` in a private mount namespace where /usr/sbin (and so /sbin)
/// shows every program but iptables' own: a host without the iptables
/// package, as far as `pod` and its CNI plugins can tell. The host's own
/// /usr/sbin is untouched.
fn without_iptables(live: &Live, args: &[&str]) -> std::process::Output {
    let shadow = live.work.join("no-iptables");
    let real = live.work.join("real-sbin");
    std::fs::create_dir_all(&shadow).unwrap();
    std::fs::create_dir_all(&real).unwrap();
    for entry in std::fs::read_dir("/usr/sbin").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let iptables =
            ["iptables", "ip6tables", "xtables", "arptables", "ebtables"].iter().any(|t| name.starts_with(t));
        if !iptables {
            let _ = std::os::unix::fs::symlink(real.join(&name), shadow.join(&name));
        }
    }
    let cmd = live.cmd(args);
    let script = r#"mount --bind /usr/sbin "$1" && mount --bind "$2" /usr/sbin && shift 2 && exec "$@""#;
    let mut wrapped = std::process::Command::new("unshare");
    wrapped.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"]).arg(&real).arg(&shadow);
    wrapped.arg(cmd.get_program()).args(cmd.get_args()).current_dir(&live.work).stdin(std::process::Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    output_within(wrapped, Duration::from_secs(120), &args.join(" "))
}

// A host without iptables: the pod's port mapping (CNI portmap) cannot be
// set up, and `pod run` says what to install; the failed start leaves
// nothing `pod gc` cannot collect (before, the rollback's DEL failed too and
// the pod could never be collected).
#[test]
fn without_iptables_a_pod_with_ports_fails_clearly_and_gc_collects_it() {
    skip_unless_pods!();
    if !std::path::Path::new("/usr/sbin/iptables").exists() {
        eprintln!("SKIP: no /usr/sbin/iptables to hide");
        return;
    }
    let live = Live::with_net(&[Example::Redis, Example::Web]);
    let net = live.net.clone().unwrap();
    let file = live.web_db_file("noipt", free_port());
    let args = ["run", "-d", "--net", &net.name, p(&file)];
    let out = without_iptables(&live, &args);
    assert!(!out.status.success(), "{}", describe(&args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("portmap") && err.contains("install Debian's iptables package"), "{err}");
    eprintln!("pod run without iptables said: {}", err.trim());

    let out = without_iptables(&live, &["gc"]);
    assert!(out.status.success(), "{}", describe(&["gc"], &out));
    let left = live.pods();
    assert!(left.is_empty(), "pods left after gc: {left:?}");
    assert!(links_on(&net.bridge).is_empty(), "veths left: {:?}", links_on(&net.bridge));
}
