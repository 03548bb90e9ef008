//! Tier (a) tests of ACI archives and OCI layers, in temp dirs: round trips
//! through pack and extract, one test per kind of hostile archive, and a
//! tier (b) test mounting applied layers with overlayfs. Hostile archives
//! are written block by block ([`RawTar`]): the tar crate's own builder
//! refuses to write most of them.

mod hostile;
mod layer;
mod layer_hostile;
mod layer_overlay;
mod round_trip;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use sha2::{Digest, Sha512};
use spec::{ImageId, ImageManifest, ManifestError, MAX_MANIFEST_BYTES};
use tar::{EntryType, Header};

use super::*;

const MTIME: i64 = 1_600_000_000;

fn manifest_json() -> Vec<u8> {
    br#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/test","labels":[{"name":"os","value":"linux"}]}"#
        .to_vec()
}

fn manifest() -> ImageManifest {
    ImageManifest::parse(&manifest_json()).expect("valid test manifest")
}

fn sha512_id(bytes: &[u8]) -> ImageId {
    let mut digest = [0u8; 64];
    digest.copy_from_slice(&Sha512::digest(bytes));
    ImageId::from_digest(&digest)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A tar written block by block, so that it can say anything at all.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn header(name: &[u8], ty: EntryType, mode: u32, size: u64, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME.unsigned_abs());
        h.set_size(size);
        h.set_cksum();
        h
    }

    fn push(&mut self, header: &Header, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.resize(self.0.len() + pad, 0);
        self
    }

    fn entry(&mut self, name: &[u8], ty: EntryType, mode: u32, data: &[u8], link: &[u8]) -> &mut Self {
        self.push(&Self::header(name, ty, mode, data.len() as u64, link), data)
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Regular, 0o644, data, b"")
    }
    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Directory, mode, b"", b"")
    }
    fn symlink(&mut self, name: &str, target: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Symlink, 0o777, b"", target)
    }
    fn hardlink(&mut self, name: &str, target: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Link, 0o644, b"", target)
    }
    fn manifest(&mut self) -> &mut Self {
        self.file("manifest", &manifest_json())
    }
    /// A GNU long-name entry for the next entry.
    fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        self.entry(b"././@LongLink", EntryType::GNULongName, 0o644, &data, b"")
    }
    /// A pax extended header with one `key=value` record for the next entry.
    fn pax(&mut self, key: &str, value: &[u8]) -> &mut Self {
        let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
        // The record's length counts its own digits.
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        let record = [len.to_string().as_bytes(), &body].concat();
        self.entry(b"././@PaxHeader", EntryType::XHeader, 0o644, &record, b"")
    }
    fn finish(&mut self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.resize(out.len() + 1024, 0);
        out
    }
    /// Without the end-of-archive blocks.
    fn unfinished(&mut self) -> Vec<u8> {
        self.0.clone()
    }
}

/// A temp dir holding the extraction `dest` and a sibling `outside` that
/// must stay empty whatever the archive says.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(tmp.path().join("dest")).expect("mkdir dest");
        fs::create_dir(tmp.path().join("outside")).expect("mkdir outside");
        Self { tmp }
    }
    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }
    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }
    fn extract(&self, bytes: &[u8]) -> Result<Extracted, ArchiveError> {
        self.extract_from(bytes)
    }
    fn extract_from(&self, src: impl Read) -> Result<Extracted, ArchiveError> {
        extract_aci(src, &self.dest(), &Limits::default())
    }

    /// Extracts a hostile archive: must fail as invalid input, naming
    /// `entry`, with nothing written outside dest.
    fn refuse(&self, bytes: &[u8], entry: &str) -> ArchiveError {
        let err = self.extract(bytes).expect_err("hostile archive was accepted");
        let msg = err.to_string();
        assert!(msg.contains(entry), "error {msg:?} does not name {entry:?}");
        assert_eq!(err.exit(), Exit::InvalidInput, "{msg}");
        self.assert_outside_untouched();
        err
    }

    fn assert_outside_untouched(&self) {
        let left: Vec<_> = fs::read_dir(self.outside()).expect("read outside").collect();
        assert!(left.is_empty(), "written outside dest: {left:?}");
        let stray: Vec<_> = fs::read_dir(self.tmp.path())
            .expect("read tmp")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "dest" && n != "outside" && n != "secret")
            .collect();
        assert!(stray.is_empty(), "written next to dest: {stray:?}");
    }

    /// A file outside dest that hostile hard links aim at.
    fn secret(&self) -> PathBuf {
        let dir = self.tmp.path().join("secret");
        fs::create_dir_all(&dir).expect("mkdir secret");
        let file = dir.join("file");
        fs::write(&file, b"secret").expect("write secret");
        file
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn reason(err: &ArchiveError) -> &Reject {
    match err {
        ArchiveError::Rejected { reason, .. } => reason,
        other => panic!("expected a rejected entry, got {other:?}"),
    }
}
