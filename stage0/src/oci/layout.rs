//! Local OCI sources: an image layout directory (`oci:DIR[:TAG]`), a tar of
//! one (`oci-archive:FILE[:TAG]`) and what `docker save` / `podman save`
//! write (`docker-archive:FILE[:NAME:TAG]`). Each serves manifests and
//! blobs like a registry does, every blob checked against its digest as it
//! is read; archives are unpacked first into a staging dir, accepting only
//! plain files and directories under relative paths.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageIndex;
use serde::Deserialize;

use super::pull::{self, BlobSource, RawManifest, MAX_MANIFEST};
use super::OciError;
use crate::archive::Limits;

/// The annotation naming an index entry's tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
#[derive(Debug)]
pub struct LayoutSource {
    dir: PathBuf,
    describe: String,
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, OciError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => OciError::NotFound(path.display().to_string()),
        _ => OciError::Io { op: "open", path: path.to_owned(), source: e },
    })?;
    let mut bytes = Vec::new();
    f.take(cap + 1).read_to_end(&mut bytes).map_err(OciError::io("read", path))?;
    if bytes.len() as u64 > cap {
        return Err(OciError::Invalid {
            location: path.display().to_string(),
            why: format!("larger than {cap} bytes"),
        });
    }
    Ok(bytes)
}

fn blob_file(dir: &Path, digest: &str) -> Result<PathBuf, OciError> {
    spec::oci::check_digest(digest).map_err(|why| OciError::Invalid { location: dir.display().to_string(), why })?;
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

impl LayoutSource {
    pub fn open(dir: &Path, describe: String) -> Result<Self, OciError> {
        let marker = dir.join("oci-layout");
        let text = read_capped(&marker, 4096)?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| OciError::Invalid { location: describe.clone(), why: format!("oci-layout: {e}") })?;
        if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
            return Err(OciError::Invalid {
                location: describe,
                why: "oci-layout: imageLayoutVersion is not 1.0.0".into(),
            });
        }
        Ok(Self { dir: dir.to_owned(), describe })
    }

    /// The digest of the index entry named `tag`, or of the only entry.
    fn resolve(&self, tag: Option<&str>) -> Result<String, OciError> {
        let index_file = self.dir.join("index.json");
        let bytes = read_capped(&index_file, MAX_MANIFEST as u64)?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| OciError::Invalid { location: self.describe.clone(), why: format!("index.json: {e}") })?;
        let tag_of = |m: &oci_spec::image::Descriptor| m.annotations().as_ref().and_then(|a| a.get(REF_NAME).cloned());
        let tags: Vec<String> = index.manifests().iter().filter_map(tag_of).collect();
        let hit = match tag {
            // An index that tags nothing (skopeo's oci-archive) and holds one
            // image: that image, whatever tag was asked.
            Some(_) if tags.is_empty() && index.manifests().len() == 1 => index.manifests().first(),
            Some(t) => index.manifests().iter().find(|m| tag_of(m).as_deref() == Some(t)),
            None if index.manifests().len() == 1 => index.manifests().first(),
            None => {
                return Err(OciError::Invalid {
                    location: self.describe.clone(),
                    why: format!(
                        "holds {} images; name one as {}:TAG (tags: {})",
                        index.manifests().len(),
                        self.describe,
                        tags.join(", ")
                    ),
                })
            }
        };
        hit.map(|m| m.digest().to_string())
            .ok_or_else(|| OciError::NotFound(format!("{} (its tags: {})", self.describe, tags.join(", "))))
    }
}

impl BlobSource for LayoutSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn manifest(&self, reference: &str) -> Result<RawManifest, OciError> {
        let digest = if reference.starts_with("sha256:") {
            reference.to_owned()
        } else {
            self.resolve((!reference.is_empty()).then_some(reference))?
        };
        let bytes = read_capped(&blob_file(&self.dir, &digest)?, MAX_MANIFEST as u64)?;
        let raw = RawManifest::new(None, bytes);
        if raw.digest != digest {
            return Err(OciError::DigestMismatch {
                what: format!("manifest {digest} of {}", self.describe),
                wanted: digest,
                got: raw.digest,
            });
        }
        Ok(raw)
    }

    fn blob(
        &self,
        digest: &str,
        size: u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), OciError> {
        serve_file(&blob_file(&self.dir, digest)?, digest, size, out, progress, &self.describe)
    }
}

