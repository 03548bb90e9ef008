// Shared by the build scripts of the static binaries (pod-init,
// pod-stage1-ns, pod, pod-escape-probe) through `include!`: see
// stage2-init/build.rs for why this way.

/// Where a static binary's code sits: at the fixed address the link gives
/// it (`-no-pie`: no relocations at all at start), or anywhere (`-static-pie`:
/// the binary relocates itself at start, and keeps ASLR).
#[derive(Clone, Copy, PartialEq)]
#[allow(dead_code)] // each build script names one
enum Placement {
    Fixed,
    Randomized,
}

/// Gives the crate's `[[bin]]` link lines `-static` (with `-no-pie`, or as
/// `-static-pie`) and, first in their library search path, linker scripts
/// named like glibc's shared libraries that name its static archives; and
/// the same for each of `archives` (`"crypto"`: `libcrypto.so` naming
/// `libcrypto.a`). Returns false (and does nothing) where the target is not
/// glibc Linux or is static already.
#[allow(clippy::exit)] // a build script fails by exiting non-zero
fn link_bins_static_glibc(binary: &str, placement: Placement, archives: &[&str]) -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_already = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_already {
        return false; // musl, or crt-static asked for: static by other means
    }
    let dir = std::path::PathBuf::from(var("OUT_DIR")).join("static-libs");
    let mut scripts = vec![
        ("libc.so".to_owned(), "GROUP ( -l:libc.a -lgcc -lgcc_eh )\n".to_owned()),
        ("libm.so".to_owned(), "INPUT ( -l:libm.a )\n".to_owned()),
        ("libgcc_s.so".to_owned(), "INPUT ( -lgcc_eh -lgcc )\n".to_owned()),
    ];
    scripts.extend(archives.iter().map(|a| (format!("lib{a}.so"), format!("INPUT ( -l:lib{a}.a )\n"))));
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
    match placement {
        Placement::Fixed => {
            println!("cargo:rustc-link-arg-bins=-no-pie");
            println!("cargo:rustc-link-arg-bins=-static");
        }
        Placement::Randomized => {
            println!("cargo:rustc-link-arg-bins=-static-pie");
            // RELR: the relative relocations as bitmaps (~13 kB rather
            // than ~520 kB of RELA entries for pod) read at every start.
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
    }
    true
}
