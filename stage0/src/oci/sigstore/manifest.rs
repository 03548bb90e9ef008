//! cosign signature manifests: the OCI image manifest at tag
//! `sha256-<hex>.sig`, read and written as cosign does.
//!
//! cosign builds it with go-containerregistry from an empty image: media
//! type `application/vnd.oci.image.manifest.v1+json`, a config blob of media
//! type `application/vnd.oci.image.config.v1+json` listing every layer's
//! digest as a diff ID with one zero-time history entry per layer, and one
//! layer per signature. Adding a signature appends a layer and rebuilds the
//! config, which is all cosign's `mutate.Append` changes.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use oci_spec::image::ImageManifest;
use serde::Serialize;

use super::super::pull::sha256_digest;
use super::verify::SignatureError;
use super::{is_sha256_digest, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE};

/// The largest signature manifest read.
pub const MAX_SIGNATURE_MANIFEST: usize = 4 << 20;
/// The most signature layers read from one manifest.
pub const MAX_SIGNATURE_LAYERS: usize = 64;
/// The largest payload a layer may declare: cosign's are ~250 bytes.
const MAX_PAYLOAD: u64 = 1 << 20;
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Go's zero `time.Time`, which go-containerregistry writes for every
/// timestamp of a signature image (cosign records none by default).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One simple-signing layer of a signature manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob's digest (`sha256:<hex>`), checked to be one.
    pub digest: String,
    /// Its size in bytes, at most 1 MiB.
    pub size: u64,
    /// The signature over the payload blob, decoded from base64.
    pub signature: Vec<u8>,
}

/// Parses a signature manifest fetched for `image` (named in errors): its
/// simple-signing layers that carry a signature annotation, in order.
/// Layers of other media types are ignored (cosign puts none there).
pub fn parse_signature_manifest(bytes: &[u8], image: &str) -> Result<Vec<SignatureLayer>, SignatureError> {
    let bad = |why: String| SignatureError::Manifest { image: image.to_owned(), why };
    if bytes.len() > MAX_SIGNATURE_MANIFEST {
        return Err(bad(format!("{} bytes, more than the {} MiB allowed", bytes.len(), MAX_SIGNATURE_MANIFEST >> 20)));
    }
    let manifest = ImageManifest::from_reader(bytes).map_err(|e| bad(format!("not an OCI image manifest: {e}")))?;
    let mut out = Vec::new();
    for layer in manifest.layers() {
        if layer.media_type().to_string() != SIMPLE_SIGNING_MEDIA_TYPE {
            continue;
        }
        let digest = layer.digest().to_string();
        let Some(sig_b64) = layer.annotations().as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
            continue;
        };
        if out.len() == MAX_SIGNATURE_LAYERS {
            return Err(bad(format!("more than {MAX_SIGNATURE_LAYERS} signature layers")));
        }
        if !is_sha256_digest(&digest) {
            return Err(bad(format!("layer digest {digest:?} is not sha256:<64 hex digits>")));
        }
        if layer.size() > MAX_PAYLOAD {
            return Err(bad(format!("layer {digest} declares {} bytes, more than a payload's 1 MiB", layer.size())));
        }
        let signature =
            B64.decode(sig_b64.trim()).map_err(|_| bad(format!("layer {digest}: the signature is not base64")))?;
        out.push(SignatureLayer { digest, size: layer.size(), signature });
    }
    Ok(out)
}

/// A signature manifest to push, with the blobs it references that the
/// registry may not have yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureManifest {
    /// The manifest's bytes, to push at tag `sha256-<hex>.sig` with media
    /// type `application/vnd.oci.image.manifest.v1+json`.
    pub manifest: Vec<u8>,
    /// Blobs to push first, by digest: the config and new payloads.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// False when the signature was there already (nothing to push).
    pub added: bool,
}

