//! A userspace TCP forwarder for published ports on loopback on CNI networks
//! (what podman's rootlessport and docker-proxy do): portmap's DNAT cannot
//! reach a pod from 127.0.0.1 without `route_localnet`, which pod turns on
//! only for its own bridge (the native default network serves loopback with
//! DNAT: [`super::native::nft`]). One listener thread, two copy threads
//! per connection, a connection cap, and a stop that closes every socket and
//! joins every thread. TCP only: UDP mappings are served by portmap alone.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

mod splice;

/// Connections served at once; further clients are closed on accept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long to wait for the pod to accept the upstream connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("start proxy thread for {addr}: {source}")]
    Thread { addr: SocketAddr, source: io::Error },
}

/// Limits of one forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    pub max_connections: usize,
    pub connect_timeout: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self { max_connections: DEFAULT_MAX_CONNECTIONS, connect_timeout: DEFAULT_CONNECT_TIMEOUT }
    }
}

/// State shared by the listener and the connection threads.
#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    /// Clones of every open socket, so `stop` can shut them down and
    /// unblock the copy threads.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Shared {
    fn sockets(&self) -> MutexGuard<'_, HashMap<u64, Vec<TcpStream>>> {
        // A panicking copy thread cannot leave the map inconsistent.
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a socket of connection `id`; false once stopping, in which
    /// case the caller must give up.
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let Ok(clone) = stream.try_clone() else { return false };
        let mut sockets = self.sockets();
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        sockets.entry(id).or_default().push(clone);
        true
    }
}

/// A running forwarder from `listen` to `target`. Stopped by [`stop`] or on
/// drop.
///
/// [`stop`]: PortProxy::stop
#[derive(Debug)]
pub struct PortProxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PortProxy {
    /// Listens on `host_ip:host_port` (port 0 picks one) and forwards every
    /// connection to `target`, the pod's address and container port.
    pub fn start(host_ip: IpAddr, host_port: u16, target: SocketAddr) -> Result<Self, ProxyError> {
        Self::with_limits(host_ip, host_port, target, ProxyLimits::default())
    }

    /// Like [`start`](Self::start), but dials `target` from inside the
    /// network namespace pinned at `netns` (each connection thread joins it
    /// first), so `target` can be the pod's own 127.0.0.1. This needs no
    /// address on the host side of the pod's network, no forwarding and no
    /// route_localnet: traffic never crosses a bridge.
    pub fn start_in_netns(
        host_ip: IpAddr,
        host_port: u16,
        target: SocketAddr,
        netns: &std::path::Path,
    ) -> Result<Self, ProxyError> {
        Self::spawn(host_ip, host_port, target, ProxyLimits::default(), Some(Arc::new(netns.to_path_buf())))
    }

    pub fn with_limits(
        host_ip: IpAddr,
        host_port: u16,
        target: SocketAddr,
        limits: ProxyLimits,
    ) -> Result<Self, ProxyError> {
        Self::spawn(host_ip, host_port, target, limits, None)
    }

