//! `pod image sign` of images in a registry: a cosign simple-signing
//! signature made with a cosign key and stored as `cosign sign --key` stores
//! it, so that `cosign verify --key` and pod's own fetch accept it.
//!
//! ```text
//! GET  /v2/REPO/manifests/TAG                 the digest the tag names (index or manifest)
//! GET  /v2/REPO/manifests/sha256-HEX.sig      signatures already there, if any
//! POST+PUT /v2/REPO/blobs/uploads/            the payload and the new config
//! PUT  /v2/REPO/manifests/sha256-HEX.sig      the signature manifest, one layer more
//! ```
//!
//! Like cosign, no Rekor entry is made; and like cosign, two signers racing
//! on one image can lose a signature (the tag is read, then rewritten).

use std::path::{Path, PathBuf};

use spec::oci::{OciSource, Reference, DOCKER_HUB};

use super::registry::{ClientOptions, Digest, RegistryClient, RegistryError, MANIFEST_TYPES, OCI_MANIFEST};
use super::sigstore::{self, CosignKeyError, CosignPrivateKey, SignatureError};
use crate::exit::{Exit, ExitCodeOf};
use crate::keys::KeyId;

/// What `pod image sign` signs: ACI files (pod-ed25519 keys, a detached
/// `.sig` beside each) or images in a registry (cosign keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignTarget {
    Aci(PathBuf),
    Registry(Reference),
}

impl SignTarget {
    /// `docker://HOST/REPO[:TAG][@DIGEST]` is a registry image; any other
    /// OCI transport is refused (there is nowhere to attach a signature);
    /// anything else is an ACI file path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !OciSource::is_oci(s) {
            return Ok(Self::Aci(PathBuf::from(s)));
        }
        match OciSource::parse(s)? {
            OciSource::Registry(r) => Ok(Self::Registry(r)),
            other => Err(format!(
                "{other}: pod signs OCI images in a registry (docker://HOST/REPO:TAG); push it there and sign that"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A registry step failed; `step` says which.
    #[error("cannot sign docker://{image}: {step}: {source}")]
    Registry {
        image: String,
        step: &'static str,
        #[source]
        source: RegistryError,
    },
    #[error("cannot sign docker://{image}: the registry serves it as {media_type:?}, not an image manifest or index")]
    NotAnImage { image: String, media_type: String },
    #[error(
        "cannot sign docker://{image}: its digest {digest} is not sha256, the only kind cosign signature tags name"
    )]
    NotSha256 { image: String, digest: String },
    #[error("cannot sign docker://{image}: the signature manifest already at {tag}: {source}")]
    Existing {
        image: String,
        tag: String,
        #[source]
        source: Box<SignatureError>,
    },
}

impl ExitCodeOf for SignError {
    fn exit(&self) -> Exit {
        match self {
            Self::Registry { source, .. } => source.exit(),
            Self::NotAnImage { .. } | Self::NotSha256 { .. } => Exit::InvalidInput,
            Self::Existing { source, .. } => source.exit(),
        }
    }
}

/// One image signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The image as named (`HOST/REPO:TAG`).
    pub image: String,
    /// The manifest (or index) digest signed: the one the tag named.
    pub digest: String,
    /// The signature manifest's tag, `sha256-<hex>.sig`.
    pub signature_tag: String,
    /// The digest of the manifest now at that tag.
    pub signature_manifest: String,
    /// False when this key's signature of the digest was there already
    /// (signing is deterministic), so nothing was pushed.
    pub added: bool,
}

/// A cosign key, and how to reach registries with it.
#[derive(Debug)]
pub struct Signer {
    key: CosignPrivateKey,
    key_id: KeyId,
    client: ClientOptions,
}

/// The `docker-reference` cosign writes into the payload: the repository
/// without tag or digest, Docker Hub's spelled as go-containerregistry
/// spells it (`index.docker.io/library/busybox`).
pub fn docker_reference(r: &Reference) -> String {
    let registry = if r.registry == DOCKER_HUB { "index.docker.io" } else { r.registry.as_str() };
    format!("{registry}/{}", r.repository)
}

impl Signer {
    pub fn new(key: CosignPrivateKey, client: ClientOptions) -> Self {
        let key_id = key.public_key().id;
        Self { key, key_id, client }
    }

    /// Decrypts the cosign key at `path` with `password` (see
    /// [`sigstore::password`]): nothing is asked of a registry before the
    /// key is known to be good.
    pub fn load(path: &Path, password: &[u8], client: ClientOptions) -> Result<Self, CosignKeyError> {
        Ok(Self::new(CosignPrivateKey::load(path, password)?, client))
    }

    /// The ID of the public key that verifies this signer's signatures.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// Signs the digest `image` names (its own, when it is pinned by one)
    /// and adds the signature to the image's `sha256-<hex>.sig` manifest,
    /// keeping the signatures there.
    pub fn sign(&self, image: &Reference) -> Result<Signed, SignError> {
        let name = image.to_string();
        let reg = |step: &'static str| {
            let name = name.clone();
            move |source| SignError::Registry { image: name, step, source }
        };
        let client = RegistryClient::new(&image.registry, &self.client).map_err(reg("connecting"))?;
        let repo = image.repository.as_str();
        let manifest = client.get_manifest(repo, image.reference()).map_err(reg("resolving it"))?;
        if !MANIFEST_TYPES.contains(&manifest.media_type.as_str()) {
            return Err(SignError::NotAnImage { image: name, media_type: manifest.media_type });
        }
        let digest = manifest.digest;
        let Some(tag) = sigstore::signature_tag(&digest) else {
            return Err(SignError::NotSha256 { image: name, digest });
        };
        let payload = sigstore::simple_signing_payload(&docker_reference(image), &digest);
        let signature = sigstore::sign(&self.key, &payload);

        let update = match client.get_manifest(repo, &tag) {
            Ok(existing) => {
                sigstore::add_signature(&existing.bytes, &name, &payload, &signature).map_err(|source| {
                    SignError::Existing { image: name.clone(), tag: tag.clone(), source: Box::new(source) }
                })?
            }
            Err(RegistryError::NotFound { .. }) => sigstore::signature_manifest(&[(payload, signature)]),
            Err(e) => return Err(reg("reading its signatures")(e)),
        };
        let signature_manifest = if update.added {
            // Blobs first: a registry refuses a manifest naming absent ones.
            for (blob_digest, bytes) in &update.blobs {
                client.push_blob(repo, blob_digest, bytes).map_err(reg("pushing the signature"))?;
            }
            client
                .put_manifest(repo, &tag, OCI_MANIFEST, &update.manifest)
                .map_err(reg("pushing the signature manifest"))?
        } else {
            Digest::sha256(&update.manifest).to_string()
        };
        tracing::info!(image = %name, %digest, key = %self.key_id, %tag, added = update.added, "signed");
        Ok(Signed { image: name, digest, signature_tag: tag, signature_manifest, added: update.added })
    }
}

#[cfg(test)]
mod tests;
