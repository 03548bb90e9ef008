//! Deterministic kill points for the crash tests (`tests/tests/crash.rs`).
//!
//! In a debug build, `POD_TEST_KILL_AT=<step>` makes `pod` SIGKILL itself
//! (a real kill -9: no unwinding, no destructors, no cleanup) when it
//! reaches `<step>`, so a test can crash it at every step that leaves
//! something on disk and check that `pod gc` recovers. Release builds
//! compile [`crashpoint`] to nothing and never read the variable.
//!
//! The steps, in the order a `pod run` of an image not yet stored meets them:
//!
//! | step | where |
//! |---|---|
//! | `fetch.staged` | image file (and signature) copied into `tmp/fetch-*`, nothing checked yet |
//! | `fetch.verified` | signature verified, archive not yet opened |
//! | `fetch.extracting` | mid-extraction: the first regular file of the rootfs written |
//! | `fetch.extracted` | extracted and checked, `meta.json` written: a complete staging dir |
//! | `store.commit` | the staging dir's lock file removed, just before the rename into `images/` |
//! | `store.committed` | renamed into `images/`: the image is stored, its tree not rendered |
//! | `render.layer` | mid-render: the first layer laid into `tmp/tree-*` |
//! | `render.install` | tree complete, just before the rename into `trees/` |
//! | `render.installed` | tree renamed into `trees/` |
//! | `prepare.embryo` | pod directory created in `pods/embryo/` and locked |
//! | `prepare.dirs` | the apps' rootfs, upper and work directories made |
//! | `prepare.volumes` | volumes made |
//! | `prepare.manifest` | `pod.json` written |
//! | `prepare.invocation` | `stage1.json` written, the pod still an embryo |
//! | `prepare.prepared` | renamed to `pods/prepared/`, still locked by `pod` |
//! | `run.running` | renamed to `pods/run/`, stage1 not started |
//! | `run.stage1` | just before the exec (or spawn, with `-d`) of stage1 |
//! | `stage1-ns.cgroups` | the namespace monitor made the pod's cgroups; network not yet |
//! | `stage1-ns.network` | its CNI network is up (netns pinned, veth on the bridge), PID 1 not started |
//! | `stage1-ns.running` | the pod's PID 1 started and its pid recorded |
//! | `stage1-vm.mounted` | the VM monitor mounted the apps' rootfs in its mount namespace |
//! | `stage1-vm.qemu` | qemu started, its pid not yet recorded |
//! | `gc.garbage` | `pod gc`/`pod rm`: the pod's stage1 gc done, pod renamed to `pods/garbage/`, not yet deleted |
//! | `build.staged` | `pod image build`: the rootfs assembled in its scratch dir (`$TMPDIR/pod-build-*`) |
//! | `build.packed` | `OUT.tmp` written and synced, just before its rename to `OUT` |
//! | `image.rm` | `pod image rm`: the entry renamed out of `images/` into `tmp/`, not yet deleted |
//! | `oci.manifest` | OCI pull: the manifest read and its digest computed, nothing written |
//! | `oci.verified` | OCI pull: the signature checked (or skipped), no blob fetched yet |
//! | `oci.blob` | OCI pull: a layer blob fetched and verified into `tmp/oci-*`, not yet applied |
//! | `oci.layers` | OCI pull: every blob and layer tree in place, the image entry not yet written |
//!
//! The `stage1-*` steps kill the monitor (stage0 passes the variable on, and
//! `stage1-ns/src/crashpoint.rs` reaches them); beyond them the tests kill
//! the monitor, pod-init and qemu from outside, as an operator or the OOM
//! killer would.

/// The environment variable naming the step to die at.
pub const ENV: &str = "POD_TEST_KILL_AT";

/// Every step, in the order of the table above; the crash test iterates it.
pub const STEPS: &[&str] = &[
    "fetch.staged",
    "fetch.verified",
    "fetch.extracting",
    "fetch.extracted",
    "store.commit",
    "store.committed",
    "render.layer",
    "render.install",
    "render.installed",
    "prepare.embryo",
    "prepare.dirs",
    "prepare.volumes",
    "prepare.manifest",
    "prepare.invocation",
    "prepare.prepared",
    "run.running",
    "run.stage1",
    "stage1-ns.cgroups",
    "stage1-ns.network",
    "stage1-ns.running",
    "stage1-vm.mounted",
    "stage1-vm.qemu",
    "gc.garbage",
    "build.staged",
    "build.packed",
    "image.rm",
    "oci.manifest",
    "oci.verified",
    "oci.blob",
    "oci.layers",
];

/// Dies by SIGKILL if `POD_TEST_KILL_AT` names `step` (debug builds only).
#[cfg(debug_assertions)]
pub fn crashpoint(step: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(STEPS.contains(&step), "crashpoint {step:?} is not listed in STEPS");
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok());
    if armed.as_deref() == Some(step) {
        // One write (see stage1-ns's crashpoint: a shared pipe).
        let line = format!("pod: {ENV}={step}: SIGKILL\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        // raise(3) SIGKILL cannot be caught: it is a kill -9.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Release builds: no kill points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crashpoint(_step: &str) {}
