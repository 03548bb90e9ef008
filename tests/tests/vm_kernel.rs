//! The VM pods' guest kernel. pod's own (`scripts/build-guest-kernel.sh`:
//! tinyconfig plus `stage1-vm/kernel/pod-guest.config`, every driver built
//! in) is what a VM pod boots when it is built: its guest has no module
//! support at all, so nothing is loaded at boot. `vm.kernel: debian` in
//! `stage1.yaml` boots Debian's kernel instead, which loads the virtio and
//! 9p modules; a `vm.kernel` that is not a kernel choice is refused before
//! any VM starts, naming the file (exit 5). pod's own kernel boots on qemu's
//! microvm machine (virtio-mmio, no PCI bus), Debian's on the PC
//! (virtio-pci); `vm.machine` overrides that, and microvm with Debian's
//! kernel is refused (exit 5). Needs what tests/tests/vm.rs needs; the tests
//! of pod's own kernel report a skip where it is not built.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(240);
const POD_KERNEL: &str = "/usr/lib/pod/guest/pod-kernel/vmlinux";
const DEBIAN_VERSION: &str = "/usr/lib/pod/guest/version";

macro_rules! skip_unless_vms {
    () => {
        if let Some(why) = skip_reason_vm() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// What a VM pod's app sees of its guest: the kernel release, the loaded
/// modules (or that the kernel has no module support), its virtio
/// devices' bus, and `kernel.dmesg_restrict`.
struct Guest {
    release: String,
    modules: String,
    bus: String,
    dmesg_restrict: String,
}

/// Runs a VM pod whose app prints what [`Guest`] holds.
fn guest_kernel(live: &Live) -> Guest {
    let script = "uname -r; if [ -e /proc/modules ]; then echo modules: $(cut -d' ' -f1 /proc/modules | sort); \
                  else echo no module support; fi; \
                  echo pci $(ls /sys/bus/pci/devices 2>/dev/null | wc -l) \
                  mmio $(ls -d /sys/bus/platform/devices/virtio-mmio* 2>/dev/null | wc -l); \
                  cat /proc/sys/kernel/dmesg_restrict";
    let file = live.pod_file(
        "kernel",
        &format!(
            "name: kernel\nisolation: vm\nnetwork: none\napps:\n\
             - name: k\n  image: example.com/busybox:1.35\n  exec: [/bin/sh, -c, \"{script}\"]\n"
        ),
    );
    let out = live.run_within(&["run", p(&file)], RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&["run"], &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("[k] ")).collect();
    assert_eq!(lines.len(), 4, "{}", describe(&["run"], &out));
    let [release, modules, bus, dmesg_restrict] = [0, 1, 2, 3].map(|i| lines[i].trim().to_owned());
    Guest { release, modules, bus, dmesg_restrict }
}

/// `pci N mmio M` → (N, M).
fn bus_counts(bus: &str) -> (u32, u32) {
    let w: Vec<&str> = bus.split_whitespace().collect();
    assert!(w.len() == 4 && w[0] == "pci" && w[2] == "mmio", "{bus}");
    (w[1].parse().unwrap(), w[3].parse().unwrap())
}

fn debian_release() -> String {
    fs::read_to_string(DEBIAN_VERSION).unwrap().trim().to_owned()
}

#[test]
fn a_vm_pod_boots_pods_own_kernel_and_loads_no_module() {
    skip_unless_vms!();
    if !Path::new(POD_KERNEL).is_file() {
        eprintln!("SKIP: pod's own guest kernel is not built ({POD_KERNEL}: scripts/build-guest-kernel.sh)");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let g = guest_kernel(&live);
    assert_ne!(g.release, debian_release(), "the guest booted Debian's kernel");
    assert_eq!(g.modules, "no module support", "release {}", g.release);
    // Hardened as Debian's kernel is (see pods_own_kernel_is_built_hardened):
    // the kernel log is for CAP_SYSLOG only.
    assert_eq!(g.dmesg_restrict, "1", "kernel.dmesg_restrict");
    // microvm: the virtio devices are virtio-mmio ones, and there is no PCI bus.
    let (pci, mmio) = bus_counts(&g.bus);
    assert_eq!(pci, 0, "{}", g.bus);
    assert!(mmio >= 2, "the 9p share and the serial ports: {}", g.bus);
    // vm.machine: pc boots the same kernel on the PC, its devices on PCI.
    fs::write(live.config.join("stage1.yaml"), "vm:\n  kernel: pod\n  machine: pc\n").unwrap();
    let g = guest_kernel(&live);
    let (pci, mmio) = bus_counts(&g.bus);
    assert!(pci > 0 && mmio == 0, "{}", g.bus);
}

/// pod's own kernel is built with the hardening Debian's kernel has
/// (stage1-vm/kernel/pod-guest.config): what its build recorded beside it.
#[test]
fn pods_own_kernel_is_built_hardened() {
    let config = Path::new(POD_KERNEL).with_file_name("config");
    let Ok(text) = fs::read_to_string(&config) else {
        eprintln!("SKIP: pod's own guest kernel is not built ({}: scripts/build-guest-kernel.sh)", config.display());
        return;
    };
    let set: Vec<&str> = text.lines().filter(|l| l.ends_with("=y")).map(|l| l.trim_end_matches("=y")).collect();
    let missing: Vec<&str> = [
        "CONFIG_STACKPROTECTOR_STRONG",
        "CONFIG_RANDOMIZE_KSTACK_OFFSET_DEFAULT",
        "CONFIG_VMAP_STACK",
        "CONFIG_HARDENED_USERCOPY",
        "CONFIG_FORTIFY_SOURCE",
        "CONFIG_SLAB_FREELIST_HARDENED",
        "CONFIG_SLAB_FREELIST_RANDOM",
        "CONFIG_LIST_HARDENED",
        "CONFIG_STRICT_KERNEL_RWX",
        "CONFIG_SECCOMP_FILTER",
        "CONFIG_SECURITY_DMESG_RESTRICT",
    ]
    .into_iter()
    .filter(|o| !set.contains(o))
    .collect();
    assert!(missing.is_empty(), "{} lacks {missing:?}", config.display());
    assert!(!set.contains(&"CONFIG_MODULES"), "no module support: nothing to load into the guest's kernel");
}

#[test]
fn vm_kernel_debian_boots_debians_kernel_with_its_modules() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    fs::write(live.config.join("stage1.yaml"), "vm:\n  kernel: debian\n").unwrap();
    let g = guest_kernel(&live);
    assert_eq!(g.release, debian_release());
    assert!(bus_counts(&g.bus).0 > 0, "Debian's kernel boots on the PC: {}", g.bus);
    assert_eq!(g.dmesg_restrict, "1", "kernel.dmesg_restrict");
    let modules = &g.modules;
    let loaded: Vec<&str> =
        modules.strip_prefix("modules:").unwrap_or_else(|| panic!("{modules}")).split_whitespace().collect();
    for m in ["9p", "9pnet_virtio", "virtio_console"] {
        assert!(loaded.contains(&m), "{m} not loaded: {loaded:?}");
    }
}

#[test]
fn a_bad_vm_kernel_or_machine_is_refused_naming_the_file_and_starts_no_vm() {
    skip_unless_vms!();
    let live = Live::new(&[Example::Busybox]);
    let conf = live.config.join("stage1.yaml");
    let file = live.pod_file(
        "badkernel",
        "name: badkernel\nisolation: vm\nnetwork: none\napps:\n\
         - name: t\n  image: example.com/busybox:1.35\n  exec: [/bin/busybox, \"true\"]\n",
    );
    for (text, words) in [
        ("vm:\n  kernel: fedora\n", vec!["stage1.yaml", "vm.kernel", "fedora"]),
        ("vm:\n  kernal: pod\n", vec!["stage1.yaml", "kernal"]),
        ("vm:\n  machine: q35\n", vec!["stage1.yaml", "vm.machine", "q35"]),
        // microvm has no PCI bus: Debian's modular kernel cannot boot on it.
        ("vm:\n  kernel: debian\n  machine: microvm\n", vec!["stage1.yaml", "vm.machine", "microvm", "modules"]),
    ] {
        fs::write(&conf, text).unwrap();
        let out = live.run_within(&["run", p(&file)], Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(5), "{}", describe(&["run"], &out));
        assert_mentions(&String::from_utf8_lossy(&out.stderr), &words);
        assert!(live.pods().is_empty(), "a pod was made: {:?}", live.pods());
    }
    // A kernel path that does not exist: not found (4).
    fs::write(&conf, "vm:\n  kernel: /nonexistent/vmlinux\n").unwrap();
    let out = live.run_within(&["run", p(&file)], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&["run"], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["/nonexistent/vmlinux"]);
}

/// A TCG guest keeps time on the TSC, also after its clocksource watchdog
/// has run (a second after boot), not on 10 ms jiffies: on a host whose TSC
/// ticks at a constant rate stage1-vm hands the guest that rate
/// (`tsc_early_khz=`, `tsc=reliable`), so it neither calibrates the TSC
/// against the emulated PIT (which sometimes fails) nor drops it later.
#[test]
fn a_tcg_guest_keeps_time_on_the_tsc() {
    skip_unless_vms!();
    // The rule stage1-vm applies (stage1-vm/src/tsc.rs).
    if !stage1_vm::tsc::constant(&fs::read_to_string("/proc/cpuinfo").unwrap()) {
        eprintln!("SKIP: this host's TSC is not constant (constant_tsc, nonstop_tsc): guests calibrate their own");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = live.pod_file(
        "clock",
        "name: clock\nisolation: vm\naccel: tcg\nnetwork: none\napps:\n\
         - name: k\n  image: example.com/busybox:1.35\n  exec: [/bin/sh, -c, \"sleep 2; \
         cat /sys/devices/system/clocksource/clocksource0/current_clocksource\"]\n",
    );
    for _ in 0..2 {
        let out = live.run_within(&["run", p(&file)], RUN_LIMIT);
        assert!(out.status.success(), "{}", describe(&["run"], &out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let clock: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("[k] ")).collect();
        assert_eq!(clock, ["tsc"], "{}", describe(&["run"], &out));
    }
}
