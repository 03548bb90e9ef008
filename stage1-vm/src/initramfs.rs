//! The guest's initramfs: `pod-init` as `/init` plus the kernel modules it
//! loads (see `spec::vm` for the layout). Written as an uncompressed newc
//! cpio archive (the kernel unpacks it without a decompressor: faster under
//! TCG) and cached, keyed by the SHA-256 of everything in it, so pods share
//! one file until pod-init or the kernel changes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use spec::vm::{GUEST_MARKER, GUEST_POD_ROOT, MODULES_DIR};

/// A newc ("070701") cpio writer: the format the kernel's initramfs
/// unpacker reads.
#[derive(Debug)]
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Self { out, ino: 0, written: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| io::Error::other("cpio name too long"))?;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, (0, 0), data)
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, (major, minor), &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct InitramfsError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The archive's content for `init` (the pod-init binary's bytes) and
/// `modules` (name and bytes, in load order).
pub fn write(out: impl Write, init: &[u8], modules: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut c = Cpio::new(out);
    let rel = |p: &str| p.trim_start_matches('/').to_owned();
    for d in ["dev", "proc", "sys", "etc", "lib", "lib/pod", &rel(MODULES_DIR), &rel(GUEST_POD_ROOT)] {
        c.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before /dev is mounted.
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.file(&rel(GUEST_MARKER), 0o644, b"")?;
    c.file("init", 0o755, init)?;
    for (i, (name, bytes)) in modules.iter().enumerate() {
        c.file(&format!("{}/{i:03}-{name}.ko", rel(MODULES_DIR)), 0o644, bytes)?;
    }
    c.finish()?.flush()
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InitramfsError + 'a {
    move |source| InitramfsError { op, path: path.to_owned(), source }
}

/// The cached initramfs for `init` and `modules` (from `kmod::resolve`),
/// built into `cache` if it is not there yet. Images of pod-init alone (for
/// a kernel with its drivers built in) and images with modules are two
/// families ([`family`]), each keeping its current image, so that pods of
/// both kernels can start side by side.
pub fn build_cached(init: &Path, modules: &[(String, PathBuf)], cache: &Path) -> Result<PathBuf, InitramfsError> {
    let init_bytes = fs::read(init).map_err(err("read", init))?;
    let mut hash = Sha256::new();
    hash.update(b"pod-initramfs-v2\0");
    hash.update((init_bytes.len() as u64).to_le_bytes());
    hash.update(&init_bytes);
    let mut mods = Vec::with_capacity(modules.len());
    for (name, path) in modules {
        let mut bytes = fs::read(path).map_err(err("read", path))?;
        crate::kmod::strip_signature(&mut bytes)
            .map_err(|why| err("strip the signature of", path)(io::Error::new(io::ErrorKind::InvalidData, why)))?;
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
        mods.push((name.clone(), bytes));
    }
    let (mine, other) = family("initramfs-", modules.is_empty());
    let cached = cache.join(format!("{mine}{}.cpio", hex::encode(&hash.finalize()[..12])));
    if cached.is_file() {
        return Ok(cached);
    }
    fs::create_dir_all(cache).map_err(err("create directory", cache))?;
    let tmp = tempfile::NamedTempFile::new_in(cache).map_err(err("create a file in", cache))?;
    write(io::BufWriter::new(tmp.as_file()), &init_bytes, &mods).map_err(err("write", tmp.path()))?;
    tmp.persist(&cached).map_err(|e| err("rename into", &cached)(e.error))?;
    // Images for an older pod-init or module set are not booted again;
    // a running qemu read its copy at start, so removing them is safe.
    prune(cache, "initramfs-", &other, &cached);
    Ok(cached)
}

/// The name prefix of cache entries of kind `kind` (`initramfs-`, `boot-`)
/// for a kernel with its drivers built in (`builtin`) or with modules, and
/// the other family's, which pruning leaves alone.
pub(crate) fn family(kind: &str, builtin: bool) -> (String, String) {
    let (mine, other) = if builtin { ("b-", "m-") } else { ("m-", "b-") };
    (format!("{kind}{mine}"), format!("{kind}{other}"))
}

/// Removes the files of `cache` named `<prefix>...` other than `keep` and
/// those of the other family (`<spare>...`): the cache holds one current
/// entry of each kind and family. Best effort.
pub(crate) fn prune(cache: &Path, prefix: &str, spare: &str, keep: &Path) {
    for old in fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && !name.starts_with(spare) && old.path() != keep {
            let _ = fs::remove_file(old.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdev major, data).
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).expect("hex"), 16).expect("hex")
        };
        loop {
            assert_eq!(&a[..6], b"070701", "magic at {at}");
            let h = &a[..110];
            let (mode, size, major, namesize) = (field(h, 1), field(h, 6) as usize, field(h, 9), field(h, 11) as usize);
            let name = String::from_utf8(a[110..110 + namesize - 1].to_vec()).expect("name");
            let data_start = (110 + namesize).next_multiple_of(4);
            let data = a[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            at += next;
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty());
                return out;
            }
            out.push((name, mode, major, data));
        }
    }

    #[test]
    fn newc_layout_is_what_the_kernel_reads() {
        let mut buf = Vec::new();
        write(&mut buf, b"\x7fELFinit", &[("virtio".into(), b"ko1".to_vec()), ("9p".into(), b"ko-two".to_vec())])
            .expect("write");
        assert_eq!(buf.len() % 4, 0);
        let entries = parse(&buf);
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("init").1, S_IFREG | 0o755);
        assert_eq!(find("init").3, b"\x7fELFinit");
        assert_eq!((find("dev/console").1, find("dev/console").2), (S_IFCHR | 0o600, 5));
        assert_eq!(find("etc/pod-vm-guest").1, S_IFREG | 0o644);
        assert_eq!(find("pod").1, S_IFDIR | 0o755);
        assert_eq!(find("lib/pod/modules/000-virtio.ko").3, b"ko1");
        assert_eq!(find("lib/pod/modules/001-9p.ko").3, b"ko-two");
        // Directories come before what they hold.
        let pos = |n: &str| entries.iter().position(|e| e.0 == n).expect("present");
        assert!(pos("lib/pod/modules") < pos("lib/pod/modules/000-virtio.ko"));
    }

    #[test]
    fn cache_is_keyed_by_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("pod-init");
        let module = dir.path().join("m.ko");
        fs::write(&init, b"init v1").expect("write");
        fs::write(&module, b"module").expect("write");
        let cache = dir.path().join("cache");
        let mods = [("m".to_owned(), module.clone())];
        let a = build_cached(&init, &mods, &cache).expect("build");
        assert_eq!(build_cached(&init, &mods, &cache).expect("again"), a);
        fs::write(&init, b"init v2").expect("write");
        let b = build_cached(&init, &mods, &cache).expect("rebuild");
        assert_ne!(a, b, "a new pod-init makes a new initramfs");
        assert!(parse(&fs::read(&b).expect("read")).iter().any(|e| e.0 == "init" && e.3 == b"init v2"));
        assert!(!a.exists(), "the image for the old pod-init is pruned");
    }
}
