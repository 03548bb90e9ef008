//! The appc metadata service (appc's ace.md, "App Container Metadata
//! Service"): what stage0 records for it in the pod directory, what a
//! stage1 tells the service when a pod starts, and the URL apps get.
//!
//! One service on the host answers for every pod (`pod metadata-service`,
//! started on demand by `pod run`). A pod reaches it through a listening
//! socket of its own, bound on [`PORT`] of the pod's loopback inside the
//! pod's network namespace and handed to the service when the pod starts
//! ([`Register`]): so a pod can reach no other pod's, and the service knows
//! which pod asks by the socket the request came in on. The URL's path
//! carries the pod's token as well ([`url`]), which is all that tells pods
//! apart on the host's loopback (`network: host`).
//!
//! A VM pod's apps reach it at the same URL, on the guest's loopback: the
//! guest's metadata agent listens there and passes each request whole over
//! the virtio-serial port `spec::vm::METADATA_PORT` ([`write_frame`]); the
//! VM's monitor hands it to the service as its pod's ([`Request::Connect`])
//! and passes the answer back. No network device is needed for it, so a
//! `network: none` VM pod has none (nor qemu's user-mode network stack).

use std::io::{self, BufRead, Write};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The service's port on each pod's loopback (and on the host's, for
/// `network: host` pods): rkt's metadata service port. An app cannot bind
/// it on the pod's addresses.
pub const PORT: u16 = 2375;

/// The pod's record for the service, in its pod directory (root's only:
/// it holds the pod's HMAC key).
pub const POD_FILE: &str = "metadata.json";

/// The first path segment of every endpoint, after the token.
pub const PATH_BASE: &str = "/acMetadata/v1";

/// `AC_METADATA_URL` for a pod with this token: on the pod's loopback
/// (a namespace pod's or a VM's guest's).
pub fn url(token: &str) -> String {
    format!("http://{}:{PORT}/{token}", Ipv4Addr::LOCALHOST)
}

/// A plain-text HTTP answer for a request the metadata service never saw
/// (the request was bad, or the service could not be asked), closing the
/// connection: what the guest's agent and the VM's monitor answer
/// themselves.
pub fn text_answer(code: u16, why: &str) -> Vec<u8> {
    let reason = match code {
        400 => "Bad Request",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("{why}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The most a request or an answer on a VM's metadata port may hold
/// (metadata answers are a few kB; an image manifest rarely 100 kB).
pub const MAX_EXCHANGE: usize = 4 << 20;

/// One request or answer on a VM's metadata port: its length in decimal,
/// a newline, the bytes.
pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let mut frame = format!("{}\n", bytes.len()).into_bytes();
    frame.extend_from_slice(bytes);
    w.write_all(&frame)?;
    w.flush()
}

/// The next frame ([`write_frame`]); `None` at the end of the stream
/// between frames. A frame over [`MAX_EXCHANGE`] or a bad length line is
/// an error (the stream cannot be resynchronised after it).
pub fn read_frame(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    io::Read::take(r.by_ref(), 24).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad frame length on the metadata port");
    let text = std::str::from_utf8(line.strip_suffix(b"\n").ok_or_else(bad)?).map_err(|_| bad())?;
    let len: usize = text.parse().map_err(|_| bad())?;
    if len > MAX_EXCHANGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {len}-byte frame on the metadata port")));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

/// What stage0 records for the service ([`POD_FILE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRecord {
    /// The secret in the pod's `AC_METADATA_URL` (hex, 128 bits).
    pub token: String,
    /// The pod's HMAC-SHA512 key (hex, 512 bits), for `pod/hmac/sign`.
    pub hmac_key: String,
    /// The pod's appc pod manifest, fully reified.
    pub manifest: serde_json::Value,
    /// Per app: its image's manifest and ID, and its annotations.
    pub apps: Vec<AppRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRecord {
    pub name: String,
    pub image_id: String,
    /// The image's manifest as the image carries it (an ACI), or as
    /// rendered from an OCI image's configuration.
    pub image_manifest: serde_json::Value,
    /// The image's annotations merged with the pod's for the app.
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub name: String,
    pub value: String,
}

/// A stage1's message on the service's unix socket when a pod starts. A
/// namespace pod's listening socket comes with it (SCM_RIGHTS); a pod on
/// the host's network is served on the host's loopback, by token; a VM
/// pod's connections come through [`Request::Connect`]. The sender's
/// process (a namespace pod's PID 1, a VM pod's monitor) is the pod's for
/// the service's bookkeeping: the pod ends when it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Register {
    pub uuid: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

/// A pod, by uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodId {
    pub uuid: String,
}

/// One line on the socket: a request, answered by one line, `ok` or
/// `error: ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Request {
    Register(Register),
    /// A stage1's message once the pod has ended, before its network
    /// goes: the service closes the pod's socket (which holds the pod's
    /// network namespace).
    Unregister(PodId),
    /// From a VM pod's monitor: the rest of this connection is one HTTP
    /// connection of that pod's apps, after the `ok`.
    Connect(PodId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let r = Request::Register(Register { uuid: "u".into(), host_network: false });
        let line = serde_json::to_string(&r).expect("json");
        assert_eq!(line, r#"{"register":{"uuid":"u"}}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), r);
        assert!(serde_json::from_str::<Request>(r#"{"register":{"uuid":"u","x":1}}"#).is_err());
    }

    #[test]
    fn the_url_carries_the_token() {
        assert_eq!(url("00ff"), "http://127.0.0.1:2375/00ff");
    }

    #[test]
    fn frames_carry_their_bytes_whole_and_refuse_garbage() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"GET / HTTP/1.1\r\n\r\n").expect("write");
        write_frame(&mut wire, b"").expect("write");
        let mut r = io::BufReader::new(&wire[..]);
        assert_eq!(read_frame(&mut r).expect("read").as_deref(), Some(&b"GET / HTTP/1.1\r\n\r\n"[..]));
        assert_eq!(read_frame(&mut r).expect("read").as_deref(), Some(&b""[..]));
        assert_eq!(read_frame(&mut r).expect("end"), None);
        for bad in [&b"x\n"[..], b"99999999999\n", b"5\nab", b"123456789012345678901234567890\n"] {
            assert!(read_frame(&mut io::BufReader::new(bad)).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
