//! The stage1 monitor: the host-side process of a namespace pod. It owns the
//! pod from stage0's exec until the pod exits: cgroups, the network (CNI and
//! loopback port proxies), the unit files, then the pod's PID 1 in new pid,
//! mount, uts and ipc namespaces (and the pod's net namespace), which sets up
//! the root filesystems, pivots into the pod directory and execs stage2-init.
//! It forks that PID 1 itself (a pod is one host process besides pod-init),
//! then supervises it (supervise.rs): forwards SIGTERM/SIGINT to it, streams
//! app logs in the foreground, and on exit tears down everything it made
//! and exits with the pod's status. A pod that runs on gets the lean
//! supervisor: the monitor re-execs itself (supervise.rs).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use spec::stage1::{Invocation, ResolvedPod, INVOCATION_FILE, POD_MANIFEST_FILE};

use crate::cgroups::{self, Limits, PodCgroup};
pub use crate::logtail::LogTail;
use crate::network::{self, Cni, NetworkHost, PodNetwork, PortMapping};
use crate::supervise::Supervisor;
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
    /// The pod's v1 init cgroups, which PID 1 joins itself ([`cgroups::join_self`]).
    init_cgroups_v1: Vec<PathBuf>,
}

/// `network: none`: the pod's PID 1 unshares a network namespace of its own
/// (with only `lo`); nothing on the host to pin or undo. Not with a user
/// namespace, which must own it: its holder makes it, pinned like a CNI one.
fn private_net(pod: &ResolvedPod, userns: Option<&PodUserNs>) -> bool {
    pod.network == spec::stage1::Network::None && userns.is_none()
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Stage1Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))
}

/// Runs the pod in the pod directory; returns its exit status.
pub fn run(pod_dir: &Path, stream_logs: bool, lock_fd: Option<i32>) -> Result<i32, Stage1Error> {
    let (inv, pod) = load(pod_dir)?;
    // `pid: host`: pod-init's orphans may end up with us; reaped in supervise.
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

    // Fork the pod's PID 1 now, while single-threaded: it waits for the
    // host side (`go`), then for its cgroups (`joined`); it reports a
    // failure on `result`, which reads EOF once it execs pod-init.
    let ((go_r, go_w), (res_r, res_w), (joined_r, joined_w)) = (pipe()?, pipe()?, pipe()?);
    let host_ends = [go_w.as_raw_fd(), res_r.as_raw_fd(), joined_w.as_raw_fd()];
    let init = fork_init(pod.host_pid, host_ends, lock_fd, || {
        let err = pod_init(pod_dir, &inv, &pod, userns.as_ref(), go_r, joined_r);
        let _ = nix::unistd::write(&res_w, format!("E{err}").as_bytes());
    })?;
    // Our copy of PID 1's end: the reply reads EOF once PID 1 execs.
    drop(res_w);

    let mut made = Made { cgroup: None, scope: None, network: None };
    let mut mover = None;
    let go = prepare_host(pod_dir, &inv, &pod, userns.as_ref(), &mut made, (joined_w, init, &mut mover));
    let (go, lean) = match go {
        Ok(go) => go,
        Err(e) => {
            // PID 1 reads EOF on `go` and gives up.
            drop(go_w);
            let _ = mover.map(std::thread::JoinHandle::join);
            let _ = waitpid(init, None);
            return Err(e);
        }
    };
    let msg = serde_json::to_vec(&go).map_err(|e| Stage1Error::Launch(e.to_string()))?;
    // A PID 1 that already failed has closed its end: its error is in the reply.
    let _ = File::from(go_w).write_all(&msg);
    let mut reply = String::new();
    File::from(res_r).read_to_string(&mut reply).map_err(io_err("read", Path::new("the pod's PID 1's pipe")))?;
    let moved = match mover.map(std::thread::JoinHandle::join) {
        None => Err("the pod's cgroups were not made".to_owned()),
        Some(Ok(moved)) => moved,
        Some(Err(_)) => Err("the cgroup thread panicked".to_owned()),
    };
    if let Err(why) = moved.and_then(|()| parse_reply(&reply)) {
        let _ = kill(init, Signal::SIGKILL);
        let _ = waitpid(init, None);
        return Err(Stage1Error::Launch(why));
    }
    let pid_file = pod_dir.join("pid");
    fs::write(&pid_file, format!("{init}\n")).map_err(io_err("write", &pid_file))?;
    if let Some(scope) = made.scope.as_mut() {
        // `machinectl poweroff` signals pod-init: SIGRTMIN+4 is a stop.
        // The pod's host-side interfaces (its veth), for `machinectl status`.
        let ifindices = made.network.as_ref().and_then(|n| n.attachment()).map(|a| a.host_ifindices());
        scope.register(pod_dir, &pod, cgroups::machined::Class::Container, init, ifindices.unwrap_or_default())?;
    }
    crate::crashpoint::crashpoint("stage1-ns.running");
    let sup = Supervisor::new(pod_dir, init, stream_logs, &pod, made.cgroup.clone());
    // Nothing of the set-up is needed while the pod runs (no port proxy
    // threads): once the pod has run a while, the monitor re-execs itself
    // into the lean supervisor (supervise.rs), which tears down as `gc` does.
    let lean = lean.then_some(crate::supervise::Lean { lock_fd });
    let status = sup.run(&mask, lean)?;
    // The scope's D-Bus connection has threads of its own: a forked
    // teardown would not have them.
    let hand_off = stream_logs && made.scope.is_none();
    if hand_off {
        if let Some(net) = made.network.as_mut() {
            net.stop_proxies();
        }
    }
    report_exit(pod_dir, status, hand_off);
    unregister_metadata(&inv, &pod);
    made.teardown();
    Ok(status)
}

