//! An app's standard streams beyond the defaults: where its output is
//! logged and in which format (`log:` in a pod file, `LogPath=` and
//! `LogFormat=` in its unit), and whether it reads a FIFO as stdin
//! (`stdin: true`, `Stdin=fifo`), and whether it runs on a terminal
//! (`tty: true`, `TTY=yes`: pod-init holds the master, logs its output as
//! stdout and types the FIFO's input into it). The CRI maps a container's
//! `log_path`, `stdin` and `tty` onto them.
//!
//! By default pod-init appends an app's stdout and stderr, as they are,
//! to `logs/<app>.log` in the pod root, and gives it /dev/null as stdin.

use serde::{Deserialize, Serialize};

use crate::name::AcName;

/// How pod-init writes an app's output into its log file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// stdout and stderr as they come, both into one file.
    #[default]
    Raw,
    /// The Kubernetes CRI log format: one line per line of output,
    /// `<RFC 3339 time, nanoseconds, UTC> <stdout|stderr> <F|P> <text>`;
    /// `P` marks the part of a line longer than [`CRI_LINE_MAX`] bytes, or
    /// the end of a stream that ended without a newline.
    Cri,
}

/// The longest line a CRI log line carries whole (as containerd's).
pub const CRI_LINE_MAX: usize = 16 * 1024;

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Raw => "raw",
            LogFormat::Cri => "cri",
        }
    }

    pub fn parse(s: &str) -> Option<LogFormat> {
        [LogFormat::Raw, LogFormat::Cri].into_iter().find(|f| f.as_str() == s)
    }
}

/// `log:` of an app: its output goes to `path` inside volume `volume` of
/// the pod (stage1 makes every volume visible to pod-init at
/// `/volumes/<name>` in the pod root), in `format`. The file is created
/// (mode 0640) and appended to; its directory must exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppLog {
    pub volume: AcName,
    /// Relative, without `..`.
    pub path: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl AppLog {
    /// The log file as pod-init sees it, in the pod root.
    pub fn path_in_pod(&self) -> String {
        format!("/volumes/{}/{}", self.volume, self.path)
    }
}

/// Why a relative log path is refused, if it is.
pub fn check_relative_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') {
        return Err(format!("{p:?} is not a relative path"));
    }
    if p.split('/').any(|c| c == ".." || c == "." || c.is_empty()) || p.chars().any(char::is_control) {
        return Err(format!("{p:?} must be a plain relative path (no '..', '.', '//' or control characters)"));
    }
    if p.len() > 4096 {
        return Err("the path is longer than 4096 bytes".into());
    }
    Ok(())
}

/// The FIFO an app with `stdin: true` reads, inside the pod root
/// (`<pod dir>/stdin/<app>` on the host). pod-init makes it (mode 0600)
/// before the app starts and keeps a write end open, so the app sees no
/// end of input when a writer leaves: writers come and go (`crictl
/// attach`) until pod-init lets go (`close-stdin`, CRI's `stdin_once`).
/// With a terminal, pod-init reads it and types it into the terminal.
pub fn stdin_fifo(app: &str) -> String {
    format!("/stdin/{app}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_relative_path("c/0.log").is_ok());
        for bad in ["", "/abs", "../x", "a/../b", "a//b", "./a", "a/", "a\nb"] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        let log =
            AppLog { volume: AcName::new("cri-logs").expect("name"), path: "c/0.log".into(), format: LogFormat::Cri };
        assert_eq!(log.path_in_pod(), "/volumes/cri-logs/c/0.log");
        assert_eq!(stdin_fifo("web"), "/stdin/web");
        for f in [LogFormat::Raw, LogFormat::Cri] {
            assert_eq!(LogFormat::parse(f.as_str()), Some(f));
        }
        let json = serde_json::to_string(&log).expect("json");
        assert_eq!(json, r#"{"volume":"cri-logs","path":"c/0.log","format":"cri"}"#);
    }
}
