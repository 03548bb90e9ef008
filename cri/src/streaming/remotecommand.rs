//! Kubernetes' remote command protocol (exec and attach), over SPDY
//! (`v4.channel.k8s.io`: one SPDY stream per
//! standard stream, plus `error` and `resize`) or WebSocket
//! (`v4`/`v5.channel.k8s.io`: binary messages whose first byte is the
//! channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, 255 close).
//! Both end the same way: the outcome as a JSON `metav1.Status` on the error
//! stream (an exit code as the `ExitCode` cause of a `NonZeroExitCode`
//! failure), then the connection closes.
//!
//! The transport is kept apart from what runs: a handler gets an [`Io`]
//! (stdin and resize receivers, one output sender) and returns an
//! [`Outcome`]; output it sent is written before the status.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::session::{Event, Session};
use super::spdy::{header, RST_REFUSED_STREAM};

/// The protocols served over SPDY: v4, as kubelet's streaming server
/// (v5 only adds a stdin close message, which SPDY has as a FIN).
pub const SPDY_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];
/// The protocols served over WebSocket (client-go asks for v5 alone).
pub const WS_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// How long a client has to open its streams (kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A terminal size, as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// Which output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chan {
    Stdout,
    Stderr,
}

/// What the handler of a request gets.
#[derive(Debug)]
pub struct Io {
    /// The client's stdin (None: not asked for); closed at its EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal sizes (tty only).
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Output; sends to a channel the client did not ask for are dropped.
    pub out: mpsc::Sender<(Chan, Bytes)>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Resolves when the client's connection is gone (then what runs for
    /// it should stop).
    pub gone: oneshot::Receiver<()>,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The options of a request.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The outcome as the JSON `metav1.Status` clients decode.
pub fn status_json(outcome: &Outcome) -> String {
    let v = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": (*code).clamp(0, 255).to_string()}]},
        }),
        Outcome::Failed(why) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": why,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    v.to_string()
}

/// Parses the resize stream: a sequence of JSON objects.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        out.push(size);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Junk: dropped whole.
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        out
    }
}

