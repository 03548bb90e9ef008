//! Pulling an OCI image from any [`BlobSource`] (a registry, a layout, an
//! archive) into the store, verified:
//!
//! 1. the manifest (or index, then the platform's manifest) is read with its
//!    size capped and its digest computed from the bytes;
//! 2. the signature is checked against the manifest's (or the index's)
//!    digest before any blob is fetched: cosign's attachment in the
//!    registry, a detached payload + signature, or nothing with
//!    `--insecure-options=image`;
//! 3. the config and every layer blob are fetched into a staging dir, each
//!    digest and size verified while it streams, in parallel;
//! 4. each new layer is applied into a tree of its own (hardened, with
//!    overlayfs whiteouts) and its uncompressed digest checked against the
//!    config's `rootfs.diff_ids`;
//! 5. blobs and layers move into place, then the image entry, by rename(2).
//!
//! A failure at any step leaves the store as it was: staging dirs are
//! removed on drop (and by gc after a kill); blobs and layers that did make
//! it in are verified, complete and unreferenced until gc.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use spec::{ImageId, ImageName};

use crate::archive::Limits;
use crate::crashpoint::crashpoint;
use crate::store::{ImageMeta, Store};

use super::store::{self as oci_store, LayerMeta, OciMeta};
use super::OciError;

mod layers;
use layers::{fetch_blob, fetch_layers};

/// Largest manifest, index or signature manifest read.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG: u64 = 16 << 20;
/// Most layers in one image (docker's limit is 127).
pub const MAX_LAYERS: usize = 256;
/// Most entries in an index.
const MAX_INDEX_ENTRIES: usize = 1024;
/// Layers fetched and applied at once.
const PARALLEL: usize = 4;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest or index as read, with the digest of its bytes.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

impl RawManifest {
    pub fn new(media_type: Option<String>, bytes: Vec<u8>) -> Self {
        let digest = sha256_digest(&bytes);
        // The body's own mediaType wins over a transport's Content-Type;
        // without either (umoci writes none), the shape tells: an index
        // lists `manifests`, an image manifest `layers`.
        let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let body_type = body.as_ref().and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned));
        let sniffed = body.as_ref().and_then(|v| {
            if v.get("manifests").is_some() {
                Some(MT_OCI_INDEX.to_owned())
            } else {
                v.get("layers").map(|_| MT_OCI_MANIFEST.to_owned())
            }
        });
        let transport =
            media_type.filter(|t| !t.is_empty() && t != "application/json" && t != "application/octet-stream");
        let media_type = body_type.or(transport).or(sniffed).unwrap_or_default();
        Self { media_type, bytes, digest }
    }
    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Where manifests and blobs come from.
pub trait BlobSource: Sync {
    /// For messages: `docker://127.0.0.1:5000/team/web`, `oci:/srv/layout`.
    fn describe(&self) -> String;
    /// A manifest or index by tag or digest. A digest reference must be
    /// checked against the bytes; [`OciError::NotFound`] if there is none.
    fn manifest(&self, reference: &str) -> Result<RawManifest, OciError>;
    /// Streams a blob into `out`, failing if its size or digest differ.
    fn blob(&self, digest: &str, size: u64, out: &mut dyn Write, progress: &mut dyn FnMut(u64))
        -> Result<(), OciError>;
}

/// How the pulled image's signature is checked.
#[derive(Debug)]
pub enum Verify<'a> {
    /// cosign's `sha256-<hex>.sig` attachment, from the same source.
    Attached(&'a crate::trust::TrustStore),
    /// A payload and its signature given by the user (`--signature`).
    Detached { trust: &'a crate::trust::TrustStore, payload: Vec<u8>, signature: Vec<u8> },
    /// `--insecure-options=image`.
    Skip,
}

/// What to pull.
#[derive(Debug)]
pub struct Request<'a> {
    /// The name recorded (and matched against trust prefixes).
    pub name: ImageName,
    /// A tag or a digest, as the source resolves it.
    pub reference: String,
    pub tag: Option<String>,
    /// For messages and `meta.json`'s `source`.
    pub location: String,
    /// `os/arch[/variant]`; default `linux/amd64` (the host's).
    pub platform: Platform,
    pub verify: Verify<'a>,
    pub limits: Limits,
    pub progress: bool,
}

