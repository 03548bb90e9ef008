//! The pod file's settings of the pod as a whole — `hostname`, `dns`,
//! `sysctls`, `ports` by number, `cgroupParent` — and the extras of a mount (`host`,
//! `propagation`, `recursiveReadOnly`) and of resources (`cpuShares`,
//! `oomScoreAdj`). They exist for sandboxes that start without apps (the
//! CRI's RunPodSandbox gives hostname, DNS, sysctls and port mappings before
//! any container) and for apps added later with host directories, and work
//! for any pod file alike.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::scan::FieldPath;
use super::{normalise, raw, Cx, Result};
use crate::name::AcName;
use crate::pod::{Isolation, Mount, Network, PodFile, Protocol, Volume, VolumeKind, MAX_ENTRIES};

/// Longest hostname the kernel takes (`HOST_NAME_MAX`).
const MAX_HOSTNAME: usize = 64;
/// Most servers, search domains or options in `dns`: glibc reads 3 servers
/// and 6 search domains; more are kept for other resolvers, within reason.
const MAX_DNS_ENTRIES: usize = 32;

/// The pod's resolv.conf, written instead of the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    /// The resolv.conf text.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// A host port published to a port of the pod by number: whichever app
/// listens on `container_port` in the pod's network namespace serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub container_port: u16,
    pub host_port: u16,
    /// `0.0.0.0` when not given.
    pub host_ip: IpAddr,
    pub protocol: Protocol,
}

/// How mounts made later below a mount point travel between the host and
/// the app (`propagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// `private`: neither way (the default).
    #[default]
    Private,
    /// `rslave`: from the host into the app, not back.
    Slave,
    /// `rshared`: both ways; the app needs CAP_SYS_ADMIN to mount.
    Shared,
}

impl Propagation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Slave => "rslave",
            Self::Shared => "rshared",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "private" | "rprivate" => Some(Self::Private),
            "rslave" | "slave" => Some(Self::Slave),
            "rshared" | "shared" => Some(Self::Shared),
            _ => None,
        }
    }
}

/// The namespace a namespaced sysctl belongs to: where the pod may set it
/// without touching the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysctlNamespace {
    Ipc,
    Net,
    Uts,
}

