//! Packing a manifest and a rootfs directory into an ACI.
//!
//! The tar is deterministic for a given tree: `manifest` first, then
//! `rootfs/` depth-first in byte order of names, with no user or group
//! names and no access or change times. The image ID is the hash of the tar
//! bytes as they are written, before compression.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use nix::fcntl::OFlag;
use sha2::Digest;
use spec::{ImageId, ImageManifest};
use tar::{EntryType, Header};

use super::stream::{ChunkWriter, Msg};
use super::{ArchiveError, Compression, QUEUE_DEPTH};
use crate::sha512::Sha512;

const ZSTD_LEVEL: i32 = 3;
const IO_BUF: usize = 256 << 10;
/// How errors name the output.
const IMAGE: &str = "the image";
/// Bytes of a link target that fit in a tar header.
const LINK_FIELD: usize = 100;

pub(super) fn pack<W: Write>(
    manifest: &ImageManifest,
    rootfs: &Path,
    out: W,
    compression: Compression,
) -> Result<ImageId, ArchiveError> {
    // The root may be given as a symlink to a directory: it is the caller's
    // own path, so it is followed; nothing below it is.
    let root_meta = fs::metadata(rootfs).map_err(ArchiveError::io("stat", rootfs))?;
    if !root_meta.is_dir() {
        return Err(ArchiveError::io("pack", rootfs)(io::Error::new(io::ErrorKind::InvalidInput, "not a directory")));
    }
    let mut encoder = Encoder::new(BufWriter::with_capacity(IO_BUF, out), compression)
        .map_err(ArchiveError::io("start compressing", Path::new(IMAGE)))?;
    let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
    let (recycle_tx, recycle_rx) = mpsc::channel();
    // Two threads, as hashing and compressing each cost about as much as
    // the rest: a worker walks the tree and writes and hashes the tar; this
    // thread compresses, since `out` need not be `Send`.
    let (compressed, packed) = thread::scope(|s| {
        let sink = ChunkWriter::new(tx, recycle_rx);
        let tar = super::spawn(s, "aci-tar", move || write_tar(manifest, rootfs, &root_meta, sink))?;
        let compressed = compress(rx, &recycle_tx, &mut encoder);
        Ok::<_, ArchiveError>((compressed, super::join(tar)))
    })?;
    // A failed write stops the tar thread with a broken pipe; report the
    // write, not the pipe.
    compressed.map_err(ArchiveError::io("write", Path::new(IMAGE)))?;
    let id = packed?;
    let mut out = encoder.finish().map_err(ArchiveError::io("finish compressing", Path::new(IMAGE)))?;
    out.flush().map_err(ArchiveError::io("write", Path::new(IMAGE)))?;
    Ok(id)
}

/// Compresses the tar chunks as they come, handing the buffers back. Ends
/// early, without error, if the tar thread fails: its error is reported.
fn compress<W: Write>(rx: Receiver<Msg>, recycle: &Sender<Vec<u8>>, encoder: &mut Encoder<W>) -> io::Result<()> {
    for msg in rx {
        let Msg::Data(buf, len) = msg else { break };
        encoder.write_all(&buf[..len])?;
        // The tar thread may be done already; then the buffer is just freed.
        let _ = recycle.send(buf);
    }
    Ok(())
}

/// Writes the whole tar to `sink`; returns its hash, the image ID.
fn write_tar(
    manifest: &ImageManifest,
    rootfs: &Path,
    root_meta: &Metadata,
    sink: ChunkWriter,
) -> Result<ImageId, ArchiveError> {
    let mut packer = Packer {
        builder: tar::Builder::new(HashingWriter { inner: sink, hasher: Sha512::new() }),
        links: HashMap::new(),
    };
    let json = manifest.to_json();
    let mut header = new_header(EntryType::Regular, 0o644, 0, 0, root_meta.mtime(), json.len() as u64);
    packer.append(&mut header, Path::new("manifest"), &json[..])?;
    let archive_root = PathBuf::from("rootfs");
    packer.append(&mut meta_header(root_meta, EntryType::Directory, 0), &archive_root, io::empty())?;
    packer.walk(rootfs, &archive_root)?;

    // into_inner writes the end-of-archive blocks, which are hashed too.
    let hashing = packer.builder.into_inner().map_err(ArchiveError::io("write", Path::new(IMAGE)))?;
    let mut digest = [0u8; 64];
    digest.copy_from_slice(&hashing.hasher.finalize());
    hashing.inner.finish().map_err(ArchiveError::io("write", Path::new(IMAGE)))?;
    Ok(ImageId::from_digest(&digest))
}

