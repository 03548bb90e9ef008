//! Image sources: where a name with labels is fetched from. A YAML list in
//! `<config>/sources.yaml`, each entry a name prefix and a URL template:
//!
//! ```yaml
//! - prefix: example.com/
//!   url: https://images.example.com/{basename}-{version}-{os}-{arch}.aci
//! ```
//!
//! `{name}` is the full image name, `{basename}` its last path component,
//! and any other `{label}` the value of that label. The longest matching
//! prefix wins. The signature is fetched from the same URL plus `.sig`.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spec::AcIdentifier;

use crate::exit::{Exit, ExitCodeOf};
use crate::listfile::{self, ListFileError};
use crate::trust::Scope;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid source: {0}")]
    Invalid(String),
    #[error("no image source configured for {0} (add one with `pod source add`)")]
    NoSource(String),
    #[error("source template {template:?} needs label {label:?}, which {image} does not give")]
    MissingLabel { template: String, label: String, image: String },
    #[error("no source with prefix {0:?}")]
    NotFound(String),
}

impl From<ListFileError> for SourceError {
    fn from(e: ListFileError) -> Self {
        match e {
            ListFileError::Io { op, path, source } => Self::Io { op, path, source },
            ListFileError::Parse { path, source } => Self::Parse { path, source },
        }
    }
}

impl ExitCodeOf for SourceError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::NoSource(_) | Self::NotFound(_) => Exit::NotFound,
            _ => Exit::InvalidInput,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub prefix: String,
    pub url: String,
}

impl Source {
    /// Validates the prefix and the template's scheme and braces.
    pub fn new(prefix: &str, url: &str) -> Result<Self, SourceError> {
        Scope::prefix(prefix).map_err(|e| SourceError::Invalid(e.to_string()))?;
        if !["https://", "http://", "file://", "docker://"].iter().any(|s| url.starts_with(s)) {
            return Err(SourceError::Invalid(format!(
                "url {url:?} must start with https://, http://, file:// or docker:// (a registry)"
            )));
        }
        if url.matches('{').count() != url.matches('}').count() {
            return Err(SourceError::Invalid(format!("url {url:?} has unbalanced braces")));
        }
        Ok(Self { prefix: prefix.to_owned(), url: url.to_owned() })
    }

    /// Fills the template for `name` with `labels`.
    pub fn expand(&self, name: &AcIdentifier, labels: &BTreeMap<String, String>) -> Result<String, SourceError> {
        let mut out = String::new();
        let mut rest = self.url.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end =
                rest[start..].find('}').map(|e| start + e).ok_or_else(|| SourceError::Invalid(self.url.clone()))?;
            let var = &rest[start + 1..end];
            let value = match var {
                "name" => name.as_str(),
                "basename" => name.as_str().rsplit('/').next().unwrap_or(name.as_str()),
                label => labels.get(label).map(String::as_str).ok_or_else(|| SourceError::MissingLabel {
                    template: self.url.clone(),
                    label: label.to_owned(),
                    image: name.to_string(),
                })?,
            };
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The configured sources, backed by one YAML file.
#[derive(Debug, Clone)]
pub struct Sources {
    path: PathBuf,
}

impl Sources {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn list(&self) -> Result<Vec<Source>, SourceError> {
        let list: Vec<Source> = listfile::read(&self.path)?;
        for s in &list {
            Source::new(&s.prefix, &s.url)
                .map_err(|e| SourceError::Invalid(format!("{}: {e}", self.path.display())))?;
        }
        Ok(list)
    }

    fn save(&self, list: &[Source]) -> Result<(), SourceError> {
        Ok(listfile::write(&self.path, list)?)
    }

    /// Adds or replaces the source for `source.prefix`.
    pub fn add(&self, source: Source) -> Result<(), SourceError> {
        let mut list = self.list()?;
        list.retain(|s| s.prefix != source.prefix);
        list.push(source);
        self.save(&list)
    }

    pub fn remove(&self, prefix: &str) -> Result<(), SourceError> {
        let mut list = self.list()?;
        let before = list.len();
        list.retain(|s| s.prefix != prefix);
        if list.len() == before {
            return Err(SourceError::NotFound(prefix.to_owned()));
        }
        self.save(&list)
    }

    /// The URL for `name` with `labels`, from the longest matching prefix.
    pub fn url_for(&self, name: &AcIdentifier, labels: &BTreeMap<String, String>) -> Result<String, SourceError> {
        let list = self.list()?;
        let best = list
            .iter()
            .filter(|s| name.has_prefix(&s.prefix))
            .max_by_key(|s| s.prefix.len())
            .ok_or_else(|| SourceError::NoSource(name.to_string()))?;
        best.expand(name, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_expansion() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Sources::new(dir.path().join("sources.yaml"));
        let add = |p: &str, u: &str| {
            s.add(Source::new(p, u).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
        };
        add("example.com/", "https://a/{basename}-{version}.aci");
        add("example.com/db/", "https://b/{name}.aci");
        let labels: BTreeMap<String, String> = [("version".to_owned(), "7.0".to_owned())].into();
        let n = |x: &str| AcIdentifier::new(x).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.url_for(&n("example.com/redis"), &labels).ok().as_deref(), Some("https://a/redis-7.0.aci"));
        assert_eq!(
            s.url_for(&n("example.com/db/pg"), &labels).ok().as_deref(),
            Some("https://b/example.com/db/pg.aci")
        );
        assert!(matches!(s.url_for(&n("other.org/x"), &labels), Err(SourceError::NoSource(_))));
        assert!(matches!(s.url_for(&n("example.com/x"), &BTreeMap::new()), Err(SourceError::MissingLabel { .. })));
        assert!(Source::new("example.com/", "ftp://x").is_err());
        s.remove("example.com/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.list().map(|l| l.len()).ok(), Some(1));
    }
}
