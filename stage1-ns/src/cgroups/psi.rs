//! Pressure stall information of a cgroup (`cpu.pressure`,
//! `memory.pressure`, `io.pressure`): a cgroup2 feature, with or without
//! controllers, so a Hybrid host has it too, in the cgroup2 mirror beside
//! the v1 hierarchies. Absent where the kernel has no PSI (`psi=0`, before
//! Linux 4.20) or no cgroup2 tree (Legacy).

use std::path::Path;

use super::stats::read_opt;
use super::Result;

/// One line of a pressure file: the share of time (in %) over 10, 60 and
/// 300 s that tasks waited, and the total time waited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiData {
    pub total_ns: u64,
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// `some`: at least one task waited; `full`: all did at once (not given
/// for CPU before Linux 5.13).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    pub some: PsiData,
    pub full: Option<PsiData>,
}

/// A cgroup's pressure, per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

/// The pressure files of the cgroup2 directory `dir`.
pub(super) fn read(dir: &Path) -> Result<Pressure> {
    let one = |name: &str| Ok::<_, super::CgroupError>(read_opt(&dir.join(name))?.and_then(|t| parse(&t)));
    Ok(Pressure { cpu: one("cpu.pressure")?, memory: one("memory.pressure")?, io: one("io.pressure")? })
}

/// `some avg10=1.50 avg60=0.20 avg300=0.05 total=123456` (total in µs),
/// then an optional `full ...` line.
pub(super) fn parse(text: &str) -> Option<Psi> {
    let line = |kind: &str| {
        let rest = text.lines().find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let mut d = PsiData::default();
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "avg10" => d.avg10 = v.parse().ok()?,
                "avg60" => d.avg60 = v.parse().ok()?,
                "avg300" => d.avg300 = v.parse().ok()?,
                "total" => d.total_ns = v.parse::<u64>().ok()?.saturating_mul(1000),
                _ => {}
            }
        }
        Some(d)
    };
    Some(Psi { some: line("some")?, full: line("full") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_lines() {
        let p = parse("some avg10=97.97 avg60=97.29 avg300=96.54 total=3995966522\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n");
        let p = p.expect("parsed");
        assert_eq!(p.some.total_ns, 3_995_966_522_000);
        assert!((p.some.avg10 - 97.97).abs() < 1e-9);
        assert_eq!(p.full.map(|f| f.total_ns), Some(7000));
        let cpu_old = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").expect("parsed");
        assert_eq!(cpu_old.full, None, "no full line for CPU before 5.13");
        assert_eq!(parse("garbage"), None);
    }
}
