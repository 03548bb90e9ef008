//! The default filters: their shape, and (kernel test, no root needed)
//! what a process that installed them gets from the kernel. Every call
//! probed is harmless if the filter let it through: an invalid clock, a
//! mount on a path that does not exist, a new user namespace in a child
//! about to exit.

use super::*;

#[test]
fn constants_match_libc() {
    assert_eq!(u64::try_from(libc::CLONE_NEWUSER).ok(), Some(CLONE_NEWUSER));
    assert_eq!((u32::try_from(libc::EPERM).ok(), u32::try_from(libc::ENOSYS).ok()), (Some(EPERM), Some(ENOSYS)));
}

#[test]
fn compiles_two_programs_with_the_arch_check() {
    let filters = default_filters().expect("compile");
    assert_eq!(filters.len(), 2);
    for f in &filters {
        assert_eq!(f.len() % 8, 0);
        assert!((8 * 4..=8 * 4096).contains(&f.len()), "{} bytes", f.len());
        // The first instruction loads seccomp_data.arch (offset 4).
        assert_eq!(&f[..2], &0x20u16.to_ne_bytes(), "BPF_LD|BPF_W|BPF_ABS");
        assert_eq!(&f[4..8], &4u32.to_ne_bytes());
    }
    let names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
    for must in ["mount", "umount2", "kexec_load", "init_module", "reboot", "ptrace", "bpf", "keyctl", "setns"] {
        assert!(names.contains(&must), "{must}");
    }
}

/// What the child checks, in order; its exit code is the index of the
/// first that failed, plus one.
const CHECKS: [&str; 6] = [
    "clock_settime(invalid clock) gives EPERM",
    "mount(missing target) gives EPERM",
    "unshare(CLONE_NEWUSER) gives EPERM",
    "clone3 gives ENOSYS",
    "unshare(0) and getppid still work",
    "the x32 mount gives EPERM",
];

/// A raw syscall: its errno, or 0 when it succeeded.
fn call(nr: libc::c_long, args: [usize; 5]) -> i32 {
    // SAFETY: the callers pass integers, null, or the addresses of locals
    // and static C strings alive for the call; the kernel keeps none.
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) };
    if rc == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// Runs in the forked child: raw syscalls only, no allocation.
fn child(programs: &[Vec<libc::sock_filter>]) -> i32 {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return 100;
    }
    for p in programs {
        let Ok(len) = u16::try_from(p.len()) else { return 101 };
        let prog = libc::sock_fprog { len, filter: p.as_ptr().cast_mut() };
        // SAFETY: `prog` points at `p`, alive for the call; the kernel copies it.
        let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) };
        if rc != 0 {
            return 102;
        }
    }
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let (missing, tmpfs) = (c"/nonexistent/pod-seccomp-test".as_ptr() as usize, c"tmpfs".as_ptr() as usize);
    let mount = [tmpfs, missing, tmpfs, 0, 0];
    let results = [
        call(libc::SYS_clock_settime, [usize::MAX, std::ptr::addr_of!(ts) as usize, 0, 0, 0]) == libc::EPERM,
        call(libc::SYS_mount, mount) == libc::EPERM,
        call(libc::SYS_unshare, [0x1000_0000, 0, 0, 0, 0]) == libc::EPERM,
        call(libc::SYS_clone3, [0; 5]) == libc::ENOSYS,
        call(libc::SYS_unshare, [0; 5]) == 0 && std::os::unix::process::parent_id() > 0,
        !cfg!(target_arch = "x86_64") || call(libc::SYS_mount | 0x4000_0000, mount) == libc::EPERM,
    ];
    match results.iter().position(|ok| !ok) {
        Some(i) => i32::try_from(i).unwrap_or(98) + 1,
        None => 0,
    }
}

#[test]
fn a_filtered_process_is_refused() {
    let programs: Vec<Vec<libc::sock_filter>> = default_filters()
        .expect("compile")
        .iter()
        .map(|bytes| {
            bytes
                .chunks_exact(8)
                .map(|c| libc::sock_filter {
                    code: u16::from_ne_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect()
        })
        .collect();
    // SAFETY: the child makes raw syscalls only and leaves with _exit, so
    // it never touches a lock another test thread may have held at fork.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = child(&programs);
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("wait");
            let nix::sys::wait::WaitStatus::Exited(_, code) = status else { panic!("child: {status:?}") };
            let failed = usize::try_from(code).ok().and_then(|c| c.checked_sub(1)).and_then(|i| CHECKS.get(i));
            assert_eq!(code, 0, "{}", failed.copied().unwrap_or("setting up the filter failed"));
        }
    }
}
