// Shared by the build scripts of the static binaries (pod-init,
// pod-escape-probe) through `include!`: see stage2-init/build.rs for why.

/// Gives the crate's `[[bin]]` link lines `-no-pie -static` and, first in
/// their library search path, linker scripts named like glibc's shared
/// libraries that name its static archives. Returns false (and does
/// nothing) where the target is not glibc Linux or is static already.
#[allow(clippy::exit)] // a build script fails by exiting non-zero
fn link_bins_static_glibc(binary: &str) -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_already = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_already {
        return false; // musl, or crt-static asked for: static by other means
    }
    let dir = std::path::PathBuf::from(var("OUT_DIR")).join("static-libs");
    let scripts = [
        ("libc.so", "GROUP ( -l:libc.a -lgcc -lgcc_eh )\n"),
        ("libm.so", "INPUT ( -l:libm.a )\n"),
        ("libgcc_s.so", "INPUT ( -lgcc_eh -lgcc )\n"),
    ];
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| scripts.iter().try_for_each(|(name, text)| std::fs::write(dir.join(name), text)));
    if let Err(e) = written {
        // A build script reports through cargo; failing the build is right.
        println!("cargo:warning={binary} static link setup: {}: {e}", dir.display());
        std::process::exit(1);
    }
    // `-L` applies to every `-l` wherever it appears on the command line,
    // and user directories are searched before the system ones.
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-static");
    true
}
