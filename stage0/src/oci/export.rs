//! `pod image export` of an OCI image: an `oci-archive` (a tar of an OCI
//! image layout) holding the manifest, config and layer blobs exactly as
//! fetched, so the digests (and any signature over them) still hold, and
//! `skopeo copy oci-archive:FILE ...` or `pod fetch oci-archive:FILE` take it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use spec::ImageId;

use super::store::{self as oci_store, CONFIG_FILE, MANIFEST_FILE};
use super::OciError;
use crate::store::Store;

fn append(tar: &mut tar::Builder<impl Write>, name: &str, data: &mut dyn io::Read, size: u64) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

/// Writes image `id` as an oci-archive to `out` (via `out.tmp`, renamed).
pub fn export(store: &Store, id: &ImageId, out: &Path) -> Result<(), OciError> {
    let meta = store.meta(id)?;
    let oci = meta
        .oci
        .as_ref()
        .ok_or_else(|| OciError::Invalid { location: id.to_string(), why: "not an OCI image".into() })?;
    let dir = store.image_dir(id);
    let manifest = fs::read(dir.join(MANIFEST_FILE)).map_err(OciError::io("read", &dir.join(MANIFEST_FILE)))?;
    let config = fs::read(dir.join(CONFIG_FILE)).map_err(OciError::io("read", &dir.join(CONFIG_FILE)))?;
    let mut annotations = serde_json::Map::new();
    if let Some(t) = &oci.tag {
        annotations.insert("org.opencontainers.image.ref.name".into(), t.clone().into());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": super::pull::MT_OCI_INDEX,
        "manifests": [{
            "mediaType": oci.media_type,
            "digest": oci.digest,
            "size": manifest.len(),
            "annotations": annotations,
        }],
    });
    let index = serde_json::to_vec(&index).map_err(|e| OciError::io("serialize", out)(e.into()))?;

    let tmp = out.with_extension("tmp");
    let f = File::create(&tmp).map_err(OciError::io("create", &tmp))?;
    let result = (|| -> io::Result<()> {
        let mut tar = tar::Builder::new(io::BufWriter::new(f));
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(&mut tar, "oci-layout", &mut &layout[..], layout.len() as u64)?;
        append(&mut tar, "index.json", &mut &index[..], index.len() as u64)?;
        let blob = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
        append(&mut tar, &blob(&oci.digest), &mut &manifest[..], manifest.len() as u64)?;
        append(&mut tar, &blob(&oci.config_digest), &mut &config[..], config.len() as u64)?;
        let mut seen = std::collections::BTreeSet::new();
        for l in &oci.layers {
            if !seen.insert(&l.digest) {
                continue;
            }
            let path = oci_store::blob_path(store.dirs(), &l.digest).map_err(io::Error::other)?;
            let mut f = File::open(&path)?;
            append(&mut tar, &blob(&l.digest), &mut f, l.size)?;
        }
        tar.into_inner()?.flush()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(OciError::Io { op: "write", path: tmp, source: e });
    }
    fs::rename(&tmp, out).map_err(OciError::io("rename", out))
}
