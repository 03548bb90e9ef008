//! The guest's kernel modules: which files, in which order. A module's
//! dependencies are read from its own `.modinfo` section (`depends=`), so no
//! `modules.dep` (and no depmod on the host) is needed; modules the kernel
//! has built in (`modules.builtin`) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What the guest needs: virtio over PCI, the 9p share, the network card and
/// the virtio-serial ports. (No entropy device: the guest kernel seeds its
/// RNG from the CPU's RDRAND, which KVM passes through and TCG's `max` CPU
/// emulates.)
pub const GUEST_MODULES: [&str; 5] = ["virtio_pci", "9pnet_virtio", "9p", "virtio_net", "virtio_console"];

/// The modules of [`GUEST_MODULES`] (with their own dependencies) that only
/// drive the network card: not loaded in a VM without one.
pub const NET_MODULES: [&str; 3] = ["virtio_net", "net_failover", "failover"];

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel module {name} is not in {dir} (needed by {by})")]
    Missing { name: String, dir: PathBuf, by: String },
    #[error("kernel module {path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error("kernel modules depend on each other in a cycle: {0}")]
    Cycle(String),
}

/// A module's name as the kernel knows it: `-` and `_` are the same.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The `.modinfo` section of an ELF64 little-endian module.
fn modinfo(elf: &[u8]) -> Result<&[u8], String> {
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not an ELF64 little-endian file (compressed modules are not supported)".into());
    }
    let bad = || "truncated ELF header".to_owned();
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28).ok_or_else(bad)?,
        u16_at(0x3a).ok_or_else(bad)?,
        u16_at(0x3c).ok_or_else(bad)?,
        u16_at(0x3e).ok_or_else(bad)?,
    );
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, str_off, str_size) = section(shstrndx).ok_or("bad section header table")?;
    let names = elf.get(str_off..str_off.checked_add(str_size).ok_or("bad string table")?).ok_or("bad string table")?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or("bad section header")?;
        let name = names.get(name as usize..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            return elf.get(off..off.checked_add(size).ok_or("bad .modinfo")?).ok_or_else(|| "bad .modinfo".into());
        }
    }
    Err("no .modinfo section".into())
}

/// The modules a module depends on, from `depends=` in its `.modinfo`.
pub fn depends(elf: &[u8]) -> Result<Vec<String>, String> {
    let info = modinfo(elf)?;
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|list| String::from_utf8_lossy(list).split(',').map(canonical).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect())
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Removes the signature a distribution appends to a module
/// (`[module][signature][struct module_signature: 12 bytes][magic]`), if it
/// has one. Under TCG the guest kernel's check of each signature (PKCS#7,
/// RSA) costs more than the rest of the boot: about 2.5 s for the 15
/// modules. It adds nothing here: the modules come from the host's guest
/// kernel tree into an initramfs the host builds; the guest (whose kernel
/// does not enforce signatures) notes the unsigned modules in its taint
/// flags and loads them.
pub fn strip_signature(module: &mut Vec<u8>) -> Result<(), String> {
    let Some(head) = module.strip_suffix(SIGNATURE_MAGIC) else { return Ok(()) };
    let info = head.len().checked_sub(12).ok_or("truncated module signature")?;
    let sig = &head[info..];
    let sig_len = u32::from_be_bytes([sig[8], sig[9], sig[10], sig[11]]) as usize;
    let total = sig_len + usize::from(sig[3]) + usize::from(sig[4]);
    let keep = info.checked_sub(total).ok_or("module signature longer than the module")?;
    module.truncate(keep);
    Ok(())
}

/// Every `.ko` under `dir` by canonical name, and the built-in modules.
fn index(dir: &Path) -> Result<(BTreeMap<String, PathBuf>, BTreeSet<String>), KmodError> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|source| KmodError::Io { op: "read", path: d.clone(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                files.insert(canonical(name), path);
            }
        }
    }
    let builtin = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name()?.to_str()?.strip_suffix(".ko").map(canonical))
        .collect();
    Ok((files, builtin))
}

