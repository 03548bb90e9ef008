//! The default network, set up natively (as netavark replaced the CNI
//! plugins in podman): the same bridge `pod0`, subnet, gateway and host-local
//! addresses as the `default` conflist pod used to write, but made with
//! rtnetlink ([`rtnl`]) and rules in an nf_tables table the pods share
//! ([`nft`]) from the
//! stage1 monitor itself, instead of exec'ing bridge, host-local, portmap and
//! the iptables they run. Named networks, and a `default` conflist of the
//! user's, still go through CNI ([`crate::network::cni`]).
//!
//! What the pod got is recorded in `<cache dir>/native-default.json` before
//! the first change, so a stage1 killed midway still leaves gc enough to
//! undo it: the veth is named after the pod, its nf_tables rules carry its
//! id, the address is found by its owner in the host-local store.

pub mod ipam;
#[cfg(test)]
mod kernel_tests;
pub mod nft;
mod nl;
pub mod rtnl;

use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cni::{self, default_conflist, CniError, DEFAULT_BRIDGE, DEFAULT_CONFLIST_FILE, DEFAULT_NETWORK};
use super::netns::{NetNs, NetnsError};
use super::ports::PortMapping;
use super::{Attachment, IpNet, POD_IFNAME};
use ipam::{IpamError, Range, Store};
use nft::{NftError, PodRules};
use rtnl::{Rtnl, RtnlError};

const STATE_FILE: &str = "native-default.json";
const STATE_KIND: &str = "podNativeNetV1";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("default network: {0}")]
    Ipam(#[from] IpamError),
    #[error("default network: {0}")]
    Rtnl(#[from] RtnlError),
    #[error("default network: {0}")]
    Nft(#[from] NftError),
    #[error("default network: {0}")]
    Netns(#[from] NetnsError),
    #[error("{path}: {reason}", path = .path.display())]
    State { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NativeError + 'a {
    move |source| NativeError::Io { op, path: path.to_owned(), source }
}

/// The default network's shape: what [`default_conflist`] says.
#[derive(Debug, Clone)]
pub struct DefaultNet {
    pub bridge: String,
    /// The subnet's address and prefix length (10.89.0.0/16).
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// host-local's data directory (`/var/lib/cni/networks`).
    pub data_dir: PathBuf,
}

impl Default for DefaultNet {
    fn default() -> Self {
        Self {
            bridge: DEFAULT_BRIDGE.to_owned(),
            subnet: Ipv4Addr::new(10, 89, 0, 0),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 89, 0, 1),
            data_dir: PathBuf::from(ipam::DEFAULT_DATA_DIR),
        }
    }
}

impl DefaultNet {
    fn range(&self) -> Range {
        Range::of_subnet(self.subnet, self.prefix, self.gateway)
    }

    fn subnet(&self) -> IpNet {
        IpNet { addr: self.subnet.into(), prefix: self.prefix }
    }

    fn store(&self) -> Store {
        Store::new(&self.data_dir, DEFAULT_NETWORK)
    }
}

/// Whether `default` is set up natively: no conflist in `conf_dir` names
/// it, or the one that does is the file earlier versions of pod wrote
/// ([`DEFAULT_CONFLIST_FILE`], unchanged). A conflist of the user's keeps
/// it on CNI.
pub fn is_native(conf_dir: &Path) -> Result<bool, CniError> {
    match cni::load_network(conf_dir, DEFAULT_NETWORK) {
        Err(CniError::NetworkNotFound { .. }) => Ok(true),
        Err(e) => Err(e),
        Ok(list) => Ok(list.source.as_deref().and_then(Path::file_name).is_some_and(|f| f == DEFAULT_CONFLIST_FILE)
            && *list.to_json() == default_conflist()),
    }
}

/// What a pod holds on the native default network (the state file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct State {
    kind: String,
    pod_id: String,
    /// Recorded once made: a name taken by another link is never deleted.
    /// (A veth not recorded yet goes with the pod's namespace.)
    veth: Option<String>,
    /// Recorded once allocated; without it gc finds the address by owner.
    ip: Option<Ipv4Addr>,
}

/// The host end of the pod's veth: `veth` and the first 11 letters or
/// digits of the pod id (15 is the longest interface name).
pub fn veth_name(pod_id: &str) -> String {
    let tag: String = pod_id.chars().filter(char::is_ascii_alphanumeric).take(11).collect();
    format!("veth{tag}")
}

fn state_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(STATE_FILE)
}

fn write_state(cache_dir: &Path, state: &State) -> Result<(), NativeError> {
    let path = state_path(cache_dir);
    fs::create_dir_all(cache_dir).map_err(io_err("create directory", cache_dir))?;
    let bytes =
        serde_json::to_vec(state).map_err(|e| NativeError::State { path: path.clone(), reason: e.to_string() })?;
    let tmp = path.with_extension("json.tmp");
    fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes)).and_then(|()| fs::rename(&tmp, &path)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("write", &path)(e)
    })
}

