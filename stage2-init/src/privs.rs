//! Least privilege for an app's process, the last steps of the child before
//! execve (`spec::unit`: `Capabilities=`, `SeccompFilter=`):
//!
//! 1. while still root with pod-init's capabilities: every capability not
//!    in the app's set leaves the bounding set (needs CAP_SETPCAP);
//! 2. the app's user is taken (launch.rs). setuid from root to another
//!    user clears the permitted and effective sets (no KEEPCAPS: a non-root
//!    app is meant to hold nothing), setuid(0) keeps them;
//! 3. [`set_caps`]: a root app gets exactly its set as permitted, effective
//!    and inheritable, any other user an empty set; ambient is cleared.
//!    Across execve root's permitted set becomes its bounding set (the
//!    same set), another user's stays empty: file capabilities and setuid
//!    bits grant nothing under no_new_privs;
//! 4. [`lock_down`]: no_new_privs, then the seccomp programs in order. The
//!    filters allow execve, so the exec that follows still works.

use nix::libc;
use spec::security::CapSet;

use crate::exit::EXIT_LAUNCH_FAILED;
use crate::launch::ChildError;
use crate::sys;

/// For stage1-ns, which works as the pod's root on host files after setfsuid.
pub use crate::sys::raise_permitted_caps;

/// `BPF_MAXINSNS`: the kernel's limit on one program.
const MAX_INSTRUCTIONS: usize = 4096;

/// One seccomp program, read from a `SeccompFilter=` file.
pub struct SeccompProgram(Vec<libc::sock_filter>);

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeccompProgram({} instructions)", self.0.len())
    }
}

impl SeccompProgram {
    /// A program from its file: `struct sock_filter`s, 8 bytes each, in
    /// native byte order. The kernel checks the program itself on install.
    pub fn from_bytes(bytes: &[u8]) -> Result<SeccompProgram, String> {
        if bytes.is_empty() || !bytes.chunks_exact(8).remainder().is_empty() || bytes.len() / 8 > MAX_INSTRUCTIONS {
            let n = bytes.len();
            return Err(format!("{n} bytes: not 1 to {MAX_INSTRUCTIONS} BPF instructions of 8 bytes"));
        }
        let insns = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(SeccompProgram(insns))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn failed(what: &'static str) -> impl Fn(nix::errno::Errno) -> ChildError {
    move |e| ChildError { code: EXIT_LAUNCH_FAILED, message: format!("{what}: {e}") }
}

/// Step 1: the bounding set becomes `caps` (capabilities this build does
/// not know, numbered above `LAST_CAP`, leave it too).
pub(crate) fn bound(caps: CapSet) -> Result<(), ChildError> {
    for cap in 0..64 {
        if caps.contains(cap) {
            continue;
        }
        match sys::capbset_drop(cap) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(nix::errno::Errno::EINVAL) => break,
            Err(e) => return Err(failed("drop from the bounding set")(e)),
        }
    }
    Ok(())
}

/// Step 3, after the app's user is taken. A root app gets at most what
/// pod-init holds (a stage1 run with fewer capabilities passes on fewer).
pub(crate) fn set_caps(caps: CapSet, uid: u32) -> Result<(), ChildError> {
    let held = if uid == 0 { caps.bits() & sys::capget_permitted().map_err(failed("capget"))? } else { 0 };
    sys::clear_ambient_caps().map_err(failed("clear ambient capabilities"))?;
    sys::capset(held, held, held).map_err(failed("capset"))
}

/// Step 4: no_new_privs, then each filter, the last thing before execve.
pub(crate) fn lock_down(filters: &[SeccompProgram]) -> Result<(), ChildError> {
    nix::sys::prctl::set_no_new_privs().map_err(failed("no_new_privs"))?;
    install_filters(filters)
}

/// Each filter in order: after no_new_privs, or (`NoNewPrivileges=no`)
/// while CAP_SYS_ADMIN is still held.
pub(crate) fn install_filters(filters: &[SeccompProgram]) -> Result<(), ChildError> {
    for program in filters {
        sys::install_seccomp(&program.0).map_err(failed("install seccomp filter"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_bytes() {
        let mut bytes = Vec::new();
        for (code, jt, jf, k) in [(0x20u16, 0u8, 0u8, 4u32), (0x06, 0, 0, 0x7fff_0000)] {
            bytes.extend_from_slice(&code.to_ne_bytes());
            bytes.extend_from_slice(&[jt, jf]);
            bytes.extend_from_slice(&k.to_ne_bytes());
        }
        let p = SeccompProgram::from_bytes(&bytes).expect("program");
        assert_eq!(p.len(), 2);
        assert_eq!((p.0[1].code, p.0[1].k), (0x06, 0x7fff_0000));
        for bad in [&bytes[..0], &bytes[..7], &vec![0u8; 8 * 4097][..]] {
            assert!(SeccompProgram::from_bytes(bad).is_err(), "{} bytes", bad.len());
        }
    }
}
