//! The native default network on the real kernel, inside a network
//! namespace of the test's own standing in for the host (so the bridge,
//! the nf_tables tables and the forwarding switch it sets are the test's),
//! with host-local's store in a temp dir. Needs root; reports a skip.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};

use super::*;
use crate::network::netns::{create_netns, remove_netns};
use crate::network::ports::Protocol;

/// Serves `body` once per connection until the listener is dropped.
fn serve(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(body.as_bytes());
        }
    });
}

fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("{addr}: {e}"))?;
    Ok(out)
}

fn in_own_netns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = DefaultNet { data_dir: dir.path().join("ipam"), ..DefaultNet::default() };
    let netns_dir = dir.path().join("netns");
    let store = net.store();

    let ns1 = create_netns(&netns_dir, "pod-one").expect("netns");
    let ports = [PortMapping { host_port: 18080, container_port: 80, protocol: Protocol::Tcp, host_ip: None }];
    let cache1 = dir.path().join("one");
    let (one, att) = Native::setup(&net, &cache1, "pod-one", &ns1, &ports).expect("setup one");
    assert_eq!(att.ips, ["10.89.0.2/16".parse::<IpNet>().expect("net")]);
    assert_eq!(att.gateway, Some(Ipv4Addr::new(10, 89, 0, 1).into()));
    assert_eq!(store.held_by("pod-one"), [Ipv4Addr::new(10, 89, 0, 2)]);
    assert_eq!(
        nft::rules_of("pod-one").expect("look up"),
        4,
        "masquerade of the pod and of loopback, DNAT in prerouting and output"
    );
    assert_eq!(fs::read_to_string(IP_FORWARD).expect("read").trim(), "1", "forwarding on (in the test's namespace)");

    // The pod answers at its address, and on the host address through DNAT.
    let listener = ns1.run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80))).expect("run_in").expect("bind");
    serve(listener, "one");
    assert_eq!(fetch((Ipv4Addr::new(10, 89, 0, 2), 80).into()), Ok("one".into()));
    assert_eq!(fetch((Ipv4Addr::new(10, 89, 0, 1), 18080).into()), Ok("one".into()), "DNAT from a host address");
    assert_eq!(fetch((Ipv4Addr::LOCALHOST, 18080).into()), Ok("one".into()), "DNAT from loopback");
    // The pod's way out is the gateway.
    let route = ns1.run_in(|| fs::read_to_string("/proc/thread-self/net/route")).expect("run_in").expect("route");
    assert!(
        route.lines().any(|l| l.starts_with("eth0\t00000000\t0100590A")),
        "no default route via 10.89.0.1:\n{route}"
    );

    // Outbound traffic is masqueraded: an "outside" namespace linked to the
    // test's sees the host's address, not the pod's.
    let outside = create_netns(&netns_dir, "outside").expect("netns");
    let out_fd = outside.open().expect("open");
    let mut rtnl = Rtnl::open().expect("rtnl");
    rtnl.add_veth("podt-out", None, "eth0", [2, 0, 0, 0, 0, 9], std::os::fd::AsFd::as_fd(&out_fd)).expect("veth out");
    let out_idx = rtnl.link_index("podt-out").expect("look up").expect("podt-out");
    rtnl.add_address(out_idx, "198.51.100.1/24".parse().expect("net"), "podt-out").expect("address");
    outside
        .run_in(|| -> Result<(), RtnlError> {
            let mut r = Rtnl::open()?;
            let eth0 = r.link_index("eth0")?.expect("eth0 outside");
            r.add_address(eth0, "198.51.100.2/24".parse().expect("net"), "eth0")?;
            r.set_up(eth0, "eth0")
        })
        .expect("run_in")
        .expect("outside address");
    let far =
        outside.run_in(|| TcpListener::bind((Ipv4Addr::new(198, 51, 100, 2), 9000))).expect("run_in").expect("bind");
    let dialled = ns1
        .run_in(|| TcpStream::connect_timeout(&(Ipv4Addr::new(198, 51, 100, 2), 9000).into(), Duration::from_secs(3)));
    let (_conn, seen) = far.accept().expect("accept");
    drop(dialled);
    assert_eq!(seen.ip(), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), "the pod's traffic leaves masqueraded");
    rtnl.del_link("podt-out").expect("remove podt-out");

    // A second pod: the next address. Its stage1 "dies": gc undoes it from
    // its state file alone.
    let ns2 = create_netns(&netns_dir, "pod-two").expect("netns");
    let cache2 = dir.path().join("two");
    let (_two, att2) = Native::setup(&net, &cache2, "pod-two", &ns2, &[]).expect("setup two");
    assert_eq!(att2.ips[0].addr, IpAddr::V4(Ipv4Addr::new(10, 89, 0, 3)));
    assert!(rtnl.link_index(&veth_name("pod-two")).expect("look up").is_some());
    assert_eq!(nft::rules_of("pod-two").expect("look up"), 1, "masquerade only");
    teardown_in(&net, &cache2, "pod-two").expect("gc two");
    assert!(rtnl.link_index(&veth_name("pod-two")).expect("look up").is_none(), "veth left");
    assert!(nft::rules_of("pod-two").expect("look up") == 0 && store.held_by("pod-two").is_empty());
    assert!(nft::table_exists().expect("look up"), "gc deleted the table pod one still uses");
    assert_eq!(nft::rules_of("pod-one").expect("look up"), 4, "gc of pod two touched pod one's rules");
    assert!(!was_native(&cache2));
    teardown_in(&net, &cache2, "pod-two").expect("gc again: nothing");
    // A gc that saw no rule but races a pod's start: the non-recursive
    // deletion fails as a whole and leaves the table and the rules.
    nft::delete_if_empty().expect("table in use: nothing to do");
    assert_eq!(nft::rules_of("pod-one").expect("look up"), 4, "a non-recursive deletion removed rules");

    // The monitor's teardown leaves the shared table (and its hooks), gc
    // removes it once no pod uses it.
    one.teardown_with_netns().expect("the monitor's teardown of one");
    assert_eq!(nft::rules_of("pod-one").expect("look up"), 0, "rules left");
    assert!(nft::table_exists().expect("look up"), "the monitor deleted the shared table");
    assert!(store.held_by("pod-one").is_empty(), "address left");
    assert!(!was_native(&cache1), "state left");
    remove_netns(ns1.path()).expect("remove netns");
    remove_table_if_unused("pod-one").expect("gc one");
    assert!(!nft::table_exists().expect("look up"), "the unused shared table is left after gc");
    assert!(store.held_by("pod-one").is_empty(), "address left");
    assert!(fetch((Ipv4Addr::new(10, 89, 0, 1), 18080).into()).is_err(), "port still forwarded");
    one.teardown().expect("teardown is idempotent");

    // A failed setup undoes its own work and nothing else: here the veth's
    // name is taken (by a bridge of the test's).
    let ns3 = create_netns(&netns_dir, "pod-three").expect("netns");
    let taken = veth_name("pod-three");
    rtnl.ensure_bridge(&taken, "192.0.2.1/32".parse().expect("net")).expect("the blocker");
    let cache3 = dir.path().join("three");
    let err = Native::setup(&net, &cache3, "pod-three", &ns3, &[]).expect_err("name taken");
    assert!(err.to_string().contains(&taken), "{err}");
    assert!(rtnl.link_index(&taken).expect("look up").is_some(), "the undo removed a link that was not the pod's");
    assert!(store.held_by("pod-three").is_empty() && !nft::table_exists().expect("look up") && !was_native(&cache3));
    rtnl.del_link(&taken).expect("remove the blocker");
    for ns in [ns2, ns3, outside] {
        remove_netns(ns.path()).expect("remove netns");
    }
}

#[test]
fn native_default_network_on_the_real_kernel() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: the native default network test needs root");
        return;
    }
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare the test's network namespace");
        crate::network::sys::set_link_up("lo").expect("lo up");
        in_own_netns();
    })
    .join()
    .expect("the test thread panicked");
}
