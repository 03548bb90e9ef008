//! Staging the raw image bytes: copying them into the store's `tmp/` while
//! hashing them for the signature check, with the size cap enforced.
//!
//! The calling thread reads and hashes; a second thread writes, so the
//! write's cost (the page-cache copy, block allocation) overlaps the hash's.
//! Each buffer is hashed before it is handed over and never touched again by
//! the reader, so the bytes written are exactly the bytes hashed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use sha2::Digest;

use super::FetchError;
use crate::sha512::Sha512;

/// Large reads and writes: per-chunk costs (syscalls, channel sends) vanish.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between reader and writer: bounds memory to a few MiB.
const QUEUE_DEPTH: usize = 4;

/// What was staged.
#[derive(Debug)]
pub(super) struct Copied {
    pub size: u64,
    pub hash: Sha512,
}

/// Copies `src` into the new file `out` (at `path`), hashing every byte and
/// refusing more than `cap` bytes. `progress` is told of each chunk read.
pub(super) fn copy_hashing(
    mut src: impl Read,
    out: File,
    path: &Path,
    location: &str,
    cap: u64,
    progress: impl Fn(u64),
) -> Result<Copied, FetchError> {
    let (to_writer, chunks) = mpsc::sync_channel::<(Vec<u8>, usize)>(QUEUE_DEPTH);
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    thread::scope(|s| {
        let writer = thread::Builder::new()
            .name("stage-write".to_owned())
            .spawn_scoped(s, move || -> io::Result<()> {
                let mut out = out;
                for (buf, len) in chunks {
                    out.write_all(&buf[..len])?;
                    // The reader may be done already; then the buffer is freed.
                    let _ = recycle.send(buf);
                }
                Ok(())
            })
            .map_err(|e| FetchError::Io { op: "start thread", path: path.to_owned(), source: e })?;
        let mut hash = Sha512::new();
        let mut size: u64 = 0;
        let read = loop {
            let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let n = match src.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(FetchError::Http { url: location.to_owned(), why: e.to_string() }),
            };
            size += n as u64;
            if size > cap {
                break Err(FetchError::TooLarge { location: location.to_owned(), limit: cap });
            }
            hash.update(&buf[..n]);
            progress(n as u64);
            if to_writer.send((buf, n)).is_err() {
                break Ok(()); // the writer failed: its error is the one to report
            }
        };
        drop(to_writer);
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read?;
        written.map_err(|e| FetchError::Io { op: "write", path: path.to_owned(), source: e })?;
        Ok(Copied { size, hash })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(data: &[u8], cap: u64) -> (Result<Copied, FetchError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("image.aci");
        let out = File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = copy_hashing(data, out, &path, "test", cap, |_| {});
        (r, std::fs::read(&path).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn copies_and_hashes_every_byte() {
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251).to_le_bytes()[0]).collect();
        let (r, written) = stage(&data, u64::MAX);
        let copied = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copied.size, data.len() as u64);
        assert_eq!(written, data);
        assert_eq!(copied.hash.finalize().as_slice(), sha2::Sha512::digest(&data).as_slice());
    }

    #[test]
    fn enforces_the_cap() {
        let (r, _) = stage(&[0u8; 1000], 999);
        assert!(matches!(r, Err(FetchError::TooLarge { limit: 999, .. })), "{r:?}");
        let (r, _) = stage(&[0u8; 1000], 1000);
        assert!(r.is_ok(), "{r:?}");
    }
}
