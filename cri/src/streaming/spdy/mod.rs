//! SPDY/3.1 framing, as Kubernetes' streaming clients speak it (crictl,
//! kubectl and critest through client-go, which uses moby/spdystream).
//!
//! Written here rather than taken from a crate: the one Rust SPDY/3.1
//! implementation maintained today (spdy-mux) is GPL-3.0-only and a client
//! (it opens streams; a CRI streaming server accepts them), and the older
//! ones are unmaintained SPDY/2 or HTTP/2-era experiments. The part of the
//! protocol spdystream uses is small: SYN_STREAM, SYN_REPLY, RST_STREAM,
//! DATA, PING, GOAWAY, with SETTINGS, HEADERS and WINDOW_UPDATE read and
//! ignored (spdystream does no flow control). Header blocks are zlib
//! streams primed with SPDY's dictionary, one per direction per connection,
//! each block ended by a sync flush.
//!
//! The decoder never panics on any input: lengths are checked before every
//! read, header counts and sizes are bounded, and a header block may not
//! inflate past [`MAX_HEADER_BLOCK`] (a zlib bomb).

pub mod session;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// SPDY's zlib dictionary for header blocks (the SPDY/3 draft, 2.6.10.1).
pub const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");
/// The protocol version of every control frame.
pub const VERSION: u16 = 3;
/// The most a header block may inflate to.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// At most this many headers in a block (spdystream's own limit).
pub const MAX_HEADERS: u32 = 1000;

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// Header names (lowercase) and values, in order.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (names are lowercase on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_id: u32,
        status: u32,
    },
    Headers {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    Data {
        id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and unknown control frames: read, not used.
    Ignored {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// Reads frames from bytes as they arrive.
#[derive(Debug)]
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { inflate: Decompress::new(true) }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder {
    /// The next whole frame in `buf` (consumed), or None until more bytes come.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let first = be32(&buf[0..4]);
        let flags = buf[4];
        let len = usize::try_from(be32(&buf[4..8]) & 0x00ff_ffff).unwrap_or(usize::MAX);
        if buf.len() - 8 < len {
            buf.reserve(len + 8 - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let body = buf.split_to(len).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { id: first & 0x7fff_ffff, flags, data: body }));
        }
        let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(0);
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = u16::try_from(first & 0xffff).unwrap_or(0);
        let word = |at: usize, what| body.get(at..at + 4).map(be32).ok_or(FrameError::Malformed(what));
        let frame = match kind {
            SYN_STREAM => {
                let id = word(0, "SYN_STREAM")? & 0x7fff_ffff;
                let block = body.get(10..).ok_or(FrameError::Malformed("SYN_STREAM"))?;
                Frame::SynStream { id, flags, headers: self.headers(block)? }
            }
            SYN_REPLY => {
                let id = word(0, "SYN_REPLY")? & 0x7fff_ffff;
                Frame::SynReply { id, flags, headers: self.headers(&body[4..])? }
            }
            HEADERS => {
                let id = word(0, "HEADERS")? & 0x7fff_ffff;
                Frame::Headers { id, flags, headers: self.headers(&body[4..])? }
            }
            RST_STREAM => Frame::RstStream { id: word(0, "RST_STREAM")? & 0x7fff_ffff, status: word(4, "RST_STREAM")? },
            PING => Frame::Ping { id: word(0, "PING")? },
            GOAWAY => {
                Frame::GoAway { last_id: word(0, "GOAWAY")? & 0x7fff_ffff, status: word(4, "GOAWAY").unwrap_or(0) }
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored { kind },
            other => Frame::Ignored { kind: other },
        };
        Ok(Some(frame))
    }

    /// Inflates and parses one header block.
    fn headers(&mut self, mut input: &[u8]) -> Result<Headers, FrameError> {
        let bad = |e: &dyn std::fmt::Display| FrameError::HeaderBlock(e.to_string());
        let mut out: Vec<u8> = Vec::with_capacity(256);
        while !input.is_empty() {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlock("inflates past 1 MiB".into()));
                }
                out.reserve(out.len().max(256));
            }
            let (before, had) = (self.inflate.total_in(), out.len());
            let res = self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            match res {
                Ok(Status::StreamEnd) => break,
                // No progress with room to spare: never loop on it.
                Ok(Status::Ok) if used == 0 && out.len() == had && out.len() < out.capacity() => {
                    return Err(FrameError::HeaderBlock("no progress".into()));
                }
                Ok(Status::Ok) => {}
                Ok(Status::BufError) => {
                    if out.len() < out.capacity() {
                        // No progress with room to spare: the input is cut.
                        return Err(FrameError::HeaderBlock("truncated".into()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY).map_err(|e| bad(&e))?;
                }
                Err(e) => return Err(bad(&e)),
            }
        }
        parse_block(&out)
    }
}

/// A header block's pairs (already inflated).
fn parse_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    let short = || FrameError::HeaderBlock("short header block".into());
    let take = |b: &mut &[u8]| -> Result<String, FrameError> {
        if b.len() < 4 {
            return Err(short());
        }
        let n = usize::try_from(be32(b)).unwrap_or(usize::MAX);
        let rest = &b[4..];
        if rest.len() < n {
            return Err(short());
        }
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        *b = &rest[n..];
        Ok(s)
    };
    if b.len() < 4 {
        return Err(short());
    }
    let count = be32(b);
    if count > MAX_HEADERS {
        return Err(FrameError::HeaderBlock(format!("{count} headers")));
    }
    b = &b[4..];
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut b)?.to_ascii_lowercase();
        let value = take(&mut b)?;
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// Writes frames.
#[derive(Debug)]
pub struct Encoder {
    deflate: Compress,
    primed: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self { deflate: Compress::new(Compression::best(), true), primed: false }
    }
}

