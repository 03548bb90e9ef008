//! The stage1-vm → guest contract: what `pod-stage1-vm` puts in the guest's
//! initramfs and pod directory, and what `pod-init` does with it when it
//! boots as the virtual machine's PID 1. Parsing and rendering only; no I/O.
//!
//! # The initramfs (built and cached by stage1-vm)
//!
//! - `/init`: the `pod-init` binary. It knows it is a VM's PID 1 when its pid
//!   is 1 and [`GUEST_MARKER`] exists.
//! - [`MODULES_DIR`]`/NNN-<name>.ko`: kernel modules, loaded in lexical
//!   order (dependencies first).
//! - `/dev/console`, and empty `/proc`, `/sys`, `/dev`, [`GUEST_POD_ROOT`].
//!
//! # Boot, in the guest
//!
//! `pod-init` mounts /proc, /sys and devtmpfs on /dev, loads the modules,
//! mounts the 9p share tagged [`SHARE_TAG`] (the host's pod directory, whose
//! app root filesystems and volumes stage1-vm has already mounted) at
//! [`GUEST_POD_ROOT`], reads [`GUEST_CONF`] there ([`GuestConfig`]), brings
//! the network up, mounts each app's /proc, /sys and /dev, starts its
//! agents on the virtio-serial ports [`CTL_PORT`] and [`ENTER_PORT`], and
//! runs the pod's units with `GUEST_POD_ROOT` as the pod root. When the pod
//! ends it syncs and reboots, which ends qemu (`-no-reboot`); the pod's
//! status is in `status/pod.json` as in a namespace pod.
//!
//! # Ports
//!
//! - [`CTL_PORT`]: lines from the host. `stop` asks PID 1 to stop the pod
//!   (as SIGTERM does); `control ...` relays a request of the pod's control
//!   channel (`crate::control`) and is answered on the port ([`relay`]).
//! - [`ENTER_PORT`]: streams ([`mux`]): commands run in apps, with their
//!   stdin, output and terminal, and TCP connections to the guest's
//!   loopback, many at once.
//! - [`METADATA_PORT`] (a pod with the metadata service): the guest's
//!   requests to the service, each answered whole in turn
//!   (`crate::metadata::write_frame`); [`GuestConfig::metadata`] tells the
//!   guest to listen for its apps.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

pub mod mux;
pub mod relay;

/// The file that tells `pod-init` it is a VM's PID 1.
pub const GUEST_MARKER: &str = "/etc/pod-vm-guest";
/// Where the initramfs holds the kernel modules to load, in lexical order.
pub const MODULES_DIR: &str = "/lib/pod/modules";
/// The 9p mount tag of the pod directory.
pub const SHARE_TAG: &str = "pod";
/// Where the guest mounts the pod directory.
pub const GUEST_POD_ROOT: &str = "/pod";
/// The guest configuration, relative to the pod directory.
pub const GUEST_CONF: &str = "vm/guest.conf";
/// The virtio-serial port names.
pub const CTL_PORT: &str = "pod.ctl";
pub const ENTER_PORT: &str = "pod.enter";
pub const METADATA_PORT: &str = "pod.metadata";
/// The command on [`CTL_PORT`] that stops the pod.
pub const CTL_STOP: &str = "stop";

/// Each app's volume mounts, relative to its directory `apps/<app>/` on
/// the share: the host has bound the volumes into the app's rootfs, which
/// the share carries as plain directories; the guest binds each onto itself
/// (read-only where the mount is) so that it is a mount point in the app, as
/// in a namespace pod. Lines `rw PATH` or `ro PATH`, parents first.
pub const APP_MOUNTS: &str = "mounts";

/// One line of [`APP_MOUNTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// Absolute, inside the app's rootfs.
    pub path: String,
    pub read_only: bool,
}

impl GuestMount {
    /// The file's text; `None` if a path cannot be one line.
    pub fn render(mounts: &[GuestMount]) -> Option<String> {
        let mut out = String::new();
        for m in mounts {
            if m.path.contains('\n') || !m.path.starts_with('/') {
                return None;
            }
            let _ = writeln!(out, "{} {}", if m.read_only { "ro" } else { "rw" }, m.path);
        }
        Some(out)
    }

    /// The lines of the file; a malformed one is an error naming it.
    pub fn parse(text: &str) -> Result<Vec<GuestMount>, String> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|line| match line.split_once(' ') {
                Some(("ro", path)) if path.starts_with('/') => {
                    Ok(GuestMount { path: path.to_owned(), read_only: true })
                }
                Some(("rw", path)) if path.starts_with('/') => {
                    Ok(GuestMount { path: path.to_owned(), read_only: false })
                }
                _ => Err(format!("{line:?} is not `ro PATH` or `rw PATH`")),
            })
            .collect()
    }
}

/// Per-pod facts the guest needs before it can run the units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    pub hostname: String,
    /// The address of the guest's first non-loopback interface, with its
    /// prefix length; `None` for loopback only.
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    /// A sandbox (`spec::stage1::ResolvedPod::sandbox`): pod-init keeps
    /// the guest up with no app, until it is stopped.
    pub sandbox: bool,
    /// Namespaced sysctls (dotted keys) the guest's pod-init writes under
    /// its /proc/sys before the apps start: the pod's own kernel.
    pub sysctls: Vec<(String, String)>,
    /// The pod has the metadata service: pod-init listens on the guest's
    /// loopback for its apps and passes their requests over
    /// [`METADATA_PORT`].
    pub metadata: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestConfigError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("no hostname")]
    NoHostname,
}

