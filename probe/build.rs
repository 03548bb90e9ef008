//! Links `pod-escape-probe` statically against glibc, so that it runs in any
//! image, the way stage2-init/build.rs links pod-init (see there for why a
//! `-static` alone is not enough): linker scripts named like the shared
//! libraries, naming the static archives, first in the search path. Without
//! pod-init's RSS tuning: the probe runs once per test.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_already = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_already {
        return;
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
        println!("cargo:warning=pod-escape-probe static link setup: {}: {e}", dir.display());
        std::process::exit(1);
    }
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-static");
}
