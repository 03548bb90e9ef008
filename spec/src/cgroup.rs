//! A pod's cgroup parent (`cgroupParent` in the pod file, the CRI's
//! `linux.cgroup_parent`): the cgroup, in cgroupfs form, that holds the
//! pod's own cgroup (`<parent>/<uuid>`) in every hierarchy, instead of
//! pod's default `/pod`. kubelet's QoS cgroups are such parents
//! (`/kubepods/burstable/pod<uid>`).

/// The longest parent path taken.
pub const MAX_PARENT_BYTES: usize = 1024;

/// Checks `parent` is a cgroupfs path: absolute, below the root, each
/// component a plain name (no `.` or `..`, no NUL or newline). A systemd
/// slice name (`kubepods-burstable.slice`, or a path with one) is refused:
/// it needs the systemd cgroup driver, which pod does not have yet.
pub fn check_parent(parent: &str) -> Result<(), String> {
    if parent.len() > MAX_PARENT_BYTES {
        return Err(format!("longer than {MAX_PARENT_BYTES} bytes"));
    }
    if !parent.starts_with('/') {
        return Err(format!("{parent:?} is not an absolute cgroupfs path (such as /kubepods/burstable/pod<uid>)"));
    }
    let parts: Vec<&str> = parent.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return Err(format!("{parent:?} is the cgroup root: a pod's parent must be a cgroup below it"));
    }
    if let Some(bad) = parts.iter().find(|c| matches!(**c, "." | "..") || c.contains(['\0', '\n'])) {
        return Err(format!("{parent:?} has the component {bad:?}: each must be a plain name"));
    }
    if parts.iter().any(|c| c.ends_with(".slice")) {
        return Err(format!(
            "{parent:?} is a systemd slice: pod's cgroup driver is cgroupfs (RuntimeConfig says so), and \
             the systemd driver is not there yet; give a cgroupfs path such as /kubepods/burstable/pod<uid>"
        ));
    }
    Ok(())
}

/// `parent` relative to a hierarchy root (`/a/b/` → `a/b`); `parent` was
/// checked with [`check_parent`].
pub fn relative(parent: &str) -> std::path::PathBuf {
    parent.split('/').filter(|c| !c.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_pass_and_others_are_refused() {
        for ok in ["/kubepods/burstable/pod1234", "/kubepods", "/a//b/"] {
            assert_eq!(check_parent(ok), Ok(()), "{ok}");
        }
        assert_eq!(relative("/a//b/"), std::path::PathBuf::from("a/b"));
        for (bad, why) in [
            ("kubepods", "not an absolute"),
            ("/", "the cgroup root"),
            ("/a/../b", "\"..\""),
            ("/a/./b", "\".\""),
            ("/kubepods.slice/kubepods-burstable.slice", "systemd slice"),
            ("/test.slice", "systemd slice"),
        ] {
            let e = check_parent(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_parent(&format!("/{}", "a".repeat(2000))).expect_err("too long").contains("longer"));
    }
}
