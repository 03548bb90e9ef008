//! Follows the apps' log files for a foreground `pod run` (both stage1s).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Follows the apps' log files and prints new lines prefixed by the app.
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    apps: Vec<(String, u64, Vec<u8>)>,
}

impl LogTail {
    pub fn new(pod_dir: &Path, apps: Vec<String>) -> Self {
        Self { dir: pod_dir.join("logs"), apps: apps.into_iter().map(|a| (a, 0, Vec::new())).collect() }
    }

    /// Picks up at each app's offset (from [`LogTail::offsets`]).
    pub fn resume(pod_dir: &Path, offsets: Vec<(String, u64)>) -> Self {
        Self { dir: pod_dir.join("logs"), apps: offsets.into_iter().map(|(a, o)| (a, o, Vec::new())).collect() }
    }

    /// Each app's offset, unless one has a line read only in part.
    pub fn offsets(&self) -> Option<Vec<(String, u64)>> {
        self.apps.iter().map(|(a, o, partial)| partial.is_empty().then(|| (a.clone(), *o))).collect()
    }

    pub fn pump(&mut self) {
        let mut out = io::stdout().lock();
        for (app, offset, partial) in &mut self.apps {
            let Ok(mut f) = File::open(self.dir.join(format!("{app}.log"))) else { continue };
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_err() {
                continue;
            }
            *offset += buf.len() as u64;
            partial.extend_from_slice(&buf);
            while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let _ = write!(out, "[{app}] ");
                let _ = out.write_all(&line);
            }
        }
        let _ = out.flush();
    }

    /// pod-init has exited, so its apps' output is all in the files.
    pub fn finish(&mut self, stream: bool) {
        if stream {
            self.pump();
        }
    }
}
