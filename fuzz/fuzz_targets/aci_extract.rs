//! ACI extraction of untrusted bytes (zstd, gzip or plain tar) into a fresh
//! directory with a small size cap: it must not panic, and must write nothing
//! outside the destination — a sibling canary directory stays empty and
//! nothing else appears next to the destination.
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stage0::archive::{extract_aci, Limits};

/// Small: a few KiB of input must not turn into much disk work per run.
const MAX_UNCOMPRESSED: u64 = 1 << 20;

fn base() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| tempfile::Builder::new().prefix("pod-fuzz-aci-").tempdir().expect("temp dir")).path()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Removes a tree the archive may have left without write or search
/// permission (which stops a non-root removal).
fn remove(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    fn open_up(path: &Path) {
        let Ok(md) = fs::symlink_metadata(path) else { return };
        if md.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            for entry in fs::read_dir(path).into_iter().flatten().flatten() {
                open_up(&entry.path());
            }
        }
    }
    open_up(path);
    fs::remove_dir_all(path).expect("remove extraction");
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let root = base.join("run");
    let (dest, canary) = (root.join("dest"), root.join("canary"));
    fs::create_dir(&root).expect("create run dir");
    fs::create_dir(&dest).expect("create dest");
    fs::create_dir(&canary).expect("create canary");

    let limits = Limits { max_uncompressed: MAX_UNCOMPRESSED, ..Limits::default() };
    let result = extract_aci(data, &dest, &limits);
    if let Ok(extracted) = &result {
        assert!(extracted.uncompressed_size <= MAX_UNCOMPRESSED);
        assert_eq!(fs::read(dest.join("manifest")).expect("manifest written"), extracted.manifest_bytes);
        assert!(fs::symlink_metadata(dest.join("rootfs")).expect("rootfs").is_dir());
    }

    assert!(names(&canary).is_empty(), "wrote into the canary: {:?} ({result:?})", names(&canary));
    assert_eq!(names(&root), ["canary", "dest"], "wrote next to dest ({result:?})");
    assert_eq!(names(base), ["run"], "wrote above dest ({result:?})");
    remove(&root);
});
