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
//! - [`ENTER_PORT`]: one [`EnterRequest`] line at a time; the guest answers
//!   with [`Frame`]s: the command's output, then its exit status.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

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
/// The command on [`CTL_PORT`] that stops the pod.
pub const CTL_STOP: &str = "stop";

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
    /// `sandbox=1` for a sandbox.
    pub fn render(&self) -> String {
        let mut out = format!("hostname={}\n", self.hostname);
        if self.sandbox {
            out.push_str("sandbox=1\n");
        }
        if let Some((ip, len)) = self.address {
            let _ = writeln!(out, "address={ip}/{len}");
        }
        if let Some(gw) = self.gateway {
            let _ = writeln!(out, "gateway={gw}");
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, GuestConfigError> {
        let mut hostname = None;
        let mut address = None;
        let mut gateway = None;
        let mut sandbox = false;
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
                "gateway" => {
                    gateway = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)
                }
                _ => return Err(bad(format!("unknown or invalid {key:?}"))),
            }
        }
        Ok(Self { hostname: hostname.ok_or(GuestConfigError::NoHostname)?, address, gateway, sandbox })
    }
}

/// Run `argv` in app `app` (as root, in the app's root filesystem and
/// namespaces). One line: `enter`, the app and each word, tab-separated,
/// with `\`, tab and newline escaped as `\\`, `\t`, `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnterRequest {
    pub app: String,
    pub argv: Vec<String>,
}

fn escape(word: &str, out: &mut String) {
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unescape(word: &str) -> Option<String> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            _ => return None,
        });
    }
    Some(out)
}

impl EnterRequest {
    /// The request line, newline included.
    pub fn encode(&self) -> String {
        let mut out = String::from("enter");
        for word in std::iter::once(&self.app).chain(&self.argv) {
            out.push('\t');
            escape(word, &mut out);
        }
        out.push('\n');
        out
    }

    /// Parses one line (without its newline).
    pub fn decode(line: &str) -> Option<Self> {
        let mut words = line.split('\t');
        if words.next()? != "enter" {
            return None;
        }
        let app = unescape(words.next()?)?;
        let argv = words.map(unescape).collect::<Option<Vec<_>>>()?;
        (!app.is_empty() && !argv.is_empty()).then_some(Self { app, argv })
    }
}

/// What the guest sends back for an [`EnterRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes the command wrote (stdout and stderr, merged).
    Output(Vec<u8>),
    /// The command ended: its status (128+signal if killed). Last frame.
    Exit(i32),
    /// The command could not be started. Last frame.
    Error(String),
}

/// The largest output frame the guest sends (and the host accepts).
pub const MAX_FRAME: usize = 64 * 1024;

impl Frame {
    /// `o<len>\n<bytes>`, `x<status>\n` or `e<message>\n`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Output(bytes) => {
                let mut out = format!("o{}\n", bytes.len()).into_bytes();
                out.extend_from_slice(bytes);
                out
            }
            Self::Exit(code) => format!("x{code}\n").into_bytes(),
            Self::Error(msg) => format!("e{}\n", msg.replace('\n', " ")).into_bytes(),
        }
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub fn read(r: &mut impl std::io::BufRead) -> std::io::Result<Option<Self>> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("enter channel: {why}"));
        let mut head = String::new();
        if r.read_line(&mut head)? == 0 {
            return Ok(None);
        }
        let head = head.strip_suffix('\n').ok_or_else(|| bad("truncated frame"))?;
        let (kind, rest) = head.split_at(head.len().min(1));
        match kind {
            "o" => {
                let len: usize = rest.parse().map_err(|_| bad("bad output length"))?;
                if len > MAX_FRAME {
                    return Err(bad("output frame too large"));
                }
                let mut bytes = vec![0; len];
                r.read_exact(&mut bytes)?;
                Ok(Some(Self::Output(bytes)))
            }
            "x" => Ok(Some(Self::Exit(rest.parse().map_err(|_| bad("bad exit status"))?))),
            "e" => Ok(Some(Self::Error(rest.to_owned()))),
            _ => Err(bad("unknown frame")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_config_round_trips() {
        let c = GuestConfig {
            hostname: "web-db".into(),
            address: Some((Ipv4Addr::new(10, 0, 2, 15), 24)),
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            sandbox: false,
        };
        assert_eq!(c.render(), "hostname=web-db\naddress=10.0.2.15/24\ngateway=10.0.2.2\n");
        assert_eq!(GuestConfig::parse(&c.render()), Ok(c));
        let lo = GuestConfig { hostname: "p".into(), address: None, gateway: None, sandbox: true };
        assert_eq!(lo.render(), "hostname=p\nsandbox=1\n");
        assert_eq!(GuestConfig::parse(&lo.render()), Ok(lo));
        assert!(GuestConfig::parse("hostname=p\nsandbox=yes\n").is_err());
    }

    #[test]
    fn guest_config_errors_name_the_line() {
        assert_eq!(GuestConfig::parse("address=10.0.2.15/24\n"), Err(GuestConfigError::NoHostname));
        let e = GuestConfig::parse("hostname=a\naddress=10.0.2.15/33\n").expect_err("bad prefix");
        assert!(matches!(e, GuestConfigError::Line { line: 2, .. }), "{e}");
        assert!(GuestConfig::parse("hostname=a\nroute=x\n").is_err());
        assert!(GuestConfig::parse("hostname=a\ngateway\n").is_err());
    }

    #[test]
    fn enter_request_round_trips_awkward_words() {
        let r = EnterRequest { app: "web".into(), argv: vec!["/bin/sh".into(), "-c".into(), "a\tb\\n\nc".into()] };
        let line = r.encode();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(EnterRequest::decode(line.trim_end_matches('\n')), Some(r));
        assert_eq!(EnterRequest::decode("enter\tweb"), None, "no command");
        assert_eq!(EnterRequest::decode("stop"), None);
        assert_eq!(EnterRequest::decode("enter\tweb\tbad\\q"), None);
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Output(b"hello\nworld".to_vec()),
            Frame::Output(vec![]),
            Frame::Exit(137),
            Frame::Error("no".into()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode());
        }
        let mut r = std::io::BufReader::new(&wire[..]);
        for f in &frames {
            assert_eq!(Frame::read(&mut r).expect("frame").as_ref(), Some(f));
        }
        assert!(Frame::read(&mut r).expect("frame").is_none());
        let mut bad = std::io::BufReader::new(&b"o99999999\n"[..]);
        assert!(Frame::read(&mut bad).is_err());
        let mut cut = std::io::BufReader::new(&b"o5\nab"[..]);
        assert!(Frame::read(&mut cut).is_err());
    }
}
