//! A server side SPDY session over any byte stream (an upgraded HTTP
//! connection, or a WebSocket tunnel): a reader task turns frames into
//! [`Event`]s and answers PINGs; a writer task owns the header compressor
//! and the write half. The connection ends when every [`Writer`] is gone
//! (the writer task sends GOAWAY and shuts the write half down).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Decoder, Encoder, Frame, Headers, FLAG_FIN, RST_PROTOCOL_ERROR};

/// What the client did on a stream.
#[derive(Debug)]
pub enum Event {
    /// SYN_STREAM: a stream the client opened (not yet replied to).
    Open {
        id: u32,
        headers: Headers,
    },
    Data {
        id: u32,
        data: Bytes,
    },
    /// The client will send no more on this stream.
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
    },
}

/// Sends frames on the session.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Frame>,
}

/// The frames a writer queues before it waits (back-pressure on output).
const QUEUE: usize = 64;

impl Writer {
    async fn send(&self, frame: Frame) -> bool {
        self.tx.send(frame).await.is_ok()
    }
    pub async fn reply(&self, id: u32) -> bool {
        self.send(Frame::SynReply { id, flags: 0, headers: Vec::new() }).await
    }
    pub async fn data(&self, id: u32, data: Bytes) -> bool {
        self.send(Frame::Data { id, flags: 0, data }).await
    }
    /// Half-closes stream `id` from our side.
    pub async fn fin(&self, id: u32) -> bool {
        self.send(Frame::Data { id, flags: FLAG_FIN, data: Bytes::new() }).await
    }
    pub async fn reset(&self, id: u32, status: u32) -> bool {
        self.send(Frame::RstStream { id, status }).await
    }
}

/// A running session.
#[derive(Debug)]
pub struct Session {
    pub events: mpsc::Receiver<Event>,
    pub writer: Writer,
    reader: JoinHandle<()>,
    write_task: JoinHandle<()>,
}

impl Session {
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel::<Frame>(QUEUE);
        let (ev_tx, events) = mpsc::channel(QUEUE);
        let write_task = tokio::spawn(write_loop(wr, rx));
        let reader = tokio::spawn(read_loop(rd, ev_tx, tx.downgrade()));
        Session { events, writer: Writer { tx }, reader, write_task }
    }

    /// Ends the session: waits until every frame queued is written (once
    /// all other writers are dropped), then stops reading.
    pub async fn finish(self) {
        let Session { events, writer, reader, write_task } = self;
        drop(writer);
        drop(events);
        let _ = write_task.await;
        reader.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Frame>) {
    let mut enc = Encoder::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut last_id = 0;
    while let Some(frame) = rx.recv().await {
        if let Frame::SynReply { id, .. } = &frame {
            last_id = last_id.max(*id);
        }
        enc.encode(&frame, &mut buf);
        // Whatever else is queued goes out in the same write.
        while buf.len() < 64 << 10 {
            match rx.try_recv() {
                Ok(f) => enc.encode(&f, &mut buf),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if wr.flush().await.is_err() {
            return;
        }
    }
    enc.encode(&Frame::GoAway { last_id, status: 0 }, &mut buf);
    let _ = wr.write_all(&buf).await;
    let _ = wr.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, events: mpsc::Sender<Event>, writer: mpsc::WeakSender<Frame>) {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut last_id = 0u32;
    loop {
        let frame = match dec.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "SPDY session: bad frame, closing");
                return;
            }
        };
        let event = match frame {
            Frame::SynStream { id, flags, headers } => {
                // Client streams are odd and increasing (SPDY 2.3.2).
                if id % 2 == 0 || id <= last_id {
                    if let Some(w) = writer.upgrade() {
                        let _ = w.send(Frame::RstStream { id, status: RST_PROTOCOL_ERROR }).await;
                    }
                    continue;
                }
                last_id = id;
                if events.send(Event::Open { id, headers }).await.is_err() {
                    return;
                }
                if flags & FLAG_FIN == 0 {
                    continue;
                }
                Event::Fin { id }
            }
            Frame::Data { id, flags, data } => {
                if !data.is_empty() && events.send(Event::Data { id, data }).await.is_err() {
                    return;
                }
                if flags & FLAG_FIN == 0 {
                    continue;
                }
                Event::Fin { id }
            }
            Frame::Headers { id, flags, .. } if flags & FLAG_FIN != 0 => Event::Fin { id },
            Frame::RstStream { id, .. } => Event::Reset { id },
            Frame::Ping { id } => {
                // Pings of the client's (odd) are echoed.
                if id % 2 == 1 {
                    if let Some(w) = writer.upgrade() {
                        let _ = w.send(Frame::Ping { id }).await;
                    }
                }
                continue;
            }
            Frame::GoAway { .. } => return,
            _ => continue,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_open_carry_data_and_pings_are_echoed() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut enc = Encoder::default();
        let mut buf = BytesMut::new();
        let headers = vec![("streamtype".to_owned(), "stdin".to_owned())];
        enc.encode(&Frame::SynStream { id: 1, flags: 0, headers: headers.clone() }, &mut buf);
        enc.encode(&Frame::Data { id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"in") }, &mut buf);
        enc.encode(&Frame::Ping { id: 5 }, &mut buf);
        cwr.write_all(&buf).await.unwrap();
        assert!(matches!(session.events.recv().await, Some(Event::Open { id: 1, headers: h }) if h == headers));
        assert!(matches!(session.events.recv().await, Some(Event::Data { id: 1, data }) if &data[..] == b"in"));
        assert!(matches!(session.events.recv().await, Some(Event::Fin { id: 1 })));
        session.writer.reply(1).await;
        session.writer.data(1, Bytes::from_static(b"out")).await;
        session.finish().await;
        let mut got = BytesMut::new();
        crd.read_buf(&mut got).await.unwrap();
        while crd.read_buf(&mut got).await.unwrap() > 0 {}
        let mut dec = Decoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut got).unwrap() {
            frames.push(f);
        }
        assert!(frames.contains(&Frame::Ping { id: 5 }));
        assert!(frames.contains(&Frame::SynReply { id: 1, flags: 0, headers: Vec::new() }));
        assert!(frames.contains(&Frame::Data { id: 1, flags: 0, data: Bytes::from_static(b"out") }));
        assert!(matches!(frames.last(), Some(Frame::GoAway { .. })));
    }
}