impl GuestConfig {
    /// `key=value` lines: `hostname`, `address` (`A.B.C.D/N`), `gateway`,
    /// `sandbox=1` for a sandbox, `metadata=1` for the metadata service,
    /// `sysctl=KEY=VALUE` for each sysctl.
    pub fn render(&self) -> String {
        let mut out = format!("hostname={}\n", self.hostname);
        if self.sandbox {
            out.push_str("sandbox=1\n");
        }
        if self.metadata {
            out.push_str("metadata=1\n");
        }
        if let Some((ip, len)) = self.address {
            let _ = writeln!(out, "address={ip}/{len}");
        }
        if let Some(gw) = self.gateway {
            let _ = writeln!(out, "gateway={gw}");
        }
        for (key, value) in &self.sysctls {
            let _ = writeln!(out, "sysctl={key}={value}");
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, GuestConfigError> {
        let mut hostname = None;
        let mut address = None;
        let mut gateway = None;
        let mut sandbox = false;
        let mut metadata = false;
        let mut sysctls = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: String| GuestConfigError::Line { line: i + 1, why };
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| bad(format!("{line:?} is not key=value")))?;
            match key {
                "hostname" if !value.is_empty() && value.len() <= 64 => hostname = Some(value.to_owned()),
                "address" => {
                    let (ip, len) = value.split_once('/').ok_or_else(|| bad(format!("{value:?} is not A.B.C.D/N")))?;
                    let ip = ip.parse().map_err(|_| bad(format!("{ip:?} is not an IPv4 address")))?;
                    let len = len.parse::<u8>().ok().filter(|l| *l <= 32);
                    address = Some((ip, len.ok_or_else(|| bad(format!("{value:?}: bad prefix length")))?));
                }
                "sandbox" if value == "1" => sandbox = true,
                "metadata" if value == "1" => metadata = true,
                "sysctl" => {
                    let (k, v) = value.split_once('=').ok_or_else(|| bad(format!("{value:?} is not KEY=VALUE")))?;
                    if k.is_empty() || k.split('.').any(|c| c.is_empty() || c == ".." || c.contains('/')) {
                        return Err(bad(format!("{k:?} is not a sysctl")));
                    }
                    sysctls.push((k.to_owned(), v.to_owned()));
                }
                "gateway" => {
                    gateway = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)
                }
                _ => return Err(bad(format!("unknown or invalid {key:?}"))),
            }
        }
        let hostname = hostname.ok_or(GuestConfigError::NoHostname)?;
        Ok(Self { hostname, address, gateway, sandbox, sysctls, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mounts_round_trip_and_refuse_what_is_not_one_line() {
        let mounts = vec![
            GuestMount { path: "/db".into(), read_only: false },
            GuestMount { path: "/etc/my conf".into(), read_only: true },
        ];
        let text = GuestMount::render(&mounts).expect("renders");
        assert_eq!(text, "rw /db\nro /etc/my conf\n");
        assert_eq!(GuestMount::parse(&text), Ok(mounts));
        assert_eq!(GuestMount::render(&[GuestMount { path: "/a\nrw /b".into(), read_only: true }]), None);
        assert!(GuestMount::parse("rx /db\n").is_err());
        assert!(GuestMount::parse("rw db\n").is_err());
    }

    #[test]
    fn guest_config_round_trips() {
        let c = GuestConfig {
            hostname: "web-db".into(),
            address: Some((Ipv4Addr::new(10, 0, 2, 15), 24)),
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            sandbox: false,
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())],
            metadata: true,
        };
        assert_eq!(
            c.render(),
            "hostname=web-db\nmetadata=1\naddress=10.0.2.15/24\ngateway=10.0.2.2\n\
             sysctl=net.ipv4.ip_unprivileged_port_start=0\n"
        );
        assert_eq!(GuestConfig::parse(&c.render()), Ok(c));
        let lo = GuestConfig {
            hostname: "p".into(),
            address: None,
            gateway: None,
            sandbox: true,
            sysctls: vec![],
            metadata: false,
        };
        assert_eq!(lo.render(), "hostname=p\nsandbox=1\n");
        assert_eq!(GuestConfig::parse(&lo.render()), Ok(lo));
        assert!(GuestConfig::parse("hostname=p\nsandbox=yes\n").is_err());
        assert!(GuestConfig::parse("hostname=p\nmetadata=0\n").is_err());
        for bad in ["sysctl=x", "sysctl=net..x=1", "sysctl=../x=1", "sysctl==1"] {
            assert!(GuestConfig::parse(&format!("hostname=p\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn guest_config_errors_name_the_line() {
        assert_eq!(GuestConfig::parse("address=10.0.2.15/24\n"), Err(GuestConfigError::NoHostname));
        let e = GuestConfig::parse("hostname=a\naddress=10.0.2.15/33\n").expect_err("bad prefix");
        assert!(matches!(e, GuestConfigError::Line { line: 2, .. }), "{e}");
        assert!(GuestConfig::parse("hostname=a\nroute=x\n").is_err());
        assert!(GuestConfig::parse("hostname=a\ngateway\n").is_err());
    }
}
