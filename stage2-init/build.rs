//! Links the `pod-init` binary statically against glibc, without touching
//! the rest of the workspace (no RUSTFLAGS, no global .cargo/config.toml).
//!
//! `-C target-feature=+crt-static` cannot be set from a build script, and
//! adding `-static` alone does not work: rustc still links the standard
//! library's libraries with `-Wl,-Bdynamic -lgcc_s ... -lc`, which finds
//! `libc.so` and yields a broken, half-dynamic executable. So the binary's
//! link line gets `-no-pie -static` and, first in its library search path, a
//! directory whose `libc.so`, `libm.so` and `libgcc_s.so` are linker scripts
//! naming the static archives (`libc.a`, `libm.a`, `libgcc_eh.a`). The other
//! libraries rustc names (`-lutil -lrt -lpthread -ldl`) have no `.so` in
//! glibc 2.34+ and resolve to their `.a` stubs already. Only `[[bin]]`
//! targets see any of this (`rustc-link-arg-bins`): the library and the
//! tests link as usual.
//!
//! The binary's link line also gets `hot.ld` and `cold.ld`, linker scripts
//! that pack the code pod-init runs while idle and put the rest after it,
//! and 64 kB-aligned segments (see README.md, "Memory").

use std::path::PathBuf;

include!("static_glibc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=static_glibc.rs");
    println!("cargo:rerun-if-changed=cold.ld");
    println!("cargo:rerun-if-changed=hot.ld");
    if !link_bins_static_glibc("pod-init", Placement::Fixed, &[]) {
        return;
    }
    // Code PID 1 never runs goes after the code it runs (see cold.ld): RSS.
    // The code it runs while idle goes first, packed (see hot.ld, hot.sh).
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    // Segments aligned so that a 64 kB stretch of virtual addresses is a
    // 64 kB stretch of the file: the page cache holds the binary in folios
    // of 64 kB (or more), aligned in the file, and a fault maps the whole
    // folio(s) it hits; misaligned, every fault mapped two.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=65536");
    for script in ["hot.ld", "cold.ld"] {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", dir.join(script).display());
    }
}
