//! WebSocket pieces of the streaming server: subprotocol choice and the
//! SPDY tunnel (`SPDY/3.1+portforward.k8s.io`, client-go's port-forward
//! over WebSocket: SPDY frames carried in binary messages).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Port-forward's SPDY tunneled in a WebSocket (client-go's).
pub const PORTFORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The first of the client's `Sec-WebSocket-Protocol` values that we serve.
pub fn choose<'a>(offered: &str, served: &[&'a str]) -> Option<&'a str> {
    offered.split(',').map(str::trim).find_map(|p| served.iter().find(|s| s.eq_ignore_ascii_case(p)).copied())
}

/// A close message with status 1000 (normal closure).
pub fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

/// A byte stream over a WebSocket's binary messages: what is written goes
/// out as messages, what comes in is read as bytes; a close ends both.
pub fn tunnel<IO>(ws: WebSocketStream<IO>) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(b) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
        // A normal closure (1000): Go's websocket clients take any other,
        // even none, as an error.
        let _ = sink.send(super::ws::normal_close()).await;
        let _ = sink.close().await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_order_wins_among_served_protocols() {
        let served = ["v4.channel.k8s.io", "v5.channel.k8s.io"];
        assert_eq!(choose("v5.channel.k8s.io, v4.channel.k8s.io", &served), Some("v5.channel.k8s.io"));
        assert_eq!(choose("base64.channel.k8s.io,v4.channel.k8s.io", &served), Some("v4.channel.k8s.io"));
        assert_eq!(choose("channel.k8s.io", &served), None);
    }
}
