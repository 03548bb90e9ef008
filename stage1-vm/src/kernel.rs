//! The guest kernel. qemu boots an uncompressed ELF `vmlinux` through its
//! PVH entry directly, skipping the bzImage's in-guest decompressor (about
//! 8 s of a 14 s boot under TCG). Distributions ship the compressed bzImage:
//! its payload is decompressed once here and cached, keyed by the SHA-256 of
//! the bzImage, so every later pod boots the cached ELF.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("guest kernel {path}: {why}")]
    Format { path: PathBuf, why: String },
}

const ELF_MAGIC: &[u8] = b"\x7fELF";

/// The kernel compressions a bzImage payload may use that pod reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(payload: &[u8]) -> Option<Self> {
        if payload.starts_with(b"\xfd7zXZ\x00") {
            Some(Self::Xz)
        } else if payload.starts_with(b"\x1f\x8b") {
            Some(Self::Gzip)
        } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Self::Zstd)
        } else {
            None
        }
    }
}

fn le32(b: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

/// The compressed payload of a bzImage, located through its boot protocol
/// header (`setup_sects`, `payload_offset`, `payload_length`; boot protocol
/// 2.08 and later) rather than by scanning for magic numbers.
pub fn payload(image: &[u8]) -> Result<(Compression, &[u8]), String> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("neither an ELF vmlinux nor a bzImage (no HdrS header)".into());
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x0208 {
        return Err(format!("boot protocol {version:#x} is older than 2.08 (no payload fields)"));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512;
    let (offset, length) = (le32(image, 0x248).unwrap_or(0), le32(image, 0x24c).unwrap_or(0));
    let payload = image
        .get(start + offset..start + offset + length)
        .ok_or_else(|| format!("payload {offset}+{length} lies outside the file"))?;
    let kind = Compression::sniff(payload).ok_or("the payload's compression is not xz, gzip or zstd")?;
    Ok((kind, payload))
}

fn decompress(kind: Compression, payload: &[u8], out: &mut impl Write) -> Result<(), String> {
    match kind {
        // liblzma: kernels use xz's x86 BCJ filter, which pure-Rust decoders lack.
        Compression::Xz => {
            io::copy(&mut liblzma::read::XzDecoder::new(payload), out).map(drop).map_err(|e| format!("xz: {e}"))
        }
        Compression::Gzip => {
            io::copy(&mut flate2::read::GzDecoder::new(payload), out).map(drop).map_err(|e| format!("gzip: {e}"))
        }
        Compression::Zstd => zstd::stream::copy_decode(payload, out).map_err(|e| format!("zstd: {e}")),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KernelError + 'a {
    move |source| KernelError::Io { op, path: path.to_owned(), source }
}

/// The ELF kernel to boot for `kernel` (an ELF vmlinux is used as is; a
/// bzImage is decompressed into `cache` once).
pub fn vmlinux(kernel: &Path, cache: &Path) -> Result<PathBuf, KernelError> {
    let mut image = Vec::new();
    File::open(kernel).and_then(|mut f| f.read_to_end(&mut image)).map_err(io_err("read", kernel))?;
    if image.starts_with(ELF_MAGIC) {
        return Ok(kernel.to_owned());
    }
    let digest = hex::encode(&Sha256::digest(&image)[..12]);
    let cached = cache.join(format!("vmlinux-{digest}"));
    if cached.is_file() {
        return Ok(cached);
    }
    let format_err = |why: String| KernelError::Format { path: kernel.to_owned(), why };
    let (kind, payload) = payload(&image).map_err(format_err)?;
    fs::create_dir_all(cache).map_err(io_err("create directory", cache))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache).map_err(io_err("create a file in", cache))?;
    let mut out = io::BufWriter::new(tmp.as_file_mut());
    decompress(kind, payload, &mut out).map_err(format_err)?;
    out.flush().map_err(io_err("write", &cached))?;
    drop(out);
    let mut head = [0u8; 4];
    File::open(tmp.path()).and_then(|mut f| f.read_exact(&mut head)).map_err(io_err("read", tmp.path()))?;
    if head != ELF_MAGIC {
        return Err(format_err("the decompressed payload is not an ELF vmlinux".into()));
    }
    // A concurrent pod may have cached the same kernel: same bytes, so the
    // rename over it is harmless.
    tmp.persist(&cached).map_err(|e| io_err("rename into", &cached)(e.error))?;
    Ok(cached)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file: header fields at their boot-protocol offsets,
    /// the payload after the setup sectors.
    fn bzimage(payload: &[u8], version: u16) -> Vec<u8> {
        let setup_sects = 2u8;
        let start = (usize::from(setup_sects) + 1) * 512;
        let mut img = vec![0u8; start + 100 + payload.len() + 7];
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).expect("small").to_le_bytes());
        img[start + 100..start + 100 + payload.len()].copy_from_slice(payload);
        img
    }

    fn elf_payload() -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend((0..10_000u32).map(|i| (i % 251) as u8));
        v
    }

    #[test]
    fn finds_and_decompresses_each_compression() {
        let plain = elf_payload();
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&plain[..], 1).read_to_end(&mut xz).expect("xz");
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).expect("gzip");
            e.finish().expect("gzip")
        };
        let zst = zstd::encode_all(&plain[..], 1).expect("zstd");
        for (kind, packed) in [(Compression::Xz, xz), (Compression::Gzip, gz), (Compression::Zstd, zst)] {
            let img = bzimage(&packed, 0x020f);
            let (found, bytes) = payload(&img).expect("payload");
            assert_eq!(found, kind);
            let mut out = Vec::new();
            decompress(found, bytes, &mut out).expect("decompress");
            assert_eq!(out, plain, "{kind:?}");
        }
    }

    #[test]
    fn caches_the_elf_and_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&elf_payload()[..], 1).read_to_end(&mut xz).expect("xz");
        let k = dir.path().join("vmlinuz");
        fs::write(&k, bzimage(&xz, 0x020f)).expect("write");
        let cache = dir.path().join("cache");
        let first = vmlinux(&k, &cache).expect("vmlinux");
        assert_eq!(fs::read(&first).expect("read"), elf_payload());
        let mtime = fs::metadata(&first).and_then(|m| m.modified()).expect("mtime");
        assert_eq!(vmlinux(&k, &cache).expect("again"), first);
        assert_eq!(fs::metadata(&first).and_then(|m| m.modified()).expect("mtime"), mtime, "not rewritten");
        // An ELF kernel is booted as it is.
        let elf = dir.path().join("vmlinux");
        fs::write(&elf, elf_payload()).expect("write");
        assert_eq!(vmlinux(&elf, &cache).expect("elf"), elf);
    }

    #[test]
    fn rejects_what_is_not_a_kernel() {
        assert!(payload(b"hello").is_err_and(|e| e.contains("HdrS")));
        assert!(payload(&bzimage(b"\xfd7zXZ\x00", 0x0206)).is_err_and(|e| e.contains("2.08")));
        assert!(payload(&bzimage(b"LZ4 payload", 0x020f)).is_err_and(|e| e.contains("compression")));
        let mut short = bzimage(b"\x1f\x8b", 0x020f);
        short.truncate(0x300 + 512);
        assert!(payload(&short).is_err_and(|e| e.contains("outside")));
        let dir = tempfile::tempdir().expect("tempdir");
        let k = dir.path().join("junk");
        fs::write(&k, b"not a kernel at all").expect("write");
        let e = vmlinux(&k, &dir.path().join("c")).expect_err("junk");
        assert!(e.to_string().contains("junk"), "{e}");
    }
}
