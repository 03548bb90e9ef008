//! A real systemd as PID 1 in a qemu guest, for the tests that need one.
//!
//! The guest runs the pod guest kernel (`/usr/lib/pod/guest/vmlinuz`) with
//! `cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1`: a pure cgroup v2
//! host. Its root is the host's own root filesystem, shared read-only over
//! 9p (`readonly=on`: the guest cannot write a host file) with a tmpfs
//! overlay on top, the way virtme-ng boots the host's root; so the host's
//! systemd, dbus, machined and the pod binaries in the target dir are all
//! there, at their host paths. A second 9p share, writable, is the test's
//! work dir, at [`GUEST_WORK`] in the guest: scripts in, results out.
//!
//! A tiny initramfs built here (busybox-static plus the 9p, virtio and
//! overlay modules from the guest kernel's tree, with their dependencies
//! resolved as stage1-vm resolves them) mounts both shares and the overlay,
//! installs one oneshot unit, `pod-e2e.service`, and a target that wants
//! only it and `basic.target`, masks what is slow or irrelevant, and
//! `switch_root`s to `/lib/systemd/systemd`. The unit runs the test's
//! script after `basic.target` (so the system bus is up and machined can be
//! activated), writes its output and exit status to the work dir, and
//! powers the guest off whatever the script did.
//!
//! Scripts made of steps start with [`STEPS`] and read them back with
//! [`Guest::steps`]; a failed script leaves the guest's journal
//! ([`Guest::journal`]).
//!
//! qemu is killed when the [`Guest`] is dropped (a failed test unwinds
//! through it) and when the time limit passes.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stage1_vm::initramfs::Cpio;
use stage1_vm::kmod;

/// Where the work dir is mounted in the guest.
pub const GUEST_WORK: &str = "/pod-e2e";

const KERNEL: &str = "/usr/lib/pod/guest/vmlinuz";
const MODULES: &str = "/usr/lib/pod/guest/modules";
const BUSYBOX: &str = "/bin/busybox";
const SYSTEMD: &str = "/lib/systemd/systemd";
const MKFS: &str = "/sbin/mkfs.ext4";

/// The modules the initramfs loads (their dependencies come along).
/// ext4 (with the crc32c its superblock checksums need, a soft dependency
/// not in `depends=`) and virtio_blk are for the scratch disk.
const INITRAMFS_MODULES: [&str; 7] =
    ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk", "crc32c_generic", "ext4"];

/// Where the scratch disk is mounted in the guest.
pub const GUEST_SCRATCH: &str = "/scratch";

/// Units the guest never starts: consoles, network and time waits, disk
/// checks, timers of maintenance jobs. The target pulls in only
/// `basic.target` (with `sysinit.target`), so most of these would not start
/// anyway; masking them keeps a host's own enablements out too.
const MASKED: &[&str] = &[
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
    "networking.service",
    "systemd-timesyncd.service",
    "systemd-random-seed.service",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-fsck-root.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-binfmt.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "ldconfig.service",
    "systemd-sysusers.service",
    "systemd-modules-load.service",
    "modprobe@.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-pstore.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "logrotate.timer",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
    "cron.service",
    "ssh.service",
    "docker.service",
    "containerd.service",
];

/// Why a systemd guest cannot run here, if it cannot.
pub fn skip_reason_sdguest() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")) {
        return Some("a systemd guest shares the host's root over 9p: needs root".into());
    }
    for (path, what) in [
        (KERNEL, "the pod guest kernel (scripts/install-deps.sh installs it)"),
        (BUSYBOX, "busybox-static"),
        (MKFS, "e2fsprogs"),
        (SYSTEMD, "systemd"),
        ("/usr/bin/dbus-daemon", "dbus"),
        ("/usr/bin/machinectl", "systemd-container (scripts/install-deps.sh installs it)"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!("no {path}: {what} is missing"));
        }
    }
    if !Path::new(MODULES).join("kernel").is_dir() {
        return Some(format!("no {MODULES}/kernel: the guest kernel's modules are missing"));
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv is missing (util-linux)".into());
    }
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        return Some("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)".into());
    }
    None
}

/// A shell prelude for scripts made of steps: `t NAME CMD...` runs CMD
/// with its stdout, stderr and exit status in the work dir's `NAME.out`,
/// `NAME.err`, `NAME.rc`, and lists NAME in `steps`; [`Guest::steps`] reads
/// them back. A failing step does not stop the script.
pub const STEPS: &str =
    "t() { n=$1; shift; echo \"$n\" >> steps; \"$@\" > \"$n.out\" 2> \"$n.err\"; echo $? > \"$n.rc\"; }\n";

