//! Network configuration lists: loading `<conf_dir>/*.conflist` by name,
//! the built-in `default` network, and the per-plugin stdin document the
//! CNI spec derives from a list entry.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::CniError;
use crate::network::ports::PortMapping;

/// The file `ensure_default` writes when no list is named `default`.
pub const DEFAULT_CONFLIST_FILE: &str = "50-pod-default.conflist";
/// The built-in network's name, bridge and subnet.
pub const DEFAULT_NETWORK: &str = "default";
pub const DEFAULT_BRIDGE: &str = "pod0";
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";

/// CNI spec versions whose results pod can read (0.1/0.2 results differ).
const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Capabilities pod can fill in `runtimeConfig`.
pub(crate) const CAP_PORT_MAPPINGS: &str = "portMappings";

/// The built-in `default` network: bridge `pod0` with host-local addresses
/// in 10.89.0.0/16 (beside podman's 10.88), the host as gateway and
/// masquerade for outbound traffic, then portmap for published ports.
///
/// portmap's `conditionsV4`/`conditionsV6` keep its DNAT off loopback
/// destinations, which the stage1 monitor serves with userspace proxies;
/// `snat` stays false because portmap's SNAT mode sets `route_localnet` on
/// the bridge, which would let pods reach the host's 127.0.0.1 services.
pub fn default_conflist() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": DEFAULT_SUBNET, "gateway": "10.89.0.1" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            {
                "type": "portmap",
                "capabilities": { CAP_PORT_MAPPINGS: true },
                "snat": false,
                "conditionsV4": ["!", "-d", "127.0.0.0/8"],
                "conditionsV6": ["!", "-d", "::1/128"]
            }
        ]
    })
}

/// One plugin entry of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The executable's file name (`type`).
    pub plugin_type: String,
    /// Capabilities the entry declares `true`.
    pub capabilities: BTreeSet<String>,
    raw: Map<String, Value>,
}

/// A parsed `.conflist`, with the document it came from (cached at ADD so
/// DEL runs the same chain even if the file changes or disappears).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<PluginConf>,
    pub source: Option<PathBuf>,
    raw: Value,
}

impl NetworkConfigList {
    pub fn parse(doc: Value, source: Option<PathBuf>) -> Result<Self, String> {
        let obj = doc.as_object().ok_or("not a JSON object")?;
        let name = obj.get("name").and_then(Value::as_str).ok_or("missing string field `name`")?;
        if !valid_network_name(name) {
            return Err(format!("network name {name:?} is not letters, digits, `_`, `.` or `-`"));
        }
        let cni_version = obj.get("cniVersion").and_then(Value::as_str).ok_or("missing string field `cniVersion`")?;
        if !SUPPORTED_VERSIONS.contains(&cni_version) {
            return Err(format!("cniVersion {cni_version:?} is not one of {}", SUPPORTED_VERSIONS.join(", ")));
        }
        let entries = obj.get("plugins").and_then(Value::as_array).ok_or("missing array field `plugins`")?;
        if entries.is_empty() {
            return Err("`plugins` is empty".into());
        }
        let mut plugins = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let raw = entry.as_object().ok_or_else(|| format!("plugins[{i}] is not an object"))?.clone();
            let plugin_type = raw
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("plugins[{i}]: missing string field `type`"))?
                .to_owned();
            // Looked up only inside the plugin directories.
            if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
                return Err(format!("plugins[{i}]: type {plugin_type:?} is not a plain file name"));
            }
            let capabilities = match raw.get("capabilities") {
                None => BTreeSet::new(),
                Some(Value::Object(caps)) => {
                    caps.iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect()
                }
                Some(_) => return Err(format!("plugins[{i}]: `capabilities` is not an object")),
            };
            plugins.push(PluginConf { plugin_type, capabilities, raw });
        }
        Ok(Self { name: name.to_owned(), cni_version: cni_version.to_owned(), plugins, source, raw: doc })
    }

    /// The document as loaded.
    pub fn to_json(&self) -> &Value {
        &self.raw
    }

    /// The stdin document for one plugin (CNI spec, "deriving execution
    /// configuration"): the entry with the list's `name` and `cniVersion`,
    /// `capabilities` removed, `runtimeConfig` holding the capabilities the
    /// entry declares and the runtime has values for, and `prevResult`.
    pub fn plugin_stdin(&self, plugin: &PluginConf, prev_result: Option<&Value>, ports: &[PortMapping]) -> Value {
        let mut conf = plugin.raw.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        conf.remove("capabilities");
        conf.remove("runtimeConfig");
        let mut runtime = Map::new();
        if plugin.capabilities.contains(CAP_PORT_MAPPINGS) && !ports.is_empty() {
            runtime.insert(CAP_PORT_MAPPINGS.into(), json!(ports));
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        match prev_result {
            Some(prev) => conf.insert("prevResult".into(), prev.clone()),
            None => conf.remove("prevResult"),
        };
        Value::Object(conf)
    }
}

