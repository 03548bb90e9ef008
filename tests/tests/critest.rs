//! critest, the Kubernetes node team's CRI validation suite (cri-tools
//! v1.37.0, built by scripts/build-cri-tools.sh), against `pod cri serve`:
//! a local registry serves signed stand-ins for the public images critest
//! names (critest/images.rs) through pod's registry mirrors, a CNI network
//! of the test's own makes the network ready, and critest runs with the
//! namespace handler (all specs) and with `pod-vm` (the sandbox and
//! container lifecycle). Each run prints its counts and every failure and
//! skip with its reason.
//!
//! Runs wherever critest is installed (else a visible SKIP);
//! `POD_TEST_CRITEST=0` opts out. `POD_TEST_CRITEST_FOCUS=REGEX` runs only
//! the specs it matches (ginkgo's focus). A run fails when a spec that is
//! not optional (`[Feature:...]`) fails.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "critest/images.rs"]
mod images;
#[path = "critest/report.rs"]
mod report;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use report::Outcome;

const CRITEST_INSTALLED: &str = "/usr/local/lib/pod-test/bin/critest";

/// Specs left out, each with why: what no local setup can reproduce.
const SKIPPED: &[(&str, &str)] = &[(
    "public image with digest should be pulled and removed",
    "pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2...: a public digest, which no \
         locally built image can have",
)];

/// Skipped when its stand-in could not be built.
const NO_NONEWPRIVS: (&str, &str) = (
    "NoNewPrivs",
    "registry.k8s.io/e2e-test-images/nonewprivs:1.3 is a setuid-root program that prints its effective uid; \
     its stand-in is built with rustc, which failed",
);

/// Skipped when the stand-ins' sh runs busybox's applets itself.
const NO_PATH_LOOKUP: (&str, &str) = (
    "runtime should support MaskedPaths",
    "masks /bin/ls and expects `sh -c ls` to be denied; the stand-ins' busybox-static runs its ls applet without \
     looking in PATH (scripts/install-deps.sh unpacks Debian's dynamic busybox, which does not)",
);

fn critest_bin() -> Result<PathBuf, Skip> {
    if std::env::var("POD_TEST_CRITEST").as_deref() == Ok("0") {
        return Err(Skip("POD_TEST_CRITEST=0 opts out of critest".into()));
    }
    if let Some(c) = std::env::var_os("POD_TEST_CRITEST_BIN") {
        return which(&c.to_string_lossy())
            .ok_or_else(|| Skip(format!("critest not found: POD_TEST_CRITEST_BIN={c:?}")));
    }
    which(CRITEST_INSTALLED)
        .or_else(|| which("critest"))
        .ok_or_else(|| Skip("critest not found (scripts/build-cri-tools.sh builds it)".into()))
}

/// The host's System V shared memory segments: `(shmid, bytes, attached)`.
fn shm_segments() -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    // key shmid perms size cpid lpid nattch ...
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.to_string(), f.get(3)?.parse().ok()?, f.get(6)?.parse().ok()?))
        })
        .collect()
}

/// critest's HostIpc specs make a 1 MiB segment on the host (`ipcmk -M
/// 1048576`) and leave it: the run's new, unattached segments of that size
/// go.
fn remove_critests_segments(before: &[(String, u64, u64)]) {
    for (id, bytes, attached) in shm_segments() {
        if bytes == 1_048_576 && attached == 0 && !before.iter().any(|(b, ..)| *b == id) {
            let _ = Command::new("ipcrm").args(["-m", &id]).status();
        }
    }
}

