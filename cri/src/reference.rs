//! CRI image names and IDs, as pod's store spells them.
//!
//! - A CRI reference `127.0.0.1:5000/team/app:v1` is pod's
//!   `docker://127.0.0.1:5000/team/app:v1`; one with a transport of its own
//!   (`docker://…`, `oci:…`) is taken as it is.
//! - Image IDs are pod's: `sha256-<hex>` (an OCI manifest digest) is reported
//!   as `sha256:<hex>`, as CRI clients expect; an ACI's `sha512-…` as it is.
//! - Repo tags are `name:version`, repo digests `name@sha256:…`.

use spec::oci::{OciSource, Reference};
use spec::ImageId;
use stage0::fetch::ImageRef;
use stage0::store::{ImageMeta, Store, StoreError};

use crate::error::CriError;

/// What a CRI pull of `image` fetches.
pub fn fetch_ref(image: &str) -> Result<ImageRef, CriError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(CriError::InvalidArgument("no image given".into()));
    }
    // Registry images only: a CRI client names no file on this host (no
    // `oci:DIR` or `docker-archive:FILE` through the socket).
    let bare = image.strip_prefix("docker://").unwrap_or(image);
    if OciSource::is_oci(bare) || bare.contains("://") {
        return Err(CriError::Reference {
            reference: image.to_owned(),
            why: "CRI pulls registry images only: HOST[:PORT]/REPO[:TAG][@DIGEST]".into(),
        });
    }
    let r = ImageRef::parse(&format!("docker://{bare}"))
        .map_err(|e| CriError::Reference { reference: image.to_owned(), why: e.to_string() })?;
    match r {
        ImageRef::Oci(OciSource::Registry(_)) => Ok(r),
        _ => Err(CriError::Reference { reference: image.to_owned(), why: "not a registry reference".into() }),
    }
}

/// The registry reference of a pull: its name is what `--insecure-prefix`
/// and trust prefixes match, its registry what credentials are for.
pub fn registry_ref(r: &ImageRef) -> Option<&Reference> {
    match r {
        ImageRef::Oci(OciSource::Registry(reference)) => Some(reference),
        _ => None,
    }
}

/// An image ID as CRI reports it.
pub fn cri_id(id: &ImageId) -> String {
    match id.as_str().strip_prefix("sha256-") {
        Some(hex) => format!("sha256:{hex}"),
        None => id.to_string(),
    }
}

/// `name:tag` for each name and tag the image is known by (its own
/// `name:version` first).
pub fn repo_tags(meta: &ImageMeta) -> Vec<String> {
    meta.names().into_iter().filter_map(|(name, tag)| tag.map(|t| format!("{name}:{t}"))).collect()
}

/// `name@sha256:…` for each name of an OCI image (its manifest digest).
pub fn repo_digests(meta: &ImageMeta) -> Vec<String> {
    let Some(oci) = &meta.oci else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    for (name, _) in meta.names() {
        let d = format!("{name}@{}", oci.digest);
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Finds the stored image a CRI request names: an image ID (`sha256:…`,
/// `sha256-…`, `sha512-…` or a 12+ hex digit prefix), a registry reference
/// by tag or digest, or an ACI `name[:version]`. `Ok(None)` when no image
/// matches.
pub fn resolve(store: &Store, image: &str) -> Result<Option<ImageMeta>, CriError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(CriError::InvalidArgument("no image given".into()));
    }
    let image = image.strip_prefix("docker://").unwrap_or(image);
    let looks_like_id = image.starts_with("sha256:")
        || image.starts_with("sha256-")
        || image.starts_with("sha512-")
        || (image.len() >= spec::id::MIN_PREFIX_HEX && image.bytes().all(|b| b.is_ascii_hexdigit()));
    if looks_like_id {
        return found(store.lookup(image));
    }
    if let Ok(r) = Reference::parse(image) {
        let name = r.name();
        let hit = store.list()?.into_iter().find(|m| match (&r.digest, &m.oci) {
            (Some(d), Some(oci)) => &oci.digest == d && m.known_as(&name, None),
            (Some(_), None) => false,
            (None, _) => m.known_as(&name, Some(r.tag.as_deref().unwrap_or("latest"))),
        });
        if hit.is_some() {
            return Ok(hit);
        }
    }
    // An ACI by appc name; Reference::parse may have read it as a Docker
    // Hub name.
    found(store.lookup(image))
}

fn found(r: Result<ImageMeta, StoreError>) -> Result<Option<ImageMeta>, CriError> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_reference_is_a_registry_image() {
        let r = fetch_ref("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(registry_ref(&r).unwrap().name().to_string(), "127.0.0.1:5000/team/app");
        let r = fetch_ref(&("docker://127.0.0.1:5000/team/app@sha256:".to_owned() + &"a".repeat(64))).unwrap();
        assert_eq!(registry_ref(&r).unwrap().registry, "127.0.0.1:5000");
        assert!(matches!(fetch_ref("oci:/etc"), Err(CriError::Reference { .. })));
        assert!(matches!(fetch_ref("oci-archive:/etc/passwd"), Err(CriError::Reference { .. })));
        assert!(matches!(fetch_ref(" "), Err(CriError::InvalidArgument(_))));
        assert!(matches!(fetch_ref("127.0.0.1:5000/Team/app:v1"), Err(CriError::Reference { .. })));
    }

    #[test]
    fn every_name_is_a_repo_tag_and_digest() {
        let name = |s: &str| spec::ImageName::new(s).unwrap();
        let digest = format!("sha256:{}", "cd".repeat(32));
        let meta: ImageMeta = serde_json::from_value(serde_json::json!({
            "id": format!("sha256-{}", "cd".repeat(32)),
            "name": "registry.k8s.io/pause",
            "labels": {"version": "3.9"},
            "size": 1, "uncompressed_size": 1, "signer": null, "imported_at": "", "source": "",
            "oci": {"digest": digest, "mediaType": "m", "configDigest": digest, "layers": []},
            "other_names": [
                {"name": name("k8s.gcr.io/pause"), "tag": "3.9"},
                {"name": name("registry.k8s.io/pause"), "tag": "latest"},
                {"name": name("example.org/pinned")}
            ]
        }))
        .unwrap();
        assert_eq!(
            repo_tags(&meta),
            ["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:latest"]
        );
        assert_eq!(
            repo_digests(&meta),
            [
                format!("registry.k8s.io/pause@{digest}"),
                format!("k8s.gcr.io/pause@{digest}"),
                format!("example.org/pinned@{digest}")
            ]
        );
    }

    #[test]
    fn oci_ids_are_reported_with_a_colon() {
        let hex = "ab".repeat(32);
        let id: ImageId = format!("sha256-{hex}").parse().unwrap();
        assert_eq!(cri_id(&id), format!("sha256:{hex}"));
    }
}
