//! Streams over the guest's [`ENTER_PORT`](super::ENTER_PORT): commands run
//! in an app (`pod enter`, the CRI's ExecSync and Exec) and TCP connections
//! to the guest's loopback (the CRI's PortForward), many at once, each with
//! its own stdin, output, terminal size and end.
//!
//! A virtio-serial port is one byte stream with no connections, and a VM
//! pod's guest is reachable from the host by nothing else (user-mode
//! networking: only forwards fixed at boot come in; no vsock on hosts that
//! are themselves VMs). So each stream's bytes travel in [`Frame`]s that
//! name the stream. The VM monitor holds the port for the VM's whole life
//! (a guest writing to a port the host has closed would block) and serves
//! `vm/stream.sock` on the host: each client connection there is one
//! stream, spoken in the same frames with id 0; the monitor renumbers.
//!
//! Flow control is per stream and end to end (client ↔ guest): a side
//! sends at most [`WINDOW`] bytes of data the other has not acknowledged
//! with a [`Kind::Window`] frame, sent once the bytes went out of the far
//! end. So one slow reader never stalls the port for the other streams,
//! and what either side holds stays bounded.
//!
//! ```text
//! frame:  kind (1 byte) | stream id (u32 BE) | length (u32 BE) | payload
//! ```

use std::fmt;

/// The header's length.
pub const HEADER: usize = 9;
/// The largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How many unacknowledged data bytes a side may send on one stream.
pub const WINDOW: u32 = 256 * 1024;

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// host → guest: starts a stream; the payload is an [`Open`].
    Open,
    /// Bytes: the command's stdin or stdout, or the connection's bytes.
    Data,
    /// guest → host: the command's stderr (a command without a terminal).
    Stderr,
    /// No more data this way (stdin closed; the connection's side shut).
    Eof,
    /// The sender wrote this many (u32 BE) more of the receiver's bytes.
    Window,
    /// host → guest: the terminal's size (cols, rows: u16 BE each).
    Resize,
    /// guest → host: the stream ended; the command's status (i32 BE,
    /// 128+signal if killed), 0 for a connection. Last frame.
    Exit,
    /// guest → host: the stream could not start or broke; a message. Last
    /// frame.
    Fail,
    /// host → guest: the client is gone: kill the command or drop the
    /// connection. No answer.
    Kill,
}

const KINDS: [(Kind, u8); 9] = [
    (Kind::Open, b'O'),
    (Kind::Data, b'D'),
    (Kind::Stderr, b'E'),
    (Kind::Eof, b'C'),
    (Kind::Window, b'W'),
    (Kind::Resize, b'R'),
    (Kind::Exit, b'X'),
    (Kind::Fail, b'F'),
    (Kind::Kill, b'K'),
];

impl Kind {
    fn byte(self) -> u8 {
        KINDS.iter().find(|(k, _)| *k == self).map_or(0, |(_, b)| *b)
    }

    fn of(byte: u8) -> Option<Kind> {
        KINDS.iter().find(|(_, b)| *b == byte).map(|(k, _)| *k)
    }

    /// Whether the stream is over once this frame is sent.
    pub fn ends(self) -> bool {
        matches!(self, Kind::Exit | Kind::Fail | Kind::Kill)
    }
}

/// One frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u32,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}#{} ({} bytes)", self.kind, self.id, self.payload.len())
    }
}

impl Frame {
    pub fn new(kind: Kind, id: u32, payload: Vec<u8>) -> Frame {
        Frame { kind, id, payload }
    }

    pub fn window(id: u32, n: u32) -> Frame {
        Frame::new(Kind::Window, id, n.to_be_bytes().to_vec())
    }

    pub fn resize(id: u32, cols: u16, rows: u16) -> Frame {
        let mut p = cols.to_be_bytes().to_vec();
        p.extend(rows.to_be_bytes());
        Frame::new(Kind::Resize, id, p)
    }

    pub fn exit(id: u32, code: i32) -> Frame {
        Frame::new(Kind::Exit, id, code.to_be_bytes().to_vec())
    }

    pub fn fail(id: u32, message: &str) -> Frame {
        Frame::new(Kind::Fail, id, message.as_bytes().to_vec())
    }

    /// The u32 of a Window frame (0 if malformed).
    pub fn count(&self) -> u32 {
        self.payload.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes)
    }

    /// The status of an Exit frame.
    pub fn code(&self) -> Option<i32> {
        self.payload.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes)
    }

    /// The (cols, rows) of a Resize frame.
    pub fn size(&self) -> Option<(u16, u16)> {
        let p = self.payload.get(..4)?;
        Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
    }

    /// The frame's bytes on the wire, appended to `out`. A payload over
    /// [`MAX_PAYLOAD`] is cut (senders split data to fit).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let payload = &self.payload[..self.payload.len().min(MAX_PAYLOAD)];
        out.push(self.kind.byte());
        out.extend(self.id.to_be_bytes());
        out.extend(u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        self.encode_into(&mut out);
        out
    }
}

/// A stream that cannot be read any further: the two sides are out of
/// step, which only a bug or a corrupted port makes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("stream channel: unknown frame kind {0:#04x}")]
    Kind(u8),
    #[error("stream channel: a frame of {0} bytes (at most {MAX_PAYLOAD})")]
    TooLong(usize),
}

