//! The scalar syntaxes of the pod file: durations, sizes, CPU quantities,
//! image references, network names. Each parser returns the message shown
//! after the field path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ImageSource, Network};
use crate::name::AcIdentifier;

/// `500ms`, `10s`, `2m`, `1h`, or a sum such as `1m30s`.
pub(super) fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 500ms, 10s, 2m)");
    if s.is_empty() {
        return Err(bad());
    }
    let mut millis: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        millis = n.checked_mul(scale).and_then(|v| millis.checked_add(v)).ok_or_else(bad)?;
        rest = tail;
    }
    Ok(Duration::from_millis(millis))
}

/// Bytes: plain, or with a decimal (`k`, `M`, `G`, `T`) or binary (`Ki`,
/// `Mi`, `Gi`, `Ti`) suffix.
pub(super) fn size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (examples: 128Mi, 1Gi)");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(bad)
}

/// CPUs in thousandths: `500m`, `2`, `0.5`, `1.25`.
pub(super) fn cpu_millis(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a CPU quantity (examples: 500m, 2, 0.5)");
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if let Some(m) = s.strip_suffix('m') {
        return if all_digits(m) { m.parse().map_err(|_| bad()) } else { Err(bad()) };
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) if all_digits(f) => (i, f.trim_end_matches('0')),
        Some(_) => return Err(bad()),
        None => (s, ""),
    };
    if !all_digits(int) {
        return Err(bad());
    }
    if frac.len() > 3 {
        return Err(format!("{s:?} is finer than a thousandth of a CPU (1m)"));
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let part: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<3}").parse().map_err(|_| bad())? };
    whole.checked_mul(1000).and_then(|w| w.checked_add(part)).ok_or_else(bad)
}

/// An image reference, in the syntax of `pod fetch` (stage0's
/// `ImageRef::parse`) without its look at the file system: a bare relative
/// path must end in `.aci` or start with `.`.
pub(super) fn image(s: &str) -> Result<ImageSource, String> {
    let bad = |why: &str| format!("{s:?} is not an image reference: {why}");
    if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            return Err(bad("empty path after file://"));
        }
        return Ok(ImageSource::File(path.to_owned()));
    }
    if s.starts_with("https://") || s.starts_with("http://") {
        return Ok(ImageSource::Url(s.to_owned()));
    }
    if crate::oci::OciSource::is_oci(s) {
        return crate::oci::OciSource::parse(s).map(ImageSource::Oci).map_err(|e| bad(&e));
    }
    if s.contains("://") {
        return Err(bad("only file://, https://, http:// and docker:// URLs are supported"));
    }
    if s.ends_with(".aci") || s.starts_with('/') || s.starts_with('.') {
        return Ok(ImageSource::File(s.to_owned()));
    }
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default();
    let (name, version) = match head.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (head, None),
    };
    let name = AcIdentifier::new(name).map_err(|e| bad(&e.to_string()))?;
    let mut labels = BTreeMap::new();
    if let Some(v) = version {
        if v.is_empty() {
            return Err(bad("empty version after ':'"));
        }
        labels.insert("version".to_owned(), v.to_owned());
    }
    for kv in parts {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("labels are written name=value"))?;
        AcIdentifier::new(k).map_err(|e| bad(&e.to_string()))?;
        if labels.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(bad(&format!("label {k} given twice")));
        }
    }
    Ok(ImageSource::Name { name, labels })
}

/// `none`, `host`, `default`, or a CNI network name (letters, digits, `_`,
/// `.`, `-`, starting with a letter or digit).
pub(super) fn network(s: &str) -> Result<Network, String> {
    Ok(match s {
        "none" => Network::None,
        "host" => Network::Host,
        "default" => Network::Default,
        _ => {
            let ok = s.len() <= 128
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(format!(
                    "{s:?} is not none, host, default or a CNI network name \
                     (letters, digits, '_', '.', '-', at most 128)"
                ));
            }
            Network::Named(s.to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [("500ms", 500), ("10s", 10_000), ("2m", 120_000), ("1h", 3_600_000), ("1m30s", 90_000), ("0s", 0)];
        for (s, ms) in ok {
            assert_eq!(duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "10", "s", "10x", "1.5s", "-1s", " 1s", "10 s", "99999999999999999999h", "1S"] {
            let e = duration(bad).err().unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(e.contains("is not a duration"), "{e}");
        }
    }

    #[test]
    fn sizes() {
        let ok = [("128Mi", 128 << 20), ("1Gi", 1 << 30), ("512M", 512_000_000), ("4096", 4096), ("2k", 2000)];
        for (s, n) in ok {
            assert_eq!(size(s), Ok(n), "{s}");
        }
        for bad in ["", "128Q", "Mi", "1.5Gi", "-1", "128 Mi", "99999999999Ti", "128mi"] {
            let e = size(bad).err().unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert_eq!(e, format!("{bad:?} is not a size (examples: 128Mi, 1Gi)"));
        }
    }

    #[test]
    fn cpus() {
        let ok = [("500m", 500), ("2", 2000), ("0.5", 500), ("1.25", 1250), ("0.500", 500)];
        for (s, n) in ok {
            assert_eq!(cpu_millis(s), Ok(n), "{s}");
        }
        for bad in ["", "m", ".5", "3.", "1.2.3", "0.5m", "-1", "1e3", "half"] {
            assert!(cpu_millis(bad).is_err(), "accepted {bad:?}");
        }
        assert!(cpu_millis("0.0005").is_err_and(|e| e.contains("finer")));
    }

    #[test]
    fn images() {
        let Ok(ImageSource::Name { name, labels }) = image("example.com/redis:7.0,arch=amd64") else {
            panic!("name not parsed")
        };
        assert_eq!(name.as_str(), "example.com/redis");
        assert_eq!(labels.get("version").map(String::as_str), Some("7.0"));
        assert_eq!(labels.get("arch").map(String::as_str), Some("amd64"));
        assert_eq!(image("./redis.aci"), Ok(ImageSource::File("./redis.aci".into())));
        assert!(matches!(image("docker://127.0.0.1:5000/web:1.0"), Ok(ImageSource::Oci(_))));
        assert!(image("docker://127.0.0.1:5000/Web").is_err());
        assert!(matches!(image("oci:/srv/layout:1"), Ok(ImageSource::Oci(_))));
        assert_eq!(image("file:///i/r.aci"), Ok(ImageSource::File("/i/r.aci".into())));
        assert_eq!(image("https://h/r.aci"), Ok(ImageSource::Url("https://h/r.aci".into())));
        for bad in ["Example.com/x", "x:", "x,k", "x,version=1,version=2", "ftp://h/x", "x:1,version=2"] {
            assert!(image(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(network("none"), Ok(Network::None));
        assert_eq!(network("my_net.1"), Ok(Network::Named("my_net.1".into())));
        assert!(network("-x").is_err());
        assert!(network("a b").is_err());
    }
}