/// Writes the pod's exit status (`stage1-exit`) and, with `hand_off`,
/// reports it before the teardown ([`hand_off_teardown`]).
pub(crate) fn report_exit(pod_dir: &Path, status: i32, hand_off: bool) {
    spec::stage1::write_exit(pod_dir, status);
    if hand_off {
        hand_off_teardown(pod_dir, status);
    }
}

/// Reports the pod's exit before tearing it down, where someone waits for
/// the monitor itself: a foreground `pod run` (the monitor is that process)
/// and not a systemd unit's main process (systemd would kill what outlives
/// it). The monitor forks; the parent exits with the pod's status at once
/// and the child, holding the pod's lock (inherited), tears the pod down:
/// cgroup removal, veth and nf_tables clean-up wait on RCU grace periods
/// the user's shell need not pay for (bench/run.sh). Until the child is
/// done the pod reads as exited (its `stage1-exit` is written) and locked,
/// so stage0's `rm` and `gc` wait for it. The child's errors go to the
/// pod's `stage1.log`. Returns in the child, or where the fork failed.
fn hand_off_teardown(pod_dir: &Path, status: i32) {
    if crate::notify::target().is_some() {
        return;
    }
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: the child only runs the teardown, which takes no lock another
    // thread of the monitor may hold (the proxies' threads are stopped;
    // glibc's fork makes malloc safe in the child).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            // No destructor or exit handler of ours runs (stdio is
            // flushed above): the teardown is the child's.
            // SAFETY: _exit(2) only ends the process.
            unsafe { nix::libc::_exit(i32::from(spec::stage1::exit_code(status))) }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // Off the terminal's session (no SIGHUP or ^C for the
            // teardown), and off the caller's pipes, whose reader waits for
            // their end.
            let _ = nix::unistd::setsid();
            let log = fs::OpenOptions::new().create(true).append(true).open(pod_dir.join("stage1.log"));
            if let (Ok(null), Ok(log)) = (File::options().read(true).write(true).open("/dev/null"), log) {
                let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
                let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
            }
        }
        Err(e) => eprintln!("pod-stage1-ns: fork for the teardown: {e} (tearing down first)"),
    }
}

