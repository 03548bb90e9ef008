//! What VM pods boot on this host: which guest kernel (pod's own, built in
//! full by `scripts/build-guest-kernel.sh`, or Debian's with its modules),
//! qemu, and the cache of decompressed kernels and initramfs images.
//!
//! The kernel is chosen by `vm.kernel` in `<config>/stage1.yaml`, and the
//! machine model by `vm.machine`:
//!
//! ```yaml
//! vm:
//!   kernel: auto     # pod's own when it is built, else Debian's (default)
//!                    # pod | debian | /path/to/vmlinux-or-bzImage
//!   machine: auto    # microvm with pod's own kernel, else pc (default)
//!                    # pc | microvm (a kernel with virtio-mmio built in)
//! ```
//!
//! `POD_GUEST_KERNEL` names a kernel over it, and `POD_GUEST_MODULES` its
//! module tree when it needs one (a kernel named so gets none otherwise).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use spec::stage1::VmMachine;

/// Where `scripts/install-deps.sh` installs the guest kernels of VM pods.
pub const GUEST_DIR: &str = "/usr/lib/pod/guest";
/// pod's own guest kernel in [`GUEST_DIR`], the current build
/// (`scripts/build-guest-kernel.sh`).
pub const POD_KERNEL: &str = "pod-kernel/vmlinux";
/// The host's stage1 settings, in the configuration directory.
pub const STAGE1_CONFIG: &str = "stage1.yaml";

/// Why VM pods cannot run on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmUnavailable {
    /// `stage1.yaml` is unreadable or wrong (exit 5, invalid input).
    #[error("{0}")]
    Config(String),
    /// A kernel, module tree or qemu is missing (exit 4, not found).
    #[error("{0}")]
    Missing(String),
}

/// Which guest kernel VM pods boot (`vm.kernel`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// pod's own when it is built, else Debian's.
    #[default]
    Auto,
    /// pod's own ([`POD_KERNEL`] in [`GUEST_DIR`]): every driver built in, no modules.
    Pod,
    /// Debian's, with the virtio and 9p modules the guest loads at boot.
    Debian,
    /// A kernel of the user's, used as it is (with `POD_GUEST_MODULES` when
    /// it needs modules).
    Path(PathBuf),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stage1File {
    #[serde(default)]
    vm: VmSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSection {
    kernel: Option<String>,
    machine: Option<String>,
}

/// Which machine model VM pods boot on (`vm.machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineChoice {
    /// microvm with pod's own kernel (virtio-mmio built in), else pc.
    #[default]
    Auto,
    Pc,
    Microvm,
}

/// The VM settings of `<config_dir>/stage1.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmChoice {
    pub kernel: KernelChoice,
    pub machine: MachineChoice,
}

/// `vm.kernel` and `vm.machine` from `<config_dir>/stage1.yaml`; `auto`
/// both when there is no such file or key. A bad file is an error naming it.
pub fn vm_choice(config_dir: &Path) -> Result<VmChoice, String> {
    let path = config_dir.join(STAGE1_CONFIG);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VmChoice::default()),
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let file: Stage1File = if text.trim().is_empty() {
        Stage1File::default()
    } else {
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let kernel = match file.vm.kernel.as_deref() {
        None | Some("auto") => KernelChoice::Auto,
        Some("pod") => KernelChoice::Pod,
        Some("debian") => KernelChoice::Debian,
        Some(p) if p.starts_with('/') => KernelChoice::Path(PathBuf::from(p)),
        Some(other) => {
            return Err(format!(
                "{}: vm.kernel: {other:?} is not auto, pod, debian or an absolute path",
                path.display()
            ))
        }
    };
    let machine = match file.vm.machine.as_deref() {
        None | Some("auto") => MachineChoice::Auto,
        Some("pc") => MachineChoice::Pc,
        Some("microvm") => MachineChoice::Microvm,
        Some(other) => return Err(format!("{}: vm.machine: {other:?} is not auto, pc or microvm", path.display())),
    };
    Ok(VmChoice { kernel, machine })
}

/// The machine model for a choice and the kernel it boots: microvm has no
/// PCI bus, so its kernel needs virtio-mmio built in, which pod's own has
/// and a kernel that loads its drivers as modules (Debian's) does not.
pub fn resolve_machine(choice: MachineChoice, own_kernel: bool, modules: bool) -> Result<VmMachine, String> {
    match choice {
        MachineChoice::Auto if own_kernel => Ok(VmMachine::Microvm),
        MachineChoice::Auto | MachineChoice::Pc => Ok(VmMachine::Pc),
        MachineChoice::Microvm if modules => Err(format!(
            "vm.machine is microvm, but the guest kernel loads its drivers as modules; microvm needs virtio-mmio \
             built in (pod's own kernel, vm.kernel: pod) or vm.machine: pc ({STAGE1_CONFIG})"
        )),
        MachineChoice::Microvm => Ok(VmMachine::Microvm),
    }
}