/// Network names as the CNI spec allows them.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The `.conflist` files of `conf_dir`, sorted: the first one naming a
/// network wins, as with libcni. A missing directory has none.
fn conflist_files(conf_dir: &Path) -> Result<Vec<PathBuf>, CniError> {
    let entries = match fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::io("read directory", conf_dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(CniError::io("read directory", conf_dir))?.path();
        if path.extension().is_some_and(|ext| ext == "conflist") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the list named `name` from `conf_dir`. Unreadable or malformed
/// files that might be it are skipped with a warning, so one broken file
/// does not take every network down; the error then says what was seen.
pub fn load_network(conf_dir: &Path, name: &str) -> Result<NetworkConfigList, CniError> {
    let mut seen = Vec::new();
    for path in conflist_files(conf_dir)? {
        let doc = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()));
        let doc = match doc {
            Ok(doc) => doc,
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipping unreadable CNI configuration");
                continue;
            }
        };
        let file_name = doc.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if file_name != name {
            seen.push(file_name);
            continue;
        }
        return NetworkConfigList::parse(doc, Some(path.clone())).map_err(|reason| CniError::Conf { path, reason });
    }
    Err(CniError::NetworkNotFound { name: name.to_owned(), dir: conf_dir.to_owned(), seen })
}

/// The file earlier versions of pod wrote on first use of `default`, which
/// now is set up natively (see `network::native`); still recognised there as
/// pod's own, not the user's. Makes sure a list named `default` exists in
/// `conf_dir`, writing
/// [`default_conflist`] to [`DEFAULT_CONFLIST_FILE`] (temp file + rename,
/// so concurrent stage1s never see half a file) when none does. Returns the
/// file that defines it.
pub fn ensure_default(conf_dir: &Path) -> Result<PathBuf, CniError> {
    match load_network(conf_dir, DEFAULT_NETWORK) {
        Ok(list) => return Ok(list.source.unwrap_or_else(|| conf_dir.join(DEFAULT_CONFLIST_FILE))),
        Err(CniError::NetworkNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(conf_dir).map_err(CniError::io("create directory", conf_dir))?;
    let path = conf_dir.join(DEFAULT_CONFLIST_FILE);
    let mut text = serde_json::to_string_pretty(&default_conflist())
        .map_err(|e| CniError::Conf { path: path.clone(), reason: e.to_string() })?;
    text.push('\n');
    let tmp = conf_dir.join(format!(".{DEFAULT_CONFLIST_FILE}.{}.tmp", std::process::id()));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(CniError::io("write", &path)(e));
    }
    tracing::info!(file = %path.display(), "wrote the default CNI network");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ports::Protocol;

    fn write(dir: &Path, file: &str, doc: &Value) {
        fs::write(dir.join(file), serde_json::to_vec(doc).expect("json")).expect("write conflist");
    }

    fn list(name: &str, plugin: &str) -> Value {
        json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": plugin}]})
    }

    #[test]
    fn loads_a_network_by_name_first_file_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "10-a.conflist", &list("alpha", "bridge"));
        write(dir.path(), "20-b.conflist", &list("beta", "ptp"));
        write(dir.path(), "30-b.conflist", &list("beta", "macvlan"));
        write(dir.path(), "40-c.conf", &list("gamma", "bridge"));
        fs::write(dir.path().join("05-broken.conflist"), "{not json").expect("write");
        let beta = load_network(dir.path(), "beta").expect("beta");
        assert_eq!(beta.plugins[0].plugin_type, "ptp");
        assert_eq!(beta.source, Some(dir.path().join("20-b.conflist")));
        match load_network(dir.path(), "gamma") {
            Err(CniError::NetworkNotFound { seen, .. }) => assert_eq!(seen, ["alpha", "beta", "beta"]),
            other => panic!("only .conflist files count: {other:?}"),
        }
        write(
            dir.path(),
            "50-d.conflist",
            &json!({"cniVersion": "1.0.0", "name": "delta", "plugins": [{"type": "../x"}]}),
        );
        let err = load_network(dir.path(), "delta").expect_err("type with a path");
        assert!(err.to_string().contains("not a plain file name"), "{err}");
        write(dir.path(), "60-e.conflist", &json!({"cniVersion": "0.2.0", "name": "eps", "plugins": [{"type": "x"}]}));
        assert!(load_network(dir.path(), "eps").expect_err("old version").to_string().contains("cniVersion"));
    }

    #[test]
    fn ensure_default_writes_once_and_respects_an_existing_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("net.d");
        let path = ensure_default(&conf).expect("write default");
        assert_eq!(path, conf.join(DEFAULT_CONFLIST_FILE));
        let written: Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(written, default_conflist());
        assert_eq!(fs::read_dir(&conf).expect("dir").count(), 1, "no temp file left behind");
        let loaded = load_network(&conf, "default").expect("load");
        let types: Vec<&str> = loaded.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert!(loaded.plugins[1].capabilities.contains(CAP_PORT_MAPPINGS));

        let mine = tempfile::tempdir().expect("tempdir");
        write(mine.path(), "99-mine.conflist", &list("default", "ptp"));
        assert_eq!(ensure_default(mine.path()).expect("existing"), mine.path().join("99-mine.conflist"));
        assert!(!mine.path().join(DEFAULT_CONFLIST_FILE).exists());
    }

    #[test]
    fn default_conflist_content() {
        let expected = r#"{"cniVersion":"1.0.0","name":"default","plugins":[{"bridge":"pod0","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"gateway":"10.89.0.1","subnet":"10.89.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}],"type":"host-local"},"isGateway":true,"type":"bridge"},{"capabilities":{"portMappings":true},"conditionsV4":["!","-d","127.0.0.0/8"],"conditionsV6":["!","-d","::1/128"],"snat":false,"type":"portmap"}]}"#;
        assert_eq!(default_conflist().to_string(), expected);
    }

    #[test]
    fn plugin_stdin_for_bridge_and_portmap() {
        let list = NetworkConfigList::parse(default_conflist(), None).expect("parse");
        let ports = [PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None }];
        let bridge = list.plugin_stdin(&list.plugins[0], None, &ports);
        assert_eq!(
            bridge.to_string(),
            r#"{"bridge":"pod0","cniVersion":"1.0.0","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"gateway":"10.89.0.1","subnet":"10.89.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}],"type":"host-local"},"isGateway":true,"name":"default","type":"bridge"}"#
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.89.0.2/16", "gateway": "10.89.0.1"}]});
        let portmap = list.plugin_stdin(&list.plugins[1], Some(&prev), &ports);
        assert_eq!(
            portmap.to_string(),
            r#"{"cniVersion":"1.0.0","conditionsV4":["!","-d","127.0.0.0/8"],"conditionsV6":["!","-d","::1/128"],"name":"default","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.89.0.2/16","gateway":"10.89.0.1"}]},"runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},"snat":false,"type":"portmap"}"#
        );
        // No mappings: no runtimeConfig at all.
        let bare = list.plugin_stdin(&list.plugins[1], None, &[]);
        assert!(bare.get("runtimeConfig").is_none() && bare.get("capabilities").is_none());
    }

    #[test]
    fn network_names() {
        for good in ["default", "a", "my-net_1.2"] {
            assert!(valid_network_name(good), "{good}");
        }
        for bad in ["", "-a", "a b", "a/b", "ü"] {
            assert!(!valid_network_name(bad), "{bad}");
        }
    }
}