/// A platform to pick from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The host's: `linux/amd64` here.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self { os: std::env::consts::OS.to_owned(), arch: arch.to_owned(), variant: None }
    }
    /// `linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self { os: (*os).into(), arch: (*arch).into(), variant: None }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Self { os: (*os).into(), arch: (*arch).into(), variant: Some((*v).into()) })
            }
            _ => Err(format!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64")),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub meta: ImageMeta,
    pub added: bool,
}

/// Picks the platform's manifest from an index.
fn pick(index: &RawManifest, platform: &Platform, location: &str) -> Result<(String, u64), OciError> {
    let idx: ImageIndex = serde_json::from_slice(&index.bytes)
        .map_err(|e| OciError::Invalid { location: location.to_owned(), why: format!("image index: {e}") })?;
    if idx.manifests().len() > MAX_INDEX_ENTRIES {
        return Err(OciError::Invalid {
            location: location.to_owned(),
            why: format!("image index has {} entries; the limit is {MAX_INDEX_ENTRIES}", idx.manifests().len()),
        });
    }
    let mut seen = Vec::new();
    for m in idx.manifests() {
        let Some(p) = m.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        seen.push(format!("{os}/{arch}{}", p.variant().as_ref().map(|v| format!("/{v}")).unwrap_or_default()));
        let variant_ok = match (&platform.variant, p.variant()) {
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if os == platform.os && arch == platform.arch && variant_ok {
            return Ok((m.digest().to_string(), m.size()));
        }
    }
    Err(OciError::NoPlatform {
        location: location.to_owned(),
        platform: platform.to_string(),
        available: if seen.is_empty() { "none".into() } else { seen.join(", ") },
    })
}

fn parse_manifest(raw: &RawManifest, location: &str) -> Result<ImageManifest, OciError> {
    let invalid = |why: String| OciError::Invalid { location: location.to_owned(), why };
    match raw.media_type.as_str() {
        MT_OCI_MANIFEST | MT_DOCKER_MANIFEST | "" => {}
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => {
            return Err(invalid("Docker schema 1 manifests are not supported (deprecated and unverifiable)".into()))
        }
        other => return Err(invalid(format!("unsupported manifest media type {other:?}"))),
    }
    let m: ImageManifest = serde_json::from_slice(&raw.bytes).map_err(|e| invalid(format!("image manifest: {e}")))?;
    if m.layers().len() > MAX_LAYERS {
        return Err(invalid(format!("{} layers; the limit is {MAX_LAYERS}", m.layers().len())));
    }
    if m.config().size() > MAX_CONFIG {
        return Err(invalid(format!("config of {} bytes; the limit is {MAX_CONFIG}", m.config().size())));
    }
    // The store names blobs and layers by sha256 (and `image verify`
    // re-hashes with it): another algorithm, valid as it may be, is refused
    // here rather than stored unverifiable or failing half-way.
    for (what, d) in std::iter::once(("config", m.config())).chain(m.layers().iter().map(|l| ("layer", l))) {
        let digest = d.digest().to_string();
        if spec::oci::check_digest(&digest).is_err() {
            return Err(invalid(format!("{what} digest {digest:?}: only sha256 digests are supported")));
        }
    }
    Ok(m)
}

/// Pulls `req` from `src` into `store`.
pub fn pull(store: &Store, src: &dyn BlobSource, req: &Request<'_>) -> Result<Pulled, OciError> {
    let loc = req.location.as_str();
    let top = src.manifest(&req.reference)?;
    let (manifest_raw, index_digest) = if top.is_index() {
        let (digest, size) = pick(&top, &req.platform, loc)?;
        if size > MAX_MANIFEST as u64 {
            return Err(OciError::Invalid { location: loc.to_owned(), why: format!("manifest of {size} bytes") });
        }
        let m = src.manifest(&digest)?;
        if m.digest != digest {
            return Err(OciError::DigestMismatch { what: format!("manifest of {loc}"), wanted: digest, got: m.digest });
        }
        (m, Some(top.digest.clone()))
    } else {
        (top, None)
    };
    crashpoint("oci.manifest");

    let signer = super::verify::check(src, req, &manifest_raw.digest, index_digest.as_deref())?;
    crashpoint("oci.verified");

    let manifest = parse_manifest(&manifest_raw, loc)?;
    let id: ImageId = manifest_raw
        .digest
        .parse()
        .map_err(|e| OciError::Invalid { location: loc.to_owned(), why: format!("manifest digest: {e}") })?;
    if store.meta(&id).is_ok() {
        // The same manifest by another name or tag: that name is recorded
        // too (its signature was checked for it above).
        let meta = store.add_name(&id, &req.name, req.tag.as_deref())?;
        return Ok(Pulled { meta, added: false });
    }

    // --max-image-size bounds the download too, as for an ACI: the sizes
    // the manifest declares add up before any blob is fetched. (Each
    // layer's uncompressed size is capped as it is applied.)
    let declared = manifest.layers().iter().fold(manifest.config().size(), |n, l| n.saturating_add(l.size()));
    if declared > req.limits.max_uncompressed {
        return Err(OciError::Invalid {
            location: loc.to_owned(),
            why: format!(
                "its config and layers are {declared} bytes, more than the limit of {} bytes (--max-image-size)",
                req.limits.max_uncompressed
            ),
        });
    }

    let dirs = store.dirs();
    let staging = store.staging("oci")?;
    let config_desc = manifest.config();
    let config_digest = config_desc.digest().to_string();
    let config_file = staging.path().join("config.json");
    fetch_blob(src, dirs, &config_digest, config_desc.size(), &config_file, None)?;
    let config_bytes = fs::read(&config_file).map_err(OciError::io("read", &config_file))?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::Invalid { location: loc.to_owned(), why: format!("image config: {e}") })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(OciError::Invalid {
            location: loc.to_owned(),
            why: format!(
                "the config lists {} layers (diff_ids), the manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != req.platform.os || arch != req.platform.arch {
        return Err(OciError::NoPlatform {
            location: loc.to_owned(),
            platform: req.platform.to_string(),
            available: format!("{os}/{arch}"),
        });
    }
    let (_, stop_signal) = super::config::to_app(&config)
        .map_err(|e| OciError::Invalid { location: loc.to_owned(), why: e.to_string() })?;

    let layers: Vec<LayerMeta> = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(d, diff)| LayerMeta {
            digest: d.digest().to_string(),
            size: d.size(),
            media_type: d.media_type().to_string(),
            diff_id: diff.clone(),
        })
        .collect();
    let uncompressed = fetch_layers(src, store, staging.path(), &layers, req)?;
    crashpoint("oci.layers");

    // The entry: its manifest and config as fetched, and what it names.
    let manifest_file = staging.path().join(oci_store::MANIFEST_FILE);
    fs::write(&manifest_file, &manifest_raw.bytes).map_err(OciError::io("write", &manifest_file))?;
    let mut labels = BTreeMap::new();
    if let Some(t) = &req.tag {
        labels.insert("version".to_owned(), t.clone());
    }
    labels.insert("os".to_owned(), os);
    labels.insert("arch".to_owned(), arch);
    let meta = ImageMeta {
        id: id.clone(),
        name: req.name.clone(),
        labels,
        size: layers.iter().map(|l| l.size).sum::<u64>() + config_desc.size(),
        uncompressed_size: uncompressed,
        signer: signer.clone(),
        imported_at: crate::store::now_rfc3339(),
        source: req.location.clone(),
        oci: Some(OciMeta {
            digest: manifest_raw.digest.clone(),
            media_type: manifest_raw.media_type.clone(),
            index_digest,
            config_digest,
            layers,
            tag: req.tag.clone(),
            stop_signal,
            signature: signer.as_ref().map(|_| "cosign".to_owned()),
        }),
        other_names: Vec::new(),
    };
    let meta_file = staging.path().join("meta.json");
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| OciError::io("serialize", &meta_file)(e.into()))?;
    fs::write(&meta_file, json).map_err(OciError::io("write", &meta_file))?;
    let added = store.commit(staging, &id)?;
    let meta = if added { meta } else { store.add_name(&id, &req.name, req.tag.as_deref())? };
    Ok(Pulled { meta, added })
}

