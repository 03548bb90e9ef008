//! Hostile pod files given to `pod run`: YAML bombs, oversized or malformed
//! files and fields, contradictory apps, ports and volumes, and host volumes
//! aimed at the host's sensitive directories or at pod's own state. Each is
//! refused with exit 5 and a message naming the file and the field (or
//! volume and resolved path) before anything is fetched or written: the
//! store and the pods directory stay as they were. No pod starts here: the
//! images named do not exist, so a check that let a file through would
//! fail differently (exit 4), not run anything.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A store holding one image, so that "untouched" means something.
fn seeded() -> Pod {
    common::seeded().0
}

/// One app of an image that is nowhere: `extra` holds more of its fields,
/// indented as they are.
fn app(name: &str, extra: &str) -> String {
    format!("  - name: {name}\n    image: example.com/absent:1\n{extra}")
}

/// `pod run FILE` with `bytes` as FILE: exit 5 naming the file and `words`,
/// nothing written to the store or the pods. Returns stderr.
fn refused_bytes(pod: &Pod, stem: &str, bytes: &[u8], words: &[&str]) -> String {
    let file = pod.work.join(format!("{stem}.yaml"));
    fs::write(&file, bytes).unwrap();
    let before = pod.snapshot();
    let err = pod.fails(&["run", p(&file)], EXIT_INVALID);
    eprintln!("pod said: {err}");
    assert_mentions(&err, &[&format!("{stem}.yaml")]);
    assert_mentions(&err, words);
    pod.assert_untouched(&before, stem);
    assert!(!pod.data.join("pods").exists() || pod_dirs(pod).is_empty(), "pods: {:?}", pod_dirs(pod));
    err
}

fn refused(pod: &Pod, stem: &str, yaml: &str, words: &[&str]) -> String {
    refused_bytes(pod, stem, yaml.as_bytes(), words)
}

fn pod_dirs(pod: &Pod) -> Vec<PathBuf> {
    ["embryo", "prepared", "run", "exited", "garbage"]
        .iter()
        .flat_map(|s| fs::read_dir(pod.data.join("pods").join(s)).into_iter().flatten().flatten().map(|e| e.path()))
        .collect()
}

// ---------------------------------------------------------------------------
// The file as a whole.

