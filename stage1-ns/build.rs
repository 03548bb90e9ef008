//! Links `pod-stage1-ns` statically against glibc, as `pod-init` (see
//! stage2-init/build.rs for how and why this way): the monitor stays for
//! the pod's whole life, and a dynamically linked process starts with
//! libc.so and ld.so mapped (~1.5 MB resident here, since a fault maps
//! the page cache's whole folio around it) before it does anything. Static,
//! only the code it runs is there; and it starts without the dynamic
//! loader's relocations. Only the `[[bin]]` link changes (the library and
//! the tests link as usual). Segments are 64 kB-aligned, as pod-init's, so
//! a fault maps one folio rather than two.

include!("../stage2-init/static_glibc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../stage2-init/static_glibc.rs");
    if link_bins_static_glibc("pod-stage1-ns", Placement::Fixed, &[]) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=65536");
    }
}
