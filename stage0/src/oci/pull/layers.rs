//! The blobs and layers of a pull: fetched (or taken from the store),
//! verified, applied into trees of their own, `PARALLEL` at a time, and
//! moved into the store together once every one passed.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::super::store::{self as oci_store, LayerMeta};
use super::super::OciError;
use super::{BlobSource, Request, PARALLEL};
use crate::archive::Limits;
use crate::crashpoint::crashpoint;
use crate::store::Store;

/// Fetches a blob into `dest` (a staging file), or copies the stored one.
pub(super) fn fetch_blob(
    src: &dyn BlobSource,
    dirs: &crate::paths::Dirs,
    digest: &str,
    size: u64,
    dest: &Path,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), OciError> {
    if oci_store::has_blob(dirs, digest, size) {
        let stored = oci_store::blob_path(dirs, digest)?;
        fs::copy(&stored, dest).map_err(OciError::io("copy", &stored))?;
        return Ok(());
    }
    let mut f = File::create(dest).map_err(OciError::io("create", dest))?;
    let mut progress = |n: u64| {
        if let Some(b) = bar {
            b.inc(n);
        }
    };
    src.blob(digest, size, &mut f, &mut progress)?;
    // No fsync, as for rendered trees (render.rs): `pod image verify`
    // finds what a power loss damaged.
    Ok(())
}

/// Fetches and applies the layers not yet stored, `PARALLEL` at a time.
/// Returns the sum of the layers' uncompressed sizes.
pub(super) fn fetch_layers(
    src: &dyn BlobSource,
    store: &Store,
    staging: &Path,
    layers: &[LayerMeta],
    req: &Request<'_>,
) -> Result<u64, OciError> {
    let dirs = store.dirs();
    let bars = req.progress.then(indicatif::MultiProgress::new);
    let next = Mutex::new(0usize);
    let total = Mutex::new(0u64);
    let first_error: Mutex<Option<OciError>> = Mutex::new(None);
    let done: Mutex<Vec<(PathBuf, PathBuf, String)>> = Mutex::new(Vec::new());
    let work = |i: usize| -> Result<u64, OciError> {
        let l = &layers[i];
        if oci_store::has_layer(dirs, &l.digest) {
            let stored = oci_store::layer_dir(dirs, &l.digest)?.join("diff_id");
            let diff = fs::read_to_string(&stored).map_err(OciError::io("read", &stored))?;
            if diff.trim() != l.diff_id {
                return Err(OciError::DigestMismatch {
                    what: format!("uncompressed layer {} of {}", l.digest, req.location),
                    wanted: l.diff_id.clone(),
                    got: diff.trim().to_owned(),
                });
            }
            // Its size, for the image's: recorded when it was applied.
            let size = fs::read_to_string(stored.with_file_name("size")).ok().and_then(|s| s.trim().parse().ok());
            return Ok(size.unwrap_or(0));
        }
        let bar = bars.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new(l.size));
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(l.digest.get(7..19).unwrap_or("").to_owned());
            b
        });
        let blob = staging.join(format!("blob-{i}"));
        fetch_blob(src, dirs, &l.digest, l.size, &blob, bar.as_ref())?;
        crashpoint("oci.blob");
        let out = staging.join(format!("layer-{i}"));
        let tree = out.join("rootfs");
        fs::create_dir_all(&tree).map_err(OciError::io("create directory", &tree))?;
        let f = File::open(&blob).map_err(OciError::io("open", &blob))?;
        let layer_err = |source| OciError::Layer { location: req.location.clone(), digest: l.digest.clone(), source };
        let compression = super::super::layer::layer_compression(&l.media_type).map_err(layer_err)?;
        // The size limit is the image's, not each layer's: a layer may use
        // what the ones applied so far left (those running beside it may
        // overshoot together; the sum is checked once all are done).
        let used = *total.lock().unwrap_or_else(|p| p.into_inner());
        let limits = Limits {
            max_uncompressed: req.limits.max_uncompressed.saturating_sub(used),
            max_entries: req.limits.max_entries,
        };
        let applied =
            super::super::layer::apply_layer(BufReader::with_capacity(1 << 20, f), Some(compression), &tree, &limits)
                .map_err(|e| match e {
                // Say the image's limit, not what was left of it.
                crate::archive::ArchiveError::TooLarge { .. } => OciError::Invalid {
                    location: req.location.clone(),
                    why: format!(
                        "layer {} takes its layers past {} bytes unpacked, the limit (--max-image-size)",
                        l.digest, req.limits.max_uncompressed
                    ),
                },
                other => layer_err(other),
            })?;
        if applied.diff_id != l.diff_id {
            return Err(OciError::DigestMismatch {
                what: format!("uncompressed layer {} of {}", l.digest, req.location),
                wanted: l.diff_id.clone(),
                got: applied.diff_id,
            });
        }
        let diff_file = out.join("diff_id");
        fs::write(&diff_file, format!("{}\n", l.diff_id)).map_err(OciError::io("write", &diff_file))?;
        let size_file = out.join("size");
        fs::write(&size_file, format!("{}\n", applied.uncompressed_size)).map_err(OciError::io("write", &size_file))?;
        // Into the store once every layer is in and the sum is checked.
        done.lock().unwrap_or_else(|p| p.into_inner()).push((blob, out, l.digest.clone()));
        if let Some(b) = bar {
            b.finish();
        }
        Ok(applied.uncompressed_size)
    };
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(layers.len()) {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let failed = first_error.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                    if *n >= layers.len() || failed {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                match work(i) {
                    Ok(size) => *total.lock().unwrap_or_else(|p| p.into_inner()) += size,
                    Err(e) => {
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let total = total.into_inner().unwrap_or_else(|p| p.into_inner());
    if total > req.limits.max_uncompressed {
        return Err(OciError::Invalid {
            location: req.location.clone(),
            why: format!(
                "its layers unpack to {total} bytes, more than the limit of {} (--max-image-size)",
                req.limits.max_uncompressed
            ),
        });
    }
    for (blob, out, digest) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
        oci_store::commit_blob(dirs, &blob, &digest)?;
        oci_store::commit_layer(dirs, &out, &digest)?;
    }
    Ok(total)
}
