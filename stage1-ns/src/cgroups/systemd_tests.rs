//! The systemd and machined clients: names, the D-Bus encoding, and the
//! calls against a private dbus-daemon with small fake services (the real
//! systemd is the e2e tests' business: tests/tests/systemd.rs).

#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Type, Value};

use super::machined::{machine_name, uuid_bytes, Class, MachineSpec};
use super::systemd::{escape, unit_name, wanted, Bus, BusError, ScopeSpec};

const UUID: &str = "1a2b3c4d-5e6f-4a0b-8c9d-0e1f2a3b4c5d";

#[test]
fn scope_names_are_valid_unit_names() {
    assert_eq!(unit_name(UUID), format!("pod-{UUID}.scope"));
    assert_eq!(escape("a/b-c.d"), "a-b\\x2dc.d");
    assert_eq!(escape(".x y"), "\\x2ex\\x20y");
    assert_eq!(escape("A:b_9"), "A:b_9");
    // A uuid with something odd in it still gives one valid unit name.
    assert_eq!(unit_name("ab-c d"), "pod-ab-c\\x20d.scope");
}

#[test]
fn machine_names_are_host_names_unique_per_pod() {
    assert_eq!(machine_name("web", UUID), "web-1a2b3c4d");
    assert_eq!(machine_name("My_App.v2", UUID), "my-app-v2-1a2b3c4d");
    assert_eq!(machine_name("--", UUID), "pod-1a2b3c4d");
    assert_eq!(machine_name("", ""), "pod");
    let long = machine_name(&"x".repeat(200), UUID);
    assert_eq!(long.len(), 64);
    assert!(long.ends_with("-1a2b3c4d"));
    // Two pods of one name differ.
    assert_ne!(machine_name("web", UUID), machine_name("web", "ffffffff-0000-4000-8000-000000000000"));
}

#[test]
fn uuid_bytes_are_sixteen_or_none() {
    let b = uuid_bytes(UUID);
    assert_eq!(b.len(), 16);
    assert_eq!(&b[..4], &[0x1a, 0x2b, 0x3c, 0x4d]);
    assert_eq!(b[15], 0x5d);
    assert!(uuid_bytes("not-a-uuid").is_empty());
    assert!(uuid_bytes("1a2b").is_empty());
    assert!(uuid_bytes("é1a2b3c4d5e6f4a0b8c9d0e1f2a3b4c").is_empty());
}

#[test]
fn the_manager_is_chosen_by_env() {
    assert_eq!(wanted(None), Ok(true));
    assert_eq!(wanted(Some("systemd")), Ok(true));
    assert_eq!(wanted(Some("cgroupfs")), Ok(false));
    let e = wanted(Some("cgroupsfs")).unwrap_err();
    assert!(e.contains("POD_CGROUP_MANAGER") && e.contains("cgroupsfs"), "{e}");
}

#[test]
fn scope_properties_are_an_a_sv_array() {
    let spec = ScopeSpec::for_pod(UUID, "web", vec![42, 43]);
    let props = spec.properties();
    assert_eq!(<Vec<(&str, Value<'_>)>>::SIGNATURE.to_string(), "a(sv)");
    let get = |k: &str| props.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("Slice"), Value::from("machine.slice"));
    assert_eq!(get("Delegate"), Value::from(true));
    assert_eq!(get("PIDs"), Value::from(vec![42u32, 43]));
    assert_eq!(get("PIDs").value_signature().to_string(), "au");
    assert_eq!(get("Description"), Value::from(format!("pod web {UUID}")));
    assert_eq!(get("CollectMode"), Value::from("inactive-or-failed"));
}

/// A dbus-daemon of the test's own, on a socket in a temporary directory.
struct PrivateBus {
    daemon: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    fn start() -> Option<Self> {
        let Some(bin) = ["/usr/bin/dbus-daemon", "/bin/dbus-daemon"].into_iter().find(|p| Path::new(p).exists()) else {
            eprintln!("SKIP: no dbus-daemon installed");
            return None;
        };
        let dir = tempfile::tempdir().ok()?;
        let socket: PathBuf = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>",
                socket.display()
            ),
        )
        .ok()?;
        let daemon = Command::new(bin)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { daemon, address: format!("unix:path={}", socket.display()), _dir: dir })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// What the fake services were asked.
#[derive(Debug, Default)]
struct Calls {
    subscribed: usize,
    started: Vec<(String, String, Vec<(String, OwnedValue)>)>,
    stopped: Vec<String>,
    reset: Vec<String>,
    machines: Vec<(String, Vec<u8>, String, String, u32, String, Vec<i32>)>,
}

