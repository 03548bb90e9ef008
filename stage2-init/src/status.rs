//! Status files: `status/<app>.json` and `status/pod.json`, replaced
//! atomically (temp file + rename) so a reader never sees half a file.
//! Written by hand: a few flat objects do not justify serde in PID 1.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// One app's status, as stage0 reads it.
#[derive(Debug)]
pub struct AppStatus<'a> {
    pub app: &'a str,
    /// waiting, starting, running, ready, exited, failed, restarting, stopped
    pub state: &'a str,
    pub pid: Option<i32>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub restarts: u32,
    pub message: &'a str,
}

/// The pod's status, as stage0 reads it.
#[derive(Debug)]
pub struct PodStatus<'a> {
    /// running, stopping, exited
    pub state: &'a str,
    pub pid: u32,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<u8>,
    pub message: &'a str,
}

impl AppStatus<'_> {
    pub fn to_json(&self) -> String {
        let mut o = Object::default();
        o.str("app", self.app);
        o.str("state", self.state);
        o.num("pid", self.pid);
        o.time("startedAt", self.started_at);
        o.time("finishedAt", self.finished_at);
        o.num("exitCode", self.exit_code);
        o.num("signal", self.signal);
        o.num("restarts", Some(self.restarts));
        o.str("message", self.message);
        o.finish()
    }
}

impl PodStatus<'_> {
    pub fn to_json(&self) -> String {
        let mut o = Object::default();
        o.str("state", self.state);
        o.num("pid", Some(self.pid));
        o.time("startedAt", Some(self.started_at));
        o.time("finishedAt", self.finished_at);
        o.num("exitCode", self.exit_code);
        o.str("message", self.message);
        o.finish()
    }
}

/// Writes `dir/name` atomically.
///
/// An existing file is swapped with the new one (RENAME_EXCHANGE) and the
/// old one then unlinked, rather than replaced by rename: ext4 flushes a
/// file renamed over another (auto_da_alloc, its guard against empty files
/// after a crash) and that write-back, 1-3 ms measured with `perf trace`,
/// landed on every app's start and exit. Status files describe a live pod
/// and mean nothing after a crash, so they need no such guard. Readers
/// still see the old file or the new one, never neither.
pub fn write_atomic(dir: &Path, name: &str, contents: &str) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags};
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, contents)?;
    match renameat2(None, &tmp, None, &path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => std::fs::remove_file(&tmp),
        // The first write (nothing to swap with: a plain rename replaces
        // nothing), or a file system without RENAME_EXCHANGE (9p).
        Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS) => std::fs::rename(&tmp, &path),
        Err(e) => Err(e.into()),
    }
}

#[derive(Default)]
struct Object(String);

impl Object {
    fn key(&mut self, key: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        quote(&mut self.0, key);
        self.0.push(':');
    }
    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        quote(&mut self.0, value);
    }
    fn num(&mut self, key: &str, value: Option<impl std::fmt::Display>) {
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.0, "{v}");
            }
            None => self.0.push_str("null"),
        }
    }
    fn time(&mut self, key: &str, value: Option<SystemTime>) {
        match value {
            Some(t) => self.str(key, &rfc3339(t)),
            None => self.num(key, None::<u8>),
        }
    }
    fn finish(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.250Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, hour, minute, second) = crate::crilog::civil(since.as_secs());
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z", since.subsec_millis())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn write_atomic_creates_then_replaces() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "a.json", "one\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a.json")).unwrap(), "one\n");
        write_atomic(dir.path(), "a.json", "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a.json")).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.json"], "no temporary file is left behind");
    }

    #[test]
    fn dates() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_714_564_800) + Duration::from_millis(250)), "2024-05-01T12:00:00.250Z");
        assert_eq!(rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn app_json() {
        let s = AppStatus {
            app: "db",
            state: "failed",
            pid: Some(42),
            started_at: Some(UNIX_EPOCH),
            finished_at: None,
            exit_code: Some(127),
            signal: None,
            restarts: 2,
            message: "exec failed: \"x\"\n\u{1}",
        };
        assert_eq!(
            s.to_json(),
            concat!(
                r#"{"app":"db","state":"failed","pid":42,"startedAt":"1970-01-01T00:00:00.000Z","finishedAt":null,"#,
                r#""exitCode":127,"signal":null,"restarts":2,"message":"exec failed: \"x\"\n\u0001"}"#,
                "\n"
            )
        );
    }
}