/// Copies `src` into `out` while hashing it, checking its size and digest:
/// the check every source's `blob` makes.
pub fn copy_verified(
    mut src: impl Read,
    digest: &str,
    size: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
    what: &str,
) -> Result<(), OciError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OciError::Read { what: what.to_owned(), source: e }),
        };
        seen += n as u64;
        if seen > size {
            return Err(OciError::SizeMismatch {
                what: what.to_owned(),
                wanted: size,
                got: format!("more than {size}"),
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| OciError::Read { what: format!("writing {what}"), source: e })?;
        progress(n as u64);
    }
    if seen != size {
        return Err(OciError::SizeMismatch { what: what.to_owned(), wanted: size, got: seen.to_string() });
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        return Err(OciError::DigestMismatch { what: what.to_owned(), wanted: digest.to_owned(), got });
    }
    Ok(())
}

/// The app an OCI image's config describes, and its stop signal.
pub fn app_of(store: &Store, id: &ImageId) -> Result<(spec::App, Option<String>), OciError> {
    let path = store.image_dir(id).join(oci_store::CONFIG_FILE);
    let bytes = fs::read(&path).map_err(OciError::io("read", &path))?;
    let config: ImageConfiguration = serde_json::from_slice(&bytes).map_err(|e| {
        OciError::Store(crate::store::StoreError::Corrupt { id: id.to_string(), why: format!("config.json: {e}") })
    })?;
    super::config::to_app(&config).map_err(|e| OciError::Invalid { location: id.to_string(), why: e.to_string() })
}

