//! The byte stream under an ACI or an OCI layer: compression detection,
//! decompression and the size limit (on the calling thread), the hash of the
//! uncompressed stream (a thread of its own: the image ID of an ACI, the
//! diff ID of a layer), and the channels that carry decompressed chunks
//! between them and on to the tar thread.

use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use sha2::digest::Output;
use sha2::Digest;

use super::{ArchiveError, Compression, Limits};

/// Size of the chunks passed between pipeline stages: large, so that the
/// per-chunk costs (a channel send, a hash call, a write) are noise.
pub(super) const CHUNK: usize = 1 << 20;
/// Read-ahead on the compressed source.
const SRC_BUF: usize = 256 << 10;
const MAGIC_LEN: usize = 4;

/// The source, replaying the magic bytes read for detection, and noting
/// whether *it* failed so its errors are not blamed on the decompressor.
struct Source<R> {
    head: [u8; MAGIC_LEN],
    head_len: usize,
    head_pos: usize,
    inner: R,
    failed: bool,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head_pos < self.head_len {
            let n = buf.len().min(self.head_len - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed = true;
            }
        })
    }
}

enum Decoder<R: Read> {
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Source<R>>>),
    // Boxed: flate2's zlib-rs backend (the CRI server's SPDY needs it) makes
    // the gzip state several times the others.
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<Source<R>>>>),
    Plain(BufReader<Source<R>>),
}

impl<R: Read> Decoder<R> {
    fn source(&self) -> &Source<R> {
        match self {
            Self::Zstd(d) => d.get_ref().get_ref(),
            Self::Gzip(d) => d.get_ref().get_ref(),
            Self::Plain(d) => d.get_ref(),
        }
    }

    fn format(&self) -> &'static str {
        match self {
            Self::Zstd(_) => "zstd",
            Self::Gzip(_) => "gzip",
            Self::Plain(_) => "tar",
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Zstd(d) => d.read(buf),
            Self::Gzip(d) => d.read(buf),
            Self::Plain(d) => d.read(buf),
        }
    }
}

/// Reads an image to EOF, decompressing and enforcing [`Limits`].
pub(super) struct Decompressor<R: Read> {
    decoder: Decoder<R>,
    compression: Compression,
    size: u64,
    limit: u64,
    eof: bool,
}

impl<R: Read> Decompressor<R> {
    /// `compression`: what the stream is said to be; `None` to detect it
    /// from its magic bytes.
    pub(super) fn new(src: R, compression: Option<Compression>, limits: &Limits) -> Result<Self, ArchiveError> {
        let mut source = Source { head: [0; MAGIC_LEN], head_len: 0, head_pos: 0, inner: src, failed: false };
        // A pipe or socket may deliver the magic in pieces.
        while source.head_len < MAGIC_LEN {
            match source.inner.read(&mut source.head[source.head_len..]) {
                Ok(0) => break,
                Ok(n) => source.head_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Read(e)),
            }
        }
        let compression = compression.unwrap_or_else(|| Compression::detect(&source.head[..source.head_len]));
        let buffered = BufReader::with_capacity(SRC_BUF, source);
        let decoder = match compression {
            // zstd's default window limit (128 MiB) bounds the decoder's memory
            // whatever the frame header asks for.
            Compression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|source| ArchiveError::Decompress { format: "zstd", source })?,
            ),
            // Multi-member, like `gzip -d`.
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered))),
            Compression::None => Decoder::Plain(buffered),
        };
        Ok(Self { decoder, compression, size: 0, limit: limits.max_uncompressed, eof: false })
    }

    /// Fills `buf` with the next uncompressed bytes; returns how many, which
    /// is less than `buf.len()` only at the end of the stream (0 after it).
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut filled = 0;
        while filled < buf.len() && !self.eof {
            let n = match self.decoder.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.decoder.source().failed => return Err(ArchiveError::Read(e)),
                Err(source) => return Err(ArchiveError::Decompress { format: self.decoder.format(), source }),
            };
            filled += n;
            // Checked per read, so a bomb is stopped within one chunk.
            self.size = self.size.saturating_add(n as u64);
            if self.size > self.limit {
                return Err(ArchiveError::TooLarge { limit: self.limit });
            }
        }
        Ok(filled)
    }

    /// Sends the whole stream on in [`CHUNK`]s, reusing the buffers that
    /// come back. Returns early, without error, if the next stage hangs up:
    /// the tar thread has failed and its error is the one to report.
    pub(super) fn pump_into(&mut self, tx: &SyncSender<Msg>, recycled: &Receiver<Vec<u8>>) -> Result<(), ArchiveError> {
        loop {
            let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let len = self.fill(&mut buf)?;
            let msg = if len == 0 { Msg::End } else { Msg::Data(buf, len) };
            if tx.send(msg).is_err() || len == 0 {
                return Ok(());
            }
        }
    }

    /// The compression read through.
    pub(super) fn compression(&self) -> Compression {
        self.compression
    }

    /// The uncompressed size read so far.
    pub(super) fn size(&self) -> u64 {
        self.size
    }
}

