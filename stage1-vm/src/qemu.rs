//! The qemu command line, built from typed values: one type per device
//! family, each rendering its own arguments, so the whole argv is checked
//! by unit tests word for word and nothing is pasted together from strings
//! elsewhere. Option values are escaped as qemu wants (`,` doubled).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use spec::stage1::VmMachine as Model;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QemuError {
    #[error("{0}: qemu options need UTF-8 paths")]
    NotUtf8(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// The accelerator qemu runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// A value inside a `-opt key=value,...` list: commas doubled.
fn esc(value: &str) -> String {
    value.replace(',', ",,")
}

fn utf8(p: &Path) -> Result<&str, QemuError> {
    p.to_str().ok_or_else(|| QemuError::NotUtf8(p.to_owned()))
}

/// The machine: the i440FX PC (the quickest to boot of qemu's PC models)
/// or qemu's `microvm` (no PCI bus, no ACPI or BIOS tables for the guest to
/// parse, qboot for firmware), with its accelerator and CPU model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub model: Model,
    pub accel: Accel,
    pub memory_mib: u64,
    pub cpus: u32,
    /// The guest's TSC rate when it is known before boot (TCG on a host
    /// with a constant TSC: `crate::tsc`).
    pub tsc_khz: Option<u64>,
}

/// A virtio device's qemu name on `model`'s bus: `virtio-9p-pci` on the PC,
/// `virtio-9p-device` (virtio-mmio) on microvm.
fn virtio(model: Model, kind: &str) -> String {
    match model {
        Model::Pc => format!("virtio-{kind}-pci"),
        Model::Microvm => format!("virtio-{kind}-device"),
    }
}

impl Machine {
    fn args(&self) -> Vec<String> {
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let machine = match self.model {
            Model::Pc => format!("pc,accel={}", self.accel.as_str()),
            // No ACPI tables (the kernel has no ACPI) and no option ROMs:
            // qboot loads the kernel itself.
            Model::Microvm => format!("microvm,accel={},acpi=off,x-option-roms=off", self.accel.as_str()),
        };
        vec![
            "-machine".into(),
            machine,
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.cpus.to_string(),
        ]
    }
}

/// Direct kernel boot: qemu loads the ELF vmlinux (PVH entry) and the
/// initramfs itself; no bootloader, no disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

impl DirectBoot {
    fn args(&self) -> Result<Vec<String>, QemuError> {
        Ok(vec![
            "-kernel".into(),
            utf8(&self.kernel)?.into(),
            "-initrd".into(),
            utf8(&self.initrd)?.into(),
            "-append".into(),
            self.cmdline.clone(),
        ])
    }
}

/// The guest's serial console, written to a file on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    pub log: PathBuf,
}

impl Console {
    fn args(&self) -> Result<Vec<String>, QemuError> {
        Ok(vec![
            "-chardev".into(),
            format!("file,id=console,path={}", esc(utf8(&self.log)?)),
            "-serial".into(),
            "chardev:console".into(),
        ])
    }
}

/// A host directory shared over virtio-9p. `passthrough`: the guest's
/// owners and modes are the files' real ones (qemu runs as root);
/// `multidevs=remap` keeps inode numbers unique across the mounts inside
/// the share (each app's overlay, its volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share9p {
    pub id: String,
    pub path: PathBuf,
    pub tag: String,
}

impl Share9p {
    fn args(&self, model: Model) -> Result<Vec<String>, QemuError> {
        Ok(vec![
            "-fsdev".into(),
            format!(
                "local,id={},path={},security_model=passthrough,multidevs=remap",
                esc(&self.id),
                esc(utf8(&self.path)?)
            ),
            "-device".into(),
            format!("{},fsdev={},mount_tag={}", virtio(model, "9p"), esc(&self.id), esc(&self.tag)),
        ])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One port forwarded from the host into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub protocol: Protocol,
    /// `None`: every host address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl HostFwd {
    fn render(&self) -> String {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let ip = self.host_ip.map(|i| i.to_string()).unwrap_or_default();
        format!("hostfwd={proto}:{ip}:{}-:{}", self.host_port, self.guest_port)
    }
}

/// User-mode networking (slirp, inside the qemu process: no bridge, tap or
/// host routes). The guest is 10.0.2.15/24 behind 10.0.2.2. `restrict`:
/// the guest can reach nothing outside (host forwards still come in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub restrict: bool,
    pub forwards: Vec<HostFwd>,
}

/// The guest address, gateway and prefix user-mode networking gives.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GUEST_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const GUEST_PREFIX: u8 = 24;

