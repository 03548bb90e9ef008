//! Registration with systemd-machined, as rkt and nspawn do: every pod is a
//! machine (`RegisterMachineWithNetwork`), so `machinectl list` and
//! `status` show it, `machinectl terminate` stops its scope and
//! `machinectl poweroff` sends its leader SIGRTMIN+4, which pod-init (and
//! the VM stage1's monitor) take as a graceful stop.
//!
//! machined registers the unit its leader is in: the pod's scope
//! ([`super::systemd`]), so registration follows a scope, never the
//! cgroup of whoever ran `pod`.

use std::path::Path;

use super::systemd::{Bus, BusError};

const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MANAGER: &str = "org.freedesktop.machine1.Manager";

/// The longest machine name machined takes (a host name: `HOST_NAME_MAX`).
const NAME_MAX: usize = 64;

/// `container` for namespace pods, `vm` for VM pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Container,
    Vm,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Vm => "vm",
        }
    }
}

/// What a pod is registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    pub name: String,
    /// The pod uuid's 16 bytes; empty if it is not a uuid.
    pub id: Vec<u8>,
    pub class: Class,
    /// The process `machinectl poweroff` signals and whose unit is the machine's.
    pub leader: u32,
    pub root: String,
    /// Host-side interface indexes of the pod's network.
    pub ifindices: Vec<i32>,
}

impl MachineSpec {
    pub fn for_pod(name: &str, uuid: &str, class: Class, leader: u32, root: &Path) -> Self {
        Self {
            name: machine_name(name, uuid),
            id: uuid_bytes(uuid),
            class,
            leader,
            root: root.to_string_lossy().into_owned(),
            ifindices: Vec::new(),
        }
    }
}

/// A machine name (a valid host name, unique): the pod's name with every
/// byte outside `[a-z0-9-]` turned into `-`, cut to fit, then `-` and the
/// uuid's first 8 letters and digits, so that two pods of one name differ.
/// `web` with uuid `1a2b3c4d-...` is `web-1a2b3c4d`.
pub fn machine_name(name: &str, uuid: &str) -> String {
    let tag: String = uuid.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>().to_lowercase();
    let mut base = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (base.is_empty() || base.ends_with('-'))) {
            base.push(c);
        }
    }
    base.truncate(NAME_MAX - 1 - tag.len());
    let base = base.trim_matches('-');
    match (base.is_empty(), tag.is_empty()) {
        (true, true) => "pod".to_owned(),
        (true, false) => format!("pod-{tag}"),
        (false, true) => base.to_owned(),
        (false, false) => format!("{base}-{tag}"),
    }
}

/// The 16 bytes of a uuid in its text form (dashes anywhere); empty if it
/// is not one (machined takes an empty id as "none").
pub fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let hex: String = uuid.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.is_ascii() {
        return Vec::new();
    }
    (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().unwrap_or_default()
}

impl Bus {
    fn machined(&self) -> zbus::Result<zbus::blocking::Proxy<'static>> {
        self.proxy(MACHINED, MACHINED_PATH, MANAGER)
    }

    /// Registers `spec`. `Ok(false)` (with a debug line) where machined is
    /// not installed; a refusal from a running machined is an error.
    pub fn register_machine(&self, spec: &MachineSpec) -> Result<bool, BusError> {
        const CALL: &str = "RegisterMachineWithNetwork";
        let name = spec.name.as_str();
        let machined = self.machined().map_err(|e| BusError::from_zbus(CALL, name, e))?;
        let body = (name, &spec.id, "pod", spec.class.as_str(), spec.leader, spec.root.as_str(), &spec.ifindices);
        match machined.call::<_, _, zbus::zvariant::OwnedObjectPath>(CALL, &body) {
            Ok(_) => {
                tracing::debug!(machine = name, leader = spec.leader, "registered with systemd-machined");
                Ok(true)
            }
            Err(e) => {
                let e = BusError::from_zbus(CALL, name, e);
                if matches!(
                    e.error_name(),
                    Some("org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner")
                ) {
                    tracing::debug!(error = %e, "no systemd-machined: the pod is not registered");
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Forgets machine `name`, if machined still knows it (it drops a
    /// machine by itself when its scope ends).
    pub fn unregister_machine(&self, name: &str) {
        let Ok(machined) = self.machined() else { return };
        let done: zbus::Result<()> = machined.call("UnregisterMachine", &(name,));
        match done.map_err(|e| BusError::from_zbus("UnregisterMachine", name, e)) {
            Ok(()) => tracing::debug!(machine = name, "unregistered from systemd-machined"),
            Err(e) if e.error_name() == Some("org.freedesktop.machine1.NoSuchMachine") => {}
            Err(e) => tracing::debug!(error = %e, "unregistering the pod"),
        }
    }

    /// Whether machined knows machine `name`.
    pub fn has_machine(&self, name: &str) -> bool {
        self.machined().and_then(|m| m.call::<_, _, zbus::zvariant::OwnedObjectPath>("GetMachine", &(name,))).is_ok()
    }
}