/// Reassembles frames from bytes however they are cut.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, MuxError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = Kind::of(self.buf[0]).ok_or(MuxError::Kind(self.buf[0]))?;
        let id = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(MuxError::TooLong(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(Frame { kind, id, payload }))
    }

    /// Bytes held that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// What a stream is, in its [`Kind::Open`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Run `argv` in app `app` as the app's own processes run; with
    /// `tty`, on a terminal of the app's own (stdout and stderr merged),
    /// sized `size` (cols, rows) before the command starts.
    Exec { app: String, argv: Vec<String>, tty: bool, size: Option<(u16, u16)> },
    /// A TCP connection to the guest's 127.0.0.1:`port`. Once it is made,
    /// the guest's first frame is a [`Kind::Window`] of 0 (else a Fail).
    Connect { port: u16 },
    /// Write the stream's data into running app `app`'s stdin FIFO
    /// (`stdin: true`; pod-init types it into the app's terminal when it
    /// has one): `pod attach` and `pod run -i`. Once the FIFO is open, the
    /// guest's first frame is a [`Kind::Window`] of 0 (else a Fail); the
    /// host's Eof ends the stream (Exit 0). No output: the app's goes to
    /// its log, which the host reads on the pod directory's share.
    Stdin { app: String },
}

fn escape(word: &str, out: &mut String) {
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unescape(word: &str) -> Option<String> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            _ => return None,
        });
    }
    Some(out)
}

impl Open {
    /// Tab-separated words, each escaped (`\\`, `\t`, `\n`):
    /// `exec <tty 0|1|1:COLSxROWS> <app> <argv>...`, `connect <port>` or
    /// `stdin <app>`.
    pub fn encode(&self) -> String {
        match self {
            Open::Exec { app, argv, tty, size } => {
                let mut out = format!("exec\t{}", u8::from(*tty));
                if let (true, Some((cols, rows))) = (*tty, size) {
                    out.push_str(&format!(":{cols}x{rows}"));
                }
                for word in std::iter::once(app).chain(argv) {
                    out.push('\t');
                    escape(word, &mut out);
                }
                out
            }
            Open::Connect { port } => format!("connect\t{port}"),
            Open::Stdin { app } => {
                let mut out = "stdin\t".to_owned();
                escape(app, &mut out);
                out
            }
        }
    }

    pub fn decode(text: &str) -> Option<Open> {
        let mut words = text.split('\t');
        match words.next()? {
            "exec" => {
                let (tty, size) = match words.next()? {
                    "0" => (false, None),
                    "1" => (true, None),
                    sized => {
                        let (cols, rows) = sized.strip_prefix("1:")?.split_once('x')?;
                        (true, Some((cols.parse().ok()?, rows.parse().ok()?)))
                    }
                };
                let app = unescape(words.next()?)?;
                let argv = words.map(unescape).collect::<Option<Vec<_>>>()?;
                (!app.is_empty() && !argv.is_empty()).then_some(Open::Exec { app, argv, tty, size })
            }
            "connect" => {
                let port = words.next()?.parse().ok().filter(|p| *p > 0)?;
                words.next().is_none().then_some(Open::Connect { port })
            }
            "stdin" => {
                let app = unescape(words.next()?)?;
                (!app.is_empty() && words.next().is_none()).then_some(Open::Stdin { app })
            }
            _ => None,
        }
    }

    pub fn frame(&self, id: u32) -> Frame {
        Frame::new(Kind::Open, id, self.encode().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_however_cut() {
        let frames = [
            Open::Exec { app: "web".into(), argv: vec!["sh".into()], tty: true, size: Some((80, 24)) }.frame(1),
            Frame::new(Kind::Data, 1, b"hello".to_vec()),
            Frame::new(Kind::Stderr, 7, Vec::new()),
            Frame::window(1, WINDOW),
            Frame::resize(1, 80, 24),
            Frame::exit(1, 137),
            Frame::fail(u32::MAX, "no app web"),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            d.push(chunk);
            while let Some(f) = d.next_frame().expect("frame") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.pending(), 0);
        assert_eq!(got[3].count(), WINDOW);
        assert_eq!(got[4].size(), Some((80, 24)));
        assert_eq!(got[5].code(), Some(137));
        assert!(got[5].kind.ends() && !got[1].kind.ends());
    }

    #[test]
    fn a_stream_out_of_step_is_an_error() {
        let mut d = Decoder::default();
        d.push(b"Z\0\0\0\x01\0\0\0\0");
        assert_eq!(d.next_frame(), Err(MuxError::Kind(b'Z')));
        let mut d = Decoder::default();
        d.push(b"D\0\0\0\x01\x7f\0\0\0");
        assert!(matches!(d.next_frame(), Err(MuxError::TooLong(_))));
    }

    #[test]
    fn opens_round_trip_and_reject_nonsense() {
        for open in [
            Open::Exec {
                app: "web".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), "x\\t\ty\nz".into()],
                tty: false,
                size: None,
            },
            Open::Exec { app: "web".into(), argv: vec!["sh".into()], tty: true, size: None },
            Open::Exec { app: "web".into(), argv: vec!["sh".into()], tty: true, size: Some((123, 45)) },
            Open::Connect { port: 8080 },
            Open::Stdin { app: "sh".into() },
        ] {
            assert_eq!(Open::decode(&open.encode()), Some(open));
        }
        for bad in [
            "",
            "exec\t1\tweb",
            "exec\t2\tweb\tsh",
            "exec\t1:80\tweb\tsh",
            "exec\t0:80x24\tweb\tsh",
            "exec\t0\t\tsh",
            "connect\t0",
            "connect\t70000",
            "connect",
            "stdin",
            "stdin\t",
            "stdin\tsh\textra",
        ] {
            assert_eq!(Open::decode(bad), None, "{bad:?}");
        }
        assert_eq!(Open::decode("exec\t0\tweb\tbad\\q"), None);
    }
}
