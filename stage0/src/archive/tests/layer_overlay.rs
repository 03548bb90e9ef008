//! Tier (b): two applied layers stacked by the kernel's overlayfs show the
//! merged tree a user expects. Needs root and overlayfs; reports a skip
//! otherwise. The mount is made in a mount namespace private to one thread,
//! so nothing leaks to the host even if the test fails half-way.

use std::thread;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::layer::{opaque_xattr, skip_unless_root};
use super::*;
use crate::oci::layer::apply_layer;

/// Unmounts on drop, whatever the test's outcome.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if let Err(e) = umount2(self.0, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

fn overlayfs_available() -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|fss| fss.lines().any(|l| l.ends_with("\toverlay")))
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn overlayfs_merges_applied_layers() {
    if skip_unless_root("mounting overlayfs") {
        return;
    }
    if !overlayfs_available() {
        eprintln!("SKIP: no overlayfs in /proc/filesystems");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (l1, l2, merged) = (tmp.path().join("l1"), tmp.path().join("l2"), tmp.path().join("merged"));
    for dir in [&l1, &l2, &merged] {
        fs::create_dir(dir).expect("mkdir");
    }
    let layer1 = RawTar::default()
        .dir("etc", 0o755)
        .file("etc/keep", b"layer 1")
        .file("etc/remove-me", b"layer 1")
        .dir("opaque", 0o755)
        .file("opaque/old", b"layer 1")
        .dir("merged-dir", 0o755)
        .file("merged-dir/from-1", b"")
        .finish();
    let layer2 = RawTar::default()
        .dir("etc", 0o755)
        .file("etc/.wh.remove-me", b"")
        .file("etc/new", b"layer 2")
        .dir("opaque", 0o755)
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/fresh", b"layer 2")
        .dir("merged-dir", 0o755)
        .file("merged-dir/from-2", b"")
        .finish();
    apply_layer(&gzip(&layer1)[..], None, &l1, &Limits::default()).expect("layer 1");
    apply_layer(&zstd::encode_all(&layer2[..], 3).expect("zstd")[..], None, &l2, &Limits::default()).expect("layer 2");
    assert_eq!(opaque_xattr(&l2.join("opaque")).as_deref(), Some(&b"y"[..]));

    // A thread of its own, so that unshare affects no other test.
    let outcome = thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| format!("making / private: {e}"))?;
            let options = format!("lowerdir={}:{}", l2.display(), l1.display());
            mount(Some("overlay"), &merged, Some("overlay"), MsFlags::MS_RDONLY, Some(options.as_str())).map_err(
                |e| {
                    // Not allowed here (a container without CAP_SYS_ADMIN) is a
                    // skip; any other refusal is about the trees, a failure.
                    let skip = if e == nix::errno::Errno::EPERM { "not permitted: " } else { "" };
                    format!("{skip}mounting overlayfs ({options}): {e}")
                },
            )?;
            let _mounted = Mounted(&merged);
            assert_eq!(sorted_names(&merged.join("etc")), ["keep", "new"]);
            assert!(!merged.join("etc/remove-me").exists());
            assert_eq!(fs::read(merged.join("etc/keep")).expect("keep"), b"layer 1");
            assert_eq!(sorted_names(&merged.join("opaque")), ["fresh"]);
            assert_eq!(sorted_names(&merged.join("merged-dir")), ["from-1", "from-2"]);
            Ok(())
        })
        .join()
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.starts_with("unshare") || e.starts_with("not permitted") => eprintln!("SKIP: {e}"),
        Ok(Err(e)) => panic!("{e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    // The mount was private to the thread's namespace.
    assert!(sorted_names(&merged).is_empty());
}
