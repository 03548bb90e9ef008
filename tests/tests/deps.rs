//! Dependencies fetched by name over https through a source: a diamond is
//! fetched once per image and flattened with later layers winning; a cycle
//! is refused naming its members in order.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// A pod with a trusted key, an https server over its images and a source
/// for example.com/ pointing at it.
fn served() -> (Pod, Key, Ca, Server) {
    let pod = Pod::new();
    let key = pod.keygen("pod");
    pod.trust(&key, "example.com/");
    let ca = Ca::new(&pod.work.join("ca"));
    let server = Server::https(&pod.images, &ca, &pod.work.join("server"));
    let template = format!("{}/{{basename}}-{{version}}.aci", server.base);
    pod.ok(&["source", "add", "--prefix", "example.com/", &template]);
    (pod, key, ca, server)
}

#[test]
fn diamond_fetches_each_image_once_and_later_layers_win() {
    let (pod, key, ca, server) = served();
    // A -> {B, C}, B -> D, C -> D: layers D, B, C, A (A on top).
    let d = ImageSpec::new("example.com/d", "1").file("d.txt", "D").file("common.txt", "D").file("bc.txt", "D");
    let b = ImageSpec::new("example.com/b", "1")
        .file("b.txt", "B")
        .file("common.txt", "B")
        .file("bc.txt", "B")
        .dep("example.com/d", "1");
    let c = ImageSpec::new("example.com/c", "1")
        .file("c.txt", "C")
        .file("common.txt", "C")
        .file("bc.txt", "C")
        .dep("example.com/d", "1");
    let a = ImageSpec::new("example.com/a", "1")
        .file("a.txt", "A")
        .file("common.txt", "A")
        .dep("example.com/b", "1")
        .dep("example.com/c", "1");
    for spec in [&d, &b, &c, &a] {
        pod.build_signed(spec, &key);
    }

    let id = assert_id(&pod.ok(&["fetch", "--ca-cert", p(&ca.cert), "example.com/a:1"]));

    for img in ["a", "b", "c", "d"] {
        let path = format!("/{img}-1.aci");
        assert_eq!(server.count(&path), 1, "{path} fetched {} times: {:?}", server.count(&path), server.requests());
        assert_eq!(server.count(&format!("{path}.sig")), 1, "{:?}", server.requests());
    }
    let list = pod.list();
    let mut names: Vec<_> = list.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["example.com/a", "example.com/b", "example.com/c", "example.com/d"]);
    assert!(list.iter().any(|e| e["id"] == id.as_str() && e["name"] == "example.com/a"));

    let tree = pod.tree_with("a.txt");
    for (file, want) in [("a.txt", "A"), ("b.txt", "B"), ("c.txt", "C"), ("d.txt", "D")] {
        assert_eq!(read(&tree.join(file)), want.as_bytes(), "{file}");
    }
    assert_eq!(read(&tree.join("common.txt")), b"A", "the top layer (A) wins");
    assert_eq!(read(&tree.join("bc.txt")), b"C", "C is laid over B");

    // Fetching again uses the store: no more requests.
    let before = server.requests().len();
    assert_eq!(assert_id(&pod.ok(&["fetch", "--ca-cert", p(&ca.cert), "example.com/a:1"])), id);
    assert_eq!(server.requests().len(), before, "{:?}", server.requests());
}

#[test]
fn dependency_cycle_is_refused_naming_it() {
    let (pod, key, ca, _server) = served();
    pod.build_signed(&ImageSpec::new("example.com/x", "1").file("x", "x").dep("example.com/y", "1"), &key);
    pod.build_signed(&ImageSpec::new("example.com/y", "1").file("y", "y").dep("example.com/x", "1"), &key);

    let err = pod.fails(&["fetch", "--ca-cert", p(&ca.cert), "example.com/x:1"], EXIT_INVALID);
    assert_mentions(&err, &["cycle"]);
    // x -> y -> x, in that order.
    let x1 = err.find("example.com/x").unwrap_or_else(|| panic!("x not named: {err}"));
    let y = x1 + err[x1..].find("example.com/y").unwrap_or_else(|| panic!("y not named after x: {err}"));
    assert!(err[y..].contains("example.com/x"), "the cycle does not close on x: {err}");
    assert!(pod.trees().is_empty(), "a tree was rendered for a cycle: {:?}", pod.trees());
}