/// One step's results (see [`STEPS`]).
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// Its exit status (-1 when it never finished).
    pub rc: i32,
    pub out: String,
    pub err: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: exit {}\n--- stdout\n{}\n--- stderr\n{}", self.name, self.rc, self.out, self.err)
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// A shell script (`/bin/sh`), run as root in the guest once it is up,
    /// from [`GUEST_WORK`]. Its stdout and stderr go to `script.log`.
    pub script: String,
    /// The guest's RAM.
    pub memory_mib: u64,
    /// From qemu's start to its end, boot and poweroff included.
    pub limit: Duration,
    /// Files put into the work dir before boot (name, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// A fresh ext4 disk of this size at [`GUEST_SCRATCH`] (0: none): for
    /// what tmpfs cannot do on the guest's 6.1 kernel, such as idmapped
    /// mounts (`userns: auto`). A sparse file in the test's temp dir.
    pub scratch_mib: u64,
}

impl GuestSpec {
    pub fn new(script: &str) -> Self {
        Self {
            script: script.to_owned(),
            memory_mib: 1536,
            limit: Duration::from_secs(600),
            files: Vec::new(),
            scratch_mib: 0,
        }
    }

    /// Adds a file to the work dir.
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), content.into()));
        self
    }
}

/// A booted (and, once [`Guest::wait`] returns, powered off) guest.
#[derive(Debug)]
pub struct Guest {
    /// The work dir: [`GUEST_WORK`] in the guest.
    pub work: PathBuf,
    tmp: tempfile::TempDir,
    child: Option<Child>,
    started: Instant,
    limit: Duration,
}

/// What a finished guest left.
#[derive(Debug)]
pub struct GuestRun {
    /// The script's exit status.
    pub rc: i32,
    /// The script's stdout and stderr.
    pub log: String,
    /// The guest's uptime (seconds) when the script started: the boot time.
    pub boot_secs: f64,
    /// How long the script ran (seconds, by the guest's clock).
    pub script_secs: f64,
    /// qemu's start to its exit, as the host measured it.
    pub wall: Duration,
}

