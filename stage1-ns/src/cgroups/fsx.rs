//! File operations on cgroupfs, each error naming its path and operation.
//!
//! Control files are opened without `O_CREAT`: cgroupfs cannot create files,
//! and a fake tree must fail the same way when a control file is missing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{CgroupError, Result};

/// How long rmdir retries while the kernel still counts a dead process.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const POLL: Duration = Duration::from_millis(10);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { op, path: path.to_owned(), source }
}

pub(super) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

/// One `write(2)` of `value`: cgroupfs parses each write on its own.
pub(super) fn write(path: &Path, value: &str) -> Result<()> {
    let err = |source| CgroupError::Write { path: path.to_owned(), value: value.to_owned(), source };
    let mut f = OpenOptions::new().write(true).truncate(true).open(path).map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// Creates one directory level; `Ok(false)` if it was already there.
pub(super) fn mkdir(path: &Path) -> Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(io_err("mkdir", path)(e)),
    }
}

/// Removes an (empty) cgroup. Gone already is fine; `EBUSY` is retried
/// briefly because the kernel releases a killed process's cgroup lazily.
/// Only ever rmdir: cgroupfs directories are removed whole by the kernel.
pub(super) fn rmdir(path: &Path) -> Result<()> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(POLL);
            }
            Err(e) => return Err(io_err("rmdir", path)(e)),
        }
    }
}

/// Names of the subdirectories of `dir`, sorted; none if `dir` is missing.
pub(super) fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let is_dir = entry.file_type().map_err(io_err("stat", &entry.path()))?.is_dir();
        if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `dir` and every directory below it, children before parents (the order
/// rmdir needs); empty if `dir` is missing.
pub(super) fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in subdirs(dir)? {
        out.extend(tree(&dir.join(name))?);
    }
    out.push(dir.to_owned());
    Ok(out)
}

/// The processes in `dir`'s `cgroup.procs`; none if the cgroup is gone.
pub(super) fn procs(dir: &Path) -> Result<Vec<Pid>> {
    let path = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        // Never 0 or negative: kill(2) would read those as process groups.
        .map(|l| l.trim().parse::<i32>().ok().filter(|p| *p > 0).map(Pid::from_raw))
        .collect::<Option<_>>()
        .ok_or_else(|| CgroupError::Io {
            op: "parse",
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a list of pids"),
        })
}

/// The number after `key` in a flat keyed file (`memory.events`,
/// `memory.oom_control`): lines of `<key> <value>`.
pub(super) fn keyed(path: &Path, key: &'static str) -> Result<u64> {
    let text = read(path)?;
    let value = text.lines().find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key).map(|(_, v)| v.trim()));
    let value = value.ok_or_else(|| CgroupError::MissingKey { path: path.to_owned(), key })?;
    value.parse().map_err(|_| CgroupError::Io {
        op: "parse",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{key} {value:?} is not a number")),
    })
}
