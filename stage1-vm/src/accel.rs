//! Picking the accelerator. KVM needs a working /dev/kvm *and* a CPU with
//! hardware virtualisation (vmx or svm): a paravirtual /dev/kvm such as
//! kvm-pvm answers the API but cannot boot stock kernels (they hang early),
//! so it does not count. `auto` falls back to TCG with one warning line;
//! a forced `kvm` that cannot work fails here, at once, with the reason.

use std::fs::OpenOptions;
use std::path::Path;

use spec::stage1::Accel as Requested;

use crate::qemu::Accel;

/// What the host offers, probed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// /dev/kvm opens read-write (None) or why not.
    pub kvm_device: Result<(), String>,
    /// `vmx` or `svm` in /proc/cpuinfo's flags.
    pub hardware_virt: bool,
    /// The TSC ticks at a constant rate (`crate::tsc::constant`).
    pub constant_tsc: bool,
}

impl HostProbe {
    pub fn detect() -> Self {
        let kvm_device = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("/dev/kvm: {e}")),
        };
        let cpuinfo = std::fs::read_to_string(Path::new("/proc/cpuinfo")).unwrap_or_default();
        Self { kvm_device, hardware_virt: has_hardware_virt(&cpuinfo), constant_tsc: crate::tsc::constant(&cpuinfo) }
    }

    /// Why KVM cannot be used here, if it cannot.
    fn kvm_unusable(&self) -> Option<String> {
        match &self.kvm_device {
            Err(e) => Some(e.clone()),
            Ok(()) if !self.hardware_virt => Some(
                "/dev/kvm exists but the CPU shows no hardware virtualisation (vmx/svm), as under a paravirtual \
                 or nested hypervisor; stock kernels do not boot under it"
                    .into(),
            ),
            Ok(()) => None,
        }
    }
}

fn has_hardware_virt(cpuinfo: &str) -> bool {
    cpu_flags_match(cpuinfo, |flags| flags.iter().any(|f| *f == "vmx" || *f == "svm"))
}

/// Whether some `flags` line of /proc/cpuinfo (its words, `flags` and `:`
/// included) passes `test`.
pub(crate) fn cpu_flags_match(cpuinfo: &str, test: impl Fn(&[&str]) -> bool) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| test(&l.split_whitespace().collect::<Vec<_>>()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("accelerator kvm was requested but cannot work on this host: {0} (use --accel tcg or auto)")]
pub struct AccelError(String);

/// The accelerator for a pod that asks for `requested`, and the warning to
/// print when `auto` falls back to TCG.
pub fn choose(requested: Requested, host: &HostProbe) -> Result<(Accel, Option<String>), AccelError> {
    match (requested, host.kvm_unusable()) {
        (Requested::Tcg, _) => Ok((Accel::Tcg, None)),
        (Requested::Kvm | Requested::Auto, None) => Ok((Accel::Kvm, None)),
        (Requested::Kvm, Some(why)) => Err(AccelError(why)),
        (Requested::Auto, Some(why)) => {
            Ok((Accel::Tcg, Some(format!("KVM unavailable ({why}); running the VM under TCG emulation, much slower"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 vmx avx2\n";
    const PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2\n";

    fn host(dev: bool, cpuinfo: &str) -> HostProbe {
        HostProbe {
            kvm_device: if dev { Ok(()) } else { Err("/dev/kvm: No such file or directory".into()) },
            hardware_virt: has_hardware_virt(cpuinfo),
            constant_tsc: false,
        }
    }

    #[test]
    fn auto_uses_kvm_only_with_hardware_virtualisation() {
        assert_eq!(choose(Requested::Auto, &host(true, VMX)), Ok((Accel::Kvm, None)));
        let (accel, warning) = choose(Requested::Auto, &host(true, PLAIN)).expect("fallback");
        assert_eq!(accel, Accel::Tcg);
        assert!(warning.is_some_and(|w| w.contains("vmx/svm") && w.contains("TCG")));
        let (accel, warning) = choose(Requested::Auto, &host(false, VMX)).expect("fallback");
        assert_eq!(accel, Accel::Tcg);
        assert!(warning.is_some_and(|w| w.contains("/dev/kvm")));
    }

    #[test]
    fn forced_kvm_fails_with_the_reason() {
        assert_eq!(choose(Requested::Kvm, &host(true, VMX)), Ok((Accel::Kvm, None)));
        let e = choose(Requested::Kvm, &host(true, PLAIN)).expect_err("no vmx");
        assert!(e.to_string().contains("vmx/svm") && e.to_string().contains("--accel tcg"), "{e}");
        assert!(choose(Requested::Kvm, &host(false, VMX)).is_err());
    }

    #[test]
    fn tcg_is_always_possible() {
        assert_eq!(choose(Requested::Tcg, &host(false, PLAIN)), Ok((Accel::Tcg, None)));
        assert!(has_hardware_virt("flags\t: a svm b\n") && !has_hardware_virt("flags\t: svmx\nbugs: vmx\n"));
    }
}
