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
//! The binary's link line also gets `cold.ld`, a linker script that puts
//! the code pod-init never runs after the code it runs (see that file).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cold.ld");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_already = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_already {
        return; // musl, or crt-static asked for: static by other means
    }
    let dir = PathBuf::from(var("OUT_DIR")).join("static-libs");
    let scripts = [
        ("libc.so", "GROUP ( -l:libc.a -lgcc -lgcc_eh )\n"),
        ("libm.so", "INPUT ( -l:libm.a )\n"),
        ("libgcc_s.so", "INPUT ( -lgcc_eh -lgcc )\n"),
    ];
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| scripts.iter().try_for_each(|(name, text)| std::fs::write(dir.join(name), text)));
    if let Err(e) = written {
        // A build script reports through cargo; failing the build is right.
        println!("cargo:warning=pod-init static link setup: {}: {e}", dir.display());
        std::process::exit(1);
    }
    // `-L` applies to every `-l` wherever it appears on the command line,
    // and user directories are searched before the system ones.
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-static");
    // Code PID 1 never runs goes after the code it runs (see cold.ld): RSS.
    let cold = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("cold.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", cold.display());
}
