//! Tier (b): the real bridge, host-local and portmap plugins on the real
//! kernel. Root only; skips (saying so) without root or the plugins.
//!
//! Rules kept: traffic goes only to loopback and to the pod's own address in
//! a namespace the test made; no sysctl is written (plugins run with a
//! read-only /proc/sys, the test network has isGateway/ipMasq/snat off); a
//! Drop guard removes the bridge, veth, namespace, iptables chains and IPAM
//! state even when an assertion fails; links, iptables and sysctls are
//! compared before and after.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const PLUGINS: &str = "/usr/lib/cni";
const CONTAINER_PORT: u16 = 8080;
/// Host sysctls that must read the same after the test.
const SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/conf/all/route_localnet",
    "/proc/sys/net/ipv4/conf/all/forwarding",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("CNI kernel test needs root".into());
    }
    for plugin in ["bridge", "host-local", "portmap"] {
        if !Path::new(PLUGINS).join(plugin).exists() {
            return Some(format!("{PLUGINS}/{plugin} is missing (containernetworking-plugins)"));
        }
    }
    for tool in ["ip", "iptables", "iptables-save", "ip6tables-save", "nft"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// Runs a command; `Err` carries its stderr.
fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog).args(args).output().map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The links enslaved to `bridge`: the test's own veths, whatever else
/// runs on this host meanwhile.
fn links_on(bridge: &str) -> BTreeSet<String> {
    let out = run("ip", &["-o", "link", "show", "master", bridge]).unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn link_names() -> BTreeSet<String> {
    let out = run("ip", &["-o", "link", "show"]).expect("ip -o link");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// iptables-save without comments and counters, which change by themselves.
fn iptables() -> String {
    iptables_of("iptables-save")
}

fn iptables_of(save: &str) -> String {
    let out = run(save, &[]).expect(save);
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The nftables tables (`ip nat`, `ip6 nat`, ...): iptables-nft makes a
/// table the first time a rule or chain in it is touched, even by a DEL.
fn nft_tables() -> BTreeSet<String> {
    let out = run("nft", &["list", "tables"]).expect("nft list tables");
    out.lines().filter_map(|l| l.strip_prefix("table ")).map(str::to_owned).collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    links: BTreeSet<String>,
    iptables: String,
    ip6tables: String,
    nft_tables: BTreeSet<String>,
    sysctls: Vec<(String, String)>,
}

impl Snapshot {
    fn take() -> Self {
        let sysctls = SYSCTLS
            .iter()
            .map(|p| (p.to_string(), fs::read_to_string(p).unwrap_or_else(|_| "absent".into())))
            .collect();
        Self {
            links: link_names(),
            iptables: iptables(),
            ip6tables: iptables_of("ip6tables-save"),
            nft_tables: nft_tables(),
            sysctls,
        }
    }
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Everything the test creates, removed on drop whatever happened.
struct Guard {
    tmp: tempfile::TempDir,
    tag: String,
    bridge: String,
    network: String,
    container_id: String,
    subnet_octet: u8,
    netns_dir: PathBuf,
    cni: Cni,
    nft_tables_before: BTreeSet<String>,
    hostport_chain_existed: bool,
}

impl Guard {
    fn new() -> Self {
        let r = random_u64();
        let tag = format!("{:04x}", r & 0xffff);
        let subnet_octet = u8::try_from((r >> 16) % 250).unwrap_or(0) + 2;
        let tmp = tempfile::tempdir().expect("tempdir");
        let saved = iptables();
        let guard = Self {
            bridge: format!("podt{tag}"),
            network: format!("podtest-{tag}"),
            container_id: format!("podtest{tag}"),
            subnet_octet,
            netns_dir: tmp.path().join("netns"),
            cni: Cni::new(tmp.path().join("net.d"), tmp.path().join("cache"))
                .with_plugin_dirs(vec![PathBuf::from(PLUGINS)])
                .with_read_only_sysctls(true),
            nft_tables_before: nft_tables(),
            hostport_chain_existed: saved.contains(":CNI-HOSTPORT-DNAT"),
            tag,
            tmp,
        };
        assert!(!link_names().contains(&guard.bridge), "bridge {} already exists", guard.bridge);
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": guard.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": guard.bridge,
                    // Both would make the plugin enable ip_forward or add
                    // masquerade rules; the test plays the gateway itself.
                    "isGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": guard.subnet() }]],
                        "dataDir": guard.tmp.path().join("ipam"),
                    }
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    // snat would set route_localnet on the bridge.
                    "snat": false,
                    "conditionsV4": ["!", "-d", "127.0.0.0/8"]
                }
            ]
        });
        fs::create_dir_all(guard.cni.conf_dir()).expect("conf dir");
        fs::write(guard.cni.conf_dir().join("10-test.conflist"), conflist.to_string()).expect("conflist");
        guard
    }

    fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.subnet_octet)
    }

    fn gateway(&self) -> String {
        format!("10.213.{}.1/24", self.subnet_octet)
    }

    fn netns_path(&self) -> PathBuf {
        self.netns_dir.join(format!("podt-{}", self.tag))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let netns = self.netns_path();
        if let Err(e) = self.cni.del(&netns, &self.container_id, POD_IFNAME, &self.network) {
            eprintln!("cleanup: CNI DEL: {e}");
        }
        if let Err(e) = remove_netns(&netns) {
            eprintln!("cleanup: remove netns: {e}");
        }
        if link_names().contains(&self.bridge) {
            if let Err(e) = run("ip", &["link", "del", &self.bridge]) {
                eprintln!("cleanup: {e}");
            }
        }
        // portmap's iptables-nft calls create `ip nat` (ADD) and `ip6 nat`
        // (its DEL also tears down IPv6 chains): drop the ones we made.
        let now = nft_tables();
        for table in ["ip nat", "ip6 nat"] {
            if now.contains(table) && !self.nft_tables_before.contains(table) {
                let mut args = vec!["delete", "table"];
                args.extend(table.split(' '));
                if let Err(e) = run("nft", &args) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
        if self.nft_tables_before.contains("ip nat")
            && !self.hostport_chain_existed
            && iptables().contains(":CNI-HOSTPORT-DNAT")
        {
            for chain in ["PREROUTING", "OUTPUT"] {
                let jump =
                    ["-t", "nat", "-D", chain, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"];
                let _ = run("iptables", &jump);
            }
            let _ = run("iptables", &["-t", "nat", "-X", "CNI-HOSTPORT-DNAT"]);
        }
        let _ = fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.network));
    }
}

