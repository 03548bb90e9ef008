//! The stage1 monitor: the host-side process of a namespace pod. It owns the
//! pod from stage0's exec until the pod exits: cgroups, the network (CNI and
//! loopback port proxies), the unit files, then the pod's PID 1 in new pid,
//! mount, uts and ipc namespaces (and the pod's net namespace), which sets up
//! the root filesystems, pivots into the pod directory and execs stage2-init.
//! It forwards SIGTERM/SIGINT to that PID 1, streams app logs in the
//! foreground, and on exit tears down everything it made and exits with the
//! pod's status.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use spec::stage1::{Invocation, ResolvedPod, INVOCATION_FILE, POD_MANIFEST_FILE};

use crate::cgroups::{self, Limits, PodCgroup};
pub use crate::logtail::LogTail;
use crate::network::{self, Cni, NetworkHost, PodNetwork, PortMapping};
use crate::userns::{PodUserNs, UsernsError};
use crate::{rootfs, sys, units};

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: nix::errno::Errno },
    #[error("starting the pod: {0}")]
    Launch(String),
    #[error(transparent)]
    Userns(#[from] UsernsError),
    #[error(transparent)]
    Systemd(#[from] cgroups::systemd::BusError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Stage1Error + 'a {
    move |source| Stage1Error::Io { op, path: path.to_owned(), source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> Stage1Error {
    move |errno| Stage1Error::Sys { what, errno }
}

/// Reads and checks `stage1.json` and `pod.json` of a namespace pod.
pub fn load(pod_dir: &Path) -> Result<(Invocation, ResolvedPod), Stage1Error> {
    let (inv, pod) = read_pod(pod_dir)?;
    if pod.isolation != spec::stage1::Isolation::Namespace {
        return Err(Stage1Error::Invalid("this is the namespace stage1; the pod asks for vm isolation".into()));
    }
    Ok((inv, pod))
}

/// Reads `stage1.json` (version checked) and `pod.json`, whatever the isolation.
pub fn read_pod(pod_dir: &Path) -> Result<(Invocation, ResolvedPod), Stage1Error> {
    let read = |name: &str| {
        let p = pod_dir.join(name);
        fs::read(&p).map_err(io_err("read", &p))
    };
    let inv: Invocation = serde_json::from_slice(&read(INVOCATION_FILE)?)
        .map_err(|e| Stage1Error::Invalid(format!("{INVOCATION_FILE}: {e}")))?;
    inv.check_version().map_err(Stage1Error::Invalid)?;
    let pod: ResolvedPod = serde_json::from_slice(&read(POD_MANIFEST_FILE)?)
        .map_err(|e| Stage1Error::Invalid(format!("{POD_MANIFEST_FILE}: {e}")))?;
    Ok((inv, pod))
}

fn network_host(pod_dir: &Path, inv: &Invocation) -> NetworkHost {
    NetworkHost {
        netns_dir: inv.netns_dir.clone(),
        cni: Cni::new(&inv.cni_conf_dir, pod_dir.join("net")).with_plugin_dirs(inv.cni_plugin_dirs.clone()),
        default_net: network::native::DefaultNet::default(),
    }
}

/// Where the pod's cgroups are: in its systemd scope, under the parent
/// `stage1.json` records, or under `pod/`.
pub(crate) fn pod_loc(pod_dir: &Path, inv: &Invocation, pod: &ResolvedPod) -> Result<cgroups::PodLoc, Stage1Error> {
    Ok(cgroups::PodLoc::for_pod(pod_dir, inv.cgroup_parent.as_deref(), &pod.uuid)?)
}

pub(crate) fn hierarchy() -> Result<cgroups::Hierarchy, Stage1Error> {
    Ok(cgroups::detect_host(Path::new("/proc/self/mountinfo"), Path::new("/sys/fs/cgroup"))?)
}

/// What the monitor made, undone in reverse on every way out.
struct Made {
    cgroup: Option<PodCgroup>,
    scope: Option<crate::scope::PodScope>,
    network: Option<PodNetwork>,
}

impl Made {
    fn teardown(&mut self) {
        // The network comes down on a thread of its own while the cgroups
        // are removed: both mostly wait for RCU grace periods (nf_tables
        // hooks, cgroup rmdir), so overlapping them shortens the pod's exit.
        let network = self.network.take().map(|net| {
            std::thread::Builder::new()
                .name("pod-net-down".into())
                .spawn(move || net.teardown())
                .map_err(|e| e.to_string())
        });
        if let Some(cg) = self.cgroup.take() {
            // Usually empty by now (PID 1 took its apps along); destroy
            // kills what outlived it first, after one look at the pids.
            if let Err(e) = cg.destroy() {
                eprintln!("pod-stage1-ns: removing cgroups: {e}");
            }
        }
        if let Some(mut scope) = self.scope.take() {
            scope.finish();
        }
        let removed = match network {
            None => Ok(()),
            Some(Err(e)) => Err(format!("starting the teardown thread: {e}")),
            Some(Ok(thread)) => match thread.join() {
                Ok(done) => done.map_err(|e| e.to_string()),
                Err(_) => Err("the teardown thread panicked".into()),
            },
        };
        if let Err(e) = removed {
            eprintln!("pod-stage1-ns: removing the network: {e}");
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What the pod's PID 1 needs from the host side, sent over a pipe once it is
/// ready (the network made, the units and /etc files written).
#[derive(serde::Serialize, serde::Deserialize)]
struct Go {
    netns: Option<PathBuf>,
    app_cgroups: BTreeMap<String, Vec<PathBuf>>,
}

/// `network: none`: the pod's PID 1 unshares a network namespace of its own
/// (with only `lo`); nothing on the host to pin or undo. Not with a user
/// namespace, which must own it: its holder makes it, pinned like a CNI one.
fn private_net(pod: &ResolvedPod, userns: Option<&PodUserNs>) -> bool {
    pod.network == spec::stage1::Network::None && userns.is_none()
}

/// The pipes between the monitor, the launcher and the pod's PID 1.
struct Pipes {
    /// monitor → launcher: the pod's init cgroups, as soon as they exist.
    cgroups: (OwnedFd, OwnedFd),
    /// monitor → pod's PID 1: [`Go`].
    go: (OwnedFd, OwnedFd),
    /// launcher and PID 1 → monitor: `P<pid>` or `E<error>`, then EOF at exec.
    result: (OwnedFd, OwnedFd),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Stage1Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))
}

/// Runs the pod in the pod directory; returns its exit status.
pub fn run(pod_dir: &Path, stream_logs: bool, lock_fd: Option<i32>) -> Result<i32, Stage1Error> {
    let (inv, pod) = load(pod_dir)?;
    // Children reparent to us when the launcher exits: we wait for the pod's
    // PID 1 ourselves.
    nix::sys::prctl::set_child_subreaper(true).map_err(sys_err("PR_SET_CHILD_SUBREAPER"))?;
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(sys_err("block signals"))?;
    let userns = match inv.userns {
        Some(_) if !pod.sysctls.is_empty() => {
            return Err(Stage1Error::Invalid("sysctls cannot yet be set in a userns: auto pod (not yet)".into()));
        }
        Some(_) if pod.network == spec::stage1::Network::Host => {
            return Err(Stage1Error::Invalid("userns: auto cannot share the host's network namespace".into()));
        }
        Some(map) => Some(PodUserNs::create(map, true, lock_fd)?),
        None => None,
    };

    // Fork the launcher now, while single-threaded; it forks the pod's PID 1
    // at once, and both wait for the host side.
    let Pipes { cgroups: (cg_r, cg_w), go: (go_r, go_w), result: (res_r, res_w) } =
        Pipes { cgroups: pipe()?, go: pipe()?, result: pipe()? };
    let monitor_pid = nix::unistd::getpid();
    let launcher = match sys::fork_process().map_err(sys_err("fork"))? {
        ForkResult::Child => {
            drop((cg_w, go_w, res_r));
            // The pod's lock is the monitor's alone: a launcher outliving a
            // killed monitor for an instant must not keep the pod "running".
            if let Some(fd) = lock_fd {
                let _ = nix::unistd::close(fd);
            }
            let code = launch(pod_dir, &inv, &pod, userns.as_ref(), (cg_r, go_r), res_w, monitor_pid);
            // A forked child must never return into the monitor's code.
            #[allow(clippy::exit)]
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop((cg_r, go_r, res_w));

    let mut made = Made { cgroup: None, scope: None, network: None };
    let go = prepare_host(pod_dir, &inv, &pod, userns.as_ref(), &mut made, (cg_w, launcher));
    let go = match go {
        Ok(go) => go,
        Err(e) => {
            drop(go_w);
            let _ = waitpid(launcher, None);
            return Err(e);
        }
    };
    let msg = serde_json::to_vec(&go).map_err(|e| Stage1Error::Launch(e.to_string()))?;
    // A PID 1 that already failed has closed its end: its error is in the reply.
    let _ = File::from(go_w).write_all(&msg);
    let mut reply = String::new();
    File::from(res_r).read_to_string(&mut reply).map_err(io_err("read", Path::new("launcher pipe")))?;
    let init = match parse_reply(&reply) {
        Ok(pid) => pid,
        Err(why) => {
            let _ = waitpid(launcher, None);
            return Err(Stage1Error::Launch(why));
        }
    };
    let pid_file = pod_dir.join("pid");
    fs::write(&pid_file, format!("{init}\n")).map_err(io_err("write", &pid_file))?;
    if let Some(scope) = made.scope.as_mut() {
        // `machinectl poweroff` signals pod-init: SIGRTMIN+4 is a stop.
        // The pod's host-side interfaces (its veth), for `machinectl status`.
        let ifindices = made.network.as_ref().and_then(|n| n.attachment()).map(|a| a.host_ifindices());
        scope.register(pod_dir, &pod, cgroups::machined::Class::Container, init, ifindices.unwrap_or_default())?;
    }
    crate::crashpoint::crashpoint("stage1-ns.running");
    let status = supervise(pod_dir, init, launcher, &mask, stream_logs, &pod, made.cgroup.as_ref())?;
    let exit_file = pod_dir.join("stage1-exit");
    let _ = fs::write(exit_file, format!("{status}\n"));
    made.teardown();
    Ok(status)
}

/// What the launcher and the pod's PID 1 said: the launcher's `P<pid>`, or
/// one `E<error>` from either, alone or after the pid (PID 1 failed once
/// moved into its cgroups) or before it (PID 1 failed while being moved).
fn parse_reply(reply: &str) -> Result<Pid, String> {
    if let Some(pid) = reply.strip_prefix('P').and_then(|d| d.parse::<i32>().ok()) {
        return Ok(Pid::from_raw(pid));
    }
    let error = reply.strip_prefix('P').map_or(reply, |r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    let error = error.strip_prefix('E').unwrap_or(error);
    let error = match error.rfind('P') {
        Some(i) if i + 1 < error.len() && error[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &error[..i],
        _ => error,
    };
    Err(if error.is_empty() { "the launcher exited without a word".to_owned() } else { error.to_owned() })
}

/// Makes the cgroups first (in the pod's systemd scope, holding the
/// launcher, where systemd manages them) and hands the init ones to the
/// launcher right away (`cg_w`), so that moving PID 1 in overlaps the rest.
fn prepare_host(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    userns: Option<&PodUserNs>,
    made: &mut Made,
    (cg_w, launcher): (OwnedFd, Pid),
) -> Result<Go, Stage1Error> {
    let h = hierarchy()?;
    made.scope = crate::scope::start(pod_dir, inv, pod, Some(&h), &[launcher])?;
    let apps: Vec<(&str, Limits)> = pod.apps.iter().map(|a| (a.name.as_str(), Limits::from(a.resources))).collect();
    let cg = cgroups::create_pod(&h, pod_loc(pod_dir, inv, pod)?, &apps)?;
    let mut app_cgroups = BTreeMap::new();
    for a in &pod.apps {
        app_cgroups.insert(a.name.to_string(), cg.app_dirs(a.name.as_str())?);
    }
    let init_cgroups = serde_json::to_vec(&cg.init_dirs()).map_err(|e| Stage1Error::Launch(e.to_string()))?;
    let delegated = userns.map(|ns| cg.delegate_apps(ns.map.uid, ns.map.gid)).transpose();
    made.cgroup = Some(cg);
    delegated?;
    File::from(cg_w).write_all(&init_cgroups).map_err(io_err("write", Path::new("launcher pipe")))?;
    crate::crashpoint::crashpoint("stage1-ns.cgroups");

    let ports = pod
        .apps
        .iter()
        .flat_map(|a| a.ports.iter())
        .chain(&pod.ports)
        .map(PortMapping::from_spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(network::NetworkError::from)?;
    let (ips, netns) = if private_net(pod, userns) {
        if !ports.is_empty() {
            return Err(network::NetworkError::PortsWithoutCni("none").into());
        }
        (Vec::new(), None)
    } else {
        let existing = userns.and_then(PodUserNs::net_fd);
        let net = network::setup_in(&pod.network, &pod.uuid, &network_host(pod_dir, inv), &ports, existing)?;
        let ips: Vec<String> =
            net.attachment().map(|a| a.ips.iter().map(|ip| ip.addr.to_string()).collect()).unwrap_or_default();
        let netns = net.netns().map(|n| n.path().to_path_buf());
        made.network = Some(net);
        crate::crashpoint::crashpoint("stage1-ns.network");
        (ips, netns)
    };

    let resolv = crate::podcfg::resolv_conf(pod, Path::new("/etc/resolv.conf"));
    rootfs::write_etc(pod_dir, pod.hostname(), &ips, &resolv).map_err(|e| Stage1Error::Launch(e.to_string()))?;
    units::write_units(pod_dir, pod, &app_cgroups).map_err(|(p, e)| io_err("write", &p)(e))?;
    for sub in ["status", "logs"] {
        let d = pod_dir.join(sub);
        fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
    }
    if let Some(ns) = userns {
        // pod-init writes these as the pod's root; the /etc files are its
        // (read-only binds all the same).
        let (uid, gid) = ns.root();
        let etc = pod_dir.join("etc");
        for p in ["status", "logs"]
            .map(|d| pod_dir.join(d))
            .into_iter()
            .chain(["hosts", "hostname", "resolv.conf"].map(|f| etc.join(f)))
        {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io_err("chown", &p))?;
        }
    }
    Ok(Go { netns, app_cgroups })
}

/// Reads a whole message from the monitor; empty means it gave up.
fn read_message<T: serde::de::DeserializeOwned>(from: OwnedFd, what: &str) -> Result<T, String> {
    let mut buf = Vec::new();
    File::from(from).read_to_end(&mut buf).map_err(|e| format!("reading the {what}: {e}"))?;
    if buf.is_empty() {
        return Err("monitor gave up before launch".into());
    }
    serde_json::from_slice(&buf).map_err(|e| format!("the {what}: {e}"))
}

/// The launcher (a child of the monitor): unshares the pid namespace and
/// forks the pod's PID 1 at once, moves it into the pod's cgroups as soon as
/// the monitor has made them, reports its host pid, then waits for it and
/// exits with its status. It dies with the monitor (PR_SET_PDEATHSIG), and
/// the pod's PID 1 dies with it, so a killed monitor takes the whole pod
/// down and `pod gc` can clean up.
fn launch(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    userns: Option<&PodUserNs>,
    (cg_r, go_r): (OwnedFd, OwnedFd),
    res_w: OwnedFd,
    monitor: Pid,
) -> i32 {
    let report = |msg: String| {
        let _ = nix::unistd::write(&res_w, msg.as_bytes());
    };
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != monitor {
        report("E the monitor is gone".into());
        return 1;
    }
    let child = match launch_pod(pod_dir, inv, pod, userns, (cg_r, go_r), &res_w) {
        Ok(child) => child,
        Err(e) => {
            report(format!("E{e}"));
            return 1;
        }
    };
    report(format!("P{child}"));
    // The monitor reads to EOF: close our end now that the pid is sent.
    drop(res_w);
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn launch_pod(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    userns: Option<&PodUserNs>,
    (cg_r, go_r): (OwnedFd, OwnedFd),
    res_w: &OwnedFd,
) -> Result<Pid, String> {
    // Only the pid namespace here (it applies to the next child); the
    // others are the pod's PID 1's own. A launcher with a mount namespace
    // of its own would pay for tearing that copy of the host's mount table
    // down when it exits (an RCU grace period: ~100 ms measured).
    // `pid: host`: none, the pod's PID 1 is a host process (pod-init then
    // becomes a subreaper).
    if !pod.host_pid {
        unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare pid: {e}"))?;
    }
    // The pod's PID 1 waits on this before it execs stage2-init, until the
    // launcher has moved it into the pod's cgroups.
    let (joined_r, joined_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // The launcher is single-threaded (forked before the monitor started
    // any thread), so forking again is safe.
    match sys::fork_process().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((joined_w, cg_r));
            let err = pod_init(pod_dir, inv, pod, userns, go_r, joined_r);
            let _ = nix::unistd::write(res_w, format!("E{err}").as_bytes());
            #[allow(clippy::exit)] // a forked child must not return into the launcher
            std::process::exit(1);
        }
        ForkResult::Parent { child } => {
            drop((joined_r, go_r));
            // Moving a process between cgroup v1 hierarchies waits for an
            // RCU grace period (cgroup_threadgroup_rwsem: ~5-15 ms measured
            // here), so it happens while the monitor finishes the host side
            // and the child sets up the pod's mounts.
            let joined = read_message::<Vec<PathBuf>>(cg_r, "pod's cgroups")
                .and_then(|dirs| cgroups::add_pid(&dirs, child).map_err(|e| e.to_string()));
            match joined {
                Ok(()) => {
                    nix::unistd::write(&joined_w, b"j").map_err(|e| format!("waking the pod's PID 1: {e}"))?;
                    Ok(child)
                }
                Err(e) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    Err(e)
                }
            }
        }
    }
}

/// In the pod's PID 1, before exec: once the monitor says the host side is
/// ready, its namespaces, hostname, mounts and pivot (then, with a user
/// namespace, it joins that and unshares the namespaces it owns: see
/// userns.rs); then, once the launcher has put it in the pod's cgroups,
/// exec pod-init.
fn pod_init(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    userns: Option<&PodUserNs>,
    go: OwnedFd,
    joined: OwnedFd,
) -> String {
    let step = || -> Result<std::convert::Infallible, String> {
        // PID 1 of the pod dies with the launcher (and so with the monitor).
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        // The host side first: a CNI netns is pinned by a bind mount the
        // monitor makes meanwhile, which a mount namespace copied before it
        // would not see.
        let go: Go = read_message(go, "go message")?;
        if let Some(ns) = &go.netns {
            let f = File::open(ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
            nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns net: {e}"))?;
        }
        // With a user namespace, uts and ipc come after joining it, so it
        // owns them; the mounts are made here as host root all the same.
        let mut flags = CloneFlags::CLONE_NEWNS;
        if userns.is_none() {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        // `ipc: host` (never with a user namespace: stage0 refuses it).
        if userns.is_none() && !pod.host_ipc {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        if private_net(pod, userns) {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        if private_net(pod, userns) {
            network::bring_lo_up().map_err(|e| format!("lo up: {e}"))?;
        }
        // In the pod's net, ipc and uts namespaces now (not yet with a user
        // namespace, refused at the start): the values are the pod's.
        crate::podcfg::write_sysctls(pod, Path::new("/proc/sys")).map_err(|e| e.to_string())?;
        rootfs::make_private().map_err(|e| e.to_string())?;
        let ids = userns.map(|ns| rootfs::PodIds { userns: ns.user_fd(), uid: ns.map.uid, gid: ns.map.gid });
        rootfs::setup_apps(pod_dir, pod, rootfs::KernelFs::Mount, ids).map_err(|e| e.to_string())?;
        rootfs::bind_host_volumes(pod_dir, pod, ids).map_err(|e| e.to_string())?;
        rootfs::bind_cgroups(pod_dir, &go.app_cgroups).map_err(|e| e.to_string())?;
        let stage2 = rootfs::bind_stage2(pod_dir, &inv.stage2).map_err(|e| e.to_string())?;
        rootfs::pivot_into(pod_dir).map_err(|e| e.to_string())?;
        // The pod's root may not create a file in the pod root: its
        // control socket is bound here, as host root, and passed open.
        let control_fd = userns.map(|_| crate::userns::bind_control()).transpose().map_err(|e| e.to_string())?;
        if let Some(ns) = userns {
            crate::userns::join(ns.user_fd()).map_err(|e| e.to_string())?;
        }
        nix::unistd::sethostname(pod.hostname()).map_err(|e| format!("sethostname: {e}"))?;
        let mut byte = [0u8; 1];
        if !matches!(File::from(joined).read(&mut byte), Ok(1)) {
            return Err("the launcher did not place the pod in its cgroups".into());
        }
        SigSet::all().thread_unblock().map_err(|e| format!("unblock signals: {e}"))?;
        let prog = CString::new(stage2).map_err(|e| e.to_string())?;
        let mut args = vec![prog.clone(), c"--root".into(), c"/".into()];
        if pod.sandbox {
            args.push(c"--sandbox".into());
        }
        if let Some(fd) = control_fd {
            args.push(c"--control-fd".into());
            args.push(CString::new(fd.to_string()).map_err(|e| e.to_string())?);
        }
        let env: [CString; 0] = [];
        nix::unistd::execve(&prog, &args, &env).map_err(|e| format!("exec pod-init: {e}"))?;
        Err("exec returned".into())
    };
    match step() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Waits for the pod's PID 1 (through the launcher, which exits with its
/// status), forwarding signals to it and streaming logs.
fn supervise(
    pod_dir: &Path,
    init: Pid,
    launcher: Pid,
    mask: &SigSet,
    stream_logs: bool,
    pod: &ResolvedPod,
    cgroup: Option<&PodCgroup>,
) -> Result<i32, Stage1Error> {
    let mut ooms: BTreeMap<String, u64> = BTreeMap::new();
    // Apps added while the pod runs (`pod app add`, CRI containers) have
    // cgroups the one made at the start does not list: looked up again
    // whenever pod.json changes.
    let mut watched = crate::oom::Watched::new(pod_dir, cgroup.cloned(), pod);
    // The kernel counts OOM kills per cgroup; pod-init only sees SIGKILL.
    // Record them beside the app's status so `pod status` can say why.
    let mut note_ooms = || {
        let Some((cg, apps)) = watched.current() else { return };
        for name in apps {
            let n = cg.oom_kills(&name).unwrap_or(0);
            if n > 0 && ooms.get(&name) != Some(&n) {
                let p = pod_dir.join("status").join(format!("{name}.oom"));
                let _ = fs::write(p, format!("{n}\n"));
                ooms.insert(name, n);
            }
        }
    };
    let sfd =
        SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(sys_err("signalfd"))?;
    let mut tail = LogTail::new(pod_dir, pod.apps.iter().map(|a| a.name.to_string()).collect());
    let mut notify = crate::notify::Notifier::from_env(pod_dir);
    loop {
        let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&sfd), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, 200u16);
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            if let Ok(sig) = Signal::try_from(signo) {
                if sig != Signal::SIGCHLD {
                    notify.stopping();
                    let _ = kill(init, Signal::SIGTERM);
                }
            }
        }
        notify.tick(pod.apps.iter().map(|a| a.name.as_str()));
        if stream_logs {
            tail.pump();
        }
        note_ooms();
        // Reap everything that reparented to us; note PID 1's end.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == launcher => {
                    notify.stopping();
                    note_ooms();
                    tail.finish(stream_logs);
                    return Ok(code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == launcher => {
                    notify.stopping();
                    note_ooms();
                    tail.finish(stream_logs);
                    return Ok(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// `pod-stage1-ns gc <pod dir>`: undoes what a monitor that died (kill -9)
/// left: kills the pod's processes, removes its cgroups, detaches its
/// network and removes its namespace file. Idempotent.
pub fn gc(pod_dir: &Path) -> Result<(), Stage1Error> {
    let (inv, pod) = load(pod_dir)?;
    let h = hierarchy()?;
    if let Some(cg) = cgroups::open_pod(&h, pod_loc(pod_dir, &inv, &pod)?)? {
        cg.kill_all()?;
        cg.destroy()?;
    }
    crate::scope::gc(pod_dir, &pod);
    network::teardown_leftovers(&pod.network, &pod.uuid, &network_host(pod_dir, &inv))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_replies() {
        assert_eq!(parse_reply("P42"), Ok(Pid::from_raw(42)));
        assert_eq!(parse_reply("P42Emount proc: EPERM"), Err("mount proc: EPERM".to_owned()));
        assert_eq!(parse_reply("Emonitor gave up before launchP42"), Err("monitor gave up before launch".to_owned()));
        assert_eq!(parse_reply("E the monitor is gone"), Err(" the monitor is gone".to_owned()));
        assert_eq!(parse_reply("P"), Err("the launcher exited without a word".to_owned()));
        assert!(parse_reply("").is_err());
    }
}
