//! Registry mirrors under `pod cri serve` (`pod source mirror add`): an
//! image named on a registry this machine cannot reach is pulled from a
//! local mirror, keeps its own name in `crictl images`, and its cosign
//! signature is checked for that name, against the keys trusted for its
//! prefix. SKIPs visibly without crictl, cosign, the registry, umoci or
//! skopeo.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn a_mirrored_pull_keeps_the_images_own_name() {
    or_skip!(cosign_bin());
    let pod = Pod::new();
    let reg = or_skip!(Registry::start(&pod.work.join("registry"), RegistryOpts::https()));
    let img = or_skip!(OciImage::new(&pod.work.join("layout"), "v1")).layer(&[("hello", b"from the mirror\n")]);
    let other = or_skip!(OciImage::new(&pod.work.join("other"), "v1")).layer(&[("other", b"signed for the mirror\n")]);
    let digest = reg.push(&img, "mirror/registry.example.org/team/app:v1");
    let other_digest = reg.push(&other, "mirror/registry.example.org/team/other:v1");
    let key = cosign_generate_key_pair(&pod.work.join("cosign"), "pw").unwrap();
    // Signed for the image's own name, though it is served by the mirror.
    let out = cosign_sign_output(
        &key,
        &reg.image_ref(&format!("mirror/registry.example.org/team/app@{digest}")),
        &reg,
        &["--sign-container-identity", "registry.example.org/team/app"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Signed for the mirror's name only.
    cosign_sign(&key, &reg.image_ref(&format!("mirror/registry.example.org/team/other@{other_digest}")), &reg);

    pod.ok(&["trust", "add", "--prefix", "registry.example.org/", p(&key.public)]);
    let mirror = format!("docker://{}/mirror/registry.example.org/", reg.host());
    pod.ok(&["source", "mirror", "add", "--prefix", "registry.example.org/", &mirror]);
    let listed = pod.ok(&["source", "mirror", "list"]);
    assert_mentions(&listed, &["registry.example.org/", &mirror]);
    let err = pod.fails(&["source", "mirror", "add", "--prefix", "registry.example.org/", "https://x/"], 5);
    assert_mentions(&err, &["docker://"]);

    let s = or_skip!(CriServer::start(&pod, &["--ca-cert", p(reg.ca_cert())]));
    let name = "registry.example.org/team/app:v1";
    assert_mentions(&s.ok(&["pull", name]), &[&digest]);
    let list = images(&s);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["repoTags"], serde_json::json!([name]), "{list:?}");
    assert_eq!(
        list[0]["repoDigests"],
        serde_json::json!([format!("registry.example.org/team/app@{digest}")]),
        "{list:?}"
    );
    assert_mentions(&s.log(), &["pulled from a mirror"]);

    // A signature for the mirror's name does not vouch for the image's own
    // name; the fallback to registry.example.org itself fails (no network),
    // and nothing is stored.
    let before = pod.snapshot();
    let err = s.fails(&["pull", "registry.example.org/team/other:v1"]);
    assert_mentions_any(&err, &["registry.example.org/team/other"]);
    pod.assert_untouched(&before, "a refused mirrored pull");
    assert_mentions(&s.log(), &["mirror failed"]);

    // Removing the mirror: the image's own registry is asked (and cannot
    // be reached from here).
    pod.ok(&["source", "mirror", "rm", "registry.example.org/"]);
    s.fails(&["pull", "registry.example.org/team/app:v2"]);
    assert_eq!(images(&s).len(), 1);
}