/// The namespace of sysctl `key` (dots), as runc and the kubelet judge it:
/// `kernel.shm*`, `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` are the IPC
/// namespace's, `net.*` the network namespace's, `kernel.domainname` the
/// UTS namespace's. `None`: a host-wide parameter no pod may set.
pub fn namespaced_sysctl(key: &str) -> Option<SysctlNamespace> {
    const IPC: [&str; 7] = [
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    ];
    if IPC.contains(&key) || key == "kernel.sem" || key.starts_with("fs.mqueue.") {
        Some(SysctlNamespace::Ipc)
    } else if key.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else if key == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

/// What the checks of this module add to a [`PodFile`].
pub(super) struct PodSettings {
    pub hostname: Option<String>,
    pub dns: Option<Dns>,
    pub sysctls: BTreeMap<String, String>,
    pub ports: Vec<PodPort>,
    pub cgroup_parent: Option<String>,
}

impl Cx<'_> {
    /// `hostname`, `dns`, `sysctls` and `ports` of the pod.
    pub(super) fn pod_settings(&self, raw: &raw::Pod, network: &Network) -> Result<PodSettings> {
        let root = FieldPath::default();
        let hostname = raw.hostname.as_ref().map(|h| self.hostname(&root.key("hostname"), h)).transpose()?;
        let dns = raw.dns.as_ref().map(|d| self.dns(&root.key("dns"), d)).transpose()?;
        self.count(&root.key("sysctls"), raw.sysctls.len(), MAX_ENTRIES)?;
        let mut sysctls = BTreeMap::new();
        for (k, v) in &raw.sysctls {
            let field = root.key("sysctls").key(k);
            let key = k.replace('/', ".");
            let well_formed = !key.is_empty()
                && key
                    .split('.')
                    .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)));
            if !well_formed {
                return Err(self.invalid(&field, format!("{k:?} is not a sysctl name (such as net.ipv4.ip_forward)")));
            }
            match namespaced_sysctl(&key) {
                None => {
                    let m = format!(
                        "sysctl {key} is not namespaced: setting it would change the whole host; a pod may set \
                         only net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and kernel.domainname"
                    );
                    return Err(self.invalid(&field, m));
                }
                Some(SysctlNamespace::Net) if *network == Network::Host => {
                    let m = format!("sysctl {key} belongs to the network namespace, and network host is the host's");
                    return Err(self.invalid(&field, m));
                }
                Some(_) => {}
            }
            if v.is_empty() || v.len() > 4096 || v.contains(['\0', '\n']) {
                return Err(self.invalid(&field, format!("{v:?} is not a sysctl value (one line, not empty)")));
            }
            if sysctls.insert(key.clone(), v.clone()).is_some() {
                return Err(self.invalid(&field, format!("sysctl {key} is given twice")));
            }
        }
        self.count(&root.key("ports"), raw.ports.len(), MAX_ENTRIES)?;
        let ports =
            raw.ports.iter().enumerate().map(|(i, p)| self.pod_port(&root.at("ports", i), p)).collect::<Result<_>>()?;
        let cgroup_parent = raw.cgroup_parent.clone();
        if let Some(parent) = &cgroup_parent {
            crate::cgroup::check_parent(parent).map_err(|m| self.invalid(&root.key("cgroupParent"), m))?;
        }
        Ok(PodSettings { hostname, dns, sysctls, ports, cgroup_parent })
    }

    fn hostname(&self, field: &FieldPath, h: &str) -> Result<String> {
        let ok = !h.is_empty()
            && h.len() <= MAX_HOSTNAME
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            && !h.starts_with(['-', '.']);
        if !ok {
            let m = format!("{h:?} is not a hostname (letters, digits, '-', '.', at most {MAX_HOSTNAME})");
            return Err(self.invalid(field, m));
        }
        Ok(h.to_owned())
    }

    fn dns(&self, field: &FieldPath, d: &raw::Dns) -> Result<Dns> {
        for (key, list) in [("servers", &d.servers), ("searches", &d.searches), ("options", &d.options)] {
            self.count(&field.key(key), list.len(), MAX_DNS_ENTRIES)?;
            for (i, s) in list.iter().enumerate() {
                if s.is_empty() || s.len() > 256 || s.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    return Err(self.invalid(&field.at(key, i), format!("{s:?} is not one word of resolv.conf")));
                }
            }
        }
        let servers = d
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse().map_err(|_| self.invalid(&field.at("servers", i), format!("{s:?} is not an IP address")))
            })
            .collect::<Result<_>>()?;
        Ok(Dns { servers, searches: d.searches.clone(), options: d.options.clone() })
    }

    fn pod_port(&self, path: &FieldPath, p: &raw::PodPort) -> Result<PodPort> {
        let container_port = self.port(&path.key("containerPort"), &p.container_port)?;
        let host_port = self.port(&path.key("host"), &p.host)?;
        let host_ip = match &p.host_ip {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(s) => {
                s.parse().map_err(|_| self.invalid(&path.key("hostIP"), format!("{s:?} is not an IP address")))?
            }
        };
        let protocol = self.protocol(&path.key("protocol"), p.protocol.as_deref())?;
        Ok(PodPort { container_port, host_port, host_ip, protocol })
    }

    pub(super) fn protocol(&self, field: &FieldPath, p: Option<&str>) -> Result<Protocol> {
        match p {
            None | Some("tcp") => Ok(Protocol::Tcp),
            Some("udp") => Ok(Protocol::Udp),
            Some(o) => Err(self.invalid(field, format!("{o:?} is not tcp or udp"))),
        }
    }

    /// An app's mounts; its anonymous host volumes (`{ host: /abs }`) join
    /// `volumes` as `<app>-host-<index>`.
    pub(super) fn mounts(
        &self,
        path: &FieldPath,
        name: &AcName,
        raw: &[raw::Mount],
        volumes: &mut Vec<Volume>,
    ) -> Result<Vec<Mount>> {
        self.count(&path.key("mounts"), raw.len(), MAX_ENTRIES)?;
        let mut mounts: Vec<Mount> = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            let mp = path.at("mounts", i);
            let volume = match (&m.volume, &m.host) {
                (Some(v), None) => self.name(&mp.key("volume"), v)?,
                (None, Some(source)) => {
                    self.abs_path(&mp.key("host"), source)?;
                    let volume = self.name(&mp.key("host"), &format!("{name}-host-{i}"))?;
                    if volumes.iter().any(|v| v.name == volume) {
                        let m =
                            format!("the volume of this host mount would be named {volume}, as a volume already is");
                        return Err(self.invalid(&mp.key("host"), m));
                    }
                    let kind = VolumeKind::Host { source: source.clone(), read_only: false };
                    volumes.push(Volume { name: volume.clone(), kind });
                    volume
                }
                _ => return Err(self.invalid(&mp, "give either volume: NAME or host: /ABS")),
            };
            let (propagation, recursive_read_only) = self.mount_extras(&mp, m)?;
            self.abs_path(&mp.key("path"), &m.path)?;
            let normal = normalise(&m.path);
            if normal == "/" {
                return Err(self.invalid(&mp.key("path"), "a volume cannot replace the app's whole root"));
            }
            if let Some(o) = mounts.iter().find(|o| normalise(&o.path) == normal) {
                let msg = format!("{} is already the mount point of volume {}", m.path, o.volume);
                return Err(self.invalid(&mp.key("path"), msg));
            }
            mounts.push(Mount {
                volume,
                path: m.path.clone(),
                read_only: m.read_only,
                propagation,
                recursive_read_only,
            });
        }
        Ok(mounts)
    }

    /// A mount's `propagation` and `recursiveReadOnly`, which must agree
    /// with its `readOnly`: a recursively read-only mount is read-only, and
    /// private, since a mount propagated in later would not be read-only.
    pub(super) fn mount_extras(&self, path: &FieldPath, m: &raw::Mount) -> Result<(Propagation, bool)> {
        let propagation = match m.propagation.as_deref() {
            None => Propagation::Private,
            Some(s) => Propagation::parse(s).ok_or_else(|| {
                self.invalid(&path.key("propagation"), format!("{s:?} is not private, rslave or rshared"))
            })?,
        };
        if m.recursive_read_only {
            if !m.read_only {
                return Err(
                    self.invalid(&path.key("recursiveReadOnly"), "a recursively read-only mount needs readOnly: true")
                );
            }
            if propagation != Propagation::Private {
                let m = format!(
                    "a recursively read-only mount must be private: mounts propagated in later (propagation {}) \
                     would not be read-only",
                    propagation.as_str()
                );
                return Err(self.invalid(&path.key("recursiveReadOnly"), m));
            }
        }
        Ok((propagation, m.recursive_read_only))
    }

    /// `cpuShares` and `oomScoreAdj` of an app's resources.
    pub(super) fn resource_extras(&self, path: &FieldPath, r: &raw::Resources) -> Result<(Option<u64>, Option<i32>)> {
        let shares = match &r.cpu_shares {
            None => None,
            Some(s) => {
                let f = path.key("cpuShares");
                match s.parse::<u64>() {
                    Ok(n) if (2..=262_144).contains(&n) => Some(n),
                    _ => return Err(self.invalid(&f, format!("{s:?} is not a CPU weight (2-262144; 1024 is one CPU)"))),
                }
            }
        };
        let oom = match &r.oom_score_adj {
            None => None,
            Some(s) => {
                let f = path.key("oomScoreAdj");
                match s.parse::<i32>() {
                    Ok(n) if (-1000..=1000).contains(&n) => Some(n),
                    _ => return Err(self.invalid(&f, format!("{s:?} is not an OOM score adjustment (-1000 to 1000)"))),
                }
            }
        };
        Ok((shares, oom))
    }

    /// Pod-level ports agree with the network and clash neither with each
    /// other nor with the apps' ports.
    pub(super) fn pod_ports(&self, pod: &PodFile) -> Result<()> {
        let root = FieldPath::default();
        let mut seen: Vec<(Protocol, u16, IpAddr, FieldPath)> = Vec::new();
        for (i, a) in pod.apps.iter().enumerate() {
            for (j, p) in a.ports.iter().enumerate() {
                seen.push((p.protocol, p.host_port, p.host_ip, root.at("apps", i).at("ports", j)));
            }
        }
        for (i, p) in pod.ports.iter().enumerate() {
            let field = root.at("ports", i);
            match pod.network {
                // A VM's qemu forwards them into the guest with no network.
                Network::None if pod.isolation == Isolation::Vm => {}
                Network::None => {
                    return Err(
                        self.invalid(&field, "network none: nothing outside the pod could reach a published port")
                    )
                }
                Network::Host => {
                    return Err(
                        self.invalid(&field, "network host: apps listen on the host's ports directly; remove ports")
                    )
                }
                Network::Default | Network::Named(_) => {}
            }
            let clash = seen.iter().find(|(proto, port, ip, _)| {
                *proto == p.protocol
                    && *port == p.host_port
                    && (*ip == p.host_ip || ip.is_unspecified() || p.host_ip.is_unspecified())
            });
            if let Some((_, _, _, other)) = clash {
                let msg = format!("host port {}/{} is already published by {other}", p.host_port, p.protocol);
                return Err(self.invalid(&field.key("host"), msg));
            }
            seen.push((p.protocol, p.host_port, p.host_ip, field));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<PodFile, crate::pod::PodFileError> {
        PodFile::parse(text.as_bytes(), "p.yaml")
    }

    #[test]
    fn sandbox_settings() {
        let p = parse(
            "name: s\napps: []\nhostname: web-0\ndns: { servers: [10.0.0.10], searches: [a.b], options: [ndots:5] }\n\
             sysctls: { kernel.shm_rmid_forced: \"1\", net/ipv4/ip_forward: \"1\" }\n\
             ports: [{ containerPort: 80, host: 8080, hostIP: 127.0.0.1 }]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.hostname.as_deref(), Some("web-0"));
        let dns = p.dns.unwrap_or_default();
        assert_eq!(dns.resolv_conf(), "search a.b\nnameserver 10.0.0.10\noptions ndots:5\n");
        assert_eq!(p.sysctls.keys().collect::<Vec<_>>(), ["kernel.shm_rmid_forced", "net.ipv4.ip_forward"]);
        assert_eq!(p.ports[0].container_port, 80);
        assert_eq!(p.ports[0].host_ip.to_string(), "127.0.0.1");
        let p =
            parse("name: s\napps: []\ncgroupParent: /kubepods/burstable/pod-u1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.cgroup_parent.as_deref(), Some("/kubepods/burstable/pod-u1"));
    }

    #[test]
    fn refusals_name_the_field() {
        for (text, field, message) in [
            ("sysctls: { kernel.panic: \"1\" }", "sysctls.kernel.panic", "not namespaced"),
            ("sysctls: { \"a..b\": \"1\" }", "sysctls.a..b", "not a sysctl name"),
            ("network: host\nsysctls: { net.ipv4.ip_forward: \"1\" }", "sysctls.net.ipv4.ip_forward", "network host"),
            ("hostname: -x", "hostname", "not a hostname"),
            ("cgroupParent: /kubepods.slice", "cgroupParent", "systemd slice"),
            ("cgroupParent: kubepods/x", "cgroupParent", "not an absolute"),
            ("cgroupParent: /kubepods/../x", "cgroupParent", "\"..\""),
            ("dns: { servers: [nope] }", "dns.servers[0]", "not an IP address"),
            ("network: none\nports: [{ containerPort: 80, host: 8080 }]", "ports[0]", "network none"),
            (
                "ports: [{ containerPort: 80, host: 80 }, { containerPort: 81, host: 80 }]",
                "ports[1].host",
                "already published",
            ),
        ] {
            let e = parse(&format!("name: s\napps: []\n{text}\n")).expect_err(text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn mount_extras_agree() {
        let app = |m: &str| format!("name: s\napps: [{{ name: a, image: x, mounts: [{m}] }}]\n");
        let p = parse(&app("{ host: /srv, path: /s, readOnly: true, recursiveReadOnly: true }"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.apps[0].mounts[0].recursive_read_only);
        assert_eq!(
            p.volume(p.apps[0].mounts[0].volume.as_str()).map(|v| &v.kind),
            Some(&crate::pod::VolumeKind::Host { source: "/srv".into(), read_only: false })
        );
        for (m, message) in [
            ("{ host: /srv, path: /s, recursiveReadOnly: true }", "needs readOnly"),
            (
                "{ host: /srv, path: /s, readOnly: true, recursiveReadOnly: true, propagation: rslave }",
                "must be private",
            ),
            ("{ host: /srv, path: /s, propagation: up }", "not private, rslave or rshared"),
            ("{ host: /srv, volume: v, path: /s }", "either volume: NAME or host"),
            ("{ path: /s }", "either volume: NAME or host"),
        ] {
            let e = parse(&app(m)).expect_err(m);
            assert!(e.message.contains(message), "{e}");
        }
    }
}
