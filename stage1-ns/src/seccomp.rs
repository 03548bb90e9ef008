//! The default seccomp profile, compiled on the host with seccompiler
//! (Firecracker's BPF compiler) for both stage1s, and written next to each
//! app's unit as raw `struct sock_filter` arrays that pod-init installs
//! just before execve (`spec::unit`, `SeccompFilter=`).
//!
//! Two programs, because a seccompiler filter has one action for every
//! match: the deny list answers EPERM, and `clone3` answers ENOSYS so libc
//! falls back to `clone`, whose flags a filter can read (clone3's are
//! behind a pointer) — Docker's profile does the same. Both check the
//! architecture first: a syscall from another ABI (32-bit x86 through
//! `int 0x80`) kills the process, and on x86-64 the x32 numbers of the
//! denied calls are denied too.
//!
//! The deny list follows Docker's default profile where it refuses calls
//! to an app without extra capabilities: mounts and new mount API, pivot_root,
//! kernel modules, kexec, reboot, swap, the kernel keyring, bpf,
//! perf_event_open, userfaultfd, io_uring, ptrace and cross-process memory
//! access, clocks, accounting and quotas, obsolete calls, setns, and new
//! user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`). Unlike
//! Docker's allow list it lets unknown and future calls through, and it is
//! the same whatever capabilities the app was given: `seccomp: unconfined`
//! in the pod file turns it off.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Denied with EPERM whatever the arguments.
pub const DENIED: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("adjtimex", libc::SYS_adjtimex),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("syslog", libc::SYS_syslog),
    ("umount2", libc::SYS_umount2),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("nfsservctl", libc::SYS_nfsservctl),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
];

/// Denied with EPERM when the flags (argument 0) ask for a new user namespace.
pub const DENIED_WITH_NEWUSER: &[(&str, i64)] = &[("clone", libc::SYS_clone), ("unshare", libc::SYS_unshare)];

/// x32 numbers (`__X32_SYSCALL_BIT` set) of the denied calls whose x32 entry
/// differs from the x86-64 one (arch/x86/entry/syscalls/syscall_64.tbl).
#[cfg(target_arch = "x86_64")]
const X32_ONLY: [i64; 4] = [
    521, // ptrace
    528, // kexec_load
    539, // process_vm_readv
    540, // process_vm_writev
];
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

/// linux/sched.h and asm-generic/errno-base.h: the same on every architecture.
const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for {arch}: {source}")]
    Compile {
        arch: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
}

/// The default profile's programs, in the order pod-init installs them,
/// each as the bytes of its `struct sock_filter` array.
pub fn default_filters() -> Result<Vec<Vec<u8>>, SeccompError> {
    let arch = std::env::consts::ARCH;
    let err = |source| SeccompError::Compile { arch, source };
    let target = TargetArch::try_from(arch).map_err(err)?;

    let new_user =
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(CLONE_NEWUSER), CLONE_NEWUSER)
            .map_err(err)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, nr) in DENIED {
        for n in with_x32(nr) {
            rules.insert(n, Vec::new());
        }
    }
    #[cfg(target_arch = "x86_64")]
    for nr in X32_ONLY {
        rules.insert(nr | X32_BIT, Vec::new());
    }
    for &(_, nr) in DENIED_WITH_NEWUSER {
        for n in with_x32(nr) {
            rules.insert(n, vec![SeccompRule::new(vec![new_user.clone()]).map_err(err)?]);
        }
    }
    let eperm = SeccompAction::Errno(EPERM);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, eperm, target).map_err(err)?;

    let clone3: BTreeMap<i64, Vec<SeccompRule>> = with_x32(libc::SYS_clone3).map(|n| (n, Vec::new())).collect();
    let enosys = SeccompAction::Errno(ENOSYS);
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, enosys, target).map_err(err)?;

    [deny, clone3].into_iter().map(|f| BpfProgram::try_from(f).map(|p| to_bytes(&p)).map_err(err)).collect()
}

/// `nr`, and on x86-64 its x32 twin.
pub(crate) fn with_x32(nr: i64) -> impl Iterator<Item = i64> {
    #[cfg(target_arch = "x86_64")]
    let twin = Some(nr | X32_BIT);
    #[cfg(not(target_arch = "x86_64"))]
    let twin = None;
    std::iter::once(nr).chain(twin)
}

/// A program as the kernel reads it: 8 bytes per instruction, native order.
pub fn to_bytes(program: &[seccompiler::sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for insn in program {
        out.extend_from_slice(&insn.code.to_ne_bytes());
        out.push(insn.jt);
        out.push(insn.jf);
        out.extend_from_slice(&insn.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
