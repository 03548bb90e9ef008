//! The streaming server kubelet redirects Exec, Attach and PortForward to,
//! as kubelet's own (k8s.io/kubelet/pkg/cri/streaming) and containerd's:
//! the CRI call answers with a URL holding a one-shot random token that
//! expires after a minute; the client then upgrades an HTTP request to
//! that URL to SPDY/3.1 (crictl's and kubectl's default) or WebSocket
//! (`--transport websocket`), and the streams flow over it.
//!
//! - `/exec/TOKEN`, `/attach/TOKEN`: the remote command protocol
//!   (remotecommand.rs), v4/v5.channel.k8s.io on both transports.
//! - `/portforward/TOKEN`: portforward.k8s.io over SPDY, the same
//!   tunneled in a WebSocket (`SPDY/3.1+portforward.k8s.io`, client-go's),
//!   and kubelet's WebSocket channels (`v4.channel.k8s.io`,
//!   portforward_ws.rs).
//!
//! It listens on `--streaming-address` (default 127.0.0.1:0, a random
//! loopback port, like containerd's stream_server_address): the URLs carry
//! no credentials beyond the token, so it is not meant to face a network.

pub mod attach;
pub mod exec;
pub mod portforward;
pub mod portforward_ws;
pub mod remotecommand;
pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use stage0::paths::Dirs;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::container;
use crate::proto;
use crate::sandbox;
use remotecommand::{Options, Outcome};