/// A tiny HTTP server on a listener that lives in the pod's namespace,
/// served from a host thread; it stops on drop or after a minute.
struct PodServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PodServer {
    fn start(listener: TcpListener, body: String) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP GET, bounded in time.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").map_err(|e| format!("write {addr}: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| format!("read {addr}: {e}"))?;
    Ok(reply)
}

/// A few tries, for a bridge port that has just come up.
fn http_get_retrying(addr: SocketAddr) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        match http_get(addr) {
            Ok(reply) => return reply,
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("no answer from {addr}: {last}");
}

fn free_loopback_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("free port").port()
}

#[test]
fn bridge_portmap_and_loopback_proxy_on_the_real_kernel() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let before = Snapshot::take();
    let tag = {
        let guard = Guard::new();
        exercise(&guard);
        exercise_pod_network(&guard);
        guard.tag.clone()
    };
    let after = Snapshot::take();
    // Only what carries the test's tag: pods of other tests or engines on
    // this host add and remove links and rules meanwhile.
    let new_links: Vec<&String> = after.links.difference(&before.links).filter(|l| l.contains(&tag)).collect();
    assert!(new_links.is_empty(), "links leaked: {new_links:?}");
    let old_rules: BTreeSet<&str> = before.iptables.lines().collect();
    let new_rules: Vec<&str> = after.iptables.lines().filter(|l| l.contains(&tag) && !old_rules.contains(l)).collect();
    assert!(new_rules.is_empty(), "iptables rules leaked: {new_rules:#?}");
    assert_eq!(after.sysctls, before.sysctls, "a sysctl changed");
}