struct Packer {
    builder: tar::Builder<HashingWriter<ChunkWriter>>,
    /// (device, inode) of multiply-linked files already packed → their path
    /// in the archive, for hard link entries.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Packer {
    /// Packs the contents of `dir` (host path) as `archive_dir`.
    fn walk(&mut self, dir: &Path, archive_dir: &Path) -> Result<(), ArchiveError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(ArchiveError::io("read directory", dir))? {
            names.push(entry.map_err(ArchiveError::io("read directory", dir))?.file_name());
        }
        // Byte order on Unix: the same tree always gives the same tar.
        names.sort_unstable();
        for name in names {
            let host = dir.join(&name);
            let in_archive = archive_dir.join(&name);
            let meta = fs::symlink_metadata(&host).map_err(ArchiveError::io("stat", &host))?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                self.append(&mut meta_header(&meta, EntryType::Directory, 0), &in_archive, io::empty())?;
                self.walk(&host, &in_archive)?;
            } else if file_type.is_file() {
                self.file(&host, &in_archive, &meta)?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&host).map_err(ArchiveError::io("read symlink", &host))?;
                let mut header = meta_header(&meta, EntryType::Symlink, 0);
                self.link_name(&mut header, target.as_os_str().as_bytes(), &in_archive)?;
                self.append(&mut header, &in_archive, io::empty())?;
            } else if file_type.is_fifo() {
                self.append(&mut meta_header(&meta, EntryType::Fifo, 0), &in_archive, io::empty())?;
            } else {
                let kind = if file_type.is_socket() {
                    "socket"
                } else if file_type.is_char_device() {
                    "character device"
                } else if file_type.is_block_device() {
                    "block device"
                } else {
                    "special"
                };
                return Err(ArchiveError::Unpackable { path: host.display().to_string(), kind });
            }
        }
        Ok(())
    }

    fn file(&mut self, host: &Path, in_archive: &Path, meta: &Metadata) -> Result<(), ArchiveError> {
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let first = first.as_os_str().as_bytes().to_vec();
                let mut header = meta_header(meta, EntryType::Link, 0);
                self.link_name(&mut header, &first, in_archive)?;
                return self.append(&mut header, in_archive, io::empty());
            }
            self.links.insert((meta.dev(), meta.ino()), in_archive.to_path_buf());
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(host)
            .map_err(ArchiveError::io("open", host))?;
        let size = meta.len();
        // A BufReader makes io::copy (inside the tar crate) move large blocks.
        let data = BufReader::with_capacity(IO_BUF, Exact { file, remaining: size });
        self.append(&mut meta_header(meta, EntryType::Regular, size), in_archive, data)
    }

    /// Sets a link target byte for byte (the tar crate's `set_link_name`
    /// would normalise `./x` and `x/`), with a GNU long-link entry first when
    /// it does not fit in the header.
    fn link_name(&mut self, header: &mut Header, target: &[u8], in_archive: &Path) -> Result<(), ArchiveError> {
        let fits = &target[..target.len().min(LINK_FIELD)];
        if target.len() > LINK_FIELD {
            let mut long = new_header(EntryType::GNULongLink, 0o644, 0, 0, 0, target.len() as u64 + 1);
            let name = b"././@LongLink";
            long.as_old_mut().name[..name.len()].copy_from_slice(name);
            long.set_cksum();
            // NUL-terminated, as GNU tar writes it.
            let data = target.chain(&[0u8][..]);
            self.builder.append(&long, data).map_err(ArchiveError::io("pack", in_archive))?;
        }
        header.set_link_name_literal(fits).map_err(ArchiveError::io("pack", in_archive))
    }

    /// Appends one entry; the tar crate emits a GNU long-name entry first
    /// when the path does not fit.
    fn append(&mut self, header: &mut Header, in_archive: &Path, data: impl Read) -> Result<(), ArchiveError> {
        self.builder.append_data(header, in_archive, data).map_err(ArchiveError::io("pack", in_archive))
    }
}

fn new_header(ty: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(ty);
    header.set_mode(mode & 0o7777);
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    // Times before 1970 are not worth a base-256 field.
    header.set_mtime(u64::try_from(mtime).unwrap_or(0));
    header.set_size(size);
    header
}

fn meta_header(meta: &Metadata, ty: EntryType, size: u64) -> Header {
    new_header(ty, meta.mode(), meta.uid(), meta.gid(), meta.mtime(), size)
}

/// A file's first `remaining` bytes, as announced in its header: an error
/// if it shrank since, and its growth ignored, so the tar stays well-formed.
struct Exact {
    file: File,
    remaining: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being packed"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes what the tar builder writes before it is compressed.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha512,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?),
            Compression::Gzip => Self::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::default())),
            Compression::None => Self::Plain(out),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Self::Zstd(e) => e.finish(),
            Self::Gzip(e) => e.finish(),
            Self::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Zstd(e) => e.write(buf),
            Self::Gzip(e) => e.write(buf),
            Self::Plain(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Zstd(e) => e.flush(),
            Self::Gzip(e) => e.flush(),
            Self::Plain(w) => w.flush(),
        }
    }
}