/// Forks the pod's PID 1, in a new pid namespace unless `host_pid`. The
/// monitor itself goes back to its own (pid_ns_for_children), where the
/// kernel lets it start threads again. The child closes `host_ends` and the
/// pod's lock (the monitor's alone), arranges to die with the monitor's
/// main thread (PR_SET_PDEATHSIG: the monitor forks from it, and it lives
/// to the end; a monitor gone before that is seen as EOF on `go`), runs
/// `child` (which only returns on failure) and exits 1.
fn fork_init(
    host_pid: bool,
    host_ends: [RawFd; 3],
    lock_fd: Option<i32>,
    child: impl FnOnce(),
) -> Result<Pid, Stage1Error> {
    let own_ns = if host_pid {
        None
    } else {
        let ns = File::open("/proc/self/ns/pid").map_err(io_err("open", Path::new("/proc/self/ns/pid")))?;
        unshare(CloneFlags::CLONE_NEWPID).map_err(sys_err("unshare pid"))?;
        Some(ns)
    };
    let forked = sys::fork_process();
    if let Ok(ForkResult::Child) = forked {
        for fd in host_ends.into_iter().chain(lock_fd) {
            let _ = nix::unistd::close(fd);
        }
        if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok() {
            child();
        }
        #[allow(clippy::exit)] // a forked child must not return into the monitor
        std::process::exit(1);
    }
    let back = own_ns.map(|ns| nix::sched::setns(ns, CloneFlags::CLONE_NEWPID)).transpose();
    let init = match forked.map_err(sys_err("fork"))? {
        ForkResult::Parent { child } => child,
        ForkResult::Child => unreachable!("the child never gets here"),
    };
    if let Err(errno) = back {
        let _ = kill(init, Signal::SIGKILL);
        let _ = waitpid(init, None);
        return Err(Stage1Error::Sys { what: "setns back to the host's pid namespace", errno });
    }
    Ok(init)
}

/// What the pod's PID 1 said: nothing once it execs pod-init, else
/// `E<error>`.
fn parse_reply(reply: &str) -> Result<(), String> {
    match reply.strip_prefix('E').unwrap_or(reply) {
        _ if reply.is_empty() => Ok(()),
        "" => Err("the pod's PID 1 failed without a word".to_owned()),
        error => Err(error.to_owned()),
    }
}

/// Moves the pod's PID 1 into its init cgroups, on a thread: moving a
/// process between cgroup v1 hierarchies waits for an RCU grace period
/// (cgroup_threadgroup_rwsem: ~5-15 ms measured here), which overlaps the
/// network set-up and PID 1's mounts. Wakes PID 1 through `joined`, or
/// kills it.
fn move_init(
    dirs: Vec<PathBuf>,
    init: Pid,
    joined: OwnedFd,
) -> io::Result<std::thread::JoinHandle<Result<(), String>>> {
    std::thread::Builder::new().name("pod-cg-move".into()).spawn(move || {
        let moved = cgroups::add_pid(&dirs, init).map_err(|e| e.to_string()).and_then(|()| {
            nix::unistd::write(&joined, b"j").map(drop).map_err(|e| format!("waking the pod's PID 1: {e}"))
        });
        if moved.is_err() {
            let _ = kill(init, Signal::SIGKILL);
        }
        moved
    })
}

