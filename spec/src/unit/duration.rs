//! Durations in unit values: decimal seconds, or with an `s` or `ms`
//! suffix (see the module doc of `spec::unit`).

use std::time::Duration;

use super::MAX_DURATION;

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
