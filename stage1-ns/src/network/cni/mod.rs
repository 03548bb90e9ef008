//! A CNI 1.0 runtime: runs a network configuration list's plugin chain for
//! ADD (rolling back with DEL on failure) and DEL (reverse order, replayed
//! from the per-pod cache), as libcni does, without libcni.

mod cache;
mod conf;
mod exec;
mod result;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

pub use conf::{
    default_conflist, ensure_default, load_network, valid_network_name, NetworkConfigList, PluginConf, DEFAULT_BRIDGE,
    DEFAULT_CONFLIST_FILE, DEFAULT_NETWORK, DEFAULT_SUBNET,
};
pub use exec::Verb;
pub use result::{Attachment, IpNet};

use crate::network::netns::is_pinned;
use crate::network::ports::PortMapping;
use cache::CacheEntry;

/// Where plugins are looked up unless told otherwise.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
/// Where stage0 keeps network configuration lists by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/pod/net.d";
/// How long one plugin may run.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("CNI configuration {}: {reason}", path.display())]
    Conf { path: PathBuf, reason: String },
    #[error("no CNI network named {name:?} in {} (found: {})", dir.display(), if seen.is_empty() { "none".to_owned() } else { seen.join(", ") })]
    NetworkNotFound { name: String, dir: PathBuf, seen: Vec<String> },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin} ({}): {source}", path.display())]
    Spawn { plugin: String, path: PathBuf, source: io::Error },
    #[error("CNI plugin {plugin} {}: no answer within {timeout:?}, killed", verb.as_str())]
    Timeout { plugin: String, verb: Verb, timeout: Duration },
    #[error("CNI plugin {plugin} {} failed: {msg}{} (code {code})", verb.as_str(), if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin { plugin: String, verb: Verb, code: u32, msg: String, details: String },
    #[error("CNI plugin {plugin} {} failed with {status}: {output}", verb.as_str())]
    PluginFailed { plugin: String, verb: Verb, status: ExitStatus, output: String },
    #[error("CNI plugin {plugin} {}: {reason}", verb.as_str())]
    BadResult { plugin: String, verb: Verb, reason: String },
    #[error("CNI cache {}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },
    #[error("{error} ({helper} is not installed, and CNI plugins need it: install Debian's {helper} package)")]
    HelperMissing { helper: &'static str, error: Box<CniError> },
    #[error("{error} (and the rollback failed too: {rollback})")]
    RollbackFailed { error: Box<CniError>, rollback: Box<CniError> },
}

impl CniError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io { op, path: path.to_owned(), source }
    }
}

/// The CNI runtime for one pod: where plugins and configurations are, and
/// the pod's own cache directory.
#[derive(Debug, Clone)]
pub struct Cni {
    plugin_dirs: Vec<PathBuf>,
    conf_dir: PathBuf,
    cache_dir: PathBuf,
    timeout: Duration,
    read_only_sysctls: bool,
    path_env: String,
}

