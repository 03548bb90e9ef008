//! The guest's hostname and network: `lo` up, and with an address in
//! guest.conf, the first network device configured, up, and the default
//! route via the gateway. Plain ioctls (see `sys`): the guest has no `ip`.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use spec::vm::GuestConfig;

use super::BootError;
use crate::sys;

/// How long to wait for the network device to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(2);

/// The netmask of a prefix length (`24` → 255.255.255.0).
pub(crate) fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The first network device under `class_net` (`/sys/class/net`) in name
/// order: an interface backed by a device, so not `lo` nor a tunnel the
/// kernel made by itself.
pub(crate) fn first_device(class_net: &Path) -> Option<String> {
    std::fs::read_dir(class_net)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .min()
}

/// Sets the hostname and brings the network up as `conf` says.
pub(crate) fn configure(conf: &GuestConfig, class_net: &Path) -> Result<(), BootError> {
    nix::unistd::sethostname(&conf.hostname)
        .map_err(|e| BootError::new("set hostname", format!("{:?}", conf.hostname), e))?;
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| BootError::new("open socket for", "network setup", e))?;
    let sock = sock.as_fd();
    sys::set_if_up(sock, "lo").map_err(|e| BootError::new("bring up", "lo", e))?;
    let Some((address, prefix)) = conf.address else { return Ok(()) };
    let deadline = Instant::now() + DEVICE_WAIT;
    let name = loop {
        match first_device(class_net) {
            Some(name) => break name,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => return Err(BootError::new("find a network device in", class_net, "none")),
        }
    };
    let at = |what: &'static str| {
        let path = PathBuf::from(&name);
        move |e| BootError::new(what, path, e)
    };
    sys::set_if_addr(sock, &name, libc::SIOCSIFADDR, address).map_err(at("set address on"))?;
    sys::set_if_addr(sock, &name, libc::SIOCSIFNETMASK, netmask(prefix)).map_err(at("set netmask on"))?;
    sys::set_if_up(sock, &name).map_err(at("bring up"))?;
    if let Some(gateway) = conf.gateway {
        sys::add_default_route(sock, gateway)
            .map_err(|e| BootError::new("add default route via", gateway.to_string(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
    }

    #[test]
    fn first_device_skips_lo_and_virtual_interfaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(first_device(dir.path()), None);
        for (name, device) in [("lo", false), ("sit0", false), ("eth1", true), ("eth0", true)] {
            let iface = dir.path().join(name);
            std::fs::create_dir(&iface).expect("mkdir");
            if device {
                std::fs::create_dir(iface.join("device")).expect("mkdir");
            }
        }
        assert_eq!(first_device(dir.path()).as_deref(), Some("eth0"));
        assert_eq!(first_device(&dir.path().join("missing")), None);
    }
}
