//! The VM stage1's monitor: the host-side process of a VM pod, from stage0's
//! exec until the pod exits. It picks the accelerator, readies the cached
//! kernel and initramfs, mounts the apps' root filesystems and volumes in a
//! private mount namespace (they reach the guest through one 9p share of
//! the pod directory), writes the units and `vm/guest.conf`, and runs qemu
//! as its child (killed with it: PR_SET_PDEATHSIG). SIGTERM becomes a
//! `stop` on the guest's control port; the pod's status comes back through
//! the share (`status/pod.json`), as in a namespace pod. The pod's control
//! channel (`control.sock`) is served here and relayed to the guest
//! (control.rs).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use spec::stage1::{Isolation, Network, ResolvedPod, VmHost, VolumeSource};
use spec::vm::{
    GuestConfig, GuestMount, APP_MOUNTS, CTL_PORT, CTL_STOP, ENTER_PORT, GUEST_CONF, METADATA_PORT, SHARE_TAG,
};
use stage1_ns::monitor::LogTail;
use stage1_ns::network::{PortMapping, Protocol as NsProtocol};
use stage1_ns::rootfs::{self, KernelFs};

use crate::accel::{self, HostProbe};
use crate::control::Relay;
use crate::qemu::{
    self, Accel, Console, DirectBoot, HostFwd, Machine, Model, Protocol, SerialPort, Share9p, UserNet, Vm,
};
use crate::{initramfs, kernel, kmod, VmError};

/// Guest memory beyond the apps' own: the kernel, pod-init, page cache.
const OVERHEAD_MIB: u64 = 128;
/// What an app without a memory limit counts for.
const DEFAULT_APP_MIB: u64 = 128;
/// What a sandbox keeps for the apps added to it while it runs: its
/// memory is fixed at boot (no balloon), and a guest only takes from the
/// host the pages it touches.
const SANDBOX_APPS_MIB: u64 = 512;
/// How long a guest may take to start its units (`status/pod.json`
/// appears) before it counts as hung. TCG is slow, KVM is not: a KVM guest
/// that has not started in this time is not going to.
const BOOT_LIMIT_KVM: Duration = Duration::from_secs(60);
const BOOT_LIMIT_TCG: Duration = Duration::from_secs(600);

/// The files of a VM pod under `<pod>/vm`.
#[derive(Debug)]
pub struct VmDir(PathBuf);