/// systemd's Manager, enough for a scope: units named `*refused*` are
/// refused, `*failing*` get a job that fails; a second `Subscribe` is
/// refused, as systemd does.
struct FakeSystemd(Arc<Mutex<Calls>>);

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SystemdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    AlreadySubscribed(String),
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn subscribe(&self) -> Result<(), SystemdError> {
        let mut c = self.0.lock().unwrap();
        c.subscribed += 1;
        if c.subscribed > 1 {
            return Err(SystemdError::AlreadySubscribed("Client is already subscribed.".into()));
        }
        Ok(())
    }

    async fn start_transient_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        if name.contains("refused") {
            return Err(zbus::fdo::Error::InvalidArgs(format!("Unit {name} was already loaded")));
        }
        let result = if name.contains("failing") { "failed" } else { "done" };
        self.0.lock().unwrap().started.push((name.clone(), mode, properties));
        let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap();
        Self::job_removed(&emitter, 7, job.clone(), &name, result).await.map_err(zbus::fdo::Error::from)?;
        Ok(job.into())
    }

    async fn stop_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        _mode: String,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        self.0.lock().unwrap().stopped.push(name.clone());
        let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/8").unwrap();
        Self::job_removed(&emitter, 8, job.clone(), &name, "done").await.map_err(zbus::fdo::Error::from)?;
        Ok(job.into())
    }

    fn reset_failed_unit(&self, name: String) {
        self.0.lock().unwrap().reset.push(name);
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct FakeMachined(Arc<Mutex<Calls>>);

#[zbus::interface(name = "org.freedesktop.machine1.Manager")]
impl FakeMachined {
    #[allow(clippy::too_many_arguments)]
    fn register_machine_with_network(
        &self,
        name: String,
        id: Vec<u8>,
        service: String,
        class: String,
        leader: u32,
        root: String,
        ifindices: Vec<i32>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        if leader == 0 {
            return Err(zbus::fdo::Error::InvalidArgs("Invalid leader PID".into()));
        }
        self.0.lock().unwrap().machines.push((name, id, service, class, leader, root, ifindices));
        Ok(ObjectPath::try_from("/org/freedesktop/machine1/machine/web").unwrap().into())
    }
}

fn serve(
    address: &str,
    name: &str,
    path: &str,
    iface: impl zbus::object_server::Interface,
) -> zbus::blocking::Connection {
    zbus::blocking::connection::Builder::address(address)
        .and_then(|b| b.name(name.to_owned()))
        .and_then(|b| b.serve_at(path.to_owned(), iface))
        .and_then(zbus::blocking::connection::Builder::build)
        .expect("fake service on the private bus")
}

#[test]
fn a_scope_and_a_machine_over_a_private_bus() {
    let Some(bus) = PrivateBus::start() else { return };
    let calls = Arc::new(Mutex::new(Calls::default()));
    let _systemd =
        serve(&bus.address, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", FakeSystemd(calls.clone()));
    let client = Bus::at(&bus.address).expect("connect to the private bus");

    // machined not on the bus: not registered, not an error.
    let spec = MachineSpec::for_pod("web", UUID, Class::Container, 4242, Path::new("/var/lib/pod/x"));
    assert!(!client.register_machine(&spec).expect("no machined is no error"));

    client.start_scope(&ScopeSpec::for_pod(UUID, "web", vec![4242])).expect("scope started");
    {
        let c = calls.lock().unwrap();
        let (name, mode, props) = &c.started[0];
        assert_eq!(name, &format!("pod-{UUID}.scope"));
        assert_eq!(mode, "fail");
        let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| Value::from(v.clone())).unwrap();
        assert_eq!(get("Delegate"), Value::from(true));
        assert_eq!(get("PIDs"), Value::from(vec![4242u32]));
        assert_eq!(get("Slice"), Value::from("machine.slice"));
    }

    // Refused: an error naming the unit and systemd's reason, nothing started.
    let refused = client.start_scope(&ScopeSpec::for_pod("refused", "web", vec![1])).unwrap_err();
    let text = refused.to_string();
    assert!(matches!(refused, BusError::Refused { .. }), "{refused:?}");
    assert!(text.contains("pod-refused.scope") && text.contains("already loaded"), "{text}");
    // A job that fails: an error, and the unit is stopped and reset.
    let failed = client.start_scope(&ScopeSpec::for_pod("failing", "web", vec![1])).unwrap_err();
    assert!(failed.to_string().contains("pod-failing.scope") && failed.to_string().contains("failed"), "{failed}");
    {
        let c = calls.lock().unwrap();
        assert_eq!(c.started.len(), 2, "the refused unit never started");
        assert_eq!(c.stopped, vec!["pod-failing.scope".to_owned()]);
        assert_eq!(c.reset, vec!["pod-failing.scope".to_owned()]);
        // Every call subscribed; systemd's AlreadySubscribed was no error.
        assert!(c.subscribed >= 4, "{}", c.subscribed);
    }

    // machined present: registered with the pod's name, uuid, class, leader.
    let _machined =
        serve(&bus.address, "org.freedesktop.machine1", "/org/freedesktop/machine1", FakeMachined(calls.clone()));
    assert!(client.register_machine(&spec).expect("registered"));
    let vm = MachineSpec::for_pod("web", UUID, Class::Vm, 0, Path::new("/p"));
    let e = client.register_machine(&vm).unwrap_err().to_string();
    assert!(e.contains("RegisterMachineWithNetwork web-1a2b3c4d") && e.contains("Invalid leader"), "{e}");
    let c = calls.lock().unwrap();
    let (name, id, service, class, leader, root, ifs) = &c.machines[0];
    assert_eq!((name.as_str(), service.as_str(), class.as_str(), *leader), ("web-1a2b3c4d", "pod", "container", 4242));
    assert_eq!(id, &uuid_bytes(UUID));
    assert_eq!(root, "/var/lib/pod/x");
    assert!(ifs.is_empty());
}