/// The kernel and module tree a choice boots; or why it cannot.
/// `env_kernel`/`env_modules`: `POD_GUEST_KERNEL`/`POD_GUEST_MODULES`.
/// `guest_dir` is [`GUEST_DIR`] but in tests.
pub fn resolve_kernel(
    choice: &KernelChoice,
    env_kernel: Option<PathBuf>,
    env_modules: Option<PathBuf>,
    guest_dir: &Path,
) -> Result<(PathBuf, Option<PathBuf>), String> {
    let pod_kernel = guest_dir.join(POD_KERNEL);
    let debian = || -> Result<(PathBuf, Option<PathBuf>), String> {
        let kernel = guest_dir.join("vmlinuz");
        let modules = env_modules.clone().unwrap_or_else(|| guest_dir.join("modules"));
        if !kernel.is_file() {
            return Err(format!(
                "no guest kernel at {} (scripts/install-deps.sh installs one; POD_GUEST_KERNEL names another)",
                kernel.display()
            ));
        }
        if !modules.join("kernel").is_dir() {
            return Err(format!(
                "no guest kernel modules at {} (POD_GUEST_MODULES names another tree)",
                modules.display()
            ));
        }
        Ok((kernel, Some(modules)))
    };
    // A kernel named outright: its modules if named (and there), else none.
    let named = |kernel: PathBuf| -> Result<(PathBuf, Option<PathBuf>), String> {
        if !kernel.is_file() {
            return Err(format!("no guest kernel at {}", kernel.display()));
        }
        match &env_modules {
            Some(m) if !m.join("kernel").is_dir() => {
                Err(format!("no guest kernel modules at {} (POD_GUEST_MODULES)", m.display()))
            }
            m => Ok((kernel, m.clone())),
        }
    };
    if let Some(kernel) = env_kernel {
        return named(kernel);
    }
    match choice {
        KernelChoice::Auto if pod_kernel.is_file() => Ok((pod_kernel, None)),
        KernelChoice::Auto | KernelChoice::Debian => debian(),
        KernelChoice::Pod if pod_kernel.is_file() => Ok((pod_kernel, None)),
        KernelChoice::Pod => Err(format!(
            "vm.kernel is pod, but there is no pod guest kernel at {} (scripts/build-guest-kernel.sh builds it)",
            pod_kernel.display()
        )),
        KernelChoice::Path(p) => named(p.clone()),
    }
}