/// Streams the file holding blob `digest` of `describe` into `out`,
/// checking its size and digest.
fn serve_file(
    path: &Path,
    digest: &str,
    size: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
    describe: &str,
) -> Result<(), OciError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => OciError::NotFound(format!("blob {digest} in {describe}")),
        _ => OciError::Io { op: "open", path: path.to_owned(), source: e },
    })?;
    let what = format!("blob {digest} of {describe}");
    pull::copy_verified(io::BufReader::with_capacity(1 << 20, f), digest, size, out, progress, &what)
}

/// Unpacks an archive of plain files and directories into the empty `dest`.
/// Symlinks (older `docker save` links repeated layers) are kept only when
/// they point inside the archive and are resolved to copies, never
/// followed on disk.
pub fn unpack_archive(file: &Path, dest: &Path, limits: &Limits, location: &str) -> Result<(), OciError> {
    let invalid = |why: String| OciError::Invalid { location: location.to_owned(), why };
    let mut f = File::open(file).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => OciError::NotFound(file.display().to_string()),
        _ => OciError::Io { op: "open", path: file.to_owned(), source: e },
    })?;
    let mut magic = [0u8; 4];
    // Short files are plain tars (or fail as such below).
    let _ = f.read(&mut magic);
    let f = File::open(file).map_err(OciError::io("open", file))?;
    let reader: Box<dyn Read> = match crate::archive::Compression::detect(&magic) {
        crate::archive::Compression::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        crate::archive::Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(f).map_err(|e| invalid(format!("zstd: {e}")))?)
        }
        crate::archive::Compression::None => Box::new(f),
    };
    let mut ar = tar::Archive::new(reader.take(limits.max_uncompressed));
    let mut links = Vec::new();
    let mut count = 0u64;
    for entry in ar.entries().map_err(|e| invalid(format!("malformed tar: {e}")))? {
        let mut entry = entry.map_err(|e| invalid(format!("malformed tar: {e}")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(invalid(format!("more than {} entries", limits.max_entries)));
        }
        let raw = entry.path().map_err(|e| invalid(format!("entry path: {e}")))?.into_owned();
        let rel = relative(&raw).ok_or_else(|| invalid(format!("entry {:?}: absolute or '..' path", raw.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => fs::create_dir_all(&path).map_err(OciError::io("create directory", &path))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(OciError::io("create directory", parent))?;
                }
                // create_new: a second entry of one name is refused, and a
                // symlink placed earlier could not be written through (none
                // are created on disk anyway).
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| invalid(format!("entry {}: {e}", rel.display())))?;
                io::copy(&mut entry, &mut out).map_err(|e| invalid(format!("entry {}: {e}", rel.display())))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| invalid(format!("entry {}: {e}", rel.display())))?;
                let target =
                    target.ok_or_else(|| invalid(format!("entry {}: symlink without target", rel.display())))?;
                let base = rel.parent().unwrap_or(Path::new(""));
                let joined = relative(&base.join(target.as_ref()))
                    .ok_or_else(|| invalid(format!("entry {}: symlink out of the archive", rel.display())))?;
                links.push((rel, joined));
            }
            other => return Err(invalid(format!("entry {}: {other:?} entries are not allowed", rel.display()))),
        }
    }
    for (link, target) in links {
        let (from, to) = (dest.join(&target), dest.join(&link));
        let m =
            fs::symlink_metadata(&from).map_err(|_| invalid(format!("entry {}: dangling symlink", link.display())))?;
        if !m.is_file() {
            return Err(invalid(format!("entry {}: symlink to a non-file", link.display())));
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(OciError::io("create directory", parent))?;
        }
        fs::copy(&from, &to).map_err(OciError::io("copy", &from))?;
    }
    Ok(())
}

/// `a/./b/../c` → `a/c`; None if it is absolute or climbs out.
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An unpacked `docker save` archive, served as an OCI image whose manifest
/// pod writes: the config and layer files as blobs (layers as plain tars),
/// their digests computed here. Its ID is that manifest's digest.
#[derive(Debug)]
pub struct DockerArchiveSource {
    manifest: RawManifest,
    blobs: BTreeMap<String, PathBuf>,
    describe: String,
    /// The `RepoTags` entry picked, e.g. `example.com/web:1.0`.
    pub repo_tag: Option<String>,
}