/// The lower layers of a stored OCI image, bottom to top.
pub fn layer_trees(dirs: &crate::paths::Dirs, oci: &OciMeta) -> Result<Vec<PathBuf>, OciError> {
    oci.layers.iter().map(|l| Ok(oci_store::layer_tree(dirs, &l.digest)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("linux/arm64/v8").map(|p| p.to_string()), Ok("linux/arm64/v8".into()));
        assert!(Platform::parse("linux").is_err() && Platform::parse("linux/../x").is_err());
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }

    #[test]
    fn verified_copy() {
        let data = b"hello";
        let d = sha256_digest(data);
        let mut out = Vec::new();
        copy_verified(&data[..], &d, 5, &mut out, &mut |_| {}, "x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, data);
        assert!(matches!(
            copy_verified(&data[..], &d, 4, &mut Vec::new(), &mut |_| {}, "x"),
            Err(OciError::SizeMismatch { .. })
        ));
        assert!(matches!(
            copy_verified(&data[..], &d, 6, &mut Vec::new(), &mut |_| {}, "x"),
            Err(OciError::SizeMismatch { .. })
        ));
        let other = sha256_digest(b"other");
        assert!(matches!(
            copy_verified(&data[..], &other, 5, &mut Vec::new(), &mut |_| {}, "x"),
            Err(OciError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn index_picks_the_platform() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_INDEX}","manifests":[
            {{"mediaType":"{MT_OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{MT_OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let raw = RawManifest::new(None, idx.into_bytes());
        assert!(raw.is_index());
        assert_eq!(pick(&raw, &Platform::host(), "x").ok(), Some((d('b'), 11)));
        let arm = Platform::parse("linux/arm64").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pick(&raw, &arm, "x").ok(), Some((d('a'), 10)));
        let s390 = Platform::parse("linux/s390x").unwrap_or_else(|e| panic!("{e}"));
        match pick(&raw, &s390, "x") {
            Err(OciError::NoPlatform { available, .. }) => assert_eq!(available, "linux/arm64, linux/amd64"),
            other => panic!("{other:?}"),
        }
    }
}