/// A regex matching any of `texts` literally.
fn any_of(texts: &[&str]) -> String {
    texts
        .iter()
        .map(|t| {
            t.chars().fold(String::new(), |mut s, c| {
                if "\\.+*?()|[]{}^$".contains(c) {
                    s.push('\\');
                }
                s.push(c);
                s
            })
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Sets up the registry, stand-ins, mirrors, trust and network, starts
/// `pod cri serve`, runs critest with `args` and returns its specs.
fn run_critest(title: &str, args: &[String]) -> Option<Vec<report::Spec>> {
    let critest = match critest_bin() {
        Ok(c) => c,
        Err(skip) => {
            eprintln!("SKIP: {skip}");
            return None;
        }
    };
    if let Some(why) = skip_reason(true) {
        eprintln!("SKIP: {why}");
        return None;
    }
    if let Err(skip) = cosign_bin() {
        eprintln!("SKIP: {skip}");
        return None;
    }
    let live = Live::with_net(&[]);
    host_route_to_pods(live.net.as_ref().unwrap());
    let reg = match Registry::start(&live.work.join("registry"), RegistryOpts::https()) {
        Ok(r) => r,
        Err(skip) => {
            eprintln!("SKIP: {skip}");
            return None;
        }
    };
    let key = cosign_generate_key_pair(&live.work.join("cosign"), "pw").unwrap();
    let started = Instant::now();
    let published = match images::publish(&live.work, &reg, &key) {
        Ok(p) => p,
        Err(skip) => {
            eprintln!("SKIP: {skip}");
            return None;
        }
    };
    eprintln!("{} stand-in image names published in {:.1?}", published.names, started.elapsed());
    let mut skipped = SKIPPED.to_vec();
    if !published.nonewprivs {
        skipped.push(NO_NONEWPRIVS);
    }
    if !published.path_lookup {
        skipped.push(NO_PATH_LOOKUP);
    }
    images::configure(&live, &reg, &key);
    let s = CriServer::start(&live, &["--ca-cert", p(reg.ca_cert()), "--authfile", p(reg.auth_json())]).unwrap();

    let endpoint = format!("unix://{}", s.socket.display());
    let json = live.work.join("critest-report.json");
    let output = live.work.join("critest.out");
    let skip_texts: Vec<&str> = skipped.iter().map(|(t, _)| *t).collect();
    let mut cmd = Command::new(&critest);
    cmd.arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg(format!("--test-images-file={}", images::images_file(&live.work).display()))
        // One spec at a time: critest's default (`--parallel=1` itself
        // trips ginkgo's check against go test's -parallel).
        .arg(format!("--ginkgo.skip={}", any_of(&skip_texts)))
        .arg(format!("--ginkgo.json-report={}", json.display()))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=75m")
        .args(args)
        // The test's own focus (ginkgo ORs several) wins over the variable.
        .args(
            std::env::var("POD_TEST_CRITEST_FOCUS")
                .ok()
                .filter(|_| !args.iter().any(|a| a.starts_with("--ginkgo.focus")))
                .map(|f| format!("--ginkgo.focus={f}")),
        )
        .current_dir(&live.work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::from(std::fs::File::create(live.work.join("critest.err")).unwrap()));
    let started = Instant::now();
    let segments_before = shm_segments();
    let status = cmd.status().unwrap();
    remove_critests_segments(&segments_before);
    eprintln!(
        "critest ({title}) exited with {status} after {:.0?}; its output: {}",
        started.elapsed(),
        output.display()
    );
    let read = |f: &str| std::fs::read_to_string(live.work.join(f)).unwrap_or_default();
    assert!(json.is_file(), "critest wrote no report:\n{}\n{}", read("critest.out"), read("critest.err"));
    let specs = report::read(&json);
    for (text, why) in &skipped {
        eprintln!("skipped on purpose: {text}: {why}");
    }
    eprintln!("{}", report::summary(title, &specs));
    if std::env::var_os("POD_TEST_CRITEST_KEEP").is_some() {
        let keep = live.root().with_extension("kept");
        let _ = Command::new("cp").args(["-a", p(&live.work), p(&keep)]).status();
        eprintln!("kept the run's files in {}", keep.display());
    }
    drop(s);
    Some(specs)
}

/// critest fetches pages from pod IPs: the test network's bridge (which
/// the CNI plugin would make without an address, as no gateway is wanted)
/// is made first, with the subnet's first address (host-local leaves it to
/// the gateway), so the host reaches its pods over it, and never through
/// its default route. No forwarding is involved. `Live` deletes the bridge
/// on drop.
fn host_route_to_pods(net: &TestNet) {
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["link", "add", &net.bridge, "type", "bridge"]);
    ip(&["addr", "add", &format!("{}1/24", net.prefix), "dev", &net.bridge]);
    ip(&["link", "set", &net.bridge, "up"]);
}

fn assert_no_failures(specs: &[report::Spec]) {
    let failed: Vec<&str> = specs
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)) && !s.optional())
        .map(|s| s.name.as_str())
        .collect();
    assert!(failed.is_empty(), "{} critest specs failed (listed above): {failed:#?}", failed.len());
}

#[test]
fn critest_with_the_namespace_handler() {
    // POD_TEST_CRITEST_FOCUS: only the specs whose text matches (a regexp).
    let focus: Vec<String> =
        std::env::var("POD_TEST_CRITEST_FOCUS").map(|f| format!("--ginkgo.focus={f}")).into_iter().collect();
    let Some(specs) = run_critest("critest, handler pod", &focus) else { return };
    assert!(specs.iter().any(|s| s.outcome == Outcome::Passed), "no spec passed");
    assert_no_failures(&specs);
}

#[test]
fn critest_lifecycle_with_the_vm_handler() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let focus = any_of(&["basic operations on PodSandbox", "basic operations on container"]);
    let args = ["--runtime-handler=pod-vm".to_owned(), format!("--ginkgo.focus={focus}")];
    let Some(specs) = run_critest("critest, handler pod-vm, lifecycle", &args) else { return };
    assert!(specs.iter().any(|s| s.outcome == Outcome::Passed), "no spec passed");
    assert_no_failures(&specs);
}
