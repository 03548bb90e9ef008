//! Which app cgroups the monitor watches for OOM kills: those of the apps
//! in `pod.json`, looked up again whenever the file changes, so apps added
//! to the running pod (`pod-stage1-ns add-app`) are counted too.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use spec::stage1::ResolvedPod;

use crate::cgroups::{self, PodCgroup};

/// The pod's cgroups and app names as of `pod.json`'s last change.
#[derive(Debug)]
pub struct Watched {
    manifest: PathBuf,
    seen: Option<SystemTime>,
    cgroup: Option<PodCgroup>,
    apps: Vec<String>,
}

impl Watched {
    pub fn new(pod_dir: &Path, cgroup: Option<PodCgroup>, pod: &ResolvedPod) -> Self {
        let manifest = pod_dir.join(spec::stage1::POD_MANIFEST_FILE);
        let seen = std::fs::metadata(&manifest).and_then(|m| m.modified()).ok();
        let apps = pod.apps.iter().map(|a| a.name.to_string()).collect();
        Self { manifest, seen, cgroup, apps }
    }

    /// The cgroups and apps to look at now; `None` without cgroups.
    pub fn current(&mut self) -> Option<(&PodCgroup, Vec<String>)> {
        self.cgroup.as_ref()?;
        let now = std::fs::metadata(&self.manifest).and_then(|m| m.modified()).ok();
        if now != self.seen {
            self.seen = now;
            let pod: Option<ResolvedPod> =
                std::fs::read(&self.manifest).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(pod) = pod {
                self.apps = pod.apps.iter().map(|a| a.name.to_string()).collect();
            }
        }
        // An added app is in pod.json before its cgroup exists: the pod's
        // cgroups are looked at again until they have every app.
        let missing = self.cgroup.as_ref().is_some_and(|cg| self.apps.iter().any(|a| !cg.apps().contains(a)));
        if missing {
            let loc = self.cgroup.as_ref().map(|cg| cg.loc().clone())?;
            if let Ok(Some(cg)) = crate::monitor::hierarchy().and_then(|h| Ok(cgroups::open_pod(&h, &loc)?)) {
                self.cgroup = Some(cg);
            }
        }
        let cg = self.cgroup.as_ref()?;
        let apps = self.apps.iter().filter(|a| cg.apps().contains(a)).cloned().collect();
        Some((cg, apps))
    }
}
