//! `pod fetch` of OCI sources: picks the [`BlobSource`] (a registry, a
//! layout, an archive unpacked into staging), the name the image is stored
//! and trusted under, and how its signature is checked, then pulls it.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use spec::oci::{OciSource, Reference};
use spec::{ImageId, ImageName};

use super::{FetchError, Fetcher, PullPolicy};
use crate::oci::layout::{self, DockerArchiveSource, LayoutSource};
use crate::oci::pull::{self, BlobSource, Platform, Request, Verify};
use crate::oci::OciError;
use crate::store::{ImageMeta, Staging, StoreError};

/// Largest detached payload or signature file read.
const MAX_SIGNATURE_FILE: u64 = 64 << 10;

impl Fetcher<'_> {
    /// Fetches an OCI image; returns it and whether this call added it.
    pub(super) fn fetch_oci(&mut self, src: &OciSource) -> Result<(ImageMeta, bool), FetchError> {
        let platform = self.opts.platform.clone().unwrap_or_else(Platform::host);
        let location = src.to_string();
        // An archive is unpacked into a staging dir that must outlive the pull.
        let mut _unpacked = None;
        let (source, name, verify, reference, tag): (Box<dyn BlobSource>, _, _, _, _) =
            match src {
                OciSource::Registry(r) => {
                    if let Some(hit) = self.stored(r, &platform)? {
                        return Ok((hit, false));
                    }
                    if let Some(pulled) = self.pull_from_mirrors(r, &platform)? {
                        return Ok(pulled);
                    }
                    let verify = if self.opts.insecure.image { Verify::Skip } else { Verify::Attached(self.trust) };
                    let source = crate::oci::registry_source::RegistrySource::new(r, &self.opts)?;
                    (Box::new(source), r.name(), verify, r.reference().to_owned(), r.tag.clone())
                }
                OciSource::Layout { dir, tag } => {
                    let source = LayoutSource::open(Path::new(dir), location.clone())?;
                    let (name, verify) = self.local_identity(Path::new(dir), None)?;
                    (Box::new(source), name, verify, tag.clone().unwrap_or_default(), tag.clone())
                }
                OciSource::OciArchive { file, tag } => {
                    let (staging, dir) = self.unpack(file, "oci-archive", &location)?;
                    _unpacked = Some(staging);
                    let source = LayoutSource::open(&dir, location.clone())?;
                    let (name, verify) = self.local_identity(Path::new(file), None)?;
                    (Box::new(source), name, verify, tag.clone().unwrap_or_default(), tag.clone())
                }
                OciSource::DockerArchive { file, name } => {
                    let (staging, dir) = self.unpack(file, "docker-archive", &location)?;
                    _unpacked = Some(staging);
                    let source = DockerArchiveSource::open(&dir, name.as_deref(), location.clone())?;
                    let named = source.repo_tag.as_deref().map(Reference::parse).transpose().map_err(|why| {
                        OciError::Invalid { location: location.clone(), why: format!("RepoTags: {why}") }
                    })?;
                    let (image_name, verify) = self.local_identity(Path::new(file), named.as_ref())?;
                    (Box::new(source), image_name, verify, String::new(), named.and_then(|n| n.tag))
                }
            };
        let req = Request {
            name,
            reference,
            tag,
            location,
            platform,
            verify,
            limits: self.opts.limits.clone(),
            progress: self.opts.progress,
        };
        let pulled = pull::pull(self.store, source.as_ref(), &req)?;
        Ok((pulled.meta, pulled.added))
    }

    /// Pulls `r` from the first of its mirrors (`pod mirror`) that has it,
    /// stored and verified under `r`'s own name; `None` when it has no
    /// mirror or none served it (each failure logged), and the caller pulls
    /// it from its own registry, as registries.conf mirrors fall back.
    fn pull_from_mirrors(&self, r: &Reference, platform: &Platform) -> Result<Option<(ImageMeta, bool)>, FetchError> {
        let candidates = crate::mirrors::Mirrors::new(self.store.dirs().mirrors()).candidates(r)?;
        for mirror in candidates {
            let verify = if self.opts.insecure.image { Verify::Skip } else { Verify::Attached(self.trust) };
            let req = Request {
                name: r.name(),
                reference: r.reference().to_owned(),
                tag: r.tag.clone(),
                location: format!("{mirror} (mirror of {r})"),
                platform: platform.clone(),
                verify,
                limits: self.opts.limits.clone(),
                progress: self.opts.progress,
            };
            let pulled = crate::oci::registry_source::RegistrySource::new(&mirror, &self.opts)
                .and_then(|source| pull::pull(self.store, &source, &req));
            match pulled {
                Ok(p) => {
                    tracing::info!(image = %r, %mirror, "pulled from a mirror");
                    return Ok(Some((p.meta, p.added)));
                }
                Err(error) => tracing::warn!(image = %r, %mirror, %error, "mirror failed; trying the next source"),
            }
        }
        Ok(None)
    }

    /// Unpacks an archive source into a new staging dir: the dir (removed
    /// when dropped) and where the archive's files are.
    fn unpack(&self, file: &str, purpose: &str, location: &str) -> Result<(Staging, PathBuf), FetchError> {
        let staging = self.store.staging(purpose)?;
        let dir = staging.path().join("archive");
        fs::create_dir(&dir).map_err(OciError::io("create directory", &dir))?;
        layout::unpack_archive(Path::new(file), &dir, &self.opts.limits, location)?;
        Ok((staging, dir))
    }

    /// A registry image already in the store, as the pull policy allows:
    /// by digest, or by name and tag for this platform.
    fn stored(&self, r: &Reference, platform: &Platform) -> Result<Option<ImageMeta>, FetchError> {
        let (store, opts) = (self.store, &self.opts);
        if let Some(d) = &r.digest {
            let id: ImageId =
                d.parse().map_err(|e| OciError::Invalid { location: r.to_string(), why: format!("{e}") })?;
            match store.meta(&id) {
                Ok(m) => return Ok(Some(m)),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else if opts.pull != PullPolicy::Always {
            let name = r.name();
            let hit = store.list()?.into_iter().find(|m| {
                m.oci.is_some()
                    && m.name == name
                    && m.labels.get("version") == r.tag.as_ref()
                    && m.labels.get("arch") == Some(&platform.arch)
                    && m.labels.get("os") == Some(&platform.os)
            });
            if hit.is_some() {
                return Ok(hit);
            }
        }
        if opts.pull == PullPolicy::Never {
            return Err(StoreError::NotFound(format!("{r} (pull policy: never)")).into());
        }
        Ok(None)
    }

    /// The name a local image is stored under and how it is verified: a
    /// detached signature's payload names it (and must be trusted for that
    /// name); without one, only `--insecure-options=image` lets it in, under
    /// the archive's own name or `localhost/<file name>`.
    fn local_identity(&self, path: &Path, named: Option<&Reference>) -> Result<(ImageName, Verify<'_>), FetchError> {
        let (trust, opts) = (self.trust, &self.opts);
        let location = path.display().to_string();
        if let Some(sig_path) = &opts.signature {
            let payload_path = payload_path(sig_path);
            let signature = read_small(sig_path)?;
            let payload = read_small(&payload_path)?;
            let reference = payload_reference(&payload)
                .map_err(|why| OciError::Invalid { location: payload_path.display().to_string(), why })?;
            return Ok((reference.name(), Verify::Detached { trust, payload, signature }));
        }
        if !opts.insecure.image {
            return Err(OciError::Signature(format!(
                "{location} carries no signature pod can check: pass --signature FILE (cosign's signature of the \
                 simple-signing payload beside it, FILE without .sig), or --insecure-options=image to skip \
                 verification (not recommended)"
            ))
            .into());
        }
        let name = match named {
            Some(r) => r.name(),
            None => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                let clean: String = stem
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                    .collect::<String>()
                    .split('-')
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("-");
                let clean = if clean.is_empty() { "image".to_owned() } else { clean };
                ImageName::new(format!("localhost/{clean}"))
                    .map_err(|e| OciError::Invalid { location: location.clone(), why: e.to_string() })?
            }
        };
        Ok((name, Verify::Skip))
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, FetchError> {
    let f = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FetchError::Missing(path.display().to_string()),
        _ => FetchError::Io { op: "open", path: path.to_owned(), source: e },
    })?;
    if !f.metadata().map_err(|e| FetchError::Io { op: "inspect", path: path.to_owned(), source: e })?.is_file() {
        return Err(OciError::Invalid { location: path.display().to_string(), why: "not a regular file".into() }.into());
    }
    let mut bytes = Vec::new();
    f.take(MAX_SIGNATURE_FILE + 1).read_to_end(&mut bytes).map_err(|e| FetchError::Io {
        op: "read",
        path: path.to_owned(),
        source: e,
    })?;
    if bytes.len() as u64 > MAX_SIGNATURE_FILE {
        return Err(OciError::Invalid {
            location: path.display().to_string(),
            why: format!("larger than {MAX_SIGNATURE_FILE} bytes"),
        }
        .into());
    }
    Ok(bytes)
}

/// The `docker-reference` of a simple-signing payload.
fn payload_reference(payload: &[u8]) -> Result<Reference, String> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not a signing payload: {e}"))?;
    let r = v
        .pointer("/critical/identity/docker-reference")
        .and_then(|x| x.as_str())
        .ok_or("the payload has no critical.identity.docker-reference")?;
    Reference::parse(r)
}

/// Where the payload of a detached signature is: the signature's path
/// without `.sig`.
fn payload_path(sig: &Path) -> PathBuf {
    sig.with_extension("")
}