impl Encoder {
    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match frame {
            Frame::SynStream { id, flags, headers } => {
                let block = self.block(headers);
                self.control(out, SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(*id);
                out.put_u32(0);
                out.put_u16(0);
                out.put_slice(&block);
            }
            Frame::SynReply { id, flags, headers } | Frame::Headers { id, flags, headers } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) { SYN_REPLY } else { HEADERS };
                let block = self.block(headers);
                self.control(out, kind, *flags, 4 + block.len());
                out.put_u32(*id);
                out.put_slice(&block);
            }
            Frame::RstStream { id, status } => {
                self.control(out, RST_STREAM, 0, 8);
                out.put_u32(*id);
                out.put_u32(*status);
            }
            Frame::Ping { id } => {
                self.control(out, PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway { last_id, status } => {
                self.control(out, GOAWAY, 0, 8);
                out.put_u32(*last_id);
                out.put_u32(*status);
            }
            Frame::Data { id, flags, data } => {
                // Longer data goes out as several frames (24-bit lengths).
                let mut chunks = data.chunks(0x00ff_ffff).peekable();
                if chunks.peek().is_none() {
                    out.put_u32(id & 0x7fff_ffff);
                    out.put_u32(u32::from(*flags) << 24);
                }
                while let Some(chunk) = chunks.next() {
                    let last = chunks.peek().is_none();
                    out.put_u32(id & 0x7fff_ffff);
                    let f = if last { *flags } else { 0 };
                    out.put_u32(u32::from(f) << 24 | u32::try_from(chunk.len()).unwrap_or(0));
                    out.put_slice(chunk);
                }
            }
            Frame::Ignored { .. } => {}
        }
    }

    fn control(&self, out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        out.put_u32(u32::from(flags) << 24 | (u32::try_from(len).unwrap_or(0) & 0x00ff_ffff));
    }

    /// A compressed header block, ended with a sync flush.
    fn block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.put_u32(u32::try_from(headers.len()).unwrap_or(0));
        for (n, v) in headers {
            raw.put_u32(u32::try_from(n.len()).unwrap_or(0));
            raw.put_slice(n.to_ascii_lowercase().as_bytes());
            raw.put_u32(u32::try_from(v.len()).unwrap_or(0));
            raw.put_slice(v.as_bytes());
        }
        if !self.primed {
            // A fresh zlib stream takes a dictionary; this cannot fail.
            let _ = self.deflate.set_dictionary(DICTIONARY);
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.len().max(256));
            }
            let before = self.deflate.total_in();
            let _ = self.deflate.compress_vec(input, &mut out, FlushCompress::Sync);
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            // Done once all input is in and the flush left room unused.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
