//! Links `pod-escape-probe` statically against glibc, so that it runs in any
//! image, the way stage2-init/build.rs links pod-init (see there for why a
//! `-static` alone is not enough): linker scripts named like the shared
//! libraries, naming the static archives, first in the search path. Without
//! pod-init's RSS tuning: the probe runs once per test.

include!("../stage2-init/static_glibc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../stage2-init/static_glibc.rs");
    link_bins_static_glibc("pod-escape-probe", Placement::Fixed, &[]);
}
