//! An image built from a Debian package (tier b: needs the Debian archive;
//! reports a skip without it): built, signed, fetched, and its binary runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn busybox_static_image_builds_fetches_and_runs() {
    let pod = Pod::new();
    // Probe the archive the way the build will use it.
    let probe = Command::new("apt-get").args(["download", "busybox-static"]).current_dir(&pod.work).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("SKIP: apt-get download busybox-static failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            return;
        }
        Err(e) => {
            eprintln!("SKIP: apt-get not runnable: {e}");
            return;
        }
    }

    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let spec = ImageSpec::new("example.com/busybox", "1").package("busybox-static").exec(&["/bin/busybox", "true"]);
    let img = pod.build_signed(&spec, &key);
    let id = assert_id(&pod.ok(&["fetch", p(&img)]));

    let manifest: serde_json::Value = serde_json::from_str(&pod.ok(&["image", "cat-manifest", &id])).unwrap();
    assert_eq!(manifest["app"]["exec"], serde_json::json!(["/bin/busybox", "true"]));

    let tree = pod.tree_with("bin/busybox");
    let busybox = tree.join("bin/busybox");
    let out = Command::new(&busybox).args(["echo", "hi"]).output().unwrap();
    assert!(out.status.success(), "{}: {}", busybox.display(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}
