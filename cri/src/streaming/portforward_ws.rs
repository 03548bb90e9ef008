//! Port-forward over WebSocket with kubelet's channel protocol
//! (`v4.channel.k8s.io`, binary): for the i-th port, channel 2i carries
//! data both ways and channel 2i+1 errors; each opens with the port as
//! two little-endian bytes. One connection to the pod per port, for the
//! life of the WebSocket. The ports are the request's, else the URL's
//! `port` query values. (client-go's own WebSocket port-forward is the
//! SPDY tunnel in ws.rs; this one is what kubelet's streaming server also
//! serves.)

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::portforward::{connect, pump, PodPorts, ToClient};

/// The subprotocol.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// The `port` values of a query string (`port=80&port=443,8080`).
pub fn ports_of_query(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        for p in v.split(',') {
            match p.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    Ok(ports)
}

fn message(channel: u8, data: &[u8]) -> Message {
    let mut m = BytesMut::with_capacity(data.len() + 1);
    m.put_u8(channel);
    m.put_slice(data);
    Message::Binary(m.freeze())
}

/// Serves the ports until the client closes the WebSocket.
pub async fn serve<IO>(ws: WebSocketStream<IO>, netns: PodPorts, ports: Vec<u16>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let send = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(super::ws::normal_close()).await;
        let _ = sink.close().await;
    });
    let mut inputs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (Ok(data), Ok(error)) = (u8::try_from(2 * i), u8::try_from(2 * i + 1)) else { break };
        let _ = tx.send(message(data, &port.to_le_bytes())).await;
        let _ = tx.send(message(error, &port.to_le_bytes())).await;
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        tokio::spawn(forward(tx.clone(), netns.clone(), *port, data, error, in_rx));
    }
    drop(tx);
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(b) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let Some((&ch, rest)) = b.split_first() else { continue };
        if ch % 2 == 0 {
            if let Some(input) = inputs.get(usize::from(ch / 2)) {
                let _ = input.send(Bytes::copy_from_slice(rest)).await;
            }
        }
    }
    drop(inputs);
    let _ = send.await;
}

async fn forward(
    tx: mpsc::Sender<Message>,
    netns: PodPorts,
    port: u16,
    data: u8,
    error: u8,
    rx: mpsc::Receiver<Bytes>,
) {
    let stream = match connect(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to the pod: {e}");
            let _ = tx.send(message(error, msg.as_bytes())).await;
            return;
        }
    };
    pump(stream, rx, &mut WsData { tx, data }).await;
}

/// A forwarded connection's data channel.
struct WsData {
    tx: mpsc::Sender<Message>,
    data: u8,
}

impl ToClient for WsData {
    async fn data(&mut self, bytes: &[u8]) -> bool {
        self.tx.send(message(self.data, bytes)).await.is_ok()
    }

    /// The channel has no end of its own: the connection ends with the
    /// WebSocket.
    async fn closed(&mut self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports_of_query("port=80&x=1&port=443,8080").unwrap(), vec![80, 443, 8080]);
        assert!(ports_of_query("port=0").is_err());
        assert!(ports_of_query("port=http").is_err());
    }

    #[tokio::test]
    async fn a_port_is_announced_then_piped_both_ways() {
        // An echo server standing for the pod's.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut s, &mut buf).unwrap();
            std::io::Write::write_all(&mut s, &buf).unwrap();
        });
        if super::super::portforward::connect_in_netns(PathBuf::from("/proc/self/ns/net"), 1)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EPERM))
        {
            eprintln!("SKIP: setns needs CAP_SYS_ADMIN");
            return;
        }
        let (a, b) = tokio::io::duplex(1 << 16);
        let server_ws = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let served = tokio::spawn(serve(server_ws, PodPorts::Netns(PathBuf::from("/proc/self/ns/net")), vec![port]));
        let announce = |m: Option<Result<Message, _>>| match m {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        let le = port.to_le_bytes();
        assert_eq!(announce(client.next().await), vec![0, le[0], le[1]]);
        assert_eq!(announce(client.next().await), vec![1, le[0], le[1]]);
        client.send(message(0, b"hello")).await.unwrap();
        assert_eq!(announce(client.next().await), b"\x00hello".to_vec());
        client.close(None).await.unwrap();
        served.await.unwrap();
    }
}
