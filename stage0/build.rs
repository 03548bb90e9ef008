//! Links the `pod` binary statically against glibc and OpenSSL's libcrypto
//! (see stage2-init/build.rs for how), as a static PIE.
//!
//! Every pod command starts `pod` afresh, and `pod run` pays its start
//! before the pod's: dynamically linked, ld.so mapped libc, libm, libgcc_s,
//! libssl and libcrypto and applied ~45,000 relocations, ~1 ms of a 3 ms
//! `pod --version`, and `pod run` of a `true` pod took ~2 ms longer (see
//! README.md, "Start latency"). Unlike pod-init and pod-stage1-ns, `pod`
//! stays position-independent: it is the stage that reads what comes from
//! outside (registries, archives, manifests), so its code keeps a random
//! address; it relocates itself at start, from a packed (RELR) table.

include!("../stage2-init/static_glibc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../stage2-init/static_glibc.rs");
    // openssl-sys names ssl and crypto; only libcrypto's code is used.
    link_bins_static_glibc("pod", Placement::Randomized, &["ssl", "crypto"]);
}
