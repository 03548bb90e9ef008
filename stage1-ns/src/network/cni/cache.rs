//! The per-pod CNI cache: what ADD ran (the whole list document, the port
//! mappings) and what it returned, so DEL replays the same chain with the
//! right `prevResult` even if the conflist was edited or removed since. It
//! is written before the first plugin runs, so a stage1 killed mid-ADD
//! still leaves gc enough to undo it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CniError;
use crate::network::ports::PortMapping;

const KIND: &str = "podCniCacheV1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    pub netns: PathBuf,
    /// The list document ADD ran.
    pub config: Value,
    pub port_mappings: Vec<PortMapping>,
    /// The final result; `None` while ADD is in progress or if it failed.
    pub result: Option<Value>,
}

impl CacheEntry {
    pub fn new(container_id: &str, if_name: &str, network_name: &str, netns: &Path, config: Value) -> Self {
        Self {
            kind: KIND.to_owned(),
            container_id: container_id.to_owned(),
            if_name: if_name.to_owned(),
            network_name: network_name.to_owned(),
            netns: netns.to_owned(),
            config,
            port_mappings: Vec::new(),
            result: None,
        }
    }
}

pub(crate) fn path(dir: &Path, network: &str, container_id: &str, if_name: &str) -> PathBuf {
    dir.join(format!("{network}-{container_id}-{if_name}.json"))
}

/// Atomically replaces the entry (temp file + rename in the same directory).
pub(crate) fn write(dir: &Path, entry: &CacheEntry) -> Result<(), CniError> {
    let target = path(dir, &entry.network_name, &entry.container_id, &entry.if_name);
    fs::create_dir_all(dir).map_err(CniError::io("create directory", dir))?;
    let bytes = serde_json::to_vec_pretty(entry)
        .map_err(|e| CniError::Cache { path: target.clone(), reason: e.to_string() })?;
    let tmp = target.with_extension("json.tmp");
    let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes)).and_then(|()| fs::rename(&tmp, &target));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CniError::io("write", &target)(e)
    })
}

/// The entry, or `None` when there is none.
pub(crate) fn read(
    dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<Option<CacheEntry>, CniError> {
    let file = path(dir, network, container_id, if_name);
    let bytes = match fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CniError::io("read", &file)(e)),
    };
    let entry: CacheEntry =
        serde_json::from_slice(&bytes).map_err(|e| CniError::Cache { path: file.clone(), reason: e.to_string() })?;
    if entry.kind != KIND {
        return Err(CniError::Cache { path: file, reason: format!("kind {:?} is not {KIND}", entry.kind) });
    }
    Ok(Some(entry))
}

pub(crate) fn remove(dir: &Path, network: &str, container_id: &str, if_name: &str) -> Result<(), CniError> {
    let file = path(dir, network, container_id, if_name);
    match fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io("remove", &file)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ports::Protocol;

    #[test]
    fn round_trip_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cni");
        assert_eq!(read(&cache, "net", "pod1", "eth0").expect("read"), None);
        let mut entry = CacheEntry::new(
            "pod1",
            "eth0",
            "net",
            Path::new("/run/pod/netns/pod1"),
            serde_json::json!({"name": "net"}),
        );
        entry.port_mappings =
            vec![PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None }];
        entry.result = Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []}));
        write(&cache, &entry).expect("write");
        assert_eq!(read(&cache, "net", "pod1", "eth0").expect("read"), Some(entry.clone()));
        assert_eq!(fs::read_dir(&cache).expect("dir").count(), 1, "no temp file left behind");
        let text = fs::read_to_string(path(&cache, "net", "pod1", "eth0")).expect("text");
        assert!(text.contains("\"kind\": \"podCniCacheV1\"") && text.contains("\"hostPort\": 8080"), "{text}");
        remove(&cache, "net", "pod1", "eth0").expect("remove");
        remove(&cache, "net", "pod1", "eth0").expect("remove again");
        assert_eq!(read(&cache, "net", "pod1", "eth0").expect("read"), None);

        fs::write(path(&cache, "net", "pod2", "eth0"), r#"{"kind":"other"}"#).expect("write");
        assert!(matches!(read(&cache, "net", "pod2", "eth0"), Err(CniError::Cache { .. })));
    }
}
