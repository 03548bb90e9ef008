//! The scalar values of unit files: durations, signals, commands, names
//! and addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::MAX_DURATION;

/// A signal by name (`SIGQUIT`, `QUIT`, any case) or number (1-64), as
/// OCI image configs and systemd's `KillSignal=` write them.
pub fn signal_number(s: &str) -> Option<i32> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
        "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
        "WINCH", "IO", "PWR", "SYS",
    ];
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN+") {
        return rest.parse::<i32>().ok().filter(|n| (0..=30).contains(n)).map(|n| 34 + n);
    }
    NAMES.iter().position(|n| *n == name).and_then(|i| i32::try_from(i + 1).ok())
}

/// Parses a duration: decimal seconds, or with an `s` or `ms` suffix.
/// Exact (no floating point), so rendering round-trips.
pub fn parse_duration(s: &str) -> Option<Duration> {
    // Seconds carry 9 fractional digits of nanoseconds, milliseconds 6.
    let (number, scale_digits) = match s.strip_suffix("ms") {
        Some(n) => (n, 6u32),
        None => (s.strip_suffix('s').unwrap_or(s), 9u32),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || frac.len() > scale_digits as usize || int.len() > 12 {
        return None;
    }
    let frac_padded = format!("{frac:0<width$}", width = scale_digits as usize);
    let nanos: u128 = int.parse::<u128>().ok()? * 10u128.pow(scale_digits) + frac_padded.parse::<u128>().ok()?;
    let d = Duration::new(u64::try_from(nanos / 1_000_000_000).ok()?, u32::try_from(nanos % 1_000_000_000).ok()?);
    (d <= MAX_DURATION).then_some(d)
}

/// Renders a duration as decimal seconds, exactly.
pub fn render_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return d.as_secs().to_string();
    }
    let frac = format!("{:09}", d.subsec_nanos());
    format!("{}.{}", d.as_secs(), frac.trim_end_matches('0'))
}

pub(super) fn command(words: Vec<String>) -> Result<Vec<String>, &'static str> {
    let Some(first) = words.first() else { return Err("expected a command") };
    if first.starts_with(['-', '@', '+', '!', ':']) {
        return Err("systemd command prefixes (-@+!:) are not supported");
    }
    if !first.starts_with('/') && first.contains('/') {
        return Err("the program must be an absolute path or a bare name looked up in PATH");
    }
    Ok(words)
}

pub(super) fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

pub(super) fn account_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('-')
        && s.chars().all(|c| !(c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/' | '"' | '\'' | '\\')))
}

pub(super) fn tcp_addr(value: &str) -> Option<SocketAddr> {
    let addr = match value.parse::<u16>() {
        Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Err(_) => value.parse().ok()?,
    };
    (addr.port() != 0).then_some(addr)
}
