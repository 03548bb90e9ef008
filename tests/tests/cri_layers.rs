//! A container from an image of many layers, added to a running namespace
//! sandbox through `pod cri serve`: its overlay takes each layer (the
//! joined list of layer paths outgrows what fsconfig(2) accepts in one
//! value). SKIPs visibly without root, crictl, cosign, the registry, umoci
//! or skopeo.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_container_of_five_layers_starts_and_sees_every_layer() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    or_skip!(cosign_bin());
    let live = Live::new(&[]);
    let reg = or_skip!(Registry::start(&live.work.join("registry"), RegistryOpts::https()));
    let mut img = or_skip!(or_skip!(OciImage::new(&live.work.join("layout"), "v1")).busybox());
    for i in 1..=4 {
        img = img.layer(&[(&format!("layers/{i}"), format!("layer {i}\n").as_bytes())]);
    }
    // The top layer hides a file of the one below.
    let img = img.whiteout(&["layers/3"]).cmd(&["sh", "-c", "cat /layers/*; exec sleep 1000"]);
    let digest = reg.push(&img, "team/layers:v1");
    let key = cosign_generate_key_pair(&live.work.join("cosign"), "pw").unwrap();
    cosign_sign(&key, &reg.image_ref(&format!("team/layers@{digest}")), &reg);
    live.ok(&["trust", "add", "--prefix", &reg.image_ref("team"), p(&key.public)]);
    let s = or_skip!(CriServer::start(&live, &["--ca-cert", p(reg.ca_cert())]));
    let image = reg.image_ref("team/layers:v1");
    s.ok(&["pull", &image]);

    let sandbox_json = live.work.join("sandbox.json");
    let sandbox = json!({"metadata": {"name": "layers", "namespace": "default", "uid": "u-layers"}, "linux": {}});
    std::fs::write(&sandbox_json, sandbox.to_string()).unwrap();
    let container_json = live.work.join("container.json");
    let container = json!({"metadata": {"name": "many-layers"}, "image": {"image": image}});
    std::fs::write(&container_json, container.to_string()).unwrap();
    let sandbox = s.ok(&["runp", p(&sandbox_json)]).trim().to_owned();
    let container = s.ok(&["create", &sandbox, p(&container_json), p(&sandbox_json)]).trim().to_owned();
    s.ok(&["start", &container]);
    wait_state(&s, &container, "CONTAINER_RUNNING");
    let logs = live.ok(&["logs", &sandbox, "many-layers"]);
    assert_mentions(&logs, &["layer 1", "layer 2", "layer 4"]);
    assert!(!logs.contains("layer 3"), "a whiteout of the top layer is honoured: {logs}");
    s.ok(&["stopp", &sandbox]);
    s.ok(&["rmp", &sandbox]);
    let left = leftovers_of(&live, &sandbox);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