fn read_state(cache_dir: &Path) -> Result<Option<State>, NativeError> {
    let path = state_path(cache_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| NativeError::State { path: path.clone(), reason: e.to_string() })?;
    if state.kind != STATE_KIND {
        return Err(NativeError::State { path, reason: format!("kind {:?} is not {STATE_KIND}", state.kind) });
    }
    Ok(Some(state))
}

/// Whether pod state in `cache_dir` says the pod is on the native network.
pub fn was_native(cache_dir: &Path) -> bool {
    state_path(cache_dir).exists()
}

/// A pod on the native default network: what teardown undoes.
#[derive(Debug, Clone)]
pub struct Native {
    net: DefaultNet,
    cache_dir: PathBuf,
    pod_id: String,
}

/// A locally administered unicast MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut mac)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Turns on IPv4 forwarding (the bridge plugin's `isGateway` does too) unless
/// it is on already: the pod's traffic is routed through the host.
fn enable_forwarding() -> Result<(), NativeError> {
    let path = Path::new(IP_FORWARD);
    if fs::read_to_string(path).is_ok_and(|s| s.trim() == "1") {
        return Ok(());
    }
    fs::write(path, "1").map_err(io_err("write", path))
}

/// Turns on `route_localnet` on the pods' bridge, unless it is on already,
/// so that published ports answer on the host's 127.0.0.1 through DNAT (as
/// netavark does): the kernel routes 127.0.0.0/8 over an interface only with
/// it. Only on the bridge this network makes, never `all`; the shared
/// table's guard ([`nft`]) keeps the pods themselves off the host's
/// loopback.
fn enable_route_localnet(bridge: &str) -> Result<(), NativeError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
    if fs::read_to_string(&path).is_ok_and(|s| s.trim() == "1") {
        return Ok(());
    }
    fs::write(&path, "1").map_err(io_err("write", &path))
}

impl Native {
    /// Attaches the namespace `netns` of pod `pod_id` to the default
    /// network, publishing `ports` (on host addresses and loopback alike).
    /// On failure what was done is undone.
    pub fn setup(
        net: &DefaultNet,
        cache_dir: &Path,
        pod_id: &str,
        netns: &NetNs,
        ports: &[PortMapping],
    ) -> Result<(Self, Attachment), NativeError> {
        let me = Self { net: net.clone(), cache_dir: cache_dir.to_owned(), pod_id: pod_id.to_owned() };
        match me.attach(netns, ports) {
            Ok(attachment) => Ok((me, attachment)),
            Err(e) => {
                if let Err(undo) = me.teardown() {
                    tracing::warn!(error = %undo, "undoing the default network after failed setup");
                }
                Err(e)
            }
        }
    }

    fn attach(&self, netns: &NetNs, ports: &[PortMapping]) -> Result<Attachment, NativeError> {
        let veth = veth_name(&self.pod_id);
        let mut state = State { kind: STATE_KIND.into(), pod_id: self.pod_id.clone(), veth: None, ip: None };
        write_state(&self.cache_dir, &state)?;
        enable_forwarding()?;
        let ip = self.net.store().allocate(&self.net.range(), &self.pod_id, POD_IFNAME)?;

        let gateway = IpNet { addr: self.net.gateway.into(), prefix: self.net.prefix };
        let mut rtnl = Rtnl::open()?;
        let bridge = rtnl.ensure_bridge(&self.net.bridge, gateway)?;
        enable_route_localnet(&self.net.bridge)?;
        let mac = random_mac();
        let ns_file = netns.open()?;
        rtnl.add_veth(&veth, Some(bridge), POD_IFNAME, mac, ns_file.as_fd())?;
        (state.ip, state.veth) = (Some(ip), Some(veth.clone()));
        write_state(&self.cache_dir, &state)?;
        let host_end = rtnl.link_index(&veth)?.ok_or_else(|| RtnlError {
            op: format!("look up link {veth}"),
            source: io::Error::from_raw_os_error(nix::libc::ENODEV),
        })?;
        rtnl.set_hairpin(host_end, &veth)?;

        let pod_ip = IpNet { addr: ip.into(), prefix: self.net.prefix };
        let gw = self.net.gateway;
        netns.run_in(|| -> Result<(), RtnlError> {
            let mut inside = Rtnl::open()?;
            let eth0 = inside.link_index(POD_IFNAME)?.ok_or_else(|| RtnlError {
                op: format!("look up link {POD_IFNAME} in the pod"),
                source: io::Error::from_raw_os_error(nix::libc::ENODEV),
            })?;
            inside.add_address(eth0, pod_ip, POD_IFNAME)?;
            inside.set_up(eth0, POD_IFNAME)?;
            inside.add_default_route(gw, eth0)
        })??;

        let (pod_id, subnet, bridge) = (&self.pod_id, self.net.subnet(), &self.net.bridge);
        nft::add(&PodRules { pod_id, pod_ip: ip, subnet, bridge, ports })?;
        tracing::info!(pod = %self.pod_id, %ip, "attached to the default network (native)");
        Ok(Attachment {
            network: DEFAULT_NETWORK.to_owned(),
            interface: POD_IFNAME.to_owned(),
            mac: Some(mac_string(mac)),
            ips: vec![pod_ip],
            gateway: Some(gw.into()),
            host_interfaces: vec![veth],
        })
    }

