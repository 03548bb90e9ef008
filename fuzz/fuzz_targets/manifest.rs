//! Image manifests from untrusted bytes: parsing must not panic, and a
//! manifest that parses survives its own serialisation unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spec::ImageManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = ImageManifest::parse(data) else { return };
    let json = manifest.to_json();
    let again = ImageManifest::parse(&json).expect("a manifest's own JSON parses");
    assert_eq!(again, manifest, "round trip through {}", String::from_utf8_lossy(&json));
});