impl DockerArchiveSource {
    /// `dir` is an unpacked archive; `name` picks an image by `RepoTags`.
    pub fn open(dir: &Path, name: Option<&str>, describe: String) -> Result<Self, OciError> {
        let invalid = |why: String| OciError::Invalid { location: describe.clone(), why };
        let bytes = read_capped(&dir.join("manifest.json"), MAX_MANIFEST as u64)?;
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let tags_of = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
        let entry = match name {
            Some(n) => entries.iter().find(|e| tags_of(e).iter().any(|t| t == n)),
            None if entries.len() == 1 => entries.first(),
            None => {
                let all: Vec<String> = entries.iter().flat_map(tags_of).collect();
                return Err(invalid(format!(
                    "holds {} images; name one as {describe}:NAME:TAG ({})",
                    entries.len(),
                    all.join(", ")
                )));
            }
        };
        let entry = entry.ok_or_else(|| OciError::NotFound(format!("{describe}:{}", name.unwrap_or(""))))?;
        let mut blobs = BTreeMap::new();
        let path_of = |rel: &str| -> Result<PathBuf, OciError> {
            let r = relative(Path::new(rel)).ok_or_else(|| invalid(format!("manifest.json names {rel:?}")))?;
            Ok(dir.join(r))
        };
        let config_path = path_of(&entry.config)?;
        let (config_digest, config_size) = super::store::file_digest(&config_path)?;
        blobs.insert(config_digest.clone(), config_path);
        let mut layers = Vec::new();
        for l in &entry.layers {
            let p = path_of(l)?;
            let (digest, size) = super::store::file_digest(&p)?;
            // Newer `docker save` stores layers as OCI blobs, maybe
            // compressed: the media type follows the bytes.
            let mut magic = [0u8; 4];
            let _ = File::open(&p).and_then(|mut f| f.read(&mut magic));
            let media_type = match crate::archive::Compression::detect(&magic) {
                crate::archive::Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                crate::archive::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                crate::archive::Compression::None => "application/vnd.oci.image.layer.v1.tar",
            };
            layers.push(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size }));
            blobs.insert(digest, p);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": pull::MT_OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
        let repo_tag = name.map(str::to_owned).or_else(|| tags_of(entry).into_iter().next());
        Ok(Self { manifest: RawManifest::new(None, bytes), blobs, describe, repo_tag })
    }
}

impl BlobSource for DockerArchiveSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn manifest(&self, reference: &str) -> Result<RawManifest, OciError> {
        if reference.starts_with("sha256:") && reference != self.manifest.digest {
            return Err(OciError::NotFound(format!("{reference} in {}", self.describe)));
        }
        Ok(self.manifest.clone())
    }
    fn blob(
        &self,
        digest: &str,
        size: u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), OciError> {
        let path =
            self.blobs.get(digest).ok_or_else(|| OciError::NotFound(format!("blob {digest} in {}", self.describe)))?;
        serve_file(path, digest, size, out, progress, &self.describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("./a/b/../c")), Some(PathBuf::from("a/c")));
        assert_eq!(relative(Path::new("../a")), None);
        assert_eq!(relative(Path::new("/a")), None);
    }

    #[test]
    fn layout_serves_verified_blobs() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = t.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap_or_else(|e| panic!("{e}"));
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
        let d = pull::sha256_digest(m);
        fs::write(dir.join("blobs/sha256").join(&d[7..]), m).unwrap_or_else(|e| panic!("{e}"));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{},"annotations":{{"{REF_NAME}":"v1"}}}}]}}"#,
            m.len()
        );
        fs::write(dir.join("index.json"), index).unwrap_or_else(|e| panic!("{e}"));
        let src = LayoutSource::open(dir, "oci:test".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(src.manifest("v1").map(|r| r.digest).ok(), Some(d.clone()));
        assert_eq!(src.manifest("").map(|r| r.digest).ok(), Some(d.clone()));
        assert!(matches!(src.manifest("v2"), Err(OciError::NotFound(_))));
        let mut out = Vec::new();
        src.blob(&d, m.len() as u64, &mut out, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, m);
        // Tampered on disk: refused.
        fs::write(dir.join("blobs/sha256").join(&d[7..]), b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(src.manifest("v1"), Err(OciError::DigestMismatch { .. })));
        assert!(src.blob(&d, m.len() as u64, &mut Vec::new(), &mut |_| {}).is_err());
    }
}
