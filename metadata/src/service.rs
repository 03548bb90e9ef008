//! The service: a unix socket where stage1s register their pods (each with
//! a listening socket of its own, bound in the pod's network namespace),
//! and an HTTP/1.1 server (hyper) on every pod's socket, and on the host's
//! loopback for pods on the host's network. A pod is served until its
//! stage1 says it ended or its PID 1 (the registering process, watched
//! through a pidfd) ends, whichever comes first. A service (re)started
//! while pods run adopts them first (adopt.rs).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead as _, IoSliceMut, Write as _};
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::socket::{getsockopt, recvmsg, sockopt, ControlMessageOwned, MsgFlags};
use spec::metadata::{PodRecord, Request as Control, PORT};
use stage0::metadata::read_record;
use stage0::pods::{PodState, Pods};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::answer::{self, Answer, Request};

/// A registered pod.
#[derive(Debug)]
struct Served {
    dir: PathBuf,
    /// On the host's network: found by its token on the host's listener.
    /// (A VM pod has neither that nor a listener: its relays connect.)
    host_network: bool,
    task: AbortHandle,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<String, Served>,
    /// The host's loopback listener is up (for `network: host` pods).
    host_listener: bool,
}

#[derive(Debug, Clone)]
pub struct Service {
    pods: Arc<Pods>,
    state: Arc<Mutex<State>>,
}

