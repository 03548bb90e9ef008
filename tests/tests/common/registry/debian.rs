//! Root filesystems from Debian packages, as base layers of OCI images:
//! `pod image build` of a recipe in `manifests/images/` (its `.deb`s cached
//! in `target/e2e-debs`, as the example images' are), the ACI's `rootfs/`
//! unpacked with its numeric owners. Kept under `target/e2e-images/` while
//! the recipe and the `pod` binary are unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::{need_tools, p, Skip};
use crate::common::{describe, pod_bin, target_dir, workspace};

/// The unpacked rootfs of `manifests/images/<recipe>` (e.g. `nginx.yaml`),
/// built at most once per test binary and reused across runs. `Err(Skip)`
/// when a tool is missing or the build fails because the Debian archive
/// cannot be reached.
pub fn debian_rootfs(recipe: &str) -> Result<PathBuf, Skip> {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    need_tools(&["zstd", "tar", "apt-get"])?;
    // Held while building: one build per recipe, the others wait for it.
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(done) = built.get(recipe) {
        return Ok(done.clone());
    }
    let dir = build(recipe)?;
    built.insert(recipe.to_owned(), dir.clone());
    Ok(dir)
}

/// What a build depends on: the recipe and the `pod` binary.
fn inputs_digest(recipe: &Path) -> String {
    let mut h = Sha256::new();
    h.update(fs::read(recipe).unwrap_or_else(|e| panic!("{}: {e}", recipe.display())));
    let md = fs::metadata(pod_bin()).unwrap();
    let mtime = md.modified().unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    h.update(format!("{} {}", md.len(), mtime.as_nanos()));
    hex::encode(h.finalize())[..16].to_owned()
}

fn build(recipe: &str) -> Result<PathBuf, Skip> {
    let file = workspace().join("manifests/images").join(recipe);
    let stem = recipe.trim_end_matches(".yaml");
    let parent = target_dir().join("e2e-images");
    fs::create_dir_all(&parent).unwrap();
    let dest = parent.join(format!("{stem}-rootfs-{}", inputs_digest(&file)));
    if dest.join("rootfs").is_dir() {
        return Ok(dest.join("rootfs"));
    }
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix(&format!(".{stem}-rootfs-")).tempdir_in(&parent).unwrap();
    let aci = tmp.path().join(format!("{stem}.aci"));
    let cache = target_dir().join("e2e-debs");
    let args = ["image", "build", p(&file), "-o", p(&aci), "--cache-dir", p(&cache)];
    let out = Command::new(pod_bin()).args(args).output().unwrap();
    if !out.status.success() {
        // Unreachable archive: a skip. Anything else is the builder's fault.
        // The probe downloads the way the build does (into the temp dir).
        let probe = Command::new("apt-get").args(["download", "busybox-static"]).current_dir(tmp.path()).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return Err(Skip(format!("the Debian archive is not usable here:\n{}", describe(&args, &out))));
        }
        panic!("building {recipe}\n{}", describe(&args, &out));
    }
    let unpack = format!("zstd -dc -- '{}' | tar -x --numeric-owner -C '{}' rootfs", p(&aci), p(tmp.path()));
    let out = Command::new("sh").args(["-c", &unpack]).output().unwrap();
    assert!(out.status.success(), "{unpack}: {}", String::from_utf8_lossy(&out.stderr));
    fs::remove_file(&aci).unwrap();
    let staged = tmp.keep();
    // Another test binary may have got there first: either way `dest` is
    // complete afterwards.
    if fs::rename(&staged, &dest).is_err() {
        assert!(dest.join("rootfs").is_dir(), "could not move {} to {}", staged.display(), dest.display());
        let _ = fs::remove_dir_all(&staged);
    }
    eprintln!("built the {stem} rootfs in {:.1?}", started.elapsed());
    Ok(dest.join("rootfs"))
}
