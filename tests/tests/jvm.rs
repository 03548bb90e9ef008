//! A JVM from Debian's openjdk-17-jre-headless (manifests/images/openjdk.yaml)
//! sizes itself from its app's limits, as it does under docker: the heap from
//! a 256Mi memory limit (what it makes of `-XX:MaxRAM=256m`), the processor
//! count from a CPU limit, and both from the host without limits. Tier b: needs root and Debian's archive (the image is
//! built once with `pod image build`); reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const JAVA: &str = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java";
const MIB: u64 = 1024 * 1024;
/// A JVM starts in well under a second here; CI hosts are slower.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Why this host cannot run the test, if it cannot.
fn skip_reason_jvm() -> Option<String> {
    if let Some(why) = skip_reason(false) {
        return Some(why);
    }
    // The image's packages must be known to apt and the archive reachable:
    // java-common (a few KB, of the same archive) is the probe.
    let dir = tempfile::tempdir().unwrap();
    match Command::new("apt-get").args(["download", "-q", "java-common"]).current_dir(dir.path()).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => {
            Some(format!("apt-get download java-common failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
        Err(e) => Some(format!("apt-get not runnable: {e}")),
    }
}

/// A pod of one app, `java ARGS`, with `resources` (a YAML flow map) if any.
fn java_pod(name: &str, args: &[&str], resources: Option<&str>) -> String {
    let mut exec = vec![JAVA];
    exec.extend(args);
    let mut y = format!(
        "name: {name}\nnetwork: none\napps:\n  - name: java\n    image: {}\n    exec: {}\n",
        Example::Openjdk.reference(),
        serde_json::to_string(&exec).unwrap()
    );
    if let Some(r) = resources {
        y.push_str(&format!("    resources: {r}\n"));
    }
    y
}

/// Runs `yaml` in the foreground; the app's output, without its prefix.
fn run_java(live: &Live, name: &str, yaml: &str) -> String {
    let file = live.pod_file(name, yaml);
    let started = Instant::now();
    let out = live.run_within(&["run", "--net", "none", p(&file)], RUN_LIMIT);
    assert!(out.status.success(), "{}", describe(&["run", p(&file)], &out));
    eprintln!("{name}: the pod ran in {:.1?}", started.elapsed());
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().map(|l| l.trim_start_matches("[java] ")).collect::<Vec<_>>().join("\n")
}

/// A `size_t` flag's value in `-XX:+PrintFlagsFinal` output
/// (`   size_t MaxHeapSize    = 67108864    {product} {ergonomic}`).
fn flag(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.nth(1) == Some(name) && w.next() == Some("=")).then(|| w.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no {name} in the JVM's flags:\n{text}"))
}

/// `Effective CPU Count: N` of `-XshowSettings:system`: the processors the
/// JVM counts from its container metrics (cgroup v1 or v2).
fn effective_cpus(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Effective CPU Count:").and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `Effective CPU Count` in -XshowSettings:system:\n{text}"))
}

#[test]
fn a_jvm_sizes_its_heap_and_cpus_from_its_limits() {
    if let Some(why) = skip_reason_jvm() {
        eprintln!("SKIP: {why}");
        return;
    }
    let started = Instant::now();
    let live = Live::new(&[Example::Openjdk]);
    eprintln!("image built (or reused), signed and fetched in {:.1?}", started.elapsed());
    let host_mem = host_memory();
    let args = ["-XX:+PrintFlagsFinal", "-XshowSettings:system", "-version"];

    // What this JVM makes of 256Mi, told so on the command line: 126 MiB
    // here (a small memory gets at least the default 96M scaled, not 25%).
    let told = run_java(&live, "told", &java_pod("told", &["-XX:MaxRAM=268435456", args[0], "-version"], None));
    let want = flag(&told, "MaxHeapSize");
    assert!(want <= 128 * MIB, "MaxHeapSize for -XX:MaxRAM=256m is {want}:\n{told}");

    // The same, found under /sys/fs/cgroup.
    let limited = run_java(&live, "heap", &java_pod("heap", &args, Some("{ memory: 256Mi }")));
    let heap = flag(&limited, "MaxHeapSize");
    assert_eq!(heap, want, "MaxHeapSize under a 256Mi limit is not what the JVM makes of 256Mi:\n{limited}");
    assert!(limited.contains("Memory Limit: 256.00M"), "the JVM's own view of the limit:\n{limited}");

    // One CPU of this host's: the JVM counts one processor.
    let cpus = run_java(&live, "cpus", &java_pod("cpus", &args, Some("{ cpu: 1 }")));
    assert_eq!(effective_cpus(&cpus), 1, "a 1 CPU limit:\n{cpus}");
    assert!(cpus.contains("CPU Quota: 100000us"), "{cpus}");

    // No limit: the host's memory and CPUs, so the checks above can fail.
    let free = run_java(&live, "free", &java_pod("free", &args, None));
    let host_heap = flag(&free, "MaxHeapSize");
    assert!(
        host_heap > host_mem / 8 && host_heap >= 4 * heap,
        "MaxHeapSize without a limit is {host_heap}, host memory {host_mem}:\n{free}"
    );
    // More than the one CPU of the limit wherever this process has more
    // (a CI runner's own quota may make it fewer than the host's).
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let free_cpus = effective_cpus(&free);
    assert!(free_cpus >= host_cpus.min(2), "without a limit, the host's CPUs ({host_cpus} here):\n{free}");
    assert!(free.contains("Memory Limit: Unlimited"), "{free}");
    eprintln!(
        "MaxHeapSize: {heap} with 256Mi, {host_heap} without a limit (host {host_mem}); {:.1?} in all",
        started.elapsed()
    );
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn host_memory() -> u64 {
    let meminfo = std::fs::read_to_string(Path::new("/proc/meminfo")).unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
