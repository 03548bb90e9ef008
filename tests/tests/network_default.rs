//! The default network, set up natively (rtnetlink and rules tagged with
//! the pod's id in one nf_tables table `ip pod` the pods share, no CNI
//! plugin run): pods get distinct addresses on `pod0` in
//! 10.89.0.0/16 from the host-local store, answer at their address from the
//! host, publish ports on loopback and on the host's addresses (DNAT both,
//! with a guard that keeps pods off the host's loopback), and leave no
//! veth, rule or allocation after `pod stop`, nor after `pod gc` of a pod
//! whose stage1 was SIGKILLed. A `default` conflist of the user's, like any
//! named network, still goes through CNI.
//!
//! The default network turns on IP forwarding and masquerades, so these
//! tests run every `pod` command inside a network namespace of their own
//! (`ip netns add`, entered with nsenter): the bridge, the rules, the
//! forwarding switch and all traffic stay in it, and it is deleted after.
//! Needs root, nsenter, nft and curl; reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(120);
/// host-local's store of the `default` network, shared with CNI pods.
const IPAM_DIR: &str = "/var/lib/cni/networks/default";

/// A network namespace standing in for the host, removed on drop.
struct TestNs {
    name: String,
    path: PathBuf,
}

impl TestNs {
    fn new() -> Self {
        let name = format!("pode2e-{:08x}", random_u64() & 0xffff_ffff);
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "ip netns add: {}", String::from_utf8_lossy(&out.stderr));
        let ns = Self { path: Path::new("/run/netns").join(&name), name };
        let up = ns.sh("ip link set lo up");
        assert!(up.status.success(), "lo up: {}", String::from_utf8_lossy(&up.stderr));
        ns
    }

    /// `cmd` run inside the namespace, with its environment and directory.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut w = Command::new("nsenter");
        w.arg(format!("--net={}", self.path.display())).arg(cmd.get_program()).args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            w.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        w.stdin(std::process::Stdio::null());
        w
    }

    fn sh(&self, script: &str) -> Output {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        output_within(self.wrap(&cmd), Duration::from_secs(30), script)
    }

    fn pod(&self, live: &Live, args: &[&str]) -> Output {
        output_within(self.wrap(&live.cmd(args)), LIMIT, &args.join(" "))
    }

    fn pod_ok(&self, live: &Live, args: &[&str]) -> String {
        let out = self.pod(live, args);
        assert!(out.status.success(), "{}", describe(args, &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The body of `http://addr:port/`, or why not.
    fn get(&self, addr: &str, port: u16) -> Result<String, String> {
        let out = self.sh(&format!("curl -sS --max-time 5 http://{addr}:{port}/"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn get_within(&self, addr: &str, port: u16, limit: Duration) -> String {
        let mut last = Err(String::new());
        wait_for(limit, || {
            last = self.get(addr, port);
            last.is_ok()
        });
        last.unwrap_or_else(|e| panic!("http://{addr}:{port}/ never answered: {e}"))
    }

    fn veths(&self) -> Vec<String> {
        let out = self.sh("ip -o link show master pod0 2>/dev/null");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// The nf_tables tables (`table ip pod`, ...).
    fn tables(&self) -> Vec<String> {
        let out = self.sh("nft list tables");
        assert!(out.status.success(), "nft list tables: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// Whether the pods' shared table `ip pod` is there.
    fn shared_table(&self) -> bool {
        self.tables().iter().any(|t| t.trim() == "table ip pod")
    }

    /// The rules of the shared table tagged with the pod's id.
    fn rules_of(&self, uuid: &str) -> Vec<String> {
        let out = self.sh("nft list table ip pod 2>/dev/null");
        let tag = format!("comment \"pod-{uuid}\"");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&tag)).map(|l| l.trim().to_owned()).collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn skip() -> Option<String> {
    if let Some(why) = skip_reason(false) {
        return Some(why);
    }
    for tool in ["nsenter", "nft", "curl", "ip"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is missing (scripts/install-deps.sh)"));
        }
    }
    None
}

macro_rules! skip_unless_ready {
    () => {
        if let Some(why) = skip() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// A busybox httpd answering `hello from NAME`, its port 8080 published on
/// `host_port`, on the default network.
fn web_file(live: &Live, name: &str, host_port: u16) -> PathBuf {
    let script = format!(
        "/bin/busybox mkdir -p /tmp/www && echo hello from {name} > /tmp/www/index.html && \
         exec /bin/busybox httpd -f -p 8080 -h /tmp/www"
    );
    live.pod_file(
        name,
        &format!(
            "name: {name}\nnetwork: default\napps:\n  - name: web\n    image: {}\n    exec: [/bin/sh, -c, \"{script}\"]\n\
             ports: [{{ containerPort: 8080, host: {host_port} }}]\n",
            Example::Busybox.reference()
        ),
    )
}

fn start(ns: &TestNs, live: &Live, file: &Path) -> String {
    let uuid = ns.pod_ok(live, &["run", "-d", p(file)]).trim().to_owned();
    assert!(is_uuid(&uuid), "pod run -d printed {uuid:?}");
    uuid
}

fn ip_of(live: &Live, uuid: &str) -> String {
    let e = live.listed(uuid).unwrap_or_else(|| panic!("{uuid} not listed"));
    e["ips"][0].as_str().unwrap_or_else(|| panic!("no ip: {e}")).to_owned()
}

/// The host-local allocation files naming `uuid`.
fn allocations_of(uuid: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(IPAM_DIR) else { return Vec::new() };
    rd.flatten()
        .filter(|e| fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with(uuid)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What the pod holds on the host, each as a line, once the kernel had a
/// moment to delete its veth with its namespace (asynchronously, after
/// `pod stop`): what is still there after 5 s.
fn footprint_settled(ns: &TestNs, uuid: &str) -> Vec<String> {
    let mut left = footprint(ns, uuid);
    wait_for(Duration::from_secs(5), || {
        left = footprint(ns, uuid);
        left.is_empty()
    });
    left
}

/// What the pod holds on the host while it runs, each as a line.
fn footprint(ns: &TestNs, uuid: &str) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(ns.rules_of(uuid).into_iter().map(|r| format!("nft rule {r}")));
    let tag: String = uuid.chars().filter(char::is_ascii_alphanumeric).take(11).collect();
    out.extend(ns.veths().into_iter().filter(|v| v.contains(&tag)).map(|v| format!("veth {v}")));
    out.extend(allocations_of(uuid).into_iter().map(|a| format!("address {a}")));
    if netns_file(uuid).exists() {
        out.push(format!("netns {uuid}"));
    }
    out
}

#[test]
fn default_network_pods_are_reachable_publish_ports_and_stop_leaving_nothing() {
    skip_unless_ready!();
    let ns = TestNs::new();
    let live = Live::new(&[Example::Busybox]);
    let (p1, p2) = (free_port(), free_port());
    let u1 = start(&ns, &live, &web_file(&live, "one", p1));
    let u2 = start(&ns, &live, &web_file(&live, "two", p2));

    // Two pods, two addresses on the default subnet, each answering there.
    let (ip1, ip2) = (ip_of(&live, &u1), ip_of(&live, &u2));
    assert!(ip1.starts_with("10.89.") && ip2.starts_with("10.89.") && ip1 != ip2, "{ip1} {ip2}");
    assert_eq!(ns.get_within(&ip1, 8080, Duration::from_secs(30)), "hello from one\n");
    assert_eq!(ns.get_within(&ip2, 8080, Duration::from_secs(30)), "hello from two\n");

    // Published: on loopback and on a host address (the bridge's
    // 10.89.0.1), both through the pod's DNAT rules.
    assert_eq!(ns.get("127.0.0.1", p1), Ok("hello from one\n".to_owned()));
    assert_eq!(ns.get("10.89.0.1", p1), Ok("hello from one\n".to_owned()));
    assert_eq!(ns.get("10.89.0.1", p2), Ok("hello from two\n".to_owned()));

    // The footprint: its nf_tables rules, its veth on pod0, its host-local
    // address file, its namespace pin. No CNI plugin ran: no iptables rule
    // names it, no CNI cache.
    for uuid in [&u1, &u2] {
        let f = footprint(&ns, uuid);
        for kind in ["nft rule", "veth", "address", "netns"] {
            assert!(f.iter().any(|l| l.starts_with(kind)), "no {kind} of {uuid}: {f:?}");
        }
        let iptables = ns.sh("iptables-save 2>/dev/null");
        assert!(!String::from_utf8_lossy(&iptables.stdout).contains(uuid.as_str()), "an iptables rule names {uuid}");
    }
    assert_eq!(ns.veths().len(), 2, "{:?}", ns.veths());
    let ip_file = Path::new(IPAM_DIR).join(&ip1);
    assert_eq!(fs::read_to_string(&ip_file).unwrap(), format!("{u1}\r\neth0"), "host-local's format");

    // Stopping one leaves the other serving, and nothing of the first.
    ns.pod_ok(&live, &["stop", &u1]);
    assert_eq!(footprint_settled(&ns, &u1), Vec::<String>::new(), "left after stop");
    assert!(ns.get("127.0.0.1", p1).is_err() && ns.get("10.89.0.1", p1).is_err(), "port {p1} still answers");
    assert_eq!(ns.get("10.89.0.1", p2), Ok("hello from two\n".to_owned()));

    ns.pod_ok(&live, &["stop", &u2]);
    assert_eq!(footprint_settled(&ns, &u2), Vec::<String>::new(), "left after stop");
    assert!(ns.veths().is_empty(), "veths left: {:?}", ns.veths());
    // The shared table outlives its pods (deleting it on a pod's exit
    // would unregister its hooks, which is slow), empty; `pod gc` removes it.
    assert!(ns.shared_table(), "the shared table went with the last pod: {:?}", ns.tables());
    let rules = ns.sh("nft -a list table ip pod");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    let left: Vec<&str> = rules.lines().filter(|l| l.contains("comment") && !l.contains("\"pod-guard\"")).collect();
    assert!(left.is_empty(), "rules left after stop: {left:?}");
    ns.pod_ok(&live, &["gc"]);
    let pod_tables: Vec<String> = ns.tables().into_iter().filter(|t| t.contains(" pod")).collect();
    assert!(pod_tables.is_empty(), "tables left after gc: {pod_tables:?}");
}

/// The pod's stage1 monitor: the outermost pod-stage1-ns above its PID 1.
fn monitor_of(live: &Live, uuid: &str) -> i32 {
    let ppid = |pid: i32| -> Option<i32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let is_stage1 = |pid: i32| {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("pod-stage1-ns"))
    };
    let init: i32 =
        fs::read_to_string(live.data.join("pods/run").join(uuid).join("pid")).unwrap().trim().parse().unwrap();
    let mut monitor = ppid(init).unwrap();
    while let Some(parent) = ppid(monitor).filter(|&p| is_stage1(p)) {
        monitor = parent;
    }
    assert!(is_stage1(monitor), "the parent of {uuid}'s PID 1 is not its stage1");
    monitor
}

#[test]
fn gc_of_a_pod_whose_stage1_was_killed_leaves_nothing() {
    skip_unless_ready!();
    let ns = TestNs::new();
    let live = Live::new(&[Example::Busybox]);
    let port = free_port();
    let uuid = start(&ns, &live, &web_file(&live, "killed", port));
    let ip = ip_of(&live, &uuid);
    assert_eq!(ns.get_within(&ip, 8080, Duration::from_secs(30)), "hello from killed\n");
    assert_eq!(footprint(&ns, &uuid).len(), 7, "4 rules, veth, address, netns: {:?}", footprint(&ns, &uuid));

    let monitor = monitor_of(&live, &uuid);
    assert!(Command::new("kill").args(["-KILL", &monitor.to_string()]).status().unwrap().success());
    assert!(
        wait_for(Duration::from_secs(10), || !Path::new(&format!("/proc/{monitor}")).exists()),
        "stage1 survived SIGKILL"
    );
    // The killed monitor could undo nothing: its rules, veth and address stay.
    assert_eq!(ns.rules_of(&uuid).len(), 4, "the rules went with the monitor? {:?}", ns.rules_of(&uuid));

    ns.pod_ok(&live, &["gc"]);
    assert!(live.listed(&uuid).is_none(), "pod gc left the pod: {:?}", live.pods());
    // gc deletes the veth itself: nothing is left when it returns.
    assert_eq!(footprint(&ns, &uuid), Vec::<String>::new(), "left after gc");
    assert!(!ns.shared_table(), "gc left the unused shared table: {:?}", ns.tables());
    assert!(ns.get("10.89.0.1", port).is_err(), "port {port} still answers");
}

// A conflist of the user's named `default` is a CNI network like any other:
// the bridge and portmap plugins run (iptables rules name the pod, a CNI
// cache is kept), no nf_tables table is made. This one, as every CNI test
// network, has no gateway or masquerade, so it runs on the host.
#[test]
fn a_default_conflist_of_the_users_still_goes_through_cni() {
    skip_unless_ready!();
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::with_net(&[Example::Busybox]);
    let net = live.net.clone().unwrap();
    let conf = live.config.join("net.d");
    let conflist = conf.join(format!("10-{}.conflist", net.name));
    let doc =
        fs::read_to_string(&conflist).unwrap().replace(&format!("\"name\":\"{}\"", net.name), "\"name\":\"default\"");
    assert!(doc.contains("\"name\":\"default\""), "{doc}");
    fs::write(&conflist, doc).unwrap();

    let port = free_port();
    // Not Live::start, which would name the test network with --net.
    let file = web_file(&live, "cni", port);
    let out = live.run_within(&["run", "-d", p(&file)], LIMIT);
    assert!(out.status.success(), "{}", describe(&["run", "-d"], &out));
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ip = live.listed(&uuid).unwrap()["ips"][0].as_str().unwrap().to_owned();
    assert!(ip.starts_with(&net.prefix), "{ip} is not on the user's network {}0/24", net.prefix);
    assert_eq!(http_get_ok(port, Duration::from_secs(30)), "hello from cni\n");
    assert!(!iptables_mentioning(&uuid).is_empty(), "portmap's rules should name {uuid}");
    assert_eq!(links_on(&net.bridge).len(), 1, "{:?}", links_on(&net.bridge));
    let cache = live.data.join("pods/run").join(&uuid).join("net");
    let cached: Vec<String> =
        fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(cached.iter().any(|f| f.starts_with("default-") && f.ends_with(".json")), "no CNI cache: {cached:?}");
    assert!(!cached.iter().any(|f| f.starts_with("native")), "native state for a CNI pod: {cached:?}");
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&uuid), "an nf_tables table for a CNI pod");

    let out = live.run_within(&["stop", &uuid], LIMIT);
    assert!(out.status.success(), "{}", describe(&["stop", &uuid], &out));
    assert_eq!(iptables_mentioning(&uuid), Vec::<String>::new(), "iptables rules left after stop");
    assert!(links_on(&net.bridge).is_empty(), "veths left: {:?}", links_on(&net.bridge));
}

/// Sends UDP datagrams from inside the pod's namespace to the host's
/// 127.0.0.1:`port`, routed through the pod's gateway (as a hostile pod
/// could route them, CVE-2020-8558), and returns what a listener there got.
fn loopback_probe(ns: &TestNs, uuid: &str, port: u16, dir: &Path) -> String {
    let listener = dir.join("listen.py");
    fs::write(
        &listener,
        format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', {port}))\n\
             s.settimeout(3)\ntry:\n    print(s.recv(64).decode())\nexcept OSError:\n    print('nothing')\n"
        ),
    )
    .unwrap();
    let sender = dir.join("send.py");
    fs::write(
        &sender,
        format!(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(10):\n    \
             s.sendto(b'from the pod', ('127.0.0.1', {port}))\n    time.sleep(0.2)\n"
        ),
    )
    .unwrap();
    let out = ns.sh(&format!(
        "python3 {l} > {dir}/got & sleep 0.3; nsenter --net={pod} python3 {s}; wait; cat {dir}/got",
        l = listener.display(),
        s = sender.display(),
        dir = dir.display(),
        pod = netns_file(uuid).display()
    ));
    assert!(out.status.success(), "probe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// Published ports answer on the host's 127.0.0.1 through DNAT, not a
// userspace proxy: `route_localnet` on pod0 (and only there) lets the
// kernel route 127.0.0.0/8 over the bridge. The shared table's guard keeps
// the pods themselves from using that to reach the host's loopback-only
// services; without the guard the same probe gets through.
#[test]
fn loopback_ports_are_dnat_and_pods_cannot_reach_the_hosts_loopback() {
    skip_unless_ready!();
    let ns = TestNs::new();
    let live = Live::new(&[Example::Busybox]);
    let port = free_port();
    let uuid = start(&ns, &live, &web_file(&live, "lo", port));
    assert_eq!(ns.get_within("127.0.0.1", port, Duration::from_secs(30)), "hello from lo\n");
    let listening = ns.sh(&format!("ss -Hltn 'sport = :{port}'"));
    assert_eq!(String::from_utf8_lossy(&listening.stdout).trim(), "", "something listens on port {port}");
    let sysctl = |path: &str| String::from_utf8_lossy(&ns.sh(&format!("cat {path}")).stdout).trim().to_owned();
    assert_eq!(sysctl("/proc/sys/net/ipv4/conf/pod0/route_localnet"), "1");
    assert_eq!(sysctl("/proc/sys/net/ipv4/conf/all/route_localnet"), "0", "route_localnet beyond pod0");

    // Inside the pod, as a pod with CAP_NET_ADMIN could: 127.0.0.1 routed
    // through the gateway instead of the pod's own loopback.
    let ip = ip_of(&live, &uuid);
    let route = ns.sh(&format!(
        "nsenter --net={} sh -c 'ip route del table local local 127.0.0.0/8 dev lo && \
         ip route del table local local 127.0.0.1 dev lo && ip route add 127.0.0.1/32 via 10.89.0.1 dev eth0 src {ip}'",
        netns_file(&uuid).display()
    ));
    assert!(route.status.success(), "routes in the pod: {}", String::from_utf8_lossy(&route.stderr));
    let dir = tempfile::tempdir().unwrap();
    let probe = free_port();
    assert_eq!(loopback_probe(&ns, &uuid, probe, dir.path()), "nothing", "the pod reached the host's loopback");

    // The probe is sound: with the guard deleted, the datagrams arrive.
    let chain = ns.sh("nft -a list chain ip pod input");
    let chain = String::from_utf8_lossy(&chain.stdout).into_owned();
    let handle = chain
        .lines()
        .find(|l| l.contains("\"pod-guard\"") && l.contains("drop"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap_or_else(|| panic!("no guard in {chain}"))
        .trim()
        .to_owned();
    let del = ns.sh(&format!("nft delete rule ip pod input handle {handle}"));
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    assert_eq!(loopback_probe(&ns, &uuid, probe, dir.path()), "from the pod", "the probe cannot tell");

    ns.pod_ok(&live, &["stop", &uuid]);
    assert_eq!(footprint_settled(&ns, &uuid), Vec::<String>::new(), "left after stop");
    ns.pod_ok(&live, &["gc"]);
    assert!(!ns.shared_table(), "gc left the shared table: {:?}", ns.tables());
}