/// What VM pods boot on this host: the guest kernel (`vm.kernel` in
/// `<config_dir>/stage1.yaml`, or `POD_GUEST_KERNEL`/`POD_GUEST_MODULES`),
/// qemu (`POD_QEMU`, default `qemu-system-x86_64` on PATH) and the cache of
/// decompressed kernels and initramfs images (`POD_CACHE_DIR`, default
/// /var/cache/pod). Or why VM pods cannot run here.
pub fn vm_host(config_dir: &Path) -> Result<spec::stage1::VmHost, VmUnavailable> {
    let env_path =
        |var: &str, default: &str| std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    let choice = vm_choice(config_dir).map_err(VmUnavailable::Config)?;
    let (kernel, modules) = resolve_kernel(
        &choice.kernel,
        std::env::var_os("POD_GUEST_KERNEL").map(PathBuf::from),
        std::env::var_os("POD_GUEST_MODULES").map(PathBuf::from),
        Path::new(GUEST_DIR),
    )
    .map_err(VmUnavailable::Missing)?;
    let cache_dir = env_path("POD_CACHE_DIR", "/var/cache/pod").join("vm");
    let qemu = env_path("POD_QEMU", "qemu-system-x86_64");
    let qemu = if qemu.is_absolute() {
        Some(qemu)
    } else {
        std::env::var_os("PATH")
            .unwrap_or_default()
            .to_str()
            .unwrap_or_default()
            .split(':')
            .map(|d| Path::new(d).join(&qemu))
            .find(|p| p.is_file())
    };
    let qemu = qemu.filter(|q| q.is_file()).ok_or_else(|| {
        VmUnavailable::Missing("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into())
    })?;
    let own_kernel = kernel == Path::new(GUEST_DIR).join(POD_KERNEL);
    let machine = resolve_machine(choice.machine, own_kernel, modules.is_some()).map_err(VmUnavailable::Config)?;
    Ok(spec::stage1::VmHost { qemu, kernel, modules, cache_dir, machine })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_dir(pod: bool, debian: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        if pod {
            std::fs::create_dir_all(d.path().join("pod-kernel")).expect("mkdir");
            std::fs::write(d.path().join("pod-kernel/vmlinux"), b"\x7fELF").expect("write");
        }
        if debian {
            std::fs::create_dir_all(d.path().join("modules/kernel")).expect("mkdir");
            std::fs::write(d.path().join("vmlinuz"), b"bz").expect("write");
        }
        d
    }

    #[test]
    fn auto_prefers_pods_own_kernel_and_falls_back_to_debians() {
        let both = guest_dir(true, true);
        let (k, m) = resolve_kernel(&KernelChoice::Auto, None, None, both.path()).expect("auto");
        assert_eq!((k, m), (both.path().join("pod-kernel/vmlinux"), None), "no modules for pod's own");
        let (k, m) = resolve_kernel(&KernelChoice::Debian, None, None, both.path()).expect("debian");
        assert_eq!((k, m), (both.path().join("vmlinuz"), Some(both.path().join("modules"))));
        let debian_only = guest_dir(false, true);
        let (k, _) = resolve_kernel(&KernelChoice::Auto, None, None, debian_only.path()).expect("fallback");
        assert_eq!(k, debian_only.path().join("vmlinuz"));
        let e = resolve_kernel(&KernelChoice::Pod, None, None, debian_only.path()).expect_err("not built");
        assert!(e.contains("build-guest-kernel.sh"), "{e}");
        let none = guest_dir(false, false);
        let e = resolve_kernel(&KernelChoice::Auto, None, None, none.path()).expect_err("nothing");
        assert!(e.contains("install-deps.sh"), "{e}");
    }

    #[test]
    fn a_named_kernel_wins_and_must_exist() {
        let both = guest_dir(true, true);
        let mine = both.path().join("mine");
        std::fs::write(&mine, b"k").expect("write");
        let (k, m) = resolve_kernel(&KernelChoice::Path(mine.clone()), None, None, both.path()).expect("path");
        assert_eq!((k, m), (mine.clone(), None));
        // POD_GUEST_KERNEL over stage1.yaml; modules only when named.
        let (k, m) = resolve_kernel(&KernelChoice::Pod, Some(mine.clone()), None, both.path()).expect("env");
        assert_eq!((k, m), (mine.clone(), None));
        let mods = Some(both.path().join("modules"));
        let (k, m) = resolve_kernel(&KernelChoice::Pod, Some(mine.clone()), mods.clone(), both.path()).expect("env");
        assert_eq!((k, m), (mine, mods));
        let e =
            resolve_kernel(&KernelChoice::Path("/nonexistent/k".into()), None, None, both.path()).expect_err("missing");
        assert!(e.contains("/nonexistent/k"), "{e}");
    }

    #[test]
    fn microvm_goes_with_pods_own_kernel_and_never_with_modules() {
        assert_eq!(resolve_machine(MachineChoice::Auto, true, false), Ok(VmMachine::Microvm));
        assert_eq!(resolve_machine(MachineChoice::Auto, false, true), Ok(VmMachine::Pc));
        assert_eq!(resolve_machine(MachineChoice::Auto, false, false), Ok(VmMachine::Pc), "a kernel of the user's");
        assert_eq!(resolve_machine(MachineChoice::Pc, true, false), Ok(VmMachine::Pc));
        assert_eq!(resolve_machine(MachineChoice::Microvm, false, false), Ok(VmMachine::Microvm));
        let e = resolve_machine(MachineChoice::Microvm, false, true).expect_err("modules");
        assert!(e.contains("vm.machine") && e.contains("stage1.yaml"), "{e}");
    }

    #[test]
    fn stage1_yaml_names_the_kernel_and_bad_values_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(vm_choice(dir.path()).expect("no file"), VmChoice::default());
        let f = dir.path().join(STAGE1_CONFIG);
        for (text, want) in [
            ("vm:\n  kernel: debian\n", KernelChoice::Debian),
            ("vm:\n  kernel: pod\n", KernelChoice::Pod),
            ("vm: {}\n", KernelChoice::Auto),
            ("vm:\n  kernel: /boot/vmlinuz\n", KernelChoice::Path("/boot/vmlinuz".into())),
        ] {
            std::fs::write(&f, text).expect("write");
            assert_eq!(vm_choice(dir.path()).expect(text).kernel, want);
        }
        std::fs::write(&f, "vm: { kernel: pod, machine: pc }\n").expect("write");
        assert_eq!(
            vm_choice(dir.path()).expect("pc"),
            VmChoice { kernel: KernelChoice::Pod, machine: MachineChoice::Pc }
        );
        std::fs::write(&f, "vm: { machine: microvm }\n").expect("write");
        assert_eq!(vm_choice(dir.path()).expect("microvm").machine, MachineChoice::Microvm);
        for (text, needle) in [
            ("vm:\n  kernel: fedora\n", "vm.kernel"),
            ("vm:\n  kernal: pod\n", "kernal"),
            ("vm:\n  machine: q35\n", "vm.machine"),
        ] {
            std::fs::write(&f, text).expect("write");
            let e = vm_choice(dir.path()).expect_err(text);
            assert!(e.contains("stage1.yaml") && e.contains(needle), "{e}");
        }
    }
}