#[test]
fn billion_laughs_is_refused_fast() {
    let pod = seeded();
    let mut y =
        String::from("a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        y.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    y.push_str(&format!("name: lol\napps:\n{}", app("a", "    env: { X: *a9 }\n")));
    let start = Instant::now();
    refused(&pod, "laughs", &y, &["alias bomb"]);
    assert!(start.elapsed() < Duration::from_secs(5), "the bomb took {:?} to refuse", start.elapsed());
}

#[test]
fn deeply_nested_yaml_is_refused() {
    let pod = seeded();
    let y = format!("name: deep\napps:\n{}annotations: {}1{}\n", app("a", ""), "[".repeat(100), "]".repeat(100));
    refused(&pod, "deep", &y, &["nested deeper than 32"]);
}

#[test]
fn pod_file_over_the_size_limit_is_refused() {
    let pod = seeded();
    let mut y = format!("name: big\napps:\n{}", app("a", ""));
    y.push_str(&format!("# {}\n", "x".repeat(1 << 20)));
    refused(&pod, "big", &y, &["bytes; the limit is 1048576"]);
}

#[test]
fn pod_file_that_is_not_utf8_is_refused() {
    let pod = seeded();
    let mut y = format!("name: bin\napps:\n{}", app("a", "")).into_bytes();
    y.extend_from_slice(b"annotations: { example.com/x: \"\xff\xfe\" }\n");
    refused_bytes(&pod, "binary", &y, &["line 5", "not UTF-8"]);
}

#[test]
fn duplicate_keys_are_refused() {
    let pod = seeded();
    let y = format!("name: dup\nname: other\napps:\n{}", app("a", ""));
    refused(&pod, "dupkey", &y, &["line 2", "duplicate key \"name\""]);
}

#[test]
fn oversized_string_is_refused() {
    let pod = seeded();
    let y = format!("name: long\napps:\n{}", app("a", &format!("    env: {{ BIG: \"{}\" }}\n", "x".repeat(70_000))));
    refused(&pod, "longstring", &y, &["apps[0].env.BIG", "70000 bytes", "65536"]);
}

// ---------------------------------------------------------------------------
// Apps.

#[test]
fn duplicate_app_names_are_refused() {
    let pod = seeded();
    let y = format!("name: twins\napps:\n{}{}", app("web", ""), app("web", ""));
    refused(&pod, "twins", &y, &["apps[1].name", "a second app named web"]);
}

#[test]
fn too_many_apps_are_refused() {
    let pod = seeded();
    let apps: String = (0..257).map(|i| app(&format!("a{i}"), "")).collect();
    refused(&pod, "crowd", &format!("name: crowd\napps:\n{apps}"), &["apps", "257 entries", "256"]);
}

#[test]
fn absurd_resources_are_refused() {
    let pod = seeded();
    let y = format!("name: res\napps:\n{}", app("a", "    resources: { memory: 1e30 }\n"));
    refused(&pod, "memory", &y, &["apps[0].resources.memory", "1e30", "not a size"]);
    let y = format!("name: res\napps:\n{}", app("a", "    resources: { memory: 99999999999999Ti }\n"));
    refused(&pod, "memory-overflow", &y, &["apps[0].resources.memory"]);
    let y = format!("name: res\napps:\n{}", app("a", "    resources: { cpu: -1 }\n"));
    refused(&pod, "cpu", &y, &["apps[0].resources.cpu", "-1"]);
    let y = format!("name: res\napps:\n{}", app("a", "    resources: { pids: 0 }\n"));
    refused(&pod, "pids", &y, &["apps[0].resources.pids", "zero"]);
}

#[test]
fn ports_out_of_range_are_refused() {
    let pod = seeded();
    for (stem, port) in [("port-zero", "0"), ("port-big", "70000"), ("port-neg", "-80")] {
        let y = format!("name: ports\napps:\n{}", app("a", &format!("    ports: [{{ name: http, host: {port} }}]\n")));
        refused(&pod, stem, &y, &["apps[0].ports[0].host", "1-65535"]);
    }
}

#[test]
fn one_host_port_published_twice_is_refused() {
    let pod = seeded();
    let y = format!(
        "name: clash\napps:\n{}{}",
        app("a", "    ports: [{ name: http, host: 8080 }]\n"),
        app("b", "    ports: [{ name: web, host: 8080, hostIP: 127.0.0.1 }]\n"),
    );
    refused(&pod, "clash", &y, &["apps[1].ports[0].host", "8080", "already published by apps[0].ports[0]"]);
}

// ---------------------------------------------------------------------------
// Volumes and mounts.

#[test]
fn relative_paths_are_refused() {
    let pod = seeded();
    let y = format!("name: rel\napps:\n{}volumes:\n  - {{ name: data, kind: host, source: srv/data }}\n", app("a", ""));
    refused(&pod, "relative-source", &y, &["volumes[0].source", "not absolute"]);
    let y = format!(
        "name: rel\napps:\n{}volumes:\n  - {{ name: data, kind: empty }}\n",
        app("a", "    mounts: [{ volume: data, path: var/data }]\n")
    );
    refused(&pod, "relative-mount", &y, &["apps[0].mounts[0].path", "not absolute"]);
    let y = format!(
        "name: rel\napps:\n{}volumes:\n  - {{ name: data, kind: empty }}\n",
        app("a", "    mounts: [{ volume: data, path: /data/../../etc }]\n")
    );
    refused(&pod, "dotdot-mount", &y, &["apps[0].mounts[0].path", "'..'"]);
}

#[test]
fn mount_of_an_undeclared_volume_is_refused() {
    let pod = seeded();
    let y = format!(
        "name: ghost\napps:\n{}volumes:\n  - {{ name: data, kind: empty }}\n",
        app("a", "    mounts: [{ volume: cache, path: /cache }]\n")
    );
    refused(&pod, "ghost", &y, &["apps[0].mounts[0].volume", "no volume named cache", "data"]);
}

// ---------------------------------------------------------------------------
// Host volumes: resolved, then checked against the built-in deny list, pod's
// own state and the operator's allowlist.

fn host_volume(source: &Path) -> String {
    format!(
        "name: host\napps:\n{}volumes:\n  - {{ name: hostdir, kind: host, source: {}, readOnly: true }}\n",
        app("a", "    mounts: [{ volume: hostdir, path: /mnt }]\n"),
        source.display()
    )
}

/// Refused naming the file, `volumes[0] (hostdir)`, and `resolved`.
fn refused_host(pod: &Pod, stem: &str, source: &Path, resolved: &Path, words: &[&str]) -> String {
    let err = refused(pod, stem, &host_volume(source), &["volumes[0] (hostdir)", p(resolved)]);
    assert_mentions(&err, words);
    err
}

#[test]
fn host_volume_symlinked_to_etc_is_refused() {
    let pod = seeded();
    let link = pod.work.join("innocent");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let err = refused_host(&pod, "to-etc", &link, Path::new("/etc"), &["resolves to /etc", "never mounted"]);
    assert_mentions(&err, &[p(&link)]);
}

#[test]
fn host_volume_through_a_symlinked_directory_into_proc_is_refused() {
    let pod = seeded();
    let link = pod.work.join("kernel");
    std::os::unix::fs::symlink("/proc", &link).unwrap();
    refused_host(&pod, "to-proc", &link.join("sys"), Path::new("/proc/sys"), &["/proc or under it"]);
}

#[test]
fn host_volume_of_the_store_or_the_trusted_keys_is_refused() {
    let pod = seeded();
    let data = pod.data.canonicalize().unwrap();
    refused_host(&pod, "store", &pod.data.join("images"), &data.join("images"), &["pod's own state"]);
    let config = pod.config.canonicalize().unwrap();
    refused_host(&pod, "trust", &pod.config.join("trust"), &config.join("trust"), &["pod's own state"]);
    // A directory that holds them both.
    let root = pod.root().canonicalize().unwrap();
    refused_host(&pod, "parent", pod.root(), &root, &["contains pod's own state"]);
}

#[test]
fn host_volume_of_a_system_directory_is_refused() {
    let pod = seeded();
    for (stem, dir, why) in [
        ("usr", "/usr", "system directory"),
        ("root-home", "/root", "/root or under it"),
        ("slash", "/", "contains pod's own state"),
        ("dev-shm", "/dev/shm", "/dev or under it"),
    ] {
        refused_host(&pod, stem, Path::new(dir), Path::new(dir), &[why]);
    }
}

#[test]
fn host_volume_outside_the_operators_allowlist_is_refused() {
    let pod = seeded();
    let allowed = pod.work.join("srv/www");
    let other = pod.work.join("srv/private");
    fs::create_dir_all(&allowed).unwrap();
    fs::create_dir_all(&other).unwrap();
    let list = pod.config.join("host-volumes");
    fs::write(&list, format!("# what pods may mount\n{}\n", allowed.display())).unwrap();
    let err = refused_host(&pod, "not-allowed", &other, &other.canonicalize().unwrap(), &["not under any directory"]);
    assert_mentions(&err, &[p(&list), p(&allowed)]);

    // A symlink inside the allowed directory does not carry a volume out.
    let link = allowed.join("escape");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    refused_host(&pod, "escape", &link, &other.canonicalize().unwrap(), &["not under any directory"]);
}

#[test]
fn host_volume_that_is_missing_or_a_file_is_refused() {
    let pod = seeded();
    let missing = pod.work.join("nowhere");
    refused(&pod, "missing", &host_volume(&missing), &["volumes[0] (hostdir)", p(&missing), "No such file"]);
    let file = pod.work.join("a-file");
    fs::write(&file, "x").unwrap();
    refused_host(&pod, "file", &file, &file.canonicalize().unwrap(), &["not a directory"]);
}

/// The other side of the policy: an allowed host volume, reached through a
/// symlink, is mounted (through stage1's pinned fd) and works both ways.
#[test]
fn allowed_host_volume_is_mounted_at_its_resolved_path() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let share = live.work.join("srv/share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("in"), "from the host\n").unwrap();
    fs::write(live.config.join("host-volumes"), format!("{}\n", live.work.join("srv").display())).unwrap();
    let link = live.work.join("share-link");
    std::os::unix::fs::symlink(&share, &link).unwrap();
    let yaml = format!(
        "name: share\nnetwork: none\napps:\n  - name: a\n    image: {}\n    \
         exec: [/bin/sh, -c, \"cat /mnt/in && echo from the pod > /mnt/out\"]\n    \
         mounts: [{{ volume: share, path: /mnt }}]\nvolumes:\n  - {{ name: share, kind: host, source: {} }}\n",
        Example::Busybox.reference(),
        link.display()
    );
    let file = live.pod_file("share", &yaml);
    let out = live.run_within(&["run", p(&file)], Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&["run", p(&file)], &out));
    assert_mentions(&String::from_utf8_lossy(&out.stdout), &["from the host"]);
    assert_eq!(fs::read_to_string(share.join("out")).unwrap(), "from the pod\n");
    let resolved = fs::read_dir(live.data.join("pods"))
        .unwrap()
        .flatten()
        .flat_map(|s| fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter_map(|d| fs::read_to_string(d.path().join("pod.json")).ok())
        .collect::<String>();
    assert!(
        resolved.contains(p(&share.canonicalize().unwrap())),
        "pod.json does not hold the resolved path:\n{resolved}"
    );
}