/// Runs `handler` with the streams, pumping output until it is done and
/// its output sent, and returns its outcome.
async fn drive<H, F>(
    handler: H,
    mut out_rx: mpsc::Receiver<(Chan, Bytes)>,
    mut sink: impl FnMut(Chan, Bytes) -> F,
) -> Outcome
where
    H: Future<Output = Outcome>,
    F: Future<Output = bool>,
{
    tokio::pin!(handler);
    let mut outcome = None;
    loop {
        tokio::select! {
            o = &mut handler, if outcome.is_none() => outcome = Some(o),
            m = out_rx.recv() => match m {
                Some((chan, data)) => {
                    if !sink(chan, data).await {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    match outcome {
        Some(o) => o,
        None => handler.await,
    }
}

/// An [`Io`] and the transport's ends of it.
struct Wiring {
    io: Io,
    out_rx: mpsc::Receiver<(Chan, Bytes)>,
    stdin_tx: Option<mpsc::Sender<Bytes>>,
    resize_tx: Option<mpsc::Sender<TermSize>>,
    /// Dropped by the input task when the connection ends.
    gone_tx: oneshot::Sender<()>,
}

fn new_io(opts: Options) -> Wiring {
    let (out, out_rx) = mpsc::channel(16);
    let (stdin_tx, stdin) = if opts.stdin {
        let (t, r) = mpsc::channel(16);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let (resize_tx, resize) = if opts.tty {
        let (t, r) = mpsc::channel(4);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let (gone_tx, gone) = oneshot::channel();
    let io = Io { stdin, resize, out, stdout: opts.stdout, stderr: opts.stderr && !opts.tty, tty: opts.tty, gone };
    Wiring { io, out_rx, stdin_tx, resize_tx, gone_tx }
}

/// Serves one request over an upgraded SPDY connection.
pub async fn serve_spdy<IO, H, F>(conn: IO, opts: Options, handler: H)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: FnOnce(Io) -> F,
    F: Future<Output = Outcome>,
{
    let mut session = Session::start(conn);
    // The streams the client opens: error always, resize with a tty.
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr && !opts.tty)
        + usize::from(opts.tty);
    let mut ids: std::collections::HashMap<&'static str, u32> = std::collections::HashMap::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    let mut early: Vec<Event> = Vec::new();
    while ids.len() < expected {
        let ev = tokio::select! {
            ev = session.events.recv() => ev,
            () = &mut deadline => {
                tracing::debug!("streaming: the client opened too few streams in time");
                session.finish().await;
                return;
            }
        };
        match ev {
            Some(Event::Open { id, headers }) => {
                let kind = match header(&headers, "streamtype") {
                    Some("error") => "error",
                    Some("stdin") => "stdin",
                    Some("stdout") => "stdout",
                    Some("stderr") => "stderr",
                    Some("resize") => "resize",
                    _ => {
                        session.writer.reset(id, RST_REFUSED_STREAM).await;
                        continue;
                    }
                };
                session.writer.reply(id).await;
                ids.insert(kind, id);
            }
            Some(other) => early.push(other),
            None => {
                session.finish().await;
                return;
            }
        }
    }
    let Wiring { io, out_rx, stdin_tx, resize_tx, gone_tx } = new_io(opts);
    let stdin_id = ids.get("stdin").copied();
    let resize_id = ids.get("resize").copied();
    let writer = session.writer.clone();
    // Input: stdin data until its FIN, resize messages.
    let mut events = std::mem::replace(&mut session.events, mpsc::channel(1).1);
    let input = tokio::spawn(async move {
        let _gone = gone_tx;
        let mut stdin_tx = stdin_tx;
        let mut resize = ResizeDecoder::default();
        let mut pending = early.into_iter();
        loop {
            let ev = match pending.next() {
                Some(e) => Some(e),
                None => events.recv().await,
            };
            match ev {
                Some(Event::Data { id, data }) if Some(id) == stdin_id => {
                    if let Some(tx) = &stdin_tx {
                        if tx.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                Some(Event::Data { id, data }) if Some(id) == resize_id => {
                    if let Some(tx) = &resize_tx {
                        for size in resize.push(&data) {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                Some(Event::Fin { id } | Event::Reset { id }) if Some(id) == stdin_id => stdin_tx = None,
                Some(_) => {}
                None => return,
            }
        }
    });
    let out_id = |c: Chan| match c {
        Chan::Stdout => ids.get("stdout").copied(),
        Chan::Stderr => ids.get("stderr").copied(),
    };
    let outcome = drive(handler(io), out_rx, |chan, data| {
        let w = writer.clone();
        let id = out_id(chan);
        async move {
            match id {
                Some(id) => w.data(id, data).await,
                None => true,
            }
        }
    })
    .await;
    for id in ["stdout", "stderr", "stdin"].iter().filter_map(|k| ids.get(k)) {
        writer.fin(*id).await;
    }
    if let Some(&err) = ids.get("error") {
        writer.data(err, Bytes::from(status_json(&outcome))).await;
        writer.fin(err).await;
    }
    drop(writer);
    input.abort();
    session.finish().await;
}

/// The WebSocket channels.
const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
const CH_CLOSE: u8 = 255;

/// Serves one request over a WebSocket (`v4`/`v5.channel.k8s.io`).
pub async fn serve_ws<IO, H, F>(ws: WebSocketStream<IO>, opts: Options, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: FnOnce(Io) -> F,
    F: Future<Output = Outcome>,
{
    let (mut sink, mut stream) = ws.split();
    let Wiring { io, out_rx, stdin_tx, resize_tx, gone_tx } = new_io(opts);
    let input = tokio::spawn(async move {
        let _gone = gone_tx;
        let mut stdin_tx = stdin_tx;
        let mut resize = ResizeDecoder::default();
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, rest)) = data.split_first() else { continue };
            match ch {
                CH_STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if tx.send(Bytes::copy_from_slice(rest)).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                CH_RESIZE => {
                    if let Some(tx) = &resize_tx {
                        for size in resize.push(rest) {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                CH_CLOSE if rest.first() == Some(&CH_STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let (ws_tx, mut ws_rx) = mpsc::channel::<Message>(16);
    let send_task = tokio::spawn(async move {
        while let Some(m) = ws_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal closure (1000): Go's websocket clients take any other,
        // even none, as an error.
        let _ = sink.send(super::ws::normal_close()).await;
        let _ = sink.close().await;
    });
    let outcome = drive(handler(io), out_rx, |chan, data| {
        let tx = ws_tx.clone();
        async move {
            let ch = if chan == Chan::Stdout { CH_STDOUT } else { CH_STDERR };
            let mut m = BytesMut::with_capacity(data.len() + 1);
            m.extend_from_slice(&[ch]);
            m.extend_from_slice(&data);
            tx.send(Message::Binary(m.freeze())).await.is_ok()
        }
    })
    .await;
    let mut m = vec![CH_ERROR];
    m.extend_from_slice(status_json(&outcome).as_bytes());
    let _ = ws_tx.send(Message::Binary(m.into())).await;
    drop(ws_tx);
    let _ = send_task.await;
    input.abort();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_client_go_decodes() {
        let v: serde_json::Value = serde_json::from_str(&status_json(&Outcome::Exited(3))).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_str(&status_json(&Outcome::Exited(0))).unwrap();
        assert_eq!(v["status"], "Success");
        let v: serde_json::Value = serde_json::from_str(&status_json(&Outcome::Failed("no".into()))).unwrap();
        assert_eq!(v["message"], "no");
    }

    /// A client of our own frames: opens the streams client-go opens,
    /// sends stdin, and reads output, then the status, then GOAWAY.
    #[tokio::test]
    async fn an_exec_over_spdy_streams_in_out_and_ends_with_its_status() {
        use crate::streaming::spdy::{Decoder, Encoder, Frame, FLAG_FIN};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 16);
        let opts = Options { stdin: true, stdout: true, stderr: true, tty: false };
        let served = tokio::spawn(serve_spdy(server, opts, |mut io: Io| async move {
            let mut input = Vec::new();
            let mut stdin = io.stdin.take().unwrap();
            while let Some(b) = stdin.recv().await {
                input.extend_from_slice(&b);
            }
            let upper = String::from_utf8(input).unwrap().to_uppercase();
            io.out.send((Chan::Stdout, Bytes::from(upper))).await.unwrap();
            io.out.send((Chan::Stderr, Bytes::from_static(b"e"))).await.unwrap();
            Outcome::Exited(3)
        }));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut enc = Encoder::default();
        let mut buf = BytesMut::new();
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            let headers = vec![("streamtype".to_owned(), kind.to_owned())];
            enc.encode(&Frame::SynStream { id, flags: 0, headers }, &mut buf);
        }
        enc.encode(&Frame::Data { id: 3, flags: 0, data: Bytes::from_static(b"abc") }, &mut buf);
        enc.encode(&Frame::Data { id: 3, flags: FLAG_FIN, data: Bytes::new() }, &mut buf);
        wr.write_all(&buf).await.unwrap();
        let mut got = BytesMut::new();
        while rd.read_buf(&mut got).await.unwrap() > 0 {}
        served.await.unwrap();
        let mut dec = Decoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut got).unwrap() {
            frames.push(f);
        }
        let data_of = |want: u32| -> Vec<u8> {
            frames
                .iter()
                .filter_map(|f| match f {
                    Frame::Data { id, data, .. } if *id == want => Some(data.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(data_of(5), b"ABC");
        assert_eq!(data_of(7), b"e");
        let status: serde_json::Value = serde_json::from_slice(&data_of(1)).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        let replies = frames.iter().filter(|f| matches!(f, Frame::SynReply { .. })).count();
        assert_eq!(replies, 4);
        // Output before the status, FIN on each, GOAWAY last.
        let pos = |p: &dyn Fn(&Frame) -> bool| frames.iter().position(p).unwrap();
        let out_at = pos(&|f| matches!(f, Frame::Data { id: 5, data, .. } if !data.is_empty()));
        let status_at = pos(&|f| matches!(f, Frame::Data { id: 1, data, .. } if !data.is_empty()));
        assert!(out_at < status_at);
        for id in [1, 5, 7] {
            assert!(frames.iter().any(|f| matches!(f, Frame::Data { id: i, flags: FLAG_FIN, .. } if *i == id)));
        }
        assert!(matches!(frames.last(), Some(Frame::GoAway { .. })));
    }

    #[test]
    fn resize_messages_may_be_split_and_joined() {
        let mut d = ResizeDecoder::default();
        assert!(d.push(br#"{"Width":80,"#).is_empty());
        assert_eq!(
            d.push(br#""Height":24}{"Width":100,"Height":30}"#),
            vec![TermSize { width: 80, height: 24 }, TermSize { width: 100, height: 30 }]
        );
        assert!(d.push(b"junk").is_empty());
        assert_eq!(d.push(br#"{"Width":1,"Height":2}"#), vec![TermSize { width: 1, height: 2 }]);
    }
}