/// Makes the cgroups first (in the pod's systemd scope, holding PID 1,
/// where systemd manages them) and moves PID 1 into them on a thread
/// (`mover`), so that it overlaps the rest. Also says whether the set-up
/// left nothing running in the monitor (no port proxies).
fn prepare_host(
    pod_dir: &Path,
    inv: &Invocation,
    pod: &ResolvedPod,
    userns: Option<&PodUserNs>,
    made: &mut Made,
    (joined_w, init, mover): (OwnedFd, Pid, &mut Option<std::thread::JoinHandle<Result<(), String>>>),
) -> Result<(Go, bool), Stage1Error> {
    let h = hierarchy()?;
    made.scope = crate::scope::start(pod_dir, inv, pod, Some(&h), &[init])?;
    let apps: Vec<(&str, Limits)> = pod.apps.iter().map(|a| (a.name.as_str(), Limits::from(a.resources))).collect();
    let cg = cgroups::create_pod(&h, pod_loc(pod_dir, inv, pod)?, &apps)?;
    let mut app_cgroups = BTreeMap::new();
    for a in &pod.apps {
        app_cgroups.insert(a.name.to_string(), cg.app_dirs(a.name.as_str())?);
    }
    let delegated = userns.map(|ns| cg.delegate_apps(ns.map.uid, ns.map.gid)).transpose();
    // PID 1 joins its v1 cgroups itself, cheaply (see join_self); the
    // thread moves it into the cgroup2 ones, if any, and wakes it.
    let (init_cgroups_v1, init_dirs) = cgroups::self_joinable(cg.init_dirs());
    made.cgroup = Some(cg);
    delegated?;
    *mover = Some(move_init(init_dirs, init, joined_w).map_err(io_err("start a thread for", Path::new("cgroups")))?);
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
    units::write_units(pod_dir, pod, Some(&app_cgroups)).map_err(|(p, e)| io_err("write", &p)(e))?;
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
    Ok((Go { netns, app_cgroups, init_cgroups_v1 }, ports.is_empty()))
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

/// In the pod's PID 1, before exec: once the monitor says the host side is
/// ready, its namespaces, hostname, mounts and pivot (then, with a user
/// namespace, it joins that and unshares the namespaces it owns: see
/// userns.rs); then, once the monitor has put it in the pod's cgroups,
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
        // The host side first: a CNI netns is pinned by a bind mount the
        // monitor makes meanwhile, which a mount namespace copied before it
        // would not see.
        let go: Go = read_message(go, "go message")?;
        // Still single-threaded (a fork of the monitor before its threads).
        cgroups::join_self(&go.init_cgroups_v1).map_err(|e| format!("joining the pod's cgroups: {e}"))?;
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
        // In the pod's network namespace for good (and still where the
        // host's paths are): the pod's socket for the metadata service.
        if let Some(socket) = &inv.metadata_socket {
            register_metadata(socket, pod);
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
            return Err("the monitor did not place the pod in its cgroups".into());
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

/// Hands the metadata service the pod's socket on its loopback (none on
/// the host's network, which the service listens on itself). A pod the
/// service cannot take runs without it: said in the pod's log, as its
/// apps will see (their `AC_METADATA_URL` refuses connections).
fn register_metadata(socket: &Path, pod: &ResolvedPod) {
    let registered = if pod.network == spec::stage1::Network::Host {
        crate::metadata::register(socket, &pod.uuid, None)
    } else {
        crate::metadata::listen_in_pod()
            .map_err(|e| io::Error::new(e.kind(), format!("port {}: {e}", spec::metadata::PORT)))
            .and_then(|l| crate::metadata::register(socket, &pod.uuid, Some(&l)))
    };
    if let Err(e) = registered {
        eprintln!("pod-stage1-ns: warning: metadata service ({}): {e}", socket.display());
    }
}

/// Tells the metadata service the pod has ended (best effort: the service
/// also sees the pod's PID 1 end).
fn unregister_metadata(inv: &Invocation, pod: &ResolvedPod) {
    if let Some(socket) = &inv.metadata_socket {
        if let Err(e) = crate::metadata::unregister(socket, &pod.uuid) {
            if e.kind() != io::ErrorKind::NotFound && e.kind() != io::ErrorKind::ConnectionRefused {
                eprintln!("pod-stage1-ns: warning: metadata service ({}): {e}", socket.display());
            }
        }
    }
}

/// `pod-stage1-ns gc <pod dir>`: undoes what a monitor that died (kill -9)
/// left: kills the pod's processes, removes its cgroups, detaches its
/// network and removes its namespace file. Idempotent.
pub fn gc(pod_dir: &Path) -> Result<(), Stage1Error> {
    let (inv, pod) = load(pod_dir)?;
    unregister_metadata(&inv, &pod);
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
    fn pid1_replies() {
        assert_eq!(parse_reply(""), Ok(()));
        assert_eq!(parse_reply("Emount proc: EPERM"), Err("mount proc: EPERM".to_owned()));
        assert_eq!(parse_reply("E"), Err("the pod's PID 1 failed without a word".to_owned()));
    }
}