/// The default `--streaming-address`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:0";
/// How long a URL stays valid (kubelet's cacheTTL).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests waiting for their client at most (kubelet's maxInFlight).
const MAX_IN_FLIGHT: usize = 1000;

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(proto::ExecRequest),
    Attach(proto::AttachRequest),
    PortForward(proto::PortForwardRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The server: its base URL and its tokens.
#[derive(Debug)]
pub struct Server {
    base: String,
    dirs: Dirs,
    tokens: Mutex<HashMap<String, (Instant, Pending)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("--streaming-address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("too many streaming requests waiting for their client")]
    Full,
}

impl Server {
    /// Binds `addr` and serves in the background.
    pub async fn start(addr: SocketAddr, dirs: Dirs) -> Result<Arc<Server>, StreamingError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| StreamingError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| StreamingError::Bind { addr, source })?;
        let server = Arc::new(Server { base: format!("http://{local}"), dirs, tokens: Mutex::new(HashMap::new()) });
        tracing::info!(address = %local, "serving exec, attach and port-forward streams");
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of fds, say: not a busy loop.
                        tracing::warn!(error = %e, "streaming: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req)) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .with_upgrades();
                    if let Err(e) = served.await {
                        tracing::debug!(error = %e, "streaming connection");
                    }
                });
            }
        });
        Ok(server)
    }

    /// The base URL (`http://ADDR`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A one-shot URL for `req`.
    pub fn url_for(&self, req: Pending) -> Result<String, StreamingError> {
        let mut raw = [0u8; 12];
        getrandom::getrandom(&mut raw).map_err(|_| StreamingError::Full)?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let path = req.path();
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        if tokens.len() >= MAX_IN_FLIGHT {
            return Err(StreamingError::Full);
        }
        tokens.insert(token.clone(), (Instant::now(), req));
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// The request of a token, once.
    fn take(&self, path: &str, token: &str) -> Option<Pending> {
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, req) = tokens.remove(token)?;
        (at.elapsed() < TOKEN_TTL && req.path() == path).then_some(req)
    }

    fn handle(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_start_matches('/').to_owned();
        let Some((kind, token)) = path.split_once('/') else { return plain(StatusCode::NOT_FOUND, "not found") };
        let Some(pending) = self.take(kind, token) else {
            return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
        };
        let headers = req.headers();
        let get = |name: header::HeaderName| {
            headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",")
        };
        let upgrade = get(header::UPGRADE).to_ascii_lowercase();
        let key = get(header::SEC_WEBSOCKET_KEY);
        let ws_offered = get(header::SEC_WEBSOCKET_PROTOCOL);
        let spdy_offered = get(header::HeaderName::from_static("x-stream-protocol-version"));
        let query = req.uri().query().unwrap_or_default().to_owned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let server = self.clone();
        if upgrade.contains("websocket") {
            let offered = ws_offered;
            let served: &[&str] = match pending {
                Pending::PortForward(_) => &[ws::PORTFORWARD_TUNNEL, portforward_ws::PROTOCOL],
                _ => &remotecommand::WS_PROTOCOLS,
            };
            let Some(protocol) = ws::choose(&offered, served) else {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("no served subprotocol in {offered:?} (served: {served:?})"),
                );
            };
            // Kubelet's channel protocol forwards fixed ports: the request's,
            // else the URL's.
            let mut channels = None;
            if let (Pending::PortForward(pf), portforward_ws::PROTOCOL) = (&pending, protocol) {
                let ports: Vec<u16> =
                    pf.port.iter().filter_map(|p| u16::try_from(*p).ok()).filter(|p| *p > 0).collect();
                let ports = if ports.is_empty() { portforward_ws::ports_of_query(&query) } else { Ok(ports) };
                match ports {
                    Ok(p) if !p.is_empty() => channels = Some(p),
                    Ok(_) => return plain(StatusCode::BAD_REQUEST, "query parameter \"port\" is required"),
                    Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
                }
            }
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => {
                        let ws = Box::new(WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await);
                        let transport = match channels {
                            Some(ports) => Transport::PortChannels(ws, ports),
                            None => Transport::WebSocket(ws),
                        };
                        server.run(pending, transport).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "streaming: upgrade failed"),
                }
            });
            let mut resp = switching("websocket");
            let h = resp.headers_mut();
            if let Ok(v) = derive_accept_key(key.as_bytes()).parse() {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static(protocol));
            return resp;
        }
        if upgrade.contains("spdy/3.1") {
            let offered = spdy_offered;
            let served: &[&str] = match pending {
                Pending::PortForward(_) => &[portforward::PROTOCOL],
                _ => &remotecommand::SPDY_PROTOCOLS,
            };
            let Some(protocol) = ws::choose(&offered, served) else {
                let mut r = plain(
                    StatusCode::FORBIDDEN,
                    &format!("unable to upgrade: no common protocol in {offered:?} (served: {served:?})"),
                );
                if let Ok(v) = served.join(", ").parse() {
                    r.headers_mut().insert("x-accepted-stream-protocol-versions", v);
                }
                return r;
            };
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => server.run(pending, Transport::Spdy(TokioIo::new(up))).await,
                    Err(e) => tracing::debug!(error = %e, "streaming: upgrade failed"),
                }
            });
            let mut resp = switching("SPDY/3.1");
            resp.headers_mut().insert("x-stream-protocol-version", header::HeaderValue::from_static(protocol));
            return resp;
        }
        plain(StatusCode::BAD_REQUEST, "an Upgrade to SPDY/3.1 or websocket is required")
    }

    /// Serves one upgraded request.
    async fn run(self: Arc<Self>, pending: Pending, transport: Transport) {
        let dirs = self.dirs.clone();
        match pending {
            Pending::Exec(req) => {
                let opts = Options { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
                let id = req.container_id.clone();
                let target = tokio::task::spawn_blocking(move || {
                    container::find_container(&dirs, &id).map(|c| exec::Target::of(&c, &dirs))
                })
                .await;
                let handler = move |io| async move {
                    match target {
                        Ok(Ok(t)) => exec::exec(t, req.cmd, io).await,
                        Ok(Err(e)) => Outcome::Failed(e.to_string()),
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                };
                transport.serve(opts, handler).await;
            }
            Pending::Attach(req) => {
                let opts = Options { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
                let id = req.container_id.clone();
                let d2 = dirs.clone();
                let found = tokio::task::spawn_blocking(move || container::find_container(&d2, &id)).await;
                let handler = move |io| async move {
                    let c = match found {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return Outcome::Failed(e.to_string()),
                        Err(e) => return Outcome::Failed(e.to_string()),
                    };
                    let (pod, app) = (c.sandbox.pod.clone(), spec::AcName::new(c.record.app.clone()).ok());
                    let stdin_once: Option<attach::Hook> = match (c.record.stdin_once, app.clone()) {
                        (true, Some(app)) => {
                            let pod = pod.clone();
                            Some(std::sync::Arc::new(move || {
                                if let Err(e) = stage0::control::close_stdin(&pod, &app) {
                                    tracing::debug!(error = %e, "attach: close-stdin");
                                }
                            }))
                        }
                        _ => None,
                    };
                    let resize: Option<attach::ResizeHook> = match (c.record.tty, app) {
                        (true, Some(app)) => Some(std::sync::Arc::new(move |rows, cols| {
                            if let Err(e) = stage0::control::resize(&pod, &app, rows, cols) {
                                tracing::debug!(error = %e, "attach: resize");
                            }
                        })),
                        _ => None,
                    };
                    // Without a log path, pod-init logs raw into the pod's logs/.
                    let raw_log = c.record.log_path.is_empty();
                    let log_path = match raw_log {
                        true => c.sandbox.pod.dir.join("logs").join(format!("{}.log", c.record.app)),
                        false => c.record.log_path.clone().into(),
                    };
                    let t = attach::AttachTarget {
                        log_path,
                        raw_log,
                        stdin_fifo: attach::stdin_fifo(&c.sandbox.pod.dir, &c.record.app),
                        stdin_once,
                        resize,
                    };
                    let id = c.id();
                    let running = move || {
                        container::find_container(&dirs, &id)
                            .is_ok_and(|c| c.status().state == proto::ContainerState::ContainerRunning as i32)
                    };
                    attach::attach(t, io, running).await
                };
                transport.serve(opts, handler).await;
            }
            Pending::PortForward(req) => {
                let id = req.pod_sandbox_id.clone();
                let at = tokio::task::spawn_blocking(move || {
                    let s = sandbox::find_sandbox(&dirs, &id).ok().flatten()?;
                    if s.record.runtime_handler == crate::vm::VM_HANDLER {
                        // The apps' loopback is the guest's.
                        return Some(portforward::PodPorts::Vm(s.pod.dir.join("vm").join("stream.sock")));
                    }
                    let pid = stage0::enter::init_pid(&s.pod.dir)?;
                    Some(portforward::PodPorts::Netns(std::path::PathBuf::from(format!("/proc/{pid}/ns/net"))))
                })
                .await
                .ok()
                .flatten();
                let Some(netns) = at else {
                    tracing::debug!(sandbox = %req.pod_sandbox_id, "port-forward: the sandbox is not running");
                    return;
                };
                match transport {
                    Transport::Spdy(io) => portforward::serve(io, netns).await,
                    Transport::WebSocket(ws) => portforward::serve(ws::tunnel(*ws), netns).await,
                    Transport::PortChannels(ws, ports) => portforward_ws::serve(*ws, netns, ports).await,
                }
            }
        }
    }
}

/// An upgraded connection.
enum Transport {
    Spdy(TokioIo<hyper::upgrade::Upgraded>),
    WebSocket(Box<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>),
    /// Port-forward with kubelet's WebSocket channels, for these ports.
    PortChannels(Box<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>, Vec<u16>),
}

impl Transport {
    async fn serve<H, F>(self, opts: Options, handler: H)
    where
        H: FnOnce(remotecommand::Io) -> F,
        F: std::future::Future<Output = Outcome>,
    {
        match self {
            Transport::Spdy(io) => remotecommand::serve_spdy(io, opts, handler).await,
            Transport::WebSocket(ws) | Transport::PortChannels(ws, _) => {
                remotecommand::serve_ws(*ws, opts, handler).await;
            }
        }
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r
}

fn switching(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    r.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_one_shot_and_bound_to_their_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path().join("d"), tmp.path().join("c"));
        let s = Server::start("127.0.0.1:0".parse().unwrap(), dirs).await.unwrap();
        let url = s.url_for(Pending::PortForward(proto::PortForwardRequest::default())).unwrap();
        assert!(url.starts_with(&format!("{}/portforward/", s.base_url())));
        let token = url.rsplit('/').next().unwrap();
        assert!(s.take("exec", token).is_none(), "a port-forward token is no exec token");
        let url = s.url_for(Pending::PortForward(proto::PortForwardRequest::default())).unwrap();
        let token = url.rsplit('/').next().unwrap();
        assert!(s.take("portforward", token).is_some());
        assert!(s.take("portforward", token).is_none(), "used once");
    }
}