impl Cni {
    /// Default plugin directories and timeout.
    pub fn new(conf_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugin_dirs: DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
            conf_dir: conf_dir.into(),
            cache_dir: cache_dir.into(),
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            read_only_sysctls: false,
            path_env: exec::PLUGIN_PATH_ENV.to_owned(),
        }
    }

    pub fn with_plugin_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.plugin_dirs = dirs;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs plugins with a read-only `/proc/sys` (in a private mount
    /// namespace): best-effort sysctl writes (the bridge's `accept_ra`,
    /// `arp_notify`) are skipped, required ones (`isGateway`'s `ip_forward`,
    /// portmap's `snat`) fail the ADD. For hosts whose operator sets
    /// sysctls, and for tests, which must not change any.
    pub fn with_read_only_sysctls(mut self, read_only: bool) -> Self {
        self.read_only_sysctls = read_only;
        self
    }

    /// `PATH` for plugins and the helpers they run (tests leave helpers out).
    #[cfg(test)]
    pub(crate) fn with_path_env(mut self, path_env: &str) -> Self {
        self.path_env = path_env.to_owned();
        self
    }

    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.plugin_dirs
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The list named `network` from the configuration directory.
    pub fn load(&self, network: &str) -> Result<NetworkConfigList, CniError> {
        load_network(&self.conf_dir, network)
    }

    /// Attaches the namespace at `netns` to `network` as `ifname`, running
    /// the chain in order with each result as the next `prevResult`. On a
    /// failure midway the whole chain is DELeted in reverse (as the spec
    /// asks) before the error is returned.
    pub fn add(
        &self,
        netns: &Path,
        container_id: &str,
        ifname: &str,
        network: &str,
        port_mappings: &[PortMapping],
    ) -> Result<Attachment, CniError> {
        check_args(container_id, ifname)?;
        let list = self.load(network)?;
        // Every plugin must exist before the first one changes anything.
        for plugin in &list.plugins {
            exec::find_plugin(&self.plugin_dirs, &plugin.plugin_type)?;
        }
        let mut entry = CacheEntry::new(container_id, ifname, &list.name, netns, list.to_json().clone());
        entry.port_mappings = port_mappings.to_vec();
        cache::write(&self.cache_dir, &entry)?;

        let mut prev: Option<Value> = None;
        let added = list.plugins.iter().try_for_each(|plugin| {
            let stdin = list.plugin_stdin(plugin, prev.as_ref(), port_mappings);
            let out = exec::run(
                &self.invocation(Verb::Add, container_id, Some(netns), ifname),
                &plugin.plugin_type,
                &to_bytes(&stdin),
            )?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
                plugin: plugin.plugin_type.clone(),
                verb: Verb::Add,
                reason: format!("result is not JSON: {e}"),
            })?;
            prev = Some(value);
            Ok(())
        });
        let attached = added.and_then(|()| {
            let last = list.plugins.last().map(|p| p.plugin_type.clone()).unwrap_or_default();
            let final_result = prev.clone().unwrap_or(Value::Null);
            result::attachment(&list.name, ifname, &final_result).map_err(|reason| CniError::BadResult {
                plugin: last,
                verb: Verb::Add,
                reason,
            })
        });
        let attached = attached.map_err(|error| self.with_missing_helper(error));
        match attached {
            Ok(attachment) => {
                entry.result = prev;
                cache::write(&self.cache_dir, &entry)?;
                tracing::info!(network, container_id, ips = ?attachment.ips, "attached to CNI network");
                Ok(attachment)
            }
            Err(error) => match self.run_del(&list, prev.as_ref(), netns, container_id, ifname, port_mappings) {
                Ok(()) => {
                    cache::remove(&self.cache_dir, &list.name, container_id, ifname)?;
                    Err(error)
                }
                // The cache stays, so a later `del` (gc) can retry.
                Err(rollback) => Err(CniError::RollbackFailed { error: Box::new(error), rollback: Box::new(rollback) }),
            },
        }
    }

    /// Detaches: DEL through the chain in reverse, with the cached list,
    /// port mappings and result when there are any, else with the current
    /// list from the configuration directory. Idempotent: a second call, a
    /// namespace that is gone, or a network that was never added succeed.
    pub fn del(&self, netns: &Path, container_id: &str, ifname: &str, network: &str) -> Result<(), CniError> {
        check_args(container_id, ifname)?;
        let (list, prev, ports) = match cache::read(&self.cache_dir, network, container_id, ifname)? {
            Some(entry) => {
                let list = NetworkConfigList::parse(entry.config, None).map_err(|reason| CniError::Cache {
                    path: cache::path(&self.cache_dir, network, container_id, ifname),
                    reason,
                })?;
                (list, entry.result, entry.port_mappings)
            }
            None => match self.load(network) {
                Ok(list) => (list, None, Vec::new()),
                Err(CniError::NetworkNotFound { .. }) => {
                    tracing::debug!(network, container_id, "no cache and no configuration: nothing to delete");
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };
        self.run_del(&list, prev.as_ref(), netns, container_id, ifname, &ports)?;
        cache::remove(&self.cache_dir, network, container_id, ifname)
    }

    fn run_del(
        &self,
        list: &NetworkConfigList,
        prev: Option<&Value>,
        netns: &Path,
        container_id: &str,
        ifname: &str,
        ports: &[PortMapping],
    ) -> Result<(), CniError> {
        // The spec lets DEL run without a namespace; plugins then release
        // what lives outside it (addresses, iptables rules).
        let netns = is_pinned(netns).then_some(netns);
        let inv = self.invocation(Verb::Del, container_id, netns, ifname);
        list.plugins.iter().rev().try_for_each(|plugin| {
            let stdin = list.plugin_stdin(plugin, prev, ports);
            match exec::run(&inv, &plugin.plugin_type, &to_bytes(&stdin)) {
                Ok(_) => Ok(()),
                // Without iptables no rule of the pod's can exist (unless
                // iptables was removed since, and then nothing here can
                // delete them): a pod must not become uncollectable.
                Err(error) => match self.with_missing_helper(error) {
                    CniError::HelperMissing { helper, error } => {
                        tracing::warn!(
                            container_id,
                            plugin = %plugin.plugin_type,
                            "{error}; carrying on without it: {helper} is not installed (install Debian's {helper} \
                             package, then remove any CNI-* chains left by hand)"
                        );
                        Ok(())
                    }
                    error => Err(error),
                },
            }
        })
    }

    /// `error`, said to come from a missing helper when a plugin failed and
    /// the helper is not on the plugins' `PATH`.
    fn with_missing_helper(&self, error: CniError) -> CniError {
        let from_plugin = matches!(error, CniError::Plugin { .. } | CniError::PluginFailed { .. });
        match exec::missing_helper(&self.path_env) {
            Some(helper) if from_plugin => CniError::HelperMissing { helper, error: Box::new(error) },
            _ => error,
        }
    }

    fn invocation<'a>(
        &'a self,
        verb: Verb,
        container_id: &'a str,
        netns: Option<&'a Path>,
        ifname: &'a str,
    ) -> exec::Invocation<'a> {
        exec::Invocation {
            verb,
            container_id,
            netns,
            ifname,
            plugin_dirs: &self.plugin_dirs,
            timeout: self.timeout,
            read_only_sysctls: self.read_only_sysctls,
            path_env: &self.path_env,
        }
    }
}

fn to_bytes(doc: &Value) -> Vec<u8> {
    doc.to_string().into_bytes()
}

/// Container IDs and interface names as the CNI spec allows them.
fn check_args(container_id: &str, ifname: &str) -> Result<(), CniError> {
    if container_id.is_empty()
        || !container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !container_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CniError::InvalidArgument(format!(
            "container id {container_id:?} is not letters, digits, `_`, `.` or `-`"
        )));
    }
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.contains(['/', ':'])
        || ifname.contains(char::is_whitespace)
    {
        return Err(CniError::InvalidArgument(format!(
            "interface name {ifname:?} is not a valid Linux interface name"
        )));
    }
    Ok(())
}
