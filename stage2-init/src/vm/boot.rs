//! The guest's first steps: the kernel filesystems, the initramfs's kernel
//! modules, and the pod directory's 9p share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use spec::vm::SHARE_TAG;

use super::BootError;
use crate::log;

/// How the pod directory is mounted. `access=client`: one attach, the guest
/// kernel checks permissions itself (as for a local filesystem, with POSIX
/// ACLs) and files are created with the caller's uid and gid, which qemu's
/// `security_model=passthrough` (running as root) applies on the host, so
/// an app's user owns what it writes and `logs/`, `status/` are root's.
/// `cache=mmap`: writes go straight to the host (a status file or a log
/// line is there when write(2) returns, as stage0 expects), yet shared
/// writable mmap works for the apps that need it (databases); `loose` or
/// `fscache` would hold writes in the guest's page cache.
pub(crate) const SHARE_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=262144,access=client,cache=mmap";
/// How long to wait for the virtio 9p device to be probed.
const SHARE_WAIT: Duration = Duration::from_secs(3);

/// /proc, /sys and a devtmpfs /dev (which has the virtio-serial ports).
pub(crate) fn mount_kernel_filesystems() -> Result<(), BootError> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 3] = [
        ("proc", "/proc", common, None),
        ("sysfs", "/sys", common, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        let path = Path::new(target);
        std::fs::create_dir_all(path).map_err(|e| BootError::new("create directory", path, e))?;
        match mount(Some(fstype), path, Some(fstype), flags, data) {
            // A kernel with CONFIG_DEVTMPFS_MOUNT may have mounted it.
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(BootError::new("mount", path, format!("{fstype}: {e}"))),
        }
    }
    Ok(())
}

/// The guest's cgroup2 hierarchy at [`crate::cgroupfs::GUEST_ROOT`], where
/// pod-init enforces the apps' limits. Not fatal to the boot: only apps
/// with limits need it, and they fail to start naming why.
pub(crate) fn mount_cgroup2() -> Result<(), BootError> {
    let path = Path::new(crate::cgroupfs::GUEST_ROOT);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("cgroup2"), path, Some("cgroup2"), flags, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(BootError::new("mount", path, format!("cgroup2: {e}"))),
    }
}

/// The `*.ko` files of `dir`, in lexical order (dependencies first).
pub(crate) fn module_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files = Vec::new();
    for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "ko")) {
        super::insert_sorted(&mut files, path);
    }
    files
}

/// The modules `modprobe.blacklist=a,b` on the kernel command line names
/// (stage1-vm lists the drivers of devices this VM does not have).
pub(crate) fn blacklist(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("modprobe.blacklist="))
        .flat_map(|list| list.split(','))
        .map(|m| m.replace('-', "_"))
        .collect()
}

/// A module file's name: `NNN-<name>.ko` → `<name>`.
fn module_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.split_once('-').map_or(stem.clone(), |(_, name)| name.to_owned()).replace('-', "_")
}

/// Loads every module of `dir` but the blacklisted. A module that fails is
/// logged and skipped: the step that needs it fails next, naming its path.
pub(crate) fn load_modules(dir: &Path, skip: &[String], trace: &dyn Fn(&str)) {
    for path in module_files(dir) {
        if skip.contains(&module_name(&path)) {
            continue;
        }
        trace(&module_name(&path));
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                log!("module {}: {e}", path.display());
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => log!("module {}: {e}", path.display()),
        }
    }
}

/// Mounts the 9p share at `root`, retrying while its virtio device is not
/// probed yet (ENOENT: no channel with that tag).
pub(crate) fn mount_share(root: &Path) -> Result<(), BootError> {
    std::fs::create_dir_all(root).map_err(|e| BootError::new("create directory", root, e))?;
    let deadline = Instant::now() + SHARE_WAIT;
    // nodev: a device node an app makes on its rootfs or a volume (they
    // all live on the share) opens nothing, as in a namespace pod.
    loop {
        match mount(Some(SHARE_TAG), root, Some("9p"), MsFlags::MS_NODEV, Some(SHARE_OPTIONS)) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(BootError::new("mount 9p share", root, format!("tag {SHARE_TAG:?}, {SHARE_OPTIONS}: {e}")))
            }
        }
    }
}

/// Mounts a tmpfs (root's only) on the pod directory's `stdin/`, where
/// pod-init makes the apps' stdin FIFOs (`stdin: true`): a FIFO on the 9p
/// share would not open (ENXIO). The stream agent writes into them for
/// the host (`Open::Stdin`); the host's `stdin/` stays empty.
pub(crate) fn mount_stdin_dir(root: &Path) -> Result<(), BootError> {
    let dir = root.join("stdin");
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(BootError::new("create directory", &dir, e))
        }
        _ => {}
    }
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &dir, Some("tmpfs"), flags, Some("mode=0700,size=64k"))
        .map_err(|e| BootError::new("mount tmpfs", &dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blacklisted_modules_are_named_by_the_command_line() {
        let cmdline = "console=ttyS0 modprobe.blacklist=virtio_net,net-failover quiet modprobe.blacklist=x\n";
        assert_eq!(blacklist(cmdline), ["virtio_net", "net_failover", "x"]);
        assert!(blacklist("console=ttyS0 quiet").is_empty());
        assert_eq!(module_name(Path::new("/lib/pod/modules/007-net_failover.ko")), "net_failover");
        assert_eq!(module_name(Path::new("/m/012-9pnet-virtio.ko")), "9pnet_virtio");
    }

    #[test]
    fn modules_load_in_lexical_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["010-virtio_net.ko", "000-virtio_ring.ko", "README", "002-virtio.ko.xz", "001-virtio.ko"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let names: Vec<String> =
            module_files(dir.path()).iter().filter_map(|p| Some(p.file_name()?.to_str()?.to_owned())).collect();
        assert_eq!(names, ["000-virtio_ring.ko", "001-virtio.ko", "010-virtio_net.ko"]);
        assert!(module_files(&dir.path().join("missing")).is_empty());
    }
}