impl VmDir {
    pub fn new(pod_dir: &Path) -> Self {
        Self(pod_dir.join("vm"))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn console(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.0.join("qemu.log")
    }
    pub fn qemu_pid(&self) -> PathBuf {
        self.0.join("qemu.pid")
    }
    pub fn ctl_socket(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }
    /// qemu's end of the guest's enter port (the stream router holds it).
    pub fn enter_socket(&self) -> PathBuf {
        self.0.join("enter.sock")
    }
    /// `pod enter` and the CRI's exec and port-forward connect here: one
    /// stream per connection (`spec::vm::mux`).
    pub fn stream_socket(&self) -> PathBuf {
        self.0.join("stream.sock")
    }
    /// qemu's end of the guest's metadata port (the monitor's metadata
    /// thread holds it: `crate::metadata`).
    pub fn metadata_socket(&self) -> PathBuf {
        self.0.join("metadata.sock")
    }
    /// The accelerator in use, for `pod list`.
    pub fn accel(&self) -> PathBuf {
        self.0.join("accel")
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VmError + 'a {
    move |source| VmError::Io { op, path: path.to_owned(), source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> VmError {
    move |errno| VmError::Sys { what, errno }
}

/// The guest's network: none at all, or user-mode networking (restricted
/// to the forwards for `network: none`). The apps' ports and the pod-level
/// ones (the CRI's port mappings) are forwarded by qemu from the host's
/// address and port to the guest's. (The metadata service needs no NIC:
/// it has a virtio-serial port of its own.)
pub fn user_net(pod: &ResolvedPod) -> Result<Option<UserNet>, VmError> {
    let mut forwards = Vec::new();
    for p in pod.apps.iter().flat_map(|a| a.ports.iter()).chain(&pod.ports) {
        // The namespace stage1's parse: same protocols, same address rules.
        let m = PortMapping::from_spec(p).map_err(|e| VmError::Invalid(e.to_string()))?;
        let host_ip = match m.host_ip {
            None => None,
            Some(std::net::IpAddr::V4(ip)) => Some(ip),
            Some(std::net::IpAddr::V6(_)) => {
                return Err(VmError::Invalid(format!("port {}: VM pods forward IPv4 host addresses only", p.name)))
            }
        };
        let protocol = match m.protocol {
            NsProtocol::Tcp => Protocol::Tcp,
            NsProtocol::Udp => Protocol::Udp,
        };
        forwards.push(HostFwd { protocol, host_ip, host_port: m.host_port, guest_port: m.container_port });
    }
    match &pod.network {
        Network::Host => Err(VmError::Invalid(
            "a VM pod cannot use the host's network (network: host); use none or a network name".into(),
        )),
        Network::None if forwards.is_empty() => Ok(None),
        Network::None => Ok(Some(UserNet { restrict: true, forwards })),
        Network::Cni { .. } => Ok(Some(UserNet { restrict: false, forwards })),
    }
}

/// Memory and vCPUs from the apps' resources (as rkt's KVM flavour: the sum
/// of the apps' memory limits plus an overhead; CPUs rounded up).
pub fn machine(pod: &ResolvedPod, model: Model, accel: Accel, host_cpus: u32) -> Machine {
    let memory_mib = OVERHEAD_MIB
        + if pod.sandbox { SANDBOX_APPS_MIB } else { 0 }
        + pod
            .apps
            .iter()
            .map(|a| a.resources.memory_bytes.map_or(DEFAULT_APP_MIB, |b| b.div_ceil(1 << 20)))
            .sum::<u64>();
    let millis: u64 = pod.apps.iter().map(|a| a.resources.cpu_millis.unwrap_or(1000)).sum();
    let cpus = u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX).clamp(1, host_cpus.max(1));
    Machine { model, accel, memory_mib, cpus, tsc_khz: None }
}

/// Everything qemu is started with, for one pod.
fn vm_for(
    pod_dir: &Path,
    pod: &ResolvedPod,
    (model, accel, tsc_khz): (Model, Accel, Option<u64>),
    kernel: PathBuf,
    initrd: PathBuf,
    net: Option<UserNet>,
    (metadata, debug): (bool, bool),
) -> Result<Vm, VmError> {
    let dir = VmDir::new(pod_dir);
    for socket in [dir.ctl_socket(), dir.enter_socket(), dir.stream_socket(), dir.metadata_socket()] {
        if socket.as_os_str().len() > qemu::MAX_SOCKET_PATH {
            return Err(VmError::Invalid(format!("{}: too long for a unix socket path", socket.display())));
        }
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let machine = Machine { tsc_khz, ..machine(pod, model, accel, host_cpus) };
    let cmdline = qemu::cmdline(&machine, debug, if net.is_none() { &kmod::NET_MODULES } else { &[] });
    Ok(Vm {
        name: format!("pod-{}", pod.uuid),
        machine,
        boot: DirectBoot { kernel, initrd, cmdline },
        console: Console { log: dir.console() },
        shares: vec![Share9p { id: "pod".into(), path: pod_dir.to_owned(), tag: SHARE_TAG.into() }],
        net,
        ports: [
            Some(SerialPort { name: CTL_PORT.into(), socket: dir.ctl_socket() }),
            Some(SerialPort { name: ENTER_PORT.into(), socket: dir.enter_socket() }),
            metadata.then(|| SerialPort { name: METADATA_PORT.into(), socket: dir.metadata_socket() }),
        ]
        .into_iter()
        .flatten()
        .collect(),
    })
}

/// The kernel and initramfs to boot, from the cache. Finding them from
/// scratch hashes the bzImage, walks the module tree and hashes pod-init and
/// the modules (about a quarter of a second); a small index file, keyed by
/// the inputs' paths, sizes, inodes and modification times, skips that for
/// every pod after the first. A kernel without a module tree (pod's own,
/// its drivers built in) gets an initramfs of pod-init alone.
fn boot_files(stage2: &Path, host: &VmHost) -> Result<(PathBuf, PathBuf), VmError> {
    use std::os::unix::fs::MetadataExt;
    let mut key = format!("boot-v1 {}\n", kmod::GUEST_MODULES.join(","));
    let mut inputs = vec![stage2.to_owned(), host.kernel.clone()];
    match &host.modules {
        Some(m) => inputs.extend([m.join("modules.order"), m.join("kernel")]),
        None => key.push_str("no modules\n"),
    }
    for p in &inputs {
        let m = fs::metadata(p).map_err(io_err("inspect", p))?;
        key.push_str(&format!("{} {} {} {} {}\n", p.display(), m.len(), m.ino(), m.mtime(), m.mtime_nsec()));
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let (mine, other) = initramfs::family("boot-", host.modules.is_none());
    let index = host.cache_dir.join(format!("{mine}{}", hex::encode(&digest[..12])));
    if let Ok(text) = fs::read_to_string(&index) {
        if let Some((k, i)) = text.lines().next().zip(text.lines().nth(1)) {
            let (k, i) = (PathBuf::from(k), PathBuf::from(i));
            if k.is_file() && i.is_file() {
                return Ok((k, i));
            }
        }
    }
    let vmlinux = kernel::vmlinux(&host.kernel, &host.cache_dir)?;
    let modules = match &host.modules {
        Some(m) => kmod::resolve(m, &kmod::GUEST_MODULES)?,
        None => Vec::new(),
    };
    let initrd = initramfs::build_cached(stage2, &modules, &host.cache_dir)?;
    let tmp = tempfile::NamedTempFile::new_in(&host.cache_dir).map_err(io_err("create a file in", &host.cache_dir))?;
    fs::write(tmp.path(), format!("{}\n{}\n", vmlinux.display(), initrd.display()))
        .map_err(io_err("write", tmp.path()))?;
    tmp.persist(&index).map_err(|e| io_err("rename into", &index)(e.error))?;
    // Indexes for other inputs (an older pod-init) point at pruned images.
    initramfs::prune(&host.cache_dir, "boot-", &other, &index);
    Ok((vmlinux, initrd))
}

/// Writes `apps/<app>/mounts` ([`spec::vm::APP_MOUNTS`]): the app's volume
/// mounts, for the guest to make each a mount point of its own.
pub(crate) fn write_guest_mounts(pod_dir: &Path, pod: &ResolvedPod, app: &spec::stage1::App) -> Result<(), VmError> {
    let mut mounts: Vec<GuestMount> = app
        .mounts
        .iter()
        .filter_map(|m| {
            let volume = pod.volumes.iter().find(|v| v.name == m.volume)?;
            let volume_ro = matches!(volume.source, VolumeSource::Host { read_only: true, .. });
            Some(GuestMount { path: m.path.clone(), read_only: m.read_only || volume_ro })
        })
        .collect();
    // Parents first: a volume mounted inside another one is bound after it.
    mounts.sort_by_key(|m| Path::new(&m.path).components().count());
    let text = GuestMount::render(&mounts)
        .ok_or_else(|| VmError::Invalid(format!("app {}: a mount path is not one line", app.name)))?;
    let path = pod_dir.join("apps").join(app.name.as_str()).join(APP_MOUNTS);
    fs::write(&path, text).map_err(io_err("write", &path))
}

/// Mounts the apps' root filesystems, /etc files and volumes (in this
/// process's own mount namespace, which dies with it and qemu), and writes
/// the units and the guest's configuration.
fn prepare_pod_dir(pod_dir: &Path, pod: &ResolvedPod, net: Option<&UserNet>, metadata: bool) -> Result<(), VmError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mount namespace"))?;
    let fs_err = |e: rootfs::RootfsError| VmError::Launch(e.to_string());
    rootfs::make_private().map_err(fs_err)?;
    let ips = if net.is_some() { vec![qemu::GUEST_IP.to_string()] } else { Vec::new() };
    let resolv = match (net, &pod.dns) {
        (Some(_), Some(dns)) => dns.resolv_conf(),
        (Some(n), None) if !n.restrict => format!("nameserver {}\n", qemu::GUEST_DNS),
        _ => String::new(),
    };
    rootfs::write_etc(pod_dir, pod.hostname(), &ips, &resolv).map_err(fs_err)?;
    rootfs::setup_apps(pod_dir, pod, KernelFs::Skip, None).map_err(fs_err)?;
    // Host volumes apps log into, where the guest's pod-init writes (the share).
    rootfs::bind_host_volumes(pod_dir, pod, None).map_err(fs_err)?;
    for app in &pod.apps {
        write_guest_mounts(pod_dir, pod, app)?;
    }
    // No cgroups of the host's: the VM is the pod's boundary, and pod-init
    // enforces each app's limits in a cgroup of the guest's.
    stage1_ns::units::write_units(pod_dir, pod, None).map_err(|(p, e)| io_err("write", &p)(e))?;
    let dir = VmDir::new(pod_dir);
    // `apps/` even for a sandbox with none yet: the guest lists it at boot.
    for d in [pod_dir.join("status"), pod_dir.join("logs"), pod_dir.join("apps"), dir.path().to_owned()] {
        fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
    }
    for stale in [dir.ctl_socket(), dir.enter_socket(), dir.stream_socket(), dir.metadata_socket()] {
        let _ = fs::remove_file(stale);
    }
    let guest = GuestConfig {
        hostname: pod.hostname().to_owned(),
        address: net.map(|_| (qemu::GUEST_IP, qemu::GUEST_PREFIX)),
        // A restricted NIC (network none: port forwards only) has no
        // default route: nothing beyond its subnet is there to reach, and
        // an app's attempt fails at once.
        gateway: net.filter(|n| !n.restrict).map(|_| qemu::GUEST_GATEWAY),
        sandbox: pod.sandbox,
        // The guest's kernel is the pod's own: its pod-init writes them all.
        sysctls: pod.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        metadata,
    };
    let conf = pod_dir.join(GUEST_CONF);
    fs::write(&conf, guest.render()).map_err(io_err("write", &conf))
}

/// Starts qemu: stdin and stdout closed, its own messages to `vm/qemu.log`,
/// signals unblocked, and SIGKILL when this monitor dies.
fn spawn_qemu(qemu: &Path, vm: &Vm, dir: &VmDir) -> Result<Child, VmError> {
    let log_path = dir.qemu_log();
    let log = File::create(&log_path).map_err(io_err("create", &log_path))?;
    let mut cmd = Command::new(qemu);
    cmd.args(vm.args().map_err(|e| VmError::Invalid(e.to_string()))?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let monitor = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (prctl, getppid, sigprocmask) and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != monitor {
                return Err(io::Error::other("the monitor is gone"));
            }
            SigSet::empty().thread_set_mask()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(io_err("start", qemu))
}

/// Runs the pod; returns its exit status.
/// Why this stage1 cannot run `app` as asked, if it cannot: the guest
/// mounts each app's /proc, /sys and /dev with the defaults.
pub(crate) fn unsupported(app: &spec::stage1::App) -> Option<VmError> {
    if let Some(d) = app.devices.first() {
        return Some(VmError::Invalid(format!(
            "app {}: devices ({} on {}) are not supported by the VM stage1: the guest has its own devices",
            app.name, d.host, d.path
        )));
    }
    let s = &app.security;
    (s.privileged || s.masked_paths.is_some() || s.readonly_paths.is_some()).then(|| {
        VmError::Invalid(format!(
            "app {}: privileged, maskedPaths and readonlyPaths are not yet supported by the VM stage1",
            app.name
        ))
    })
}

pub fn run(pod_dir: &Path, stream_logs: bool) -> Result<i32, VmError> {
    let (inv, pod) = stage1_ns::monitor::read_pod(pod_dir).map_err(|e| VmError::Invalid(e.to_string()))?;
    if pod.isolation != Isolation::Vm {
        return Err(VmError::Invalid("this is the VM stage1; the pod asks for namespace isolation".into()));
    }
    if inv.userns.is_some() {
        // Not dropped with a warning: the pod asked for its root not to be
        // the host's, which this stage1 does not do (the guest kernel is
        // the boundary; the monitor and qemu run as host root).
        return Err(VmError::Invalid("userns: auto is not supported by the VM stage1".into()));
    }
    if let Some(parent) = &inv.cgroup_parent {
        return Err(VmError::Invalid(format!(
            "cgroupParent {parent} is not supported by the VM stage1: a VM pod makes no cgroups on the host"
        )));
    }
    if pod.host_pid || pod.host_ipc {
        return Err(VmError::Invalid("pid: host and ipc: host are not supported by the VM stage1".into()));
    }
    if let Some(e) = pod.apps.iter().find_map(unsupported) {
        return Err(e);
    }
    let host: &VmHost = inv.vm.as_ref().ok_or_else(|| {
        VmError::Invalid("stage1.json has no vm section: stage0 found no guest kernel (see README, VM pods)".into())
    })?;
    let probe = HostProbe::detect();
    let (accel, warning) = accel::choose(pod.accel, &probe)?;
    if let Some(w) = warning {
        eprintln!("pod-stage1-vm: warning: {w}");
    }
    let metadata = inv.metadata_socket.is_some();
    let net = user_net(&pod)?;
    let (vmlinux, initrd) = boot_files(&inv.stage2, host)?;
    // Under TCG the guest's TSC is the host's: its rate, if constant.
    let tsc_khz = if accel == Accel::Tcg && probe.constant_tsc { crate::tsc::host_khz(&host.cache_dir) } else { None };
    let vm =
        vm_for(pod_dir, &pod, (host.machine, accel, tsc_khz), vmlinux, initrd, net.clone(), (metadata, inv.debug))?;

    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD, Signal::SIGHUP] {
        mask.add(s);
    }
    // The monitor is the pod's machine leader: `machinectl poweroff`'s
    // SIGRTMIN+4 is a stop request, like SIGTERM.
    let mask = stage1_ns::scope::with_poweroff(&mask);
    mask.thread_block().map_err(sys_err("block signals"))?;
    prepare_pod_dir(pod_dir, &pod, net.as_ref(), metadata)?;
    stage1_ns::crashpoint::crashpoint("stage1-vm.mounted");
    let dir = VmDir::new(pod_dir);
    if inv.debug {
        let args = vm.args().map_err(|e| VmError::Invalid(e.to_string()))?;
        let words: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        eprintln!("pod-stage1-vm: {} {}", host.qemu.display(), words.join(" "));
    }
    // Bound before qemu starts, so that a client never finds the pod
    // running without it. One that cannot be bound is reported: the pod
    // runs, but its apps cannot be changed while it does.
    let control_path = pod_dir.join(spec::control::SOCKET);
    let relay = Relay::bind(&control_path)
        .map_err(|e| eprintln!("pod-stage1-vm: control channel {}: {e}", control_path.display()))
        .ok();
    // Also before qemu, after the last unshare (a thread's process cannot).
    if let Err(e) = crate::streams::spawn(&dir.stream_socket(), dir.enter_socket()) {
        eprintln!("pod-stage1-vm: stream socket {}: {e}", dir.stream_socket().display());
    }
    // Before the guest's apps can ask; this process is the pod's for the
    // service (it ends with the pod).
    if let Some(socket) = &inv.metadata_socket {
        if let Err(e) = stage1_ns::metadata::register_vm(socket, &pod.uuid) {
            eprintln!("pod-stage1-vm: warning: metadata service ({}): {e}", socket.display());
        }
        if let Err(e) = crate::metadata::spawn(dir.metadata_socket(), socket.clone(), pod.uuid.clone()) {
            eprintln!("pod-stage1-vm: metadata port: {e}");
        }
    }
    let mut child = spawn_qemu(&host.qemu, &vm, &dir)?;
    stage1_ns::crashpoint::crashpoint("stage1-vm.qemu");
    let _ = fs::write(dir.qemu_pid(), format!("{}\n", child.id()));
    let _ = fs::write(dir.accel(), format!("{}\n", accel.as_str()));
    // stage0 signals this pid to stop the pod (the monitor turns that into
    // a stop request to the guest).
    let pid_file = pod_dir.join("pid");
    fs::write(&pid_file, format!("{}\n", std::process::id())).map_err(io_err("write", &pid_file))?;
    let mut scope = match crate::machine::start(pod_dir, &inv, &pod, &child) {
        Ok(scope) => scope,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };

    let grace = Duration::from_millis(pod.apps.iter().map(|a| a.stop_timeout_ms).max().unwrap_or(10_000))
        + Duration::from_secs(10);
    let boot_limit = match accel {
        Accel::Kvm => BOOT_LIMIT_KVM,
        Accel::Tcg => BOOT_LIMIT_TCG,
    };
    let apps = pod.apps.iter().map(|a| a.name.to_string()).collect();
    let tail = LogTail::new(pod_dir, apps);
    let ended = supervise(&mut child, pod_dir, &mask, Limits { grace, boot_limit }, tail, relay, stream_logs);
    let code = match ended {
        Ok(()) => pod_status(pod_dir, &dir),
        Err(e) => Err(e),
    };
    if let Ok(code) = &code {
        spec::stage1::write_exit(pod_dir, *code);
    }
    for f in [dir.ctl_socket(), dir.enter_socket(), dir.stream_socket(), dir.metadata_socket(), dir.qemu_pid()] {
        let _ = fs::remove_file(f);
    }
    if let Some(scope) = scope.as_mut() {
        scope.finish();
    }
    if let Some(socket) = &inv.metadata_socket {
        let _ = stage1_ns::metadata::unregister(socket, &pod.uuid);
    }
    code
}

struct Limits {
    grace: Duration,
    boot_limit: Duration,
}

/// Waits for qemu to exit: forwards stop requests, streams logs, and kills
/// a guest that never starts its units or outstays its stop grace period.
fn supervise(
    child: &mut Child,
    pod_dir: &Path,
    mask: &SigSet,
    limits: Limits,
    mut tail: LogTail,
    mut relay: Option<Relay>,
    stream_logs: bool,
) -> Result<(), VmError> {
    let dir = VmDir::new(pod_dir);
    let sfd =
        SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(sys_err("signalfd"))?;
    let qemu = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let started = Instant::now();
    let status_file = pod_dir.join("status").join("pod.json");
    let mut booted = false;
    let mut ctl: Option<UnixStream> = None;
    let mut stop_asked: Option<Instant> = None;
    let mut failure = None;
    let mut notify = stage1_ns::notify::Notifier::from_env(pod_dir);
    // The apps the pod started with: READY=1 waits for them (notify.rs).
    let apps: Vec<String> = stage1_ns::monitor::read_pod(pod_dir)
        .map(|(_, pod)| pod.apps.iter().map(|a| a.name.to_string()).collect())
        .unwrap_or_default();
    loop {
        let from_guest = wait(&sfd, ctl.as_ref(), relay.as_ref());
        let mut stop = false;
        while let Ok(Some(info)) = sfd.read_signal() {
            // SIGTERM, SIGINT, SIGHUP or systemd's SIGRTMIN+4 (poweroff).
            stop |= info.ssi_signo != Signal::SIGCHLD as u32;
        }
        if stop {
            notify.stopping();
        }
        notify.tick(apps.iter().map(String::as_str));
        if from_guest {
            let mut buf = [0u8; 4096];
            match ctl.as_mut().map(|c| c.read(&mut buf)) {
                // qemu closed the port: it is ending.
                Some(Ok(0) | Err(_)) => ctl = None,
                Some(Ok(n)) => relay.iter_mut().for_each(|r| r.from_guest(&buf[..n])),
                None => {}
            }
        }
        if ctl.is_none() {
            ctl = UnixStream::connect(dir.ctl_socket()).ok();
        }
        if let Some(relay) = &mut relay {
            relay.pump(ctl.as_mut(), Instant::now());
        }
        if stop && stop_asked.is_none() {
            stop_asked = Some(Instant::now());
            let sent = ctl.as_mut().is_some_and(|c| c.write_all(format!("{CTL_STOP}\n").as_bytes()).is_ok());
            if !sent || !booted {
                // No guest to ask (yet): stopping means ending the VM.
                let _ = kill(qemu, Signal::SIGKILL);
            }
        }
        if stop_asked.is_some_and(|t| t.elapsed() > limits.grace) {
            eprintln!("pod-stage1-vm: the guest did not stop within {:?}: killing qemu", limits.grace);
            let _ = kill(qemu, Signal::SIGKILL);
        }
        booted = booted || status_file.exists();
        if !booted && failure.is_none() && started.elapsed() > limits.boot_limit {
            failure = Some(VmError::BootTimeout(limits.boot_limit, console_tail(&dir)));
            let _ = kill(qemu, Signal::SIGKILL);
        }
        if stream_logs {
            tail.pump();
        }
        match child.try_wait() {
            Ok(Some(_)) => {
                notify.stopping();
                break;
            }
            Ok(None) => {}
            Err(e) => return Err(io_err("wait for", Path::new("qemu"))(e)),
        }
    }
    tail.finish(stream_logs);
    if let Some(relay) = relay {
        relay.close();
    }
    failure.map_or(Ok(()), Err)
}

/// Sleeps until a signal, bytes from the guest's ctl port or a control
/// client comes, or 200 ms pass; returns whether the port is readable.
fn wait(sfd: &SignalFd, ctl: Option<&UnixStream>, relay: Option<&Relay>) -> bool {
    use nix::poll::{PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
    fds.extend(ctl.map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)));
    fds.extend(relay.and_then(Relay::listener_fd).map(|l| PollFd::new(l, PollFlags::POLLIN)));
    let _ = nix::poll::poll(&mut fds, 200u16);
    ctl.is_some()
        && fds[1].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// What the guest and qemu last said, for error messages: pod-init's own
/// lines and a kernel panic's headline when there are any, else the tail.
fn console_tail(dir: &VmDir) -> String {
    let text = fs::read_to_string(dir.console()).unwrap_or_default();
    let qemu = fs::read_to_string(dir.qemu_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().chain(qemu.lines()).filter(|l| !l.trim().is_empty()).collect();
    let telling: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("pod-init:") || l.contains("Kernel panic") || l.starts_with("qemu"))
        .collect();
    let pick = if telling.is_empty() { &lines } else { &telling };
    pick[pick.len().saturating_sub(8)..].join("\n")
}

/// The pod's exit status from the guest's `status/pod.json`.
fn pod_status(pod_dir: &Path, dir: &VmDir) -> Result<i32, VmError> {
    let p = pod_dir.join("status").join("pod.json");
    let status: Option<serde_json::Value> = fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let code = status.as_ref().filter(|s| s["state"] == "exited").and_then(|s| s["exitCode"].as_i64());
    match code.and_then(|c| i32::try_from(c).ok()) {
        Some(code) => Ok(code),
        None => Err(VmError::NoStatus(console_tail(dir))),
    }
}

/// `pod-stage1-vm gc <pod dir>`: after a monitor that died (kill -9), kills
/// a qemu that is somehow still running for this pod (PR_SET_PDEATHSIG
/// normally took it along) and removes its sockets. Idempotent.
pub fn gc(pod_dir: &Path) -> Result<(), VmError> {
    let dir = VmDir::new(pod_dir);
    let (_, pod) = stage1_ns::monitor::read_pod(pod_dir).map_err(|e| VmError::Invalid(e.to_string()))?;
    stage1_ns::scope::gc(pod_dir, &pod);
    if let Some(pid) = fs::read_to_string(dir.qemu_pid()).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let name = format!("pod-{}", pod.uuid);
        if cmdline.split(|&b| b == 0).any(|w| w == name.as_bytes()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let sockets = [dir.ctl_socket(), dir.enter_socket(), dir.stream_socket(), dir.metadata_socket()];
    for f in sockets.into_iter().chain([dir.qemu_pid(), pod_dir.join(spec::control::SOCKET)]) {
        match fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &f)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(network: serde_json::Value, apps: &[(Option<u64>, Option<u64>, &str)]) -> ResolvedPod {
        let apps: Vec<serde_json::Value> = apps
            .iter()
            .enumerate()
            .map(|(i, (mem, cpu, host_ip))| {
                serde_json::json!({
                    "name": format!("a{i}"), "imageName": "example.com/x", "imageId": format!("sha512-{}", "a".repeat(128)),
                    "layers": ["/t"], "exec": ["/x"], "user": "0", "group": "0", "supplementaryGids": [],
                    "workingDirectory": "/", "env": [], "after": [], "requires": [], "readiness": null,
                    "restart": "never", "stopTimeoutMs": 1000,
                    "resources": {"memoryBytes": mem, "cpuMillis": cpu, "pids": null},
                    "ports": if host_ip.is_empty() { serde_json::json!([]) } else { serde_json::json!([
                        {"name": "http", "protocol": "tcp", "containerPort": 80, "hostPort": 8080 + i, "hostIp": host_ip}]) },
                    "mounts": [],
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "uuid": "u", "name": "p", "source": "p.yaml", "isolation": "vm", "accel": "auto",
            "network": network, "apps": apps, "volumes": [], "createdAt": "now",
        }))
        .expect("pod")
    }

    #[test]
    fn memory_and_cpus_follow_the_apps() {
        let p = pod(serde_json::json!("none"), &[(Some(256 << 20), Some(500), ""), (None, None, "")]);
        let pc = Model::Pc;
        assert_eq!(
            machine(&p, pc, Accel::Tcg, 8),
            Machine { model: pc, accel: Accel::Tcg, memory_mib: 128 + 256 + 128, cpus: 2, tsc_khz: None }
        );
        assert_eq!(machine(&p, pc, Accel::Kvm, 1).cpus, 1, "never more vCPUs than host CPUs");
        let small = pod(serde_json::json!("none"), &[(Some(1), Some(100), "")]);
        assert_eq!(
            machine(&small, pc, Accel::Tcg, 8),
            Machine { model: pc, accel: Accel::Tcg, memory_mib: 129, cpus: 1, tsc_khz: None }
        );
        let mut sandbox = pod(serde_json::json!("none"), &[]);
        sandbox.sandbox = true;
        let m = machine(&sandbox, Model::Microvm, Accel::Tcg, 8);
        assert_eq!((m.memory_mib, m.cpus), (128 + 512, 1), "room for the apps a sandbox will take");
    }

    #[test]
    fn networks_map_to_user_mode_networking() {
        let none = pod(serde_json::json!("none"), &[(None, None, "")]);
        assert_eq!(user_net(&none).expect("none"), None, "loopback only: no NIC");
        let fwd = pod(serde_json::json!("none"), &[(None, None, "127.0.0.1"), (None, None, "0.0.0.0")]);
        let net = user_net(&fwd).expect("forwards").expect("a NIC");
        assert!(net.restrict, "network none: the guest reaches nothing outside");
        assert_eq!(net.forwards[0].host_ip, Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!((net.forwards[1].host_ip, net.forwards[1].host_port), (None, 8081));
        let cni = pod(serde_json::json!({"cni": {"name": "default"}}), &[(None, None, "")]);
        assert!(!user_net(&cni).expect("cni").expect("a NIC").restrict);
        let host = pod(serde_json::json!("host"), &[(None, None, "")]);
        assert!(user_net(&host).is_err_and(|e| e.to_string().contains("network: host")));
        // Pod-level ports (the CRI's port mappings) are forwarded as well.
        let mut sandbox = pod(serde_json::json!("none"), &[]);
        sandbox.ports = fwd.apps[0].ports.clone();
        let net = user_net(&sandbox).expect("forwards").expect("a NIC");
        assert_eq!((net.forwards.len(), net.forwards[0].host_port, net.forwards[0].guest_port), (1, 8080, 80));
        let v6 = pod(serde_json::json!("none"), &[(None, None, "::1")]);
        assert!(user_net(&v6).is_err_and(|e| e.to_string().contains("IPv4")));
    }
}
