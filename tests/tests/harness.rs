//! Checks of the test harness itself, independent of `pod`: the raw tar
//! writer makes what GNU tar reads, the https server serves with the test CA
//! and logs requests, and snapshots see every change. Without these, a
//! hostile-archive test could pass because the archive was merely malformed.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn raw_tar_is_read_by_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("rootfs/{}/file", "d".repeat(120));
    let mut t = RawTar::with_manifest("example.com/x");
    t.file("rootfs/a", b"hello")
        .symlink("rootfs/l", "/etc/passwd")
        .hardlink("rootfs/h", "rootfs/a")
        .chardev("rootfs/null", 1, 3)
        .file(&long, b"deep");
    let tar = dir.path().join("t.tar");
    fs::write(&tar, t.finish()).unwrap();
    let out = Command::new("tar").args(["-tvf", p(&tar)]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tar -t: {}\n{listing}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 7, "{listing}");
    assert!(lines[0].starts_with("-rw-r--r--") && lines[0].ends_with(" manifest"), "{listing}");
    assert!(lines[1].starts_with('d') && lines[1].ends_with(" rootfs"), "{listing}");
    assert!(lines[2].ends_with(" rootfs/a"), "{listing}");
    assert!(lines[3].starts_with('l') && lines[3].ends_with("rootfs/l -> /etc/passwd"), "{listing}");
    assert!(lines[4].starts_with('h') && lines[4].ends_with("rootfs/h link to rootfs/a"), "{listing}");
    assert!(lines[5].starts_with('c') && lines[5].contains("1,3"), "{listing}");
    assert!(lines[6].ends_with(&long), "{listing}");

    // GNU tar extracts the content intact.
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar").args(["-xf", p(&tar), "-C", p(&x), "--exclude=rootfs/null"]).status().unwrap();
    assert!(st.success());
    assert_eq!(read(&x.join("rootfs/a")), b"hello");
    assert_eq!(read(&x.join(&long)), b"deep");
    let m: serde_json::Value = serde_json::from_slice(&read(&x.join("manifest"))).unwrap();
    assert_eq!(m["name"], "example.com/x");

    // An unfinished archive is one tar notices.
    let cut = dir.path().join("cut.tar");
    let mut t = RawTar::with_manifest("example.com/x");
    t.raw(&tar_header("rootfs/cut", REG, 4096, "", 0o644, (0, 0))).raw(&[1u8; 100]);
    fs::write(&cut, t.unfinished()).unwrap();
    let out = Command::new("tar").args(["-tf", p(&cut)]).output().unwrap();
    assert!(!out.status.success() || !out.stderr.is_empty(), "tar accepted a truncated archive");
}

#[test]
fn https_server_serves_with_the_test_ca_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("x.aci"), "payload").unwrap();
    let ca = Ca::new(&dir.path().join("ca"));
    let server = Server::https(&root, &ca, &dir.path().join("state"));
    let curl = |extra: &[&str]| {
        Command::new("curl").args(["-sS", "-f"]).args(extra).arg(server.url("x.aci")).output().unwrap()
    };
    let Ok(probe) = Command::new("curl").arg("--version").output() else {
        eprintln!("SKIP: curl not installed");
        return;
    };
    assert!(probe.status.success());
    let out = curl(&["--cacert", p(&ca.cert)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"payload");
    assert!(!curl(&[]).status.success(), "the test CA must not be trusted by default");
    assert_eq!(server.count("/x.aci"), 1, "{:?}", server.requests());

    let plain = Server::http(&root, &dir.path().join("plain"));
    let out = Command::new("curl").args(["-sS", "-f", &plain.url("x.aci")]).output().unwrap();
    assert_eq!(out.stdout, b"payload");
    assert_eq!(plain.requests(), ["/x.aci"]);
}

#[test]
fn snapshot_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("images/a")).unwrap();
    fs::create_dir_all(d.join("tmp")).unwrap();
    fs::write(d.join("images/a/f"), "1").unwrap();
    let before = snapshot(d);
    assert!(before.contains_key("images/a/f") && !before.contains_key("tmp"), "{before:?}");
    fs::write(d.join("store.lock"), "").unwrap();
    assert_eq!(snapshot(d), before, "store.lock and an empty tmp/ are ignored");
    fs::write(d.join("images/a/f"), "2").unwrap();
    assert_ne!(snapshot(d), before, "content change");
    fs::write(d.join("images/a/f"), "1").unwrap();
    fs::create_dir(d.join("tmp/fetch-1")).unwrap();
    assert_ne!(snapshot(d), before, "leftover staging dir");
    fs::remove_dir(d.join("tmp/fetch-1")).unwrap();
    std::os::unix::fs::symlink("f", d.join("images/a/l")).unwrap();
    assert_ne!(snapshot(d), before, "new symlink");
}