    fn spawn(
        host_ip: IpAddr,
        host_port: u16,
        target: SocketAddr,
        limits: ProxyLimits,
        netns: Option<Arc<std::path::PathBuf>>,
    ) -> Result<Self, ProxyError> {
        let addr = SocketAddr::new(host_ip, host_port);
        let listener = TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind { addr, source })?;
        let accept_side = listener.try_clone().map_err(|source| ProxyError::Bind { addr, source })?;
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("proxy-{}", local_addr.port()))
            .spawn(move || accept_loop(&accept_side, target, limits, &state, netns))
            .map_err(|source| ProxyError::Thread { addr: local_addr, source })?;
        tracing::info!(listen = %local_addr, %target, "port proxy started");
        Ok(Self { local_addr, target, listener: Some(listener), shared, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections being forwarded now.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every forwarded connection and joins every
    /// thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            // shutdown(2) on a listening socket wakes a blocked accept(2)
            // with EINVAL on Linux; a throwaway connection is the fallback.
            if nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both).is_err() {
                let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
            }
        }
        if thread.join().is_err() {
            tracing::warn!(listen = %self.local_addr, "port proxy listener panicked");
        }
        tracing::info!(listen = %self.local_addr, "port proxy stopped");
    }
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    limits: ProxyLimits,
    shared: &Arc<Shared>,
    netns: Option<Arc<std::path::PathBuf>>,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        // Reap finished connections so the handle list stays bounded.
        workers.retain(|h| !h.is_finished());
        let (client, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "proxy accept failed");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.active.load(Ordering::SeqCst) >= limits.max_connections {
            tracing::warn!(%peer, max = limits.max_connections, "proxy connection limit reached, closing");
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        if !shared.register(id, &client) {
            break;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(shared);
        let netns = netns.clone();
        let spawned = thread::Builder::new().name("proxy-conn".into()).spawn(move || {
            // This thread exists for this one connection: joining the pod's
            // network namespace here affects nothing else.
            if let Some(ns) = &netns {
                let joined = std::fs::File::open(ns.as_path())
                    .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                    .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET));
                if let Err(e) = joined {
                    tracing::warn!(netns = %ns.display(), error = %e, "proxy could not enter the pod's network");
                    state.sockets().remove(&id);
                    state.active.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
            forward(id, client, target, limits.connect_timeout, &state);
            state.sockets().remove(&id);
            state.active.fetch_sub(1, Ordering::SeqCst);
        });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                tracing::warn!(error = %e, %peer, "proxy could not start a connection thread");
                shared.sockets().remove(&id);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    // Unblock every copy thread, then wait for all of them.
    for socket in shared.sockets().values().flatten() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    for handle in workers {
        let _ = handle.join();
    }
}

/// Serves one client: connect upstream, copy both ways, half-close on EOF.
fn forward(id: u64, client: TcpStream, target: SocketAddr, timeout: Duration, shared: &Shared) {
    let upstream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "proxy upstream connect failed");
            return;
        }
    };
    if !shared.register(id, &upstream) {
        return;
    }
    // What comes in goes out at once: the client's own stack already
    // decided when to send, and Nagle on the relay would only add a round
    // trip to every small response that follows an unacknowledged one.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else { return };
    let reverse = thread::Builder::new().name("proxy-copy".into()).spawn(move || pipe(upstream, client));
    match reverse {
        Ok(handle) => {
            pipe(client_read, upstream_write);
            let _ = handle.join();
        }
        Err(e) => tracing::warn!(error = %e, "proxy could not start a copy thread"),
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`; on an error both
/// sockets are shut so the other direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let copied = match splice::copy(&from, &to) {
        Err(splice::Error::Setup(e)) => {
            // No pipe (EMFILE) or no splice: copy through a buffer.
            tracing::debug!(error = %e, "proxy falls back to read/write");
            io::copy(&mut from, &mut to).map(drop)
        }
        Err(splice::Error::Copy(e)) => Err(e),
        Ok(_) => Ok(()),
    };
    match copied {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;
    use std::time::Instant;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An echo server on loopback that serves until its listener is closed.
    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((LO, 0)).expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let handle = thread::spawn(move || {
            for conn in listener.incoming().take(4096) {
                let Ok(mut conn) = conn else { break };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, handle)
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn forwards_both_ways_with_half_close() {
        let (target, _server) = echo_server();
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let mut c = connect(proxy.local_addr());
        let payload: Vec<u8> = (0..200_000u32).map(|i| i.to_le_bytes()[0]).collect();
        c.write_all(&payload).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("read to EOF");
        assert_eq!(back, payload);
        wait_for("the connection to finish", || proxy.active_connections() == 0);
        proxy.stop();
    }

    #[test]
    fn stop_closes_open_connections_and_frees_the_port() {
        let (target, _server) = echo_server();
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let addr = proxy.local_addr();
        let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
        for c in &mut clients {
            c.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).expect("echo");
        }
        assert_eq!(proxy.active_connections(), 3);
        let started = Instant::now();
        proxy.stop();
        assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
        for c in &mut clients {
            let mut buf = [0u8; 1];
            assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)), "connection must be closed");
        }
        // The port is free again and nobody listens on it.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
        drop(TcpListener::bind(addr).expect("port released"));
    }

    #[test]
    fn the_connection_cap_turns_extra_clients_away() {
        let (target, _server) = echo_server();
        let limits = ProxyLimits { max_connections: 2, connect_timeout: Duration::from_secs(2) };
        let proxy = PortProxy::with_limits(LO, 0, target, limits).expect("start");
        let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(proxy.local_addr())).collect();
        for c in &mut kept {
            c.write_all(b"x").expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("echo");
        }
        let mut extra = connect(proxy.local_addr());
        let _ = extra.write_all(b"x");
        let mut b = [0u8; 1];
        assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)), "over the cap: closed without data");
        drop(kept);
        wait_for("slots to free", || proxy.active_connections() == 0);
        let mut again = connect(proxy.local_addr());
        again.write_all(b"y").expect("write");
        again.read_exact(&mut b).expect("served again");
        assert_eq!(&b, b"y");
    }

    #[test]
    fn an_unreachable_target_closes_the_client_and_leaks_nothing() {
        // A port nobody listens on: bind then drop to get one.
        let dead = TcpListener::bind((LO, 0)).expect("bind").local_addr().expect("addr");
        let proxy = PortProxy::start(LO, 0, dead).expect("start");
        let mut c = connect(proxy.local_addr());
        let mut b = [0u8; 1];
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
        wait_for("the failed connection to be released", || proxy.active_connections() == 0);
        assert!(PortProxy::start(LO, proxy.local_addr().port(), dead).is_err(), "port in use is an error");
    }
    /// A payload that is not periodic at any small size, so a dropped or
    /// repeated chunk shows.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn large_transfers_cross_intact_in_both_directions_at_once() {
        let (target, _server) = echo_server();
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let c = connect(proxy.local_addr());
        let payload = pattern(48 << 20);
        let sent = payload.clone();
        let mut w = c.try_clone().expect("clone");
        // Writing and reading at once: the echo's buffers fill otherwise.
        let writer = thread::spawn(move || {
            w.write_all(&sent).expect("write");
            w.shutdown(Shutdown::Write).expect("half-close");
        });
        let mut back = Vec::with_capacity(payload.len());
        (&c).read_to_end(&mut back).expect("read to EOF");
        writer.join().expect("writer");
        assert_eq!(back.len(), payload.len());
        assert!(back == payload, "the echoed bytes differ");
    }

    #[test]
    fn the_pod_side_half_closes_and_the_client_still_sends() {
        let listener = TcpListener::bind((LO, 0)).expect("bind");
        let target = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"greeting").expect("write");
            s.shutdown(Shutdown::Write).expect("half-close");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            got
        });
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let mut c = connect(proxy.local_addr());
        let mut first = Vec::new();
        c.read_to_end(&mut first).expect("EOF from the pod side");
        assert_eq!(first, b"greeting");
        // The other direction is still open after the pod's EOF.
        c.write_all(b"after EOF").expect("write after the peer's EOF");
        c.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(server.join().expect("server"), b"after EOF");
        wait_for("the connection to finish", || proxy.active_connections() == 0);
    }

    #[test]
    fn many_connections_are_served_at_once() {
        let (target, _server) = echo_server();
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(proxy.local_addr())).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("client {i:03}").as_bytes()).expect("write");
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut buf = [0u8; 10];
            c.read_exact(&mut buf).expect("echo");
            assert_eq!(&buf, format!("client {i:03}").as_bytes());
        }
        assert_eq!(proxy.active_connections(), 200);
        drop(clients);
        wait_for("every connection to finish", || proxy.active_connections() == 0);
    }

    #[test]
    fn stop_returns_promptly_with_a_transfer_blocked_midway() {
        // The pod side accepts and never reads: every buffer on the way
        // fills and the relay blocks writing.
        let listener = TcpListener::bind((LO, 0)).expect("bind");
        let target = listener.local_addr().expect("addr");
        let held = thread::spawn(move || listener.accept().map(|(s, _)| s));
        let proxy = PortProxy::start(LO, 0, target).expect("start");
        let c = connect(proxy.local_addr());
        let mut w = c.try_clone().expect("clone");
        let writer = thread::spawn(move || w.write_all(&pattern(64 << 20)));
        let _upstream = held.join().expect("accept thread").expect("accept");
        thread::sleep(Duration::from_millis(300));
        assert!(!writer.is_finished(), "64 MiB cannot fit in the buffers of a reader that never reads");
        let started = Instant::now();
        proxy.stop();
        assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
        assert!(writer.join().expect("writer").is_err(), "the client's write must fail once stopped");
    }
}