    /// Removes the pod's rules (and the shared table if no pod uses it),
    /// veth and address, then its state file.
    /// Every step runs even if one before failed; the first error is
    /// returned. Idempotent.
    pub fn teardown(&self) -> Result<(), NativeError> {
        teardown_in(&self.net, &self.cache_dir, &self.pod_id)
    }

    /// [`Native::teardown`] when the pod's namespace is released right
    /// after (the monitor's teardown): the veth is left to the kernel, which
    /// deletes both ends with the namespace, off the pod's exit path (an
    /// RTM_DELLINK waits for RCU grace periods: 15 ms and more on a busy
    /// host). gc ([`teardown_in`]) deletes it explicitly.
    pub fn teardown_with_netns(&self) -> Result<(), NativeError> {
        teardown_steps(&self.net, &self.cache_dir, &self.pod_id, false)
    }
}

/// [`Native::teardown`] for a pod whose stage1 is gone (gc), from its
/// state file; nothing when there is none. Also deletes the shared
/// nf_tables table when no pod has rules left in it.
pub fn teardown_in(net: &DefaultNet, cache_dir: &Path, pod_id: &str) -> Result<(), NativeError> {
    let steps = teardown_steps(net, cache_dir, pod_id, true);
    let table = remove_table_if_unused(pod_id);
    steps?;
    table
}

/// gc of a pod the monitor tore down: the shared nf_tables table, once no
/// pod has rules left in it (the monitor leaves it: deleting it would
/// unregister its hooks, which waits for RCU grace periods, on the pod's
/// exit path), and the pod's own table if an older pod made one.
pub fn remove_table_if_unused(pod_id: &str) -> Result<(), NativeError> {
    nft::remove_if_unused(Some(pod_id)).map_err(NativeError::from)
}

fn teardown_steps(net: &DefaultNet, cache_dir: &Path, pod_id: &str, gc: bool) -> Result<(), NativeError> {
    let state = read_state(cache_dir)?;
    let Some(state) = state else { return Ok(()) };
    let rules = nft::delete(pod_id).map_err(NativeError::from);
    let del_veth = gc;
    let link = match &state.veth {
        Some(veth) if del_veth => Rtnl::open().and_then(|mut r| r.del_link(veth)).map_err(NativeError::from),
        _ => Ok(()),
    };
    let addr = net.store().release(pod_id, POD_IFNAME, state.ip).map_err(NativeError::from);
    rules?;
    link?;
    addr?;
    let path = state_path(cache_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_unless_the_user_defines_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(is_native(&dir.path().join("missing")).expect("no directory"));
        assert!(is_native(dir.path()).expect("empty"));
        // The file older pods wrote, unchanged: still native.
        cni::ensure_default(dir.path()).expect("write the old default");
        assert!(is_native(dir.path()).expect("pod's own file"));
        // Edited by the user: CNI.
        let mut doc = default_conflist();
        doc["plugins"][0]["bridge"] = "mybr".into();
        fs::write(dir.path().join(DEFAULT_CONFLIST_FILE), doc.to_string()).expect("write");
        assert!(!is_native(dir.path()).expect("edited"));
        // Another file naming `default`: CNI.
        let other = tempfile::tempdir().expect("tempdir");
        fs::write(other.path().join("10-mine.conflist"), default_conflist().to_string()).expect("write");
        assert!(!is_native(other.path()).expect("the user's own"));
    }

    #[test]
    fn veth_names_fit_and_follow_the_pod() {
        let name = veth_name("3f2a9c1e-7b4d-4e2a-9c1e-7b4d4e2a9c1e");
        assert_eq!(name, "veth3f2a9c1e7b4");
        assert!(name.len() <= 15);
        assert_eq!(mac_string([2, 0xab, 0, 1, 2, 3]), "02:ab:00:01:02:03");
        let mac = random_mac();
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast: {mac:?}");
    }

    #[test]
    fn state_round_trip_and_teardown_without_state_is_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State {
            kind: STATE_KIND.into(),
            pod_id: "p".into(),
            veth: Some("vethp".into()),
            ip: Some(Ipv4Addr::new(10, 89, 0, 9)),
        };
        assert!(!was_native(dir.path()));
        write_state(dir.path(), &state).expect("write");
        assert!(was_native(dir.path()));
        assert_eq!(read_state(dir.path()).expect("read"), Some(state));
        let empty = tempfile::tempdir().expect("tempdir");
        teardown_in(&DefaultNet::default(), empty.path(), "p").expect("nothing to undo");
    }
}