impl Service {
    pub fn new(pods: Pods) -> Self {
        Self { pods: Arc::new(pods), state: Arc::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the running pods of the data directory that use the
    /// service at `socket` again (adopt.rs): at the service's start, before
    /// it answers registrations.
    pub fn adopt(&self, socket: &std::path::Path, rt: &Handle) {
        for found in crate::adopt::find(&self.pods, socket) {
            let registered = found.and_then(|a| self.register(&a.uuid, a.listener, a.host_network, a.pid, rt));
            if let Err(e) = registered {
                tracing::warn!("adopting a running pod: {e}");
            }
        }
    }

    /// Answers registrations on `control` for ever (a thread of its own);
    /// the pods' servers run on `rt`.
    pub fn serve_control(&self, control: &UnixListener, rt: &Handle) {
        for conn in control.incoming() {
            match conn {
                Ok(conn) => {
                    let (answer, serve) = match self.control(&conn, rt) {
                        Ok(serve) => ("ok\n".to_owned(), serve),
                        Err(e) => {
                            tracing::warn!("{e}");
                            (format!("error: {e}\n"), None)
                        }
                    };
                    if (&conn).write_all(answer.as_bytes()).is_err() {
                        continue;
                    }
                    if let Some(uuid) = serve {
                        let me = self.clone();
                        rt.spawn(async move {
                            let conn = conn.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(conn));
                            if let Ok(conn) = conn {
                                me.connection(conn, Some(uuid)).await;
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!("accepting a registration: {e}"),
            }
        }
    }

    /// One request on the unix socket: a line, perhaps with a socket.
    /// `Some(uuid)`: the connection goes on as an HTTP connection of that
    /// pod's (a VM pod's relay).
    fn control(&self, conn: &UnixStream, rt: &Handle) -> Result<Option<String>, String> {
        let (line, fd) = read_request(conn)?;
        let creds = getsockopt(conn, sockopt::PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
        if creds.uid() != 0 {
            return Err(format!("uid {} may not register pods", creds.uid()));
        }
        match serde_json::from_str::<Control>(line.trim_end()).map_err(|e| format!("request {line:?}: {e}"))? {
            Control::Register(r) => self.register(&r.uuid, fd, r.host_network, creds.pid(), rt).map(|()| None),
            Control::Unregister(r) => {
                if let Some(served) = self.state().pods.remove(&r.uuid) {
                    served.task.abort();
                    tracing::info!(pod = %r.uuid, "unregistered");
                }
                Ok(None)
            }
            Control::Connect(r) if self.state().pods.contains_key(&r.uuid) => Ok(Some(r.uuid)),
            Control::Connect(r) => Err(format!("pod {} is not registered", r.uuid)),
        }
    }

    fn register(
        &self,
        uuid: &str,
        listener: Option<OwnedFd>,
        host_network: bool,
        pid: i32,
        rt: &Handle,
    ) -> Result<(), String> {
        let pod = self.pods.find(uuid, |_| None).map_err(|e| format!("pod {uuid}: {e}"))?;
        if pod.uuid != uuid || pod.state != PodState::Running {
            return Err(format!("pod {uuid} is not running"));
        }
        read_record(&pod.dir).map_err(|e| format!("pod {uuid}: {e}"))?;
        let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| format!("pod {uuid}: no pid"))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| format!("pod {uuid}: pidfd_open({pid:?}): {e}"))?;
        let host_network = host_network && listener.is_none();
        if host_network {
            self.host_listener(rt)?;
        }
        let listener = listener.map(StdListener::from);
        if let Some(l) = &listener {
            l.set_nonblocking(true).map_err(|e| format!("pod {uuid}: {e}"))?;
        }
        let (me, id) = (self.clone(), uuid.to_owned());
        let task = rt.spawn(async move { me.serve_pod(id, listener, pidfd).await });
        let served = Served { dir: pod.dir, host_network, task: task.abort_handle() };
        if let Some(old) = self.state().pods.insert(uuid.to_owned(), served) {
            old.task.abort();
        }
        tracing::info!(pod = %uuid, host_network, "registered");
        Ok(())
    }

    /// Binds the host's loopback listener, once.
    fn host_listener(&self, rt: &Handle) -> Result<(), String> {
        let mut state = self.state();
        if state.host_listener {
            return Ok(());
        }
        let l = StdListener::bind((Ipv4Addr::LOCALHOST, PORT)).map_err(|e| format!("127.0.0.1:{PORT}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        state.host_listener = true;
        let me = self.clone();
        rt.spawn(async move {
            let Ok(l) = tokio::net::TcpListener::from_std(l) else { return };
            while let Ok((conn, _)) = l.accept().await {
                tokio::spawn(me.clone().connection(conn, None));
            }
        });
        Ok(())
    }

    /// Serves pod `uuid` on its own listener (if any) until its PID 1 ends.
    async fn serve_pod(self, uuid: String, listener: Option<StdListener>, pidfd: OwnedFd) {
        let ended = async {
            // SAFETY: the OwnedFd is moved in, open until the AsyncFd drops.
            match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
                Ok(fd) => drop(fd.readable().await),
                Err(_) => std::future::pending().await,
            }
        };
        let accepting = async {
            let Some(l) = listener.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
                return std::future::pending().await;
            };
            while let Ok((conn, _)) = l.accept().await {
                tokio::spawn(self.clone().connection(conn, Some(uuid.clone())));
            }
        };
        tokio::select! {
            () = ended => {}
            () = accepting => {}
        }
        self.state().pods.remove(&uuid);
        tracing::info!(pod = %uuid, "ended");
    }

    /// One HTTP connection, from pod `pod` (its own listener, or a VM
    /// pod's relay) or from the host's loopback (`None`: the token says
    /// which pod).
    async fn connection<C>(self, conn: C, pod: Option<String>)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req| {
            let me = self.clone();
            let pod = pod.clone();
            async move { Ok::<_, Infallible>(me.request(req, pod.as_deref()).await) }
        });
        // half_close: a client (a relay whose guest side shut its writing) may
        // end its request stream before the answer has gone out.
        let _ = http1::Builder::new().half_close(true).serve_connection(TokioIo::new(conn), service).await;
    }

    async fn request(&self, req: hyper::Request<Incoming>, pod: Option<&str>) -> hyper::Response<Full<Bytes>> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let flavored = req.headers().get("metadata-flavor").is_some_and(|v| v.as_bytes() == b"AppContainer");
        let body = match Limited::new(req.into_body(), answer::MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(Answer::error(413, "the body is too large, or was cut off")),
        };
        let Some((token, rest)) = answer::split_token(&path) else {
            return respond(Answer::error(404, "no such endpoint"));
        };
        let Some((uuid, record)) = self.find(pod, token) else {
            return respond(Answer::error(403, "unknown token"));
        };
        let req = Request { method: &method, path: rest, flavored, body: &body };
        respond(answer::answer(&uuid, &record, &req, &|other| self.key_of(other)))
    }

    /// The pod asking: the listener's pod if its token matches, or the
    /// host-network pod with that token.
    fn find(&self, pod: Option<&str>, token: &str) -> Option<(String, PodRecord)> {
        let candidates: Vec<(String, PathBuf)> = {
            let state = self.state();
            match pod {
                Some(uuid) => state.pods.get(uuid).map(|s| (uuid.to_owned(), s.dir.clone())).into_iter().collect(),
                None => {
                    state.pods.iter().filter(|(_, s)| s.host_network).map(|(u, s)| (u.clone(), s.dir.clone())).collect()
                }
            }
        };
        candidates.into_iter().find_map(|(uuid, dir)| {
            let record = read_record(&dir).ok()?;
            answer::same_secret(token, &record.token).then_some((uuid, record))
        })
    }

    /// A running pod's HMAC key, for `verify`.
    fn key_of(&self, uuid: &str) -> Option<String> {
        let dir = self.state().pods.get(uuid).map(|s| s.dir.clone())?;
        read_record(&dir).ok().map(|r| r.hmac_key)
    }
}

fn respond(a: Answer) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(a.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(a.content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Reads one request line and the socket sent with it, if any.
fn read_request(conn: &UnixStream) -> Result<(String, Option<OwnedFd>), String> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| format!("recvmsg: {e}"))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| format!("recvmsg: {e}"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS gave us this descriptor; nothing
                    // else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (msg.bytes, fd)
    };
    buf.truncate(n);
    if !buf.contains(&b'\n') {
        // The rest of a long line (no descriptor comes after the first part).
        std::io::BufReader::new(conn).read_until(b'\n', &mut buf).map_err(|e| e.to_string())?;
    }
    String::from_utf8(buf).map(|line| (line, fd)).map_err(|_| "the request is not UTF-8".to_owned())
}
