//! Archive entry paths: normalising them and checking them against the
//! kernel's length limits.

use super::Reject;

/// Longest path (PATH_MAX less its NUL) and path component (NAME_MAX).
pub(super) const MAX_PATH: usize = 4095;
const MAX_COMPONENT: usize = 255;

/// Length of the whole leading components `a` and `b` share: 8 (`rootfs/a`)
/// for `rootfs/a/b` and `rootfs/a/c`, 6 for `rootfs/a` and `rootfs/ab`.
pub(super) fn shared_dirs(a: &[u8], b: &[u8]) -> usize {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let boundary = |p: &[u8]| common == p.len() || p[common] == b'/';
    if boundary(a) && boundary(b) {
        common
    } else {
        a[..common].iter().rposition(|&c| c == b'/').unwrap_or(0)
    }
}

/// A normalised path as the app will see it (`/` + `rel`) fits PATH_MAX,
/// and each of its components NAME_MAX.
pub(super) fn check_lengths(rel: &[u8]) -> Result<(), Reject> {
    if rel.len() + 1 > MAX_PATH {
        return Err(Reject::TooLong { what: "path", len: rel.len() + 1, limit: MAX_PATH });
    }
    match rel.split(|&b| b == b'/').map(<[u8]>::len).max() {
        Some(len) if len > MAX_COMPONENT => Err(Reject::TooLong { what: "path component", len, limit: MAX_COMPONENT }),
        _ => Ok(()),
    }
}

/// Normalises an archive path to `a/b/c`: `.` and empty components are
/// dropped; absolute paths, `..` and NUL are refused. The root is `""`.
pub(super) fn normalise(raw: &[u8]) -> Result<Vec<u8>, Reject> {
    if raw.contains(&0) {
        return Err(Reject::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(Reject::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err(Reject::ParentDir),
            _ => {}
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(component);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise(b"./rootfs//a/./b/").as_deref(), Ok(&b"rootfs/a/b"[..]));
        assert_eq!(normalise(b"./").as_deref(), Ok(&b""[..]));
        assert_eq!(normalise(b"/rootfs"), Err(Reject::Absolute));
        assert_eq!(normalise(b"rootfs/a/../b"), Err(Reject::ParentDir));
        assert_eq!(normalise(b"rootfs/.../..a").as_deref(), Ok(&b"rootfs/.../..a"[..]));
        assert_eq!(normalise(b"rootfs/\x00"), Err(Reject::Nul));
    }

    #[test]
    fn finds_shared_directories() {
        assert_eq!(shared_dirs(b"rootfs/a/b", b"rootfs/a/c"), 8);
        assert_eq!(shared_dirs(b"rootfs/a", b"rootfs/ab"), 6);
        assert_eq!(shared_dirs(b"rootfs/ab", b"rootfs/ac"), 6);
        assert_eq!(shared_dirs(b"rootfs/a/b", b"rootfs/a"), 8);
        assert_eq!(shared_dirs(b"rootfs", b"rootfs/a"), 6);
        assert_eq!(shared_dirs(b"x", b"y"), 0);
    }
}