/// The module files to load, dependencies first, for `wanted` from the
/// module tree `dir` (`/lib/modules/<version>`).
pub fn resolve(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, KmodError> {
    let (files, builtin) = index(dir)?;
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for w in wanted {
        visit(&canonical(w), "the VM stage1", dir, &files, &builtin, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[allow(clippy::too_many_arguments)]
fn visit(
    name: &str,
    by: &str,
    dir: &Path,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<(), KmodError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        path.push(name.to_owned());
        return Err(KmodError::Cycle(path.join(" -> ")));
    }
    let file = files.get(name).ok_or_else(|| KmodError::Missing {
        name: name.to_owned(),
        dir: dir.to_owned(),
        by: by.to_owned(),
    })?;
    let elf = fs::read(file).map_err(|source| KmodError::Io { op: "read", path: file.clone(), source })?;
    let deps = depends(&elf).map_err(|why| KmodError::Format { path: file.clone(), why })?;
    path.push(name.to_owned());
    for d in deps {
        visit(&d, name, dir, files, builtin, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_owned());
    order.push((name.to_owned(), file.clone()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and a `.modinfo`.
    pub(crate) fn fake_module(info: &str) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_off = elf.len();
        elf.extend_from_slice(names);
        let info_off = elf.len();
        elf.extend_from_slice(info.as_bytes());
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut header = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend(h);
        };
        header(0, 0, 0);
        header(1, names_off, names.len());
        header(11, info_off, info.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    fn tree(mods: &[(&str, &str)], builtin: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, depends) in mods {
            let p = dir.path().join("kernel").join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, fake_module(&format!("license=GPL\0depends={depends}\0name=x\0"))).expect("write");
        }
        fs::write(dir.path().join("modules.builtin"), builtin).expect("write");
        dir
    }

    #[test]
    fn strips_appended_signatures_only() {
        let mut signed = b"\x7fELF module body".to_vec();
        let sig = b"PKCS7-SIGNATURE-BYTES";
        signed.extend_from_slice(sig);
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&u32::try_from(sig.len()).expect("small").to_be_bytes());
        signed.extend_from_slice(SIGNATURE_MAGIC);
        strip_signature(&mut signed).expect("strip");
        assert_eq!(signed, b"\x7fELF module body");
        let mut plain = b"\x7fELF unsigned".to_vec();
        strip_signature(&mut plain).expect("nothing to strip");
        assert_eq!(plain, b"\x7fELF unsigned");
        let mut bogus = [&[0u8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0][..], SIGNATURE_MAGIC].concat();
        assert!(strip_signature(&mut bogus).is_err());
    }

    #[test]
    fn reads_depends_from_modinfo() {
        assert_eq!(depends(&fake_module("depends=virtio,virtio-ring\0")).expect("ok"), ["virtio", "virtio_ring"]);
        assert_eq!(depends(&fake_module("depends=\0")).expect("ok"), Vec::<String>::new());
        assert!(depends(b"\x1f\x8bcompressed").is_err_and(|e| e.contains("compressed")));
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let t = tree(
            &[
                ("drivers/virtio/virtio_ring.ko", ""),
                ("drivers/virtio/virtio.ko", "virtio_ring"),
                ("drivers/virtio/virtio_pci.ko", "virtio,virtio_ring,virtio_pci_modern_dev"),
                ("drivers/virtio/virtio_pci_modern_dev.ko", ""),
                ("net/9p/9pnet.ko", "fscache"),
                ("fs/9p/9p.ko", "9pnet"),
            ],
            "kernel/fs/fscache/fscache.ko\n",
        );
        let names: Vec<String> =
            resolve(t.path(), &["virtio-pci", "9p"]).expect("resolve").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "9pnet", "9p"]);
    }

    #[test]
    fn missing_modules_and_cycles_are_named() {
        let t = tree(&[("a.ko", "b"), ("b.ko", "a"), ("c.ko", "nope")], "");
        assert!(matches!(resolve(t.path(), &["a"]), Err(KmodError::Cycle(c)) if c == "a -> b -> a"));
        let e = resolve(t.path(), &["c"]).expect_err("missing");
        assert!(e.to_string().contains("nope is not in") && e.to_string().contains("needed by c"), "{e}");
    }
}