impl UserNet {
    fn args(&self, model: Model) -> Vec<String> {
        let mut netdev = format!("user,id=net0,restrict={}", if self.restrict { "on" } else { "off" });
        for f in &self.forwards {
            netdev.push(',');
            netdev.push_str(&f.render());
        }
        vec!["-netdev".into(), netdev, "-device".into(), format!("{},netdev=net0", virtio(model, "net"))]
    }
}

/// Named virtio-serial ports, each a unix socket qemu listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    pub name: String,
    pub socket: PathBuf,
}

/// The longest unix socket path (sun_path is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn serial_args(ports: &[SerialPort], model: Model) -> Result<Vec<String>, QemuError> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    // As many port slots as ports (plus number 0, which qemu keeps for a
    // console): its default of 31 has the guest allocate a pair of
    // virtqueues for each at boot.
    let mut args =
        vec!["-device".into(), format!("{},id=vser0,max_ports={}", virtio(model, "serial"), ports.len() + 1)];
    for (i, p) in ports.iter().enumerate() {
        args.push("-chardev".into());
        args.push(format!("socket,id=port{i},path={},server=on,wait=off", esc(utf8(&p.socket)?)));
        args.push("-device".into());
        args.push(format!("virtserialport,bus=vser0.0,chardev=port{i},name={}", esc(&p.name)));
    }
    Ok(args)
}

/// A whole virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub machine: Machine,
    pub boot: DirectBoot,
    pub console: Console,
    pub shares: Vec<Share9p>,
    pub net: Option<UserNet>,
    pub ports: Vec<SerialPort>,
}

impl Vm {
    /// qemu's arguments (not its path).
    pub fn args(&self) -> Result<Vec<OsString>, QemuError> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            esc(&self.name),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            // A guest reboot is the end of the pod: qemu exits.
            "-no-reboot".into(),
        ];
        a.extend(self.machine.args());
        a.extend(self.boot.args()?);
        a.extend(self.console.args()?);
        let model = self.machine.model;
        for s in &self.shares {
            a.extend(s.args(model)?);
        }
        if let Some(net) = &self.net {
            a.extend(net.args(model));
        }
        a.extend(serial_args(&self.ports, model)?);
        Ok(a.into_iter().map(OsString::from).collect())
    }
}

