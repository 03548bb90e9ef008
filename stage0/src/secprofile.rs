//! An app's `seccomp: /path/profile.json` read and checked when the pod is
//! prepared (or the app added), and frozen into `pod.json`: what runs is
//! the profile as it was then, as containerd and CRI-O embed a Localhost
//! profile into the container's spec at creation.

use std::io::Read;

use spec::seccomp::{OciSeccomp, MAX_PROFILE_BYTES};
use spec::security::{Seccomp, SeccompSpec};

/// The pod file's choice as `pod.json` carries it; the message names the
/// profile's path.
pub fn resolve(choice: &SeccompSpec) -> Result<Seccomp, String> {
    match choice {
        SeccompSpec::Default => Ok(Seccomp::Default),
        SeccompSpec::Unconfined => Ok(Seccomp::Unconfined),
        SeccompSpec::Localhost(path) => {
            let profile = read(path).map_err(|why| format!("seccomp profile {path}: {why}"))?;
            Ok(Seccomp::Localhost { path: path.clone(), profile })
        }
    }
}

/// Reads and parses a profile file (at most [`MAX_PROFILE_BYTES`]).
pub fn read(path: &str) -> Result<OciSeccomp, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_PROFILE_BYTES).unwrap_or(u64::MAX) + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    OciSeccomp::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_and_frozen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p.json");
        std::fs::write(
            &p,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("write");
        let path = p.display().to_string();
        let Ok(Seccomp::Localhost { profile, .. }) = resolve(&SeccompSpec::Localhost(path.clone())) else {
            panic!("not a localhost profile")
        };
        assert_eq!(profile.syscalls[0].names, ["chmod"]);
        let missing = resolve(&SeccompSpec::Localhost(format!("{path}.none"))).expect_err("missing");
        assert!(missing.starts_with(&format!("seccomp profile {path}.none: ")), "{missing}");
        std::fs::write(&p, "{}").expect("write");
        assert!(resolve(&SeccompSpec::Localhost(path)).expect_err("bad").contains("defaultAction"));
    }
}
