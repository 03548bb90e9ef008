//! PortForward (`portforward.k8s.io` over SPDY, or the same SPDY tunneled
//! in a WebSocket): each forwarded connection is a pair of client streams
//! (`error` and `data`, matched by `requestid`, each naming the `port`);
//! the data stream is piped to 127.0.0.1:PORT in the sandbox's network
//! namespace (in a VM sandbox: the guest's), a connect error is written on
//! the error stream.
//!
//! In a namespace sandbox the socket is made in the pod's network
//! namespace by a short-lived thread that joins only that namespace (setns
//! of CLONE_NEWNET is per-thread), connects and ends; the socket keeps its
//! namespace. A VM sandbox's loopback is inside the guest, which the host
//! reaches only through the VM's stream port (`stage0::vmstream`): the
//! guest makes the connection, and its bytes come through a socket pair
//! that a thread here joins to the stream.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::session::{Event, Session, Writer};
use super::spdy::{header, RST_PROTOCOL_ERROR};

/// The protocol served.
pub const PROTOCOL: &str = "portforward.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to 127.0.0.1:`port` in the network namespace at `netns`
/// (`/proc/<pid>/ns/net`).
pub fn connect_in_netns(netns: PathBuf, port: u16) -> std::io::Result<TcpStream> {
    std::thread::Builder::new()
        .name("pod-cri-netns".into())
        .spawn(move || {
            let ns = File::open(&netns)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT)
        })?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the netns thread panicked")))
}

/// Where a sandbox's loopback is.
#[derive(Debug, Clone)]
pub enum PodPorts {
    /// A network namespace (`/proc/<pid>/ns/net`).
    Netns(PathBuf),
    /// A VM's guest, through the VM's stream socket (`vm/stream.sock`).
    Vm(PathBuf),
}

/// Something a forwarded connection's bytes go through.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A half-formed pair.
#[derive(Debug, Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Serves port-forward streams on one connection until the client closes it.
pub async fn serve<IO>(conn: IO, netns: PodPorts)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut session = Session::start(conn);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut inputs: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    while let Some(ev) = session.events.recv().await {
        match ev {
            Event::Open { id, headers } => {
                let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                let kind = header(&headers, "streamtype");
                let (Some(port), Some(kind @ ("error" | "data"))) = (port, kind) else {
                    tracing::debug!(?headers, "port-forward: a stream without a valid port or type");
                    session.writer.reset(id, RST_PROTOCOL_ERROR).await;
                    continue;
                };
                session.writer.reply(id).await;
                // Without a request ID, clients pair streams by ID (data = error + 2).
                let request = header(&headers, "requestid")
                    .map(str::to_owned)
                    .unwrap_or_else(|| if kind == "error" { id } else { id.saturating_sub(2) }.to_string());
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = port;
                if kind == "error" {
                    pair.error = Some(id);
                } else {
                    pair.data = Some(id);
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    pairs.remove(&request);
                    let (tx, rx) = mpsc::channel(16);
                    inputs.insert(data, tx);
                    tokio::spawn(forward(session.writer.clone(), netns.clone(), port, error, data, rx));
                }
            }
            Event::Data { id, data } => {
                if let Some(tx) = inputs.get(&id) {
                    if tx.send(data).await.is_err() {
                        inputs.remove(&id);
                    }
                }
            }
            Event::Fin { id } | Event::Reset { id } => {
                inputs.remove(&id);
            }
        }
    }
    session.finish().await;
}

/// A connection to `port` on the pod's loopback, made off the async
/// workers (the thread that joins the pod's network namespace blocks, and
/// so does the wait for a VM's guest to connect).
pub async fn connect(at: PodPorts, port: u16) -> std::io::Result<Box<dyn Duplex>> {
    match at {
        PodPorts::Netns(netns) => tokio::task::spawn_blocking(move || connect_in_netns(netns, port))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(Box::new(tokio::net::TcpStream::from_std(s)?) as Box<dyn Duplex>)
            }),
        PodPorts::Vm(socket) => connect_vm(socket, port).await.map(|s| Box::new(s) as Box<dyn Duplex>),
    }
}

/// A connection to `port` in a VM's guest: one end of a socket pair whose
/// other end a thread joins to the guest's connection.
async fn connect_vm(socket: PathBuf, port: u16) -> std::io::Result<tokio::net::UnixStream> {
    use std::net::Shutdown;
    let conn = tokio::task::spawn_blocking(move || stage0::vmstream::Connection::open(&socket, port))
        .await
        .unwrap_or_else(|e| Err(stage0::vmstream::StreamError::Guest(e.to_string())))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let input = theirs.try_clone()?;
    std::thread::Builder::new().name("pod-cri-vmport".into()).spawn(move || {
        let mut output = theirs;
        let shut = output.try_clone();
        // The guest's side shut its writing: so does the pair, so the
        // client reads the end.
        let mut on_eof = || {
            if let Ok(s) = &shut {
                let _ = s.shutdown(Shutdown::Write);
            }
        };
        if let Err(e) = conn.run(input, &mut output, &mut on_eof) {
            tracing::debug!(port, error = %e, "port-forward into the VM ended");
        }
        let _ = output.shutdown(Shutdown::Both);
    })?;
    ours.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(ours)
}

/// Where a forwarded connection's bytes from the pod go: one transport's
/// data stream or channel.
pub trait ToClient: Send {
    /// Sends bytes the pod wrote; `false`: the client is gone.
    fn data(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = bool> + Send;
    /// The pod closed its side.
    fn closed(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Pipes one forwarded connection both ways, whatever the transport: what
/// `rx` brings goes to the pod (its write side shut when `rx` ends), what
/// the pod sends goes to `out`.
pub async fn pump(stream: Box<dyn Duplex>, mut rx: mpsc::Receiver<Bytes>, out: &mut impl ToClient) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_pod = async {
        while let Some(chunk) = rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.data(&buf[..n]).await {
                        break;
                    }
                }
            }
        }
        out.closed().await;
    };
    tokio::join!(to_pod, from_pod);
}

/// One forwarded connection.
async fn forward(writer: Writer, netns: PodPorts, port: u16, error: u32, data: u32, rx: mpsc::Receiver<Bytes>) {
    let stream = match connect(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to the pod: {e}");
            tracing::debug!("{msg}");
            writer.data(error, Bytes::from(msg)).await;
            writer.fin(error).await;
            writer.fin(data).await;
            return;
        }
    };
    let mut out = SpdyData { writer: &writer, data };
    pump(stream, rx, &mut out).await;
    writer.fin(error).await;
}

/// A forwarded connection's SPDY data stream.
struct SpdyData<'a> {
    writer: &'a Writer,
    data: u32,
}

impl ToClient for SpdyData<'_> {
    async fn data(&mut self, bytes: &[u8]) -> bool {
        self.writer.data(self.data, Bytes::copy_from_slice(bytes)).await
    }

    async fn closed(&mut self) {
        self.writer.fin(self.data).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_in_our_own_namespace_reaches_a_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = connect_in_netns(PathBuf::from("/proc/self/ns/net"), port);
        if let Err(e) = &s {
            if e.raw_os_error() == Some(libc::EPERM) {
                eprintln!("SKIP: setns needs CAP_SYS_ADMIN");
                return;
            }
        }
        s.unwrap();
        listener.accept().unwrap();
    }
}