/// Where the hashing thread passes chunks after hashing them.
#[derive(Debug)]
pub(super) enum AfterHash {
    /// On to the tar thread.
    Tar(SyncSender<Msg>),
    /// Straight back to the decompressor (hashing only).
    Recycle(Sender<Vec<u8>>),
}

/// The body of the thread that hashes every uncompressed byte with `D` —
/// including the end-of-archive blocks and any padding after them, which the
/// tar parser never looks at. SHA-512 costs about twice zstd's decompression,
/// so it gets a core of its own rather than slowing the decompressing thread.
///
/// The digest covers the whole stream only if it ended cleanly: the tar
/// thread sees [`Msg::End`] only after all the data went through here.
pub(super) fn hasher<D: Digest>(rx: Receiver<Msg>, next: AfterHash) -> impl FnOnce() -> Output<D> + Send {
    move || {
        let mut hasher = D::new();
        for msg in rx {
            let Msg::Data(buf, len) = msg else {
                if let AfterHash::Tar(tx) = &next {
                    let _ = tx.send(Msg::End);
                }
                break;
            };
            hasher.update(&buf[..len]);
            match &next {
                AfterHash::Tar(tx) => {
                    if tx.send(Msg::Data(buf, len)).is_err() {
                        break; // dropping rx stops the decompressor in turn
                    }
                }
                // The decompressor may be done already; then it is just freed.
                AfterHash::Recycle(tx) => {
                    let _ = tx.send(buf);
                }
            }
        }
        hasher.finalize()
    }
}

/// What the decompressing thread sends to the tar thread.
#[derive(Debug)]
pub(super) enum Msg {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    /// The stream ended cleanly.
    End,
}

/// The tar thread's end of the channel, as a `Read`. Counts the bytes the
/// tar parser consumed, which tells a missing end-of-archive marker apart.
#[derive(Debug)]
pub(super) struct ChunkReader {
    rx: Receiver<Msg>,
    recycle: Sender<Vec<u8>>,
    buf: Vec<u8>,
    len: usize,
    pos: usize,
    consumed: u64,
    ended: bool,
}

impl ChunkReader {
    pub(super) fn new(rx: Receiver<Msg>, recycle: Sender<Vec<u8>>) -> Self {
        Self { rx, recycle, buf: Vec::new(), len: 0, pos: 0, consumed: 0, ended: false }
    }

    /// Bytes handed out through `read` so far.
    pub(super) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Moves to the next chunk; false at the clean end of the stream.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(Msg::Data(buf, len)) => {
                let old = std::mem::replace(&mut self.buf, buf);
                if !old.is_empty() {
                    // The sender may be gone already; then the buffer is just freed.
                    let _ = self.recycle.send(old);
                }
                self.len = len;
                self.pos = 0;
                Ok(true)
            }
            Ok(Msg::End) => {
                self.ended = true;
                Ok(false)
            }
            // The decompressing thread failed; it reports why.
            Err(_) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image stream broke off")),
        }
    }

    /// Reads and discards the rest of the stream, so it is all hashed.
    pub(super) fn drain(&mut self) -> io::Result<()> {
        while self.next_chunk()? {}
        self.pos = self.len;
        Ok(())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len && !self.next_chunk()? {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// The tar side of packing: buffers what the tar builder writes and sends it
/// on in [`CHUNK`]s to the compressing thread, reusing returned buffers.
#[derive(Debug)]
pub(super) struct ChunkWriter {
    tx: SyncSender<Msg>,
    recycled: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    len: usize,
}

impl ChunkWriter {
    pub(super) fn new(tx: SyncSender<Msg>, recycled: Receiver<Vec<u8>>) -> Self {
        Self { tx, recycled, buf: vec![0; CHUNK], len: 0 }
    }

    fn send(&mut self, msg: Msg) -> io::Result<()> {
        // The compressing thread hangs up only when writing the image failed,
        // and reports that itself.
        self.tx.send(msg).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressing the image stopped"))
    }

    fn send_buf(&mut self) -> io::Result<()> {
        let next = self.recycled.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let len = std::mem::take(&mut self.len);
        self.send(Msg::Data(full, len))
    }

    /// Sends what is buffered and the end of the stream.
    pub(super) fn finish(mut self) -> io::Result<()> {
        if self.len > 0 {
            self.send_buf()?;
        }
        self.send(Msg::End)
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