/// Field order and names of go-containerregistry's `v1.Manifest` and
/// `v1.Descriptor`, so the bytes match cosign's.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    size: u64,
    digest: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Config<'a> {
    architecture: &'a str,
    created: &'a str,
    history: Vec<History<'a>>,
    os: &'a str,
    rootfs: RootFs<'a>,
    config: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs of strings and numbers cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn payload_layer(payload: &[u8], signature_b64: &str) -> Descriptor {
    Descriptor {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
        size: payload.len() as u64,
        digest: sha256_digest(payload),
        annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), signature_b64.to_owned())]),
    }
}

fn assemble(layers: Vec<Descriptor>, mut blobs: BTreeMap<String, Vec<u8>>) -> SignatureManifest {
    let config = Config {
        architecture: "",
        created: ZERO_TIME,
        history: layers.iter().map(|_| History { created: ZERO_TIME }).collect(),
        os: "",
        rootfs: RootFs { kind: "layers", diff_ids: layers.iter().map(|l| l.digest.as_str()).collect() },
        config: BTreeMap::new(),
    };
    let config = to_json(&config);
    let config_desc = Descriptor {
        media_type: CONFIG_MEDIA_TYPE.to_owned(),
        size: config.len() as u64,
        digest: sha256_digest(&config),
        annotations: BTreeMap::new(),
    };
    blobs.insert(config_desc.digest.clone(), config);
    let manifest =
        to_json(&Manifest { schema_version: 2, media_type: MANIFEST_MEDIA_TYPE, config: config_desc, layers });
    SignatureManifest { manifest, blobs, added: true }
}

/// A new signature manifest holding `signatures`: (payload, base64
/// signature as [`super::sign`] returns) pairs, one layer each.
pub fn signature_manifest(signatures: &[(Vec<u8>, String)]) -> SignatureManifest {
    let mut blobs = BTreeMap::new();
    let mut layers = Vec::new();
    for (payload, sig) in signatures {
        let layer = payload_layer(payload, sig);
        blobs.insert(layer.digest.clone(), payload.clone());
        layers.push(layer);
    }
    assemble(layers, blobs)
}

/// Appends a signature to the manifest already at the signature tag (as
/// `cosign sign` does), keeping its layers and their annotations. `blobs`
/// holds the new config and payload only; the old payloads are in the
/// registry already. A layer with the same payload and signature is not
/// added twice (`added` is false, the manifest unchanged).
pub fn add_signature(
    existing: &[u8],
    image: &str,
    payload: &[u8],
    signature_b64: &str,
) -> Result<SignatureManifest, SignatureError> {
    let bad = |why: String| SignatureError::Manifest { image: image.to_owned(), why };
    if existing.len() > MAX_SIGNATURE_MANIFEST {
        return Err(bad(format!(
            "{} bytes, more than the {} MiB allowed",
            existing.len(),
            MAX_SIGNATURE_MANIFEST >> 20
        )));
    }
    let manifest = ImageManifest::from_reader(existing).map_err(|e| bad(format!("not an OCI image manifest: {e}")))?;
    let new = payload_layer(payload, signature_b64);
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let annotations: BTreeMap<String, String> = l
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let d = Descriptor {
            media_type: l.media_type().to_string(),
            size: l.size(),
            digest: l.digest().to_string(),
            annotations,
        };
        if d.digest == new.digest
            && d.annotations.get(SIGNATURE_ANNOTATION) == new.annotations.get(SIGNATURE_ANNOTATION)
        {
            return Ok(SignatureManifest { manifest: existing.to_vec(), blobs: BTreeMap::new(), added: false });
        }
        layers.push(d);
    }
    if layers.len() >= MAX_SIGNATURE_LAYERS {
        return Err(bad(format!("already {} signature layers, the most pod reads", layers.len())));
    }
    let blobs = BTreeMap::from([(new.digest.clone(), payload.to_vec())]);
    layers.push(new);
    Ok(assemble(layers, blobs))
}