fn exercise(guard: &Guard) {
    let links_before = link_names();
    let ns = create_netns(&guard.netns_dir, &format!("podt-{}", guard.tag)).expect("create netns");
    let host_port = free_loopback_port();
    let mapping = PortMapping { host_port, container_port: CONTAINER_PORT, protocol: Protocol::Tcp, host_ip: None };

    let attachment =
        guard.cni.add(ns.path(), &guard.container_id, POD_IFNAME, &guard.network, &[mapping]).expect("CNI ADD");
    let subnet: IpNet = guard.subnet().parse().expect("subnet");
    let pod_ip = attachment.primary_ip().expect("pod address");
    assert!(subnet.contains(pod_ip), "{pod_ip} not in {subnet}");
    assert_eq!(attachment.interface, "eth0");

    let new_links: BTreeSet<String> = link_names().difference(&links_before).cloned().collect();
    // Enslaved to the test's bridge: other pods on this host make veths too.
    let veth = links_on(&guard.bridge).into_iter().find(|l| l.starts_with("veth")).expect("host veth");
    assert!(new_links.contains(&guard.bridge), "bridge created: {new_links:?}");
    // The plugin's accept_ra write hit the read-only /proc/sys.
    if let Ok(default) = fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_ra") {
        let bridge_ra = fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{}/accept_ra", guard.bridge));
        assert_eq!(bridge_ra.ok(), Some(default), "bridge accept_ra must stay at the kernel default");
    }
    let rules = iptables();
    let ours: Vec<&str> = rules.lines().filter(|l| l.contains(&guard.container_id)).collect();
    assert!(!ours.is_empty(), "portmap added no rule for the pod:\n{rules}");
    assert!(
        ours.iter().any(|l| l.contains("! -d 127.0.0.0/8") && l.contains(&host_port.to_string())),
        "portmap's DNAT must skip loopback: {ours:#?}"
    );

    // The test plays the gateway (isGateway would also enable ip_forward).
    run("ip", &["addr", "replace", &guard.gateway(), "dev", &guard.bridge]).expect("gateway address");

    let listener = ns.run_in(|| TcpListener::bind((pod_ip, CONTAINER_PORT))).expect("enter netns").expect("bind");
    let body = format!("hello from {}", guard.container_id);
    let server = PodServer::start(listener, body.clone());

    let direct = http_get_retrying(SocketAddr::new(pod_ip, CONTAINER_PORT));
    assert!(direct.starts_with("HTTP/1.0 200") && direct.ends_with(&body), "direct: {direct:?}");

    let proxy = PortProxy::start(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port, SocketAddr::new(pod_ip, CONTAINER_PORT))
        .expect("proxy");
    for _ in 0..3 {
        let via = http_get_retrying(proxy.local_addr());
        assert!(via.ends_with(&body), "through the proxy: {via:?}");
    }
    proxy.stop();
    drop(server);

    guard.cni.del(ns.path(), &guard.container_id, POD_IFNAME, &guard.network).expect("CNI DEL");
    guard.cni.del(ns.path(), &guard.container_id, POD_IFNAME, &guard.network).expect("CNI DEL is idempotent");
    remove_netns(ns.path()).expect("remove netns");
    // DEL once more with the namespace gone, as gc would after a crash.
    guard.cni.del(ns.path(), &guard.container_id, POD_IFNAME, &guard.network).expect("CNI DEL without netns");

    assert!(!link_names().contains(&veth), "veth {veth} left behind");
    assert!(!iptables().contains(&guard.container_id), "iptables still mentions {}", guard.container_id);
    assert!(!ns.path().exists(), "netns file left behind");
    assert!(list_netns(&guard.netns_dir).expect("list").is_empty());
    assert_eq!(fs::read_dir(guard.cni.cache_dir()).map(Iterator::count).unwrap_or(0), 0, "cache entry left");
    let ipam = guard.tmp.path().join("ipam").join(&guard.network);
    let leases: Vec<String> = fs::read_dir(&ipam)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!leases.iter().any(|f| f.starts_with("10.")), "IPAM lease left: {leases:?}");
    assert!(!Path::new("/var/lib/cni/networks").join(&guard.network).exists());
}

