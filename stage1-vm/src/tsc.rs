//! The host's TSC frequency, handed to TCG guests. Under TCG a guest's TSC
//! is the host's own counter, but the guest has to calibrate it against
//! the emulated PIT, which under emulation sometimes fails: the kernel then
//! calibrates a delay loop instead (0.15 s), marks the TSC unusable and
//! keeps time in 10 ms jiffies. When it succeeds, its clocksource watchdog
//! may still mark the TSC unstable a second later, comparing it with
//! jiffies that lag under emulation. On a host whose TSC runs at a constant
//! rate (`constant_tsc` and `nonstop_tsc`), stage1-vm measures the rate
//! once per host boot and gives it to the guest (`tsc_early_khz=`,
//! `tsc=reliable`): no calibration, and a nanosecond clock for the apps.

use std::path::Path;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// The cache file under the VM cache directory: `<boot id> <kHz>`.
const CACHE_FILE: &str = "tsc-khz";
/// How long the measurement counts TSC ticks.
const MEASURE_FOR: Duration = Duration::from_millis(20);
/// Plausible TSC rates, in kHz: anything else is a failed measurement.
const PLAUSIBLE: std::ops::RangeInclusive<u64> = 100_000..=10_000_000;

/// Whether `/proc/cpuinfo` says the TSC ticks at one rate in every P- and
/// C-state.
pub fn constant(cpuinfo: &str) -> bool {
    crate::accel::cpu_flags_match(cpuinfo, |flags| flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc"))
}

/// The host's TSC rate in kHz, from the cache in `cache_dir` when it was
/// measured since the host booted, else measured now (20 ms) and cached.
/// None if it cannot be measured here.
pub fn host_khz(cache_dir: &Path) -> Option<u64> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot_id = boot_id.trim();
    let cache = cache_dir.join(CACHE_FILE);
    if let Some(khz) = std::fs::read_to_string(&cache).ok().and_then(|t| cached(&t, boot_id)) {
        return Some(khz);
    }
    let khz = measure()?;
    // Best effort: a cache that cannot be written is measured again next time.
    let tmp = cache_dir.join(format!("{CACHE_FILE}.{}", std::process::id()));
    if std::fs::write(&tmp, format!("{boot_id} {khz}\n")).is_ok() && std::fs::rename(&tmp, &cache).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Some(khz)
}

/// The rate a cache file holds, if it was measured in boot `boot_id`.
fn cached(text: &str, boot_id: &str) -> Option<u64> {
    let (id, khz) = text.trim().split_once(' ')?;
    let khz: u64 = khz.parse().ok()?;
    (id == boot_id && PLAUSIBLE.contains(&khz)).then_some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let now = || clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok().map(Duration::from);
    let (t0, c0) = (now()?, rdtsc());
    std::thread::sleep(MEASURE_FOR);
    let (t1, c1) = (now()?, rdtsc());
    let nanos = u64::try_from(t1.checked_sub(t0)?.as_nanos()).ok()?;
    let khz = c1.checked_sub(c0)?.checked_mul(1_000_000)? / nanos.max(1);
    PLAUSIBLE.contains(&khz).then_some(khz)
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; every x86-64 CPU has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_tsc_needs_both_flags() {
        assert!(constant("processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rep_good\n"));
        assert!(!constant("flags\t\t: fpu tsc constant_tsc\n"), "it may stop in deep C-states");
        assert!(!constant("flags\t\t: fpu tsc\nbugs\t\t: constant_tsc nonstop_tsc\n"));
    }

    #[test]
    fn the_cache_holds_for_its_boot_only() {
        assert_eq!(cached("abc 2445430\n", "abc"), Some(2_445_430));
        assert_eq!(cached("abc 2445430\n", "def"), None, "measured before a reboot");
        assert_eq!(cached("abc 12\n", "abc"), None, "implausible");
        assert_eq!(cached("garbage", "abc"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_rate_is_measured_once_per_boot_and_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let khz = host_khz(dir.path()).expect("x86-64 has a TSC");
        assert!(PLAUSIBLE.contains(&khz), "{khz}");
        let text = std::fs::read_to_string(dir.path().join(CACHE_FILE)).expect("cached");
        assert!(text.ends_with(&format!(" {khz}\n")), "{text}");
        // A planted value for this boot is what comes back: no new measurement.
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        std::fs::write(dir.path().join(CACHE_FILE), format!("{} 1234567\n", boot_id.trim())).expect("write");
        assert_eq!(host_khz(dir.path()), Some(1_234_567));
    }
}
