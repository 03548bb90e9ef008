//! `pod-stage1-vm stats POD_DIR`: one [`PodSample`] of a running VM pod as
//! the host sees it: a single entry, `vm`, for the qemu process (its CPU
//! time, resident memory against the guest's RAM, threads and storage
//! I/O). The apps inside share the guest, which is their boundary; the
//! user-mode network has no host-side interface to count.

use std::fs;
use std::path::Path;

use spec::stats::{AppSample, PodSample};
use stage1_ns::sample::proc_io;

use crate::monitor::VmDir;
use crate::VmError;

/// The sample of the VM pod in `pod_dir`.
pub fn sample(pod_dir: &Path) -> Result<PodSample, VmError> {
    let pid_file = VmDir::new(pod_dir).qemu_pid();
    let pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .ok_or_else(|| VmError::Invalid(format!("{}: no VM running (no qemu pid)", pid_file.display())))?;
    let proc = Path::new("/proc").join(pid.to_string());
    let read = |name: &str| fs::read_to_string(proc.join(name)).unwrap_or_default();
    let (stat, status, cmdline) = (read("stat"), read("status"), read("cmdline"));
    if stat.is_empty() {
        return Err(VmError::Invalid(format!("qemu (pid {pid}) is gone")));
    }
    let vm = AppSample {
        name: "vm".into(),
        cpu_ns: cpu_ns(&stat),
        memory_bytes: status_kib(&status, "VmRSS").saturating_mul(1024),
        memory_limit: guest_ram(&cmdline),
        pids: Some(status_kib(&status, "Threads")),
        block: Some(proc_io(&read("io"))),
    };
    Ok(PodSample { apps: vec![vm], net: None })
}

/// utime + stime of a `/proc/<pid>/stat` line, in nanoseconds.
fn cpu_ns(stat: &str) -> u64 {
    // Fields after the command's closing parenthesis: state is field 3,
    // utime and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|w| w.parse().ok()).collect();
    let ticks: u64 = f.iter().sum();
    ticks.saturating_mul(1_000_000_000 / clock_ticks())
}

/// The kernel's clock ticks per second, in which /proc counts CPU time.
fn clock_ticks() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    u64::try_from(hz).unwrap_or(100).max(1)
}

/// A `Key:   N [kB]` line of `/proc/<pid>/status`.
fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The guest's RAM: qemu's `-m NNNM`, from its NUL-separated command line.
fn guest_ram(cmdline: &str) -> Option<u64> {
    let args: Vec<&str> = cmdline.split('\0').collect();
    let m = args.windows(2).find(|w| w[0] == "-m")?[1];
    let mib: u64 = m.strip_suffix('M').unwrap_or(m).parse().ok()?;
    Some(mib << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_figures_from_proc() {
        let stat = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 0 0";
        assert_eq!(cpu_ns(stat), 300 * (1_000_000_000 / clock_ticks()));
        assert_eq!(cpu_ns("garbage"), 0);
        let status = "Name:\tqemu\nVmRSS:\t  204800 kB\nThreads:\t5\n";
        assert_eq!((status_kib(status, "VmRSS"), status_kib(status, "Threads")), (204_800, 5));
        assert_eq!(guest_ram(&["qemu-system-x86_64", "-m", "640M", "-smp", "2", ""].join("\0")), Some(640 << 20));
        assert_eq!(guest_ram("qemu\0-nographic\0"), None);
    }
}