/// The same through the stage1 entry points: `setup` for none, host and the
/// CNI network with a published port, the proxy started by `setup` itself,
/// and `teardown`.
fn exercise_pod_network(guard: &Guard) {
    let host =
        NetworkHost { netns_dir: guard.netns_dir.clone(), cni: guard.cni.clone(), default_net: Default::default() };
    let cni_net = Network::Cni { name: guard.network.clone() };
    let host_port = free_loopback_port();
    let mapping = PortMapping { host_port, container_port: CONTAINER_PORT, protocol: Protocol::Tcp, host_ip: None };

    assert!(matches!(setup(&Network::Host, "x", &host, &[]), Ok(PodNetwork::Host)));
    let err = setup(&Network::None, "x", &host, &[mapping]).expect_err("ports on none");
    assert!(matches!(err, NetworkError::PortsWithoutCni("none")), "{err:?}");
    let none = setup(&Network::None, &format!("podt-none-{}", guard.tag), &host, &[]).expect("network none");
    let none_path = none.netns().expect("a namespace").path().to_path_buf();
    assert!(none.attachment().is_none() && none_path.exists());
    none.teardown().expect("teardown none");
    assert!(!none_path.exists());

    // A taken loopback port fails setup after CNI ADD: all of it is undone.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let busy = PortMapping { host_port: taken.local_addr().expect("addr").port(), ..mapping };
    let err = setup(&cni_net, &guard.container_id, &host, &[busy]).expect_err("port taken");
    assert!(matches!(err, NetworkError::Proxy(ProxyError::Bind { .. })), "{err:?}");
    drop(taken);
    assert!(list_netns(&guard.netns_dir).expect("list").is_empty(), "netns left after failed setup");
    assert!(links_on(&guard.bridge).is_empty(), "veth left after failed setup");
    assert!(!iptables().contains(&guard.container_id), "rules left after failed setup");

    let pod = setup(&cni_net, &guard.container_id, &host, &[mapping]).expect("setup");
    let pod_ip = pod.attachment().and_then(Attachment::primary_ip).expect("pod address");
    assert_eq!(pod.proxied(), [SocketAddr::from((Ipv4Addr::LOCALHOST, host_port))]);
    run("ip", &["addr", "replace", &guard.gateway(), "dev", &guard.bridge]).expect("gateway address");
    let netns = pod.netns().expect("namespace");
    let listener = netns.run_in(|| TcpListener::bind((pod_ip, CONTAINER_PORT))).expect("enter netns").expect("bind");
    let server = PodServer::start(listener, "via setup".into());
    let reply = http_get_retrying(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)));
    assert!(reply.ends_with("via setup"), "{reply:?}");
    drop(server);
    let path = netns.path().to_path_buf();
    pod.teardown().expect("teardown");

    assert!(!path.exists(), "netns file left behind");
    let leaked = links_on(&guard.bridge);
    assert!(leaked.is_empty(), "links left on {}: {leaked:?}", guard.bridge);
    assert!(!iptables().contains(&guard.container_id));
    assert!(TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, host_port).into(), Duration::from_millis(300)).is_err());
    teardown_leftovers(&cni_net, &guard.container_id, &host).expect("gc after teardown is a no-op");
}