impl Guest {
    /// Builds the initramfs and starts qemu; the work dir holds `script.sh`.
    pub fn boot(spec: &GuestSpec) -> Self {
        let tmp = tempfile::Builder::new().prefix("pod-sdguest-").tempdir().unwrap();
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        fs::write(work.join("script.sh"), &spec.script).unwrap();
        for (name, content) in &spec.files {
            fs::write(work.join(name), content).unwrap();
        }
        let initramfs = tmp.path().join("initramfs.cpio");
        write_initramfs(&initramfs, spec.scratch_mib > 0);

        let disk = tmp.path().join("scratch.img");
        if spec.scratch_mib > 0 {
            let f = fs::File::create(&disk).unwrap();
            f.set_len(spec.scratch_mib << 20).unwrap();
            drop(f);
            let out = Command::new(MKFS).args(["-q", "-F", "-L", "scratch", p(&disk)]).output().unwrap();
            assert!(out.status.success(), "{MKFS} {}: {}", disk.display(), String::from_utf8_lossy(&out.stderr));
        }
        let accel = match stage1_vm::accel::choose(spec::stage1::Accel::Auto, &stage1_vm::accel::HostProbe::detect()) {
            Ok((a, _)) => a,
            Err(_) => stage1_vm::qemu::Accel::Tcg,
        };
        let cpu = if accel == stage1_vm::qemu::Accel::Kvm { "host" } else { "max" };
        let cmdline = [
            "console=ttyS0",
            "rdinit=/init",
            "panic=-1",
            "reboot=t",
            "cgroup_no_v1=all",
            "systemd.unified_cgroup_hierarchy=1",
            "systemd.unit=pod-e2e.target",
            // Failed units only: a failing boot says why on the console.
            "systemd.show_status=error",
            "systemd.log_level=notice",
            "systemd.journald.forward_to_console=0",
            "quiet",
            "loglevel=4",
        ]
        .join(" ");
        let console = tmp.path().join("console.log");
        // setpriv (util-linux) makes the kernel kill qemu when the test
        // dies without unwinding (SIGKILL, a harness timeout).
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
        cmd.args(["-name", "pod-e2e-sdguest", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-machine", &format!("pc,accel={}", accel.as_str()), "-cpu", cpu])
            .args(["-m", &format!("{}M", spec.memory_mib), "-smp", "2"])
            .args(["-kernel", KERNEL, "-initrd", p(&initramfs), "-append", &cmdline])
            .args(["-chardev", &format!("file,id=console,path={}", p(&console)), "-serial", "chardev:console"])
            .args(["-fsdev", "local,id=root,path=/,security_model=passthrough,readonly=on,multidevs=remap"])
            .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot"])
            .args(["-fsdev", &format!("local,id=work,path={},security_model=passthrough,multidevs=remap", p(&work))])
            .args(["-device", "virtio-9p-pci,fsdev=work,mount_tag=work"])
            // The build's binaries, keys and images at their own path, also
            // where the guest's fresh /tmp would hide them (a clone in /tmp).
            .args([
                "-fsdev",
                &format!(
                    "local,id=target,path={},security_model=passthrough,readonly=on",
                    p(&super::common::target_dir())
                ),
            ])
            .args(["-device", "virtio-9p-pci,fsdev=target,mount_tag=target"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if spec.scratch_mib > 0 {
            cmd.args(["-drive", &format!("file={},format=raw,if=virtio,cache=unsafe", p(&disk))]);
        }
        cmd.stderr(fs::File::create(tmp.path().join("qemu.err")).unwrap());
        let child = cmd.spawn().unwrap();
        Self { work, tmp, child: Some(child), started: Instant::now(), limit: spec.limit }
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }

    /// The serial console and qemu's stderr, for failure messages.
    pub fn console(&self) -> String {
        let console = fs::read_to_string(self.tmp.path().join("console.log")).unwrap_or_default();
        let err = fs::read_to_string(self.tmp.path().join("qemu.err")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- console (last 80 lines)\n{}\n--- qemu stderr\n{err}", tail.join("\n"))
    }

    /// Waits for the guest to power off; panics (killing qemu) past the
    /// time limit or when the script never ran.
    pub fn wait(&mut self) -> GuestRun {
        let mut child = self.child.take().expect("the guest was waited for already");
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if self.started.elapsed() > self.limit {
                let _ = child.kill();
                let _ = child.wait();
                let ran = if self.work.join("started").exists() { "the script started" } else { "no script ran" };
                panic!(
                    "the systemd guest did not power off within {:?} ({ran})\n--- script.log\n{}\n{}",
                    self.limit,
                    self.file("script.log"),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let wall = self.started.elapsed();
        let rc = self.file("rc").trim().parse::<i32>();
        let Ok(rc) = rc else {
            panic!(
                "the systemd guest ended ({status}) without running the script to its end\n--- script.log\n{}\n{}",
                self.file("script.log"),
                self.console()
            );
        };
        let uptime = |name: &str| -> f64 {
            self.file(name).split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0)
        };
        let boot_secs = uptime("started");
        let script_secs = uptime("ended") - boot_secs;
        GuestRun { rc, log: self.file("script.log"), boot_secs, script_secs, wall }
    }

    /// A file the script wrote into the work dir ("" when absent).
    pub fn read(&self, name: &str) -> String {
        self.file(name)
    }

    /// The steps the script ran (see [`STEPS`]), by name.
    pub fn steps(&self) -> std::collections::BTreeMap<String, Step> {
        self.file("steps")
            .split_whitespace()
            .map(|n| {
                let rc = self.file(&format!("{n}.rc")).trim().parse().unwrap_or(-1);
                let (out, err) = (self.file(&format!("{n}.out")), self.file(&format!("{n}.err")));
                (n.to_owned(), Step { name: n.to_owned(), rc, out, err })
            })
            .collect()
    }

    /// The last `lines` lines of the guest's journal of this boot, saved
    /// when the script failed ("" when it succeeded).
    pub fn journal(&self, lines: usize) -> String {
        let journal = self.file("journal.log");
        let all: Vec<&str> = journal.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The oneshot unit and the target that boots to it.
fn units() -> Vec<(String, String)> {
    let service = format!(
        "[Unit]\n\
         Description=pod e2e test script\n\
         After=basic.target dbus.socket\n\
         Wants=dbus.socket\n\
         SuccessAction=poweroff-force\n\
         FailureAction=poweroff-force\n\
         [Service]\n\
         Type=oneshot\n\
         WorkingDirectory={GUEST_WORK}\n\
         Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         ExecStart=/bin/sh -c 'cat /proc/uptime > {GUEST_WORK}/started; /bin/sh {GUEST_WORK}/script.sh \
         > {GUEST_WORK}/script.log 2>&1; rc=$$?; cat /proc/uptime > {GUEST_WORK}/ended; \
         [ $$rc = 0 ] || journalctl -b --no-pager -o short-monotonic > {GUEST_WORK}/journal.log 2>&1; \
         echo $$rc > {GUEST_WORK}/rc; sync'\n\
         TimeoutStartSec=infinity\n"
    );
    let target = "[Unit]\n\
                  Description=pod e2e: basic.target and the test script\n\
                  Requires=basic.target pod-e2e.service\n\
                  After=basic.target pod-e2e.service\n\
                  AllowIsolate=yes\n"
        .to_owned();
    vec![("pod-e2e.service".into(), service), ("pod-e2e.target".into(), target)]
}

/// The initramfs's /init: modules, the shares, the overlay, the units, and
/// switch_root to systemd.
fn init_script(modules: &[String], scratch: bool) -> String {
    let mut s = format!("#!/bin/busybox sh\nSCRATCH={}\n", if scratch { "yes" } else { "" });
    s.push_str(
        "B=/bin/busybox\n\
         $B mkdir -p /proc /sys /dev /lower /rw /newroot\n\
         $B mount -t proc proc /proc\n\
         $B mount -t devtmpfs dev /dev 2>/dev/null\n\
         fail() { echo \"pod-e2e initramfs: $*\"; $B sleep 1; $B poweroff -f; }\n",
    );
    for m in modules {
        s.push_str(&format!("$B insmod /modules/{m}.ko || fail insmod {m}\n"));
    }
    let target = super::common::target_dir().display().to_string();
    s.push_str(&format!(
        "$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower || fail 9p root\n\
         $B mount -t tmpfs -o mode=0755 rw /rw || fail tmpfs\n\
         $B mkdir -p /rw/upper /rw/work\n\
         $B mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail overlay\n\
         $B mkdir -p /newroot{GUEST_WORK}\n\
         $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work /newroot{GUEST_WORK} || fail 9p work\n\
         if [ -n \"$SCRATCH\" ]; then\n\
           for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; $B sleep 0.5; done\n\
           $B mkdir -p /newroot{GUEST_SCRATCH}\n\
           $B mount -t ext4 /dev/vda /newroot{GUEST_SCRATCH} || fail scratch disk\n\
         fi\n\
         for d in /tmp /var/tmp; do $B mount -t tmpfs -o mode=1777 tmp /newroot$d || fail tmpfs $d; done\n\
         $B mkdir -p /newroot{target}\n\
         $B mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose target /newroot{target} || fail 9p target\n\
         E=/newroot/etc/systemd/system\n\
         $B mkdir -p $E\n"
    ));
    s
}

/// Writes the initramfs: busybox, the modules, /init.
fn write_initramfs(path: &Path, scratch: bool) {
    let resolved = kmod::resolve(Path::new(MODULES), &INITRAMFS_MODULES)
        .unwrap_or_else(|e| panic!("resolving the guest's modules under {MODULES}: {e}"));
    let names: Vec<String> = resolved.iter().map(|(n, _)| n.clone()).collect();
    let mut init = init_script(&names, scratch);
    // The units and masks, written into the overlay's /etc.
    for (name, text) in units() {
        init.push_str(&format!("$B cat > $E/{name} <<'POD_E2E_EOF'\n{text}POD_E2E_EOF\n"));
    }
    for unit in MASKED {
        init.push_str(&format!("$B ln -sf /dev/null $E/{unit}\n"));
    }
    // Generators cost seconds under TCG (sysv scripts, disks, gettys read
    // over 9p) and find nothing to do here: all are masked but the ones
    // for systemd.mask=/systemd.wants= and systemd.run= on the command line.
    init.push_str("$B mkdir -p /newroot/etc/systemd/system-generators\n");
    let mut generators = std::collections::BTreeSet::new();
    for dir in ["/lib/systemd/system-generators", "/usr/lib/systemd/system-generators"] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            generators.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    for g in generators.iter().filter(|g| !["systemd-debug-generator", "systemd-run-generator"].contains(&g.as_str())) {
        init.push_str(&format!("$B ln -sf /dev/null /newroot/etc/systemd/system-generators/{g}\n"));
    }
    // The host's fstab names the host's disks: the guest has none. A
    // container's marker files would make systemd believe it runs in one
    // (and read its settings from its argv, not the kernel command line).
    init.push_str(
        "$B rm -f /newroot/.dockerenv /newroot/run/.containerenv\n\
         : > /newroot/etc/fstab\n\
         $B rm -f /newroot/etc/machine-id; : > /newroot/etc/machine-id\n\
         $B umount /proc\n\
         $B mount --move /dev /newroot/dev 2>/dev/null\n\
         exec $B switch_root /newroot /lib/systemd/systemd\n",
    );

    let mut c = Cpio::new(std::io::BufWriter::new(fs::File::create(path).unwrap()));
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        c.dir(d, 0o755).unwrap();
    }
    c.char_dev("dev/console", 0o600, 5, 1).unwrap();
    c.file("bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap()).unwrap();
    c.file("init", 0o755, init.as_bytes()).unwrap();
    for (name, file) in &resolved {
        let mut bytes = fs::read(file).unwrap();
        kmod::strip_signature(&mut bytes).unwrap();
        c.file(&format!("modules/{name}.ko"), 0o644, &bytes).unwrap();
    }
    c.finish().unwrap().flush().unwrap();
}
