//! Fetching signed images: from a file, over https with a test CA, by name
//! through a source; plain http refusal; concurrent fetches; appc interop;
//! and recovery from a fetch killed mid-import.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn hello(version: &str) -> ImageSpec {
    ImageSpec::new("example.com/hello", version).file("hello.txt", "hello\n").file("etc/motd", "welcome\n")
}

/// A trusted key for example.com/ and one signed image built with it.
fn signed_hello(pod: &Pod) -> (Key, std::path::PathBuf) {
    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let img = pod.build_signed(&hello("1.0"), &key);
    (key, img)
}

#[test]
fn file_fetch_lists_exports_verifies_and_removes() {
    let pod = Pod::new();
    let (key, img) = signed_hello(&pod);

    let id = assert_id(&pod.ok(&["fetch", p(&img)]));

    let list = pod.list();
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["name"], "example.com/hello");
    assert_eq!(e["labels"]["version"], "1.0");
    assert_eq!(e["labels"]["os"], "linux");
    assert_eq!(e["signer"], key.id.as_str(), "signer is the key ID `pod key gen` printed");

    let manifest: serde_json::Value = serde_json::from_str(&pod.ok(&["image", "cat-manifest", &id])).unwrap();
    assert_eq!(manifest["name"], "example.com/hello");
    assert_eq!(manifest["acKind"], "ImageManifest");
    let by_name: serde_json::Value =
        serde_json::from_str(&pod.ok(&["image", "cat-manifest", "example.com/hello:1.0"])).unwrap();
    assert_eq!(by_name, manifest);

    let verified = pod.ok(&["image", "verify"]);
    assert!(verified.starts_with("ok"), "{verified}");
    assert!(verified.contains("example.com/hello"), "{verified}");

    let out = pod.work.join("exported.aci");
    assert_eq!(pod.ok(&["image", "export", &id, p(&out)]), id);
    assert!(read(&out) == read(&img), "export differs from the file fetched");
    assert_eq!(read(&sig_of(&out)), read(&sig_of(&img)), "exported signature differs");

    let tree = pod.tree_with("hello.txt");
    assert_eq!(read(&tree.join("hello.txt")), b"hello\n");
    assert_eq!(read(&tree.join("etc/motd")), b"welcome\n");

    // Fetching again changes nothing.
    assert_eq!(assert_id(&pod.ok(&["fetch", p(&img)])), id);
    assert_eq!(pod.list().len(), 1);
    assert_eq!(pod.image_dirs().len(), 1);

    assert_eq!(pod.ok(&["image", "rm", &id]), id);
    assert!(pod.list().is_empty());
    assert!(pod.image_dirs().is_empty());
    pod.fails(&["image", "cat-manifest", &id], EXIT_NOT_FOUND);
}

#[test]
fn https_fetch_needs_the_ca_and_works_by_url_and_by_name() {
    let pod = Pod::new();
    let (key, _img) = signed_hello(&pod);
    let ca = Ca::new(&pod.work.join("ca"));
    let server = Server::https(&pod.images, &ca, &pod.work.join("server"));
    let url = server.url("hello-1.0.aci");

    // The test CA is not one the system trusts.
    let err = pod.fails(&["fetch", &url], EXIT_NETWORK);
    assert_mentions_any(&err, &["certificate", "tls"]);
    assert!(pod.list().is_empty());

    let id = assert_id(&pod.ok(&["fetch", "--ca-cert", p(&ca.cert), &url]));
    let list = pod.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["signer"], key.id.as_str());
    assert_eq!(list[0]["source"], url.as_str());
    assert_eq!(server.count("/hello-1.0.aci"), 1);
    assert_eq!(server.count("/hello-1.0.aci.sig"), 1);

    // By name through a source, into an empty store.
    pod.ok(&["image", "rm", &id]);
    let template = format!("{}/{{basename}}-{{version}}.aci", server.base);
    pod.ok(&["source", "add", "--prefix", "example.com/", &template]);
    let by_name = assert_id(&pod.ok(&["fetch", "--ca-cert", p(&ca.cert), "example.com/hello:1.0"]));
    assert_eq!(by_name, id);
    assert_eq!(server.count("/hello-1.0.aci"), 2);
    let list = pod.list();
    assert_eq!((list.len(), &list[0]["name"]), (1, &serde_json::json!("example.com/hello")));
    pod.tree_with("hello.txt");

    // A name already stored is not fetched again.
    assert_eq!(assert_id(&pod.ok(&["fetch", "--ca-cert", p(&ca.cert), "example.com/hello:1.0"])), id);
    assert_eq!(server.count("/hello-1.0.aci"), 2);
}

