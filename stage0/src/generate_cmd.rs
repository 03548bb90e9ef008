//! `pod generate systemd FILE`: a systemd service that runs the pod file in
//! the foreground, as `podman generate systemd` does for a container.
//! `Type=notify`: `pod run` execs the stage1 monitor, which stays the
//! unit's main process and says `READY=1` once every app is ready and
//! `STOPPING=1` when asked to stop (stage1-ns/src/notify.rs). systemd's
//! SIGTERM goes to the monitor alone (`KillMode=mixed`), which stops the
//! apps in reverse order within their stop timeouts; the stop timeout of
//! the unit leaves room for the longest of them.

use std::path::Path;
use std::time::Duration;

use spec::pod::PodFile;
use stage0::exit::Exit;
use stage0::paths::Dirs;

use crate::{fail, Failed};

/// Room, beyond the apps' stop timeouts, for stage1's own teardown.
const STOP_SLACK: Duration = Duration::from_secs(15);
/// Pulling and verifying images on the first start may take a while.
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn systemd(dirs: &Dirs, file: &Path) -> Result<(), Failed> {
    let path =
        std::fs::canonicalize(file).map_err(|e| fail(Exit::NotFound, format!("pod file {}: {e}", file.display())))?;
    let bytes = std::fs::read(&path).map_err(|e| fail(Exit::NotFound, format!("pod file {}: {e}", path.display())))?;
    let pod = PodFile::parse(&bytes, &path.to_string_lossy()).map_err(|e| fail(Exit::InvalidInput, e.to_string()))?;
    let pod_bin = std::env::current_exe().map_err(|e| fail(Exit::Failure, format!("the pod binary: {e}")))?;
    print!("{}", unit(&pod, &path, &pod_bin, dirs));
    Ok(())
}

/// Quotes a word for a unit file's command line (systemd's C-style quoting).
fn quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        return word.to_owned();
    }
    let escaped: String = word
        .chars()
        .map(|c| match c {
            '"' => "\\\"".to_owned(),
            '\\' => "\\\\".to_owned(),
            // systemd expands these in command lines.
            '%' => "%%".to_owned(),
            '$' => "$$".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!("\"{escaped}\"")
}

fn unit(pod: &PodFile, file: &Path, pod_bin: &Path, dirs: &Dirs) -> String {
    let stop = pod.apps.iter().map(|a| a.stop_timeout).max().unwrap_or_default() + STOP_SLACK;
    let env = |key: &str, value: &Path| format!("Environment={}\n", quote(&format!("{key}={}", value.display())));
    format!(
        "# The pod {name} as a service: made by `pod generate systemd {file}`.\n\
         [Unit]\n\
         Description=pod {name}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         RequiresMountsFor={data}\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         {env_dir}{env_config}\
         ExecStart={bin} run {file_q}\n\
         KillMode=mixed\n\
         TimeoutStartSec={start}\n\
         TimeoutStopSec={stop}\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = pod.name,
        file = file.display(),
        data = quote(&dirs.data.to_string_lossy()),
        env_dir = env("POD_DIR", &dirs.data),
        env_config = env("POD_CONFIG", &dirs.config),
        bin = quote(&pod_bin.to_string_lossy()),
        file_q = quote(&file.to_string_lossy()),
        start = START_TIMEOUT.as_secs(),
        stop = stop.as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_service_that_runs_the_file() {
        let yaml = b"name: web\nnetwork: none\napps:\n  - name: a\n    image: example.com/a:1\n    exec: [/bin/true]\n    stopTimeout: 20s\n";
        let pod = PodFile::parse(yaml, "web.yaml").unwrap_or_else(|e| panic!("{e}"));
        let dirs = Dirs { data: "/var/lib/pod".into(), config: "/etc/pod dir".into() };
        let u = unit(&pod, Path::new("/srv/pods/web 1.yaml"), Path::new("/usr/local/bin/pod"), &dirs);
        assert!(u.contains("\nType=notify\n") && u.contains("\nKillMode=mixed\n"), "{u}");
        assert!(u.contains("\nExecStart=/usr/local/bin/pod run \"/srv/pods/web 1.yaml\"\n"), "{u}");
        assert!(u.contains("\nEnvironment=\"POD_CONFIG=/etc/pod dir\"\n"), "{u}");
        assert!(u.contains("\nTimeoutStopSec=35\n"), "the longest stop timeout and slack: {u}");
        assert_eq!(quote("50%$\"x"), "\"50%%$$\\\"x\"");
    }
}
