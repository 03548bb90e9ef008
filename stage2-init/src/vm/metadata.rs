//! The guest's metadata agent (`spec::metadata`): listens where a
//! namespace pod's apps find the service, on the loopback's
//! `spec::metadata::PORT`, and passes each request whole over the
//! metadata port to the host, whose answer it hands back. One connection
//! at a time, one request each (the answer closes it).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use spec::metadata::{read_frame, text_answer as error, write_frame};

use crate::log;

/// The most a request's head may take; a body's, [`MAX_BODY`].
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its request or read the answer.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// Serves `listener` (bound by PID 1 before the apps could) over `port`.
pub(crate) fn serve(port: File, listener: &TcpListener) {
    let Ok(out) = port.try_clone() else { return };
    let mut out = out;
    let mut from_host = BufReader::new(port);
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(CLIENT_WAIT));
        let _ = conn.set_write_timeout(Some(CLIENT_WAIT));
        let answer = match read_request(&mut conn) {
            Ok(request) => {
                let asked = write_frame(&mut out, &request).and_then(|()| read_frame(&mut from_host));
                match asked {
                    Ok(Some(answer)) => closing(answer),
                    Ok(None) => error(502, "the host end of the metadata port is closed"),
                    Err(e) => {
                        log!("metadata port: {e}");
                        error(502, &format!("the metadata port: {e}"))
                    }
                }
            }
            Err((code, why)) => error(code, &why),
        };
        let _ = conn.write_all(&answer);
    }
}

/// One HTTP request, head and body (by its Content-Length), as sent.
pub(crate) fn read_request(conn: &mut impl Read) -> Result<Vec<u8>, (u16, String)> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if request.len() > MAX_HEAD {
            return Err((431, "request head too large".into()));
        }
        match conn.read(&mut buf) {
            Ok(0) => return Err((400, "the request ended before its head did".into())),
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) => return Err((408, format!("reading the request: {e}"))),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| (400, format!("bad Content-Length {:?}", value.trim())))?;
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err((411, "send the body with a Content-Length".into()));
        }
    }
    if length > MAX_BODY {
        return Err((413, "request body too large".into()));
    }
    let total = head_end + length;
    while request.len() < total {
        match conn.read(&mut buf) {
            Ok(0) => return Err((400, "the request ended before its body did".into())),
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) => return Err((408, format!("reading the request: {e}"))),
        }
    }
    request.truncate(total);
    Ok(request)
}

/// `answer` with `Connection: close`: the agent serves one request per
/// connection, so a client must not send another on it (Go's client would
/// reuse it and, for a POST, fail on the reset instead of retrying).
pub(crate) fn closing(answer: Vec<u8>) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return answer };
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.split(':').next().is_some_and(|n| n.trim().eq_ignore_ascii_case("connection")))
        .collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&answer[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_to_the_end_of_its_body() {
        let wire =
            b"POST /t/acMetadata/v1/pod/hmac/sign HTTP/1.1\r\nHost: x\r\ncontent-length: 9\r\n\r\ncontent=xEXTRA";
        assert_eq!(read_request(&mut &wire[..]).expect("read"), &wire[..wire.len() - 5]);
        let get = b"GET /t/acMetadata/v1/pod/uuid HTTP/1.1\r\nMetadata-Flavor: AppContainer\r\n\r\n";
        assert_eq!(read_request(&mut &get[..]).expect("read"), get);
    }

    #[test]
    fn every_answer_closes_its_connection() {
        let keep = b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok".to_vec();
        assert_eq!(
            String::from_utf8(closing(keep)).expect("utf8"),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\nok"
        );
        let plain = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        assert_eq!(closing(plain), b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        assert_eq!(closing(b"garbage".to_vec()), b"garbage", "not HTTP: passed on as it is");
    }

    #[test]
    fn bad_requests_are_refused_with_a_status() {
        let cases: [(&[u8], u16); 4] = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        ];
        for (wire, code) in cases {
            assert_eq!(read_request(&mut &wire[..]).map_err(|e| e.0), Err(code), "{}", String::from_utf8_lossy(wire));
        }
        let huge = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(read_request(&mut huge.as_bytes()).map_err(|e| e.0), Err(413));
        let answer = String::from_utf8(error(411, "why")).expect("utf8");
        assert!(
            answer.starts_with("HTTP/1.1 411 Length Required\r\n") && answer.ends_with("\r\n\r\nwhy\n"),
            "{answer}"
        );
    }
}