#[test]
fn plain_http_is_refused_unless_asked_for() {
    let pod = Pod::new();
    let (key, _img) = signed_hello(&pod);
    let server = Server::http(&pod.images, &pod.work.join("server"));
    let url = server.url("hello-1.0.aci");

    let err = pod.fails(&["fetch", &url], EXIT_VERIFICATION);
    assert_mentions(&err, &["http", "--insecure-options=http"]);
    assert!(server.requests().is_empty(), "refused, yet requested: {:?}", server.requests());
    assert!(pod.list().is_empty());

    let id = assert_id(&pod.ok(&["fetch", "--insecure-options=http", &url]));
    let list = pod.list();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["signer"], key.id.as_str(), "http skips TLS, not the signature");
}

#[test]
fn ten_concurrent_fetches_make_one_entry() {
    let pod = Pod::new();
    let (_key, img) = signed_hello(&pod);
    let children: Vec<_> = (0..10)
        .map(|_| pod.cmd(&["fetch", p(&img)]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut ids = Vec::new();
    for out in &outs {
        assert!(out.status.success(), "{}", describe(&["fetch", p(&img)], out));
        ids.push(assert_id(&String::from_utf8_lossy(&out.stdout)));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "different IDs: {ids:?}");
    assert_eq!(pod.image_dirs().len(), 1, "{:?}", pod.image_dirs());
    assert!(pod.tmp_entries().is_empty(), "staging left behind: {:?}", pod.tmp_entries());
    assert_eq!(pod.list().len(), 1);
    assert_eq!(pod.trees().len(), 1, "{:?}", pod.trees());
    let verified = pod.ok(&["image", "verify"]);
    assert!(verified.starts_with("ok"), "{verified}");
}

/// An ACI made by appc's own `actool`, signed by pod, fetches.
#[test]
fn actool_built_image_fetches() {
    if Command::new("actool").arg("version").output().is_err() {
        eprintln!("SKIP: actool not installed");
        return;
    }
    let pod = Pod::new();
    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let layout = pod.work.join("layout");
    fs::create_dir_all(layout.join("rootfs/etc")).unwrap();
    fs::write(layout.join("manifest"), manifest_json("example.com/appc", "0.8.11")).unwrap();
    fs::write(layout.join("rootfs/etc/appc"), "from actool\n").unwrap();
    let img = pod.images.join("appc.aci");
    let out = Command::new("actool").args(["build", "--owner-root", p(&layout), p(&img)]).output().unwrap();
    assert!(out.status.success(), "actool build: {}", String::from_utf8_lossy(&out.stderr));
    pod.sign(&key, &img);

    let id = assert_id(&pod.ok(&["fetch", p(&img)]));
    let list = pod.list();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["name"], "example.com/appc");
    assert_eq!(list[0]["labels"]["version"], "0.8.11");
    let tree = pod.tree_with("etc/appc");
    assert_eq!(read(&tree.join("etc/appc")), b"from actool\n");
}

/// A fetch killed with SIGKILL mid-import leaves a staging dir; `pod image
/// gc` removes it and the store still verifies.
#[test]
fn gc_cleans_up_after_a_killed_fetch() {
    let pod = Pod::new();
    let (_key, img) = signed_hello(&pod);
    let id = assert_id(&pod.ok(&["fetch", p(&img)]));

    // A FIFO makes the import as slow as we like: pod blocks reading it.
    let fifo = pod.work.join("slow.aci");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo");
    let mut child = pod.cmd(&["fetch", p(&fifo)]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let fifo2 = fifo.clone();
    // Opening a FIFO for writing waits for its reader: do it on a thread so a
    // pod that never opens it fails the test instead of hanging it.
    std::thread::spawn(move || {
        let mut w = fs::OpenOptions::new().write(true).open(&fifo2).unwrap();
        w.write_all(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap();
        w.write_all(&vec![0u8; 64 << 10]).unwrap();
        let _ = tx.send(());
        // Hold the writer open until the reader is dead.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
        drop(w);
    });
    let wrote = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let staged = wrote
        && wait_for(Duration::from_secs(20), || {
            pod.tmp_entries().iter().any(|d| fs::metadata(d.join("image.aci")).is_ok_and(|m| m.len() > 0))
        });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = done_tx.send(());
    assert!(staged, "no staging dir with data appeared under {}", pod.data.join("tmp").display());
    let leftovers = pod.tmp_entries();
    assert!(!leftovers.is_empty(), "the killed fetch left nothing behind");

    let out = pod.run(&["image", "gc"]);
    assert!(out.status.success(), "{}", describe(&["image", "gc"], &out));
    assert!(pod.tmp_entries().is_empty(), "gc left {:?}", pod.tmp_entries());
    let said = String::from_utf8_lossy(&out.stderr);
    for l in &leftovers {
        let name = l.file_name().unwrap().to_string_lossy();
        assert!(said.contains(name.as_ref()), "gc did not report removing {name}: {said}");
    }

    let verified = pod.ok(&["image", "verify"]);
    assert!(verified.lines().all(|l| l.starts_with("ok")), "{verified}");
    let list = pod.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
}
