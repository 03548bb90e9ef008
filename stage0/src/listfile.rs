//! A list of settings kept as one YAML file (`pod source`'s sources and
//! mirrors): a missing or empty file is an empty list, and a list is
//! written whole to a temporary file renamed into place, so a reader never
//! sees half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a list file could not be read or written; each settings module
/// turns it into its own error (`From`).
#[derive(Debug)]
pub(crate) enum ListFileError {
    Io { op: &'static str, path: PathBuf, source: io::Error },
    Parse { path: PathBuf, source: serde_yaml::Error },
}

/// The list in `path`; none when the file is missing or blank.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, ListFileError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ListFileError::Io { op: "read", path: path.to_owned(), source }),
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_yaml::from_str(&text).map_err(|source| ListFileError::Parse { path: path.to_owned(), source })
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ListFileError + 'a {
    move |source| ListFileError::Io { op, path: path.to_owned(), source }
}

/// Writes `list` to `path` whole, creating its directory.
pub(crate) fn write<T: Serialize>(path: &Path, list: &[T]) -> Result<(), ListFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let text = serde_yaml::to_string(list).map_err(|source| ListFileError::Parse { path: path.to_owned(), source })?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}