/// The kernel command line: console on the first serial port, quiet, a
/// guest that reboots (ending qemu) rather than hangs if its PID 1 dies, and
/// PCI interrupts routed through the BIOS's table rather than ACPI link
/// devices: under TCG, evaluating their AML took about 0.3 s per virtio
/// device (1.1 s of a 4.5 s boot; 0.2 s with `pci=noacpi`). `skip_modules`
/// become `modprobe.blacklist=`, which pod-init honours; `debug` makes the
/// kernel and pod-init (`pod.debug`) verbose.
///
/// A one-vCPU TCG guest ticks on the PIT instead of its local APIC timer
/// (`noapictimer`): calibrating and checking that timer against the PIT
/// takes the kernel a quarter of a second of emulated waiting, and one CPU
/// needs no per-CPU timer. Under KVM the guest has the TSC-deadline timer,
/// which needs no calibration. A TSC rate known before boot is given to
/// the guest as is, and the TSC trusted (see `crate::tsc`).
pub fn cmdline(machine: &Machine, debug: bool, skip_modules: &[&str]) -> String {
    let mut c = String::from("console=ttyS0 reboot=t panic=-1 pci=noacpi rdinit=/init");
    if machine.accel == Accel::Tcg && machine.cpus == 1 {
        c.push_str(" noapictimer");
    }
    if let Some(khz) = machine.tsc_khz {
        c.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    if !skip_modules.is_empty() {
        c.push_str(&format!(" modprobe.blacklist={}", skip_modules.join(",")));
    }
    c.push_str(if debug { " loglevel=7 pod.debug" } else { " quiet loglevel=3" });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CPUS: Machine = Machine { model: Model::Pc, accel: Accel::Tcg, memory_mib: 640, cpus: 2, tsc_khz: None };

    fn vm() -> Vm {
        Vm {
            name: "pod-1234".into(),
            machine: TWO_CPUS,
            boot: DirectBoot {
                kernel: "/cache/vmlinux-ab".into(),
                initrd: "/cache/initramfs-cd.cpio".into(),
                cmdline: cmdline(&TWO_CPUS, false, &[]),
            },
            console: Console { log: "/pods/p/vm/console.log".into() },
            shares: vec![Share9p { id: "pod".into(), path: "/pods/p".into(), tag: "pod".into() }],
            net: Some(UserNet {
                restrict: true,
                forwards: vec![
                    HostFwd {
                        protocol: Protocol::Tcp,
                        host_ip: Some(Ipv4Addr::LOCALHOST),
                        host_port: 8080,
                        guest_port: 80,
                    },
                    HostFwd { protocol: Protocol::Udp, host_ip: None, host_port: 5353, guest_port: 53 },
                ],
            }),
            ports: vec![
                SerialPort { name: "pod.ctl".into(), socket: "/pods/p/vm/ctl.sock".into() },
                SerialPort { name: "pod.enter".into(), socket: "/pods/p/vm/enter.sock".into() },
            ],
        }
    }

    fn words(v: &Vm) -> Vec<String> {
        v.args().expect("args").into_iter().map(|s| s.into_string().expect("utf8")).collect()
    }

    #[test]
    fn whole_argv_word_for_word() {
        let expected = [
            "-name",
            "pod-1234",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-machine",
            "pc,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "640M",
            "-smp",
            "2",
            "-kernel",
            "/cache/vmlinux-ab",
            "-initrd",
            "/cache/initramfs-cd.cpio",
            "-append",
            "console=ttyS0 reboot=t panic=-1 pci=noacpi rdinit=/init quiet loglevel=3",
            "-chardev",
            "file,id=console,path=/pods/p/vm/console.log",
            "-serial",
            "chardev:console",
            "-fsdev",
            "local,id=pod,path=/pods/p,security_model=passthrough,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=pod,mount_tag=pod",
            "-netdev",
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-:53",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-device",
            "virtio-serial-pci,id=vser0,max_ports=3",
            "-chardev",
            "socket,id=port0,path=/pods/p/vm/ctl.sock,server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=port0,name=pod.ctl",
            "-chardev",
            "socket,id=port1,path=/pods/p/vm/enter.sock,server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=port1,name=pod.enter",
        ];
        assert_eq!(words(&vm()), expected);
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_network_means_no_nic() {
        let mut v = vm();
        v.machine.accel = Accel::Kvm;
        v.net = None;
        v.ports.clear();
        let w = words(&v);
        assert!(w.windows(4).any(|x| x == ["-machine", "pc,accel=kvm", "-cpu", "host"]), "{w:?}");
        assert!(!w.iter().any(|x| x.contains("netdev") || x.contains("virtio-serial")), "{w:?}");
    }

    #[test]
    fn microvm_has_virtio_mmio_devices_and_no_acpi() {
        let mut v = vm();
        v.machine.model = Model::Microvm;
        let w = words(&v);
        assert!(w.windows(2).any(|x| x == ["-machine", "microvm,accel=tcg,acpi=off,x-option-roms=off"]), "{w:?}");
        for device in [
            "virtio-9p-device,fsdev=pod,mount_tag=pod",
            "virtio-net-device,netdev=net0",
            "virtio-serial-device,id=vser0,max_ports=3",
        ] {
            assert!(w.contains(&device.to_owned()), "{device} in {w:?}");
        }
        assert!(!w.iter().any(|x| x.contains("-pci")), "{w:?}");
    }

    #[test]
    fn the_kernel_command_line_names_the_modules_to_skip() {
        assert_eq!(
            cmdline(&TWO_CPUS, false, &["virtio_net", "failover"]),
            "console=ttyS0 reboot=t panic=-1 pci=noacpi rdinit=/init modprobe.blacklist=virtio_net,failover quiet loglevel=3"
        );
        assert!(cmdline(&TWO_CPUS, true, &[]).ends_with("loglevel=7 pod.debug"));
    }

    #[test]
    fn only_a_one_cpu_tcg_guest_ticks_on_the_pit() {
        let one = Machine { cpus: 1, ..TWO_CPUS };
        assert!(cmdline(&one, false, &[]).contains(" noapictimer "));
        assert!(!cmdline(&TWO_CPUS, false, &[]).contains("noapictimer"));
        assert!(!cmdline(&Machine { accel: Accel::Kvm, ..one }, false, &[]).contains("noapictimer"));
    }

    #[test]
    fn a_known_tsc_rate_is_handed_to_the_guest() {
        assert!(!cmdline(&TWO_CPUS, false, &[]).contains("tsc"));
        let known = Machine { tsc_khz: Some(2_445_430), ..TWO_CPUS };
        assert!(cmdline(&known, false, &[]).contains(" tsc_early_khz=2445430 tsc=reliable "));
    }

    #[test]
    fn commas_in_values_are_doubled() {
        let mut v = vm();
        v.shares[0].path = "/pods/a,b".into();
        v.console.log = "/x,y/console.log".into();
        let w = words(&v);
        assert!(w.contains(&"local,id=pod,path=/pods/a,,b,security_model=passthrough,multidevs=remap".to_owned()));
        assert!(w.contains(&"file,id=console,path=/x,,y/console.log".to_owned()));
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let mut v = vm();
        v.boot.kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k\xff"));
        assert!(matches!(v.args(), Err(QemuError::NotUtf8(_))));
    }
}
