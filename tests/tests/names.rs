//! Pod names are unique among live pods, as podman's container names: `pod
//! run` refuses a second pod named as a running one (exit 7, nothing
//! created), `--name` names a pod apart from its file, `--replace` stops and
//! removes the running one first, and a name is free again once its pod
//! has exited. Needs root; reports a skip without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const EXIT_CONFLICT: i32 = 7;

fn sleeper(live: &Live, name: &str) -> std::path::PathBuf {
    let yaml = format!(
        "name: {name}\nnetwork: none\napps:\n  - name: s\n    image: example.com/busybox:1.35\n    \
         exec: [/bin/busybox, sleep, \"1000\"]\n    stopTimeout: 1s\n"
    );
    live.pod_file(name, &yaml)
}

fn running(live: &Live) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = live
        .pods()
        .into_iter()
        .filter(|p| p["state"] == "running")
        .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p["uuid"].as_str().unwrap_or_default().to_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_running_pods_name_is_refused_to_a_second_pod_until_replaced_or_exited() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = sleeper(&live, "twin");
    let first = live.start(&file);

    let before = live.pods().len();
    let err = live.fails(&["run", "-d", p(&file)], EXIT_CONFLICT);
    assert_mentions(&err, &["a pod named twin is running", &first, "--replace"]);
    assert_eq!(live.pods().len(), before, "a refused pod leaves no pod directory");

    // Another name: both run, and the name finds the first.
    let other = live.ok(&["run", "-d", "--name", "twin-b", p(&file)]).trim().to_owned();
    assert_eq!(running(&live), [("twin".to_owned(), first.clone()), ("twin-b".to_owned(), other.clone())]);
    assert_eq!(live.status("twin")["uuid"], first.as_str());

    // --replace: the first is stopped and removed, the new one takes the name.
    let third = live.ok(&["run", "-d", "--replace", p(&file)]).trim().to_owned();
    assert_ne!(third, first);
    assert!(live.listed(&first).is_none(), "the replaced pod is removed");
    assert_eq!(running(&live), [("twin".to_owned(), third.clone()), ("twin-b".to_owned(), other.clone())]);
    assert_eq!(live.status("twin")["uuid"], third.as_str());

    // Once its pod has exited, the name is free.
    live.ok(&["stop", &third]);
    let fourth = live.ok(&["run", "-d", p(&file)]).trim().to_owned();
    assert_eq!(live.status(&fourth)["name"], "twin");
    for uuid in [&fourth, &other] {
        live.ok(&["stop", uuid]);
    }
    live.ok(&["gc"]);
    let names = live.data.join("pods/names");
    let left: Vec<_> =
        std::fs::read_dir(&names).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "gc prunes the names of removed pods: {left:?}");
}

#[test]
fn of_concurrent_pods_of_one_name_one_runs() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let live = Live::new(&[Example::Busybox]);
    let file = sleeper(&live, "racer");
    let outs: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4).map(|_| s.spawn(|| live.run_within(&["run", "-d", p(&file)], LIMIT))).collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one runs: {outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(EXIT_CONFLICT), "{o:?}");
        assert_mentions_any(&String::from_utf8_lossy(&o.stderr), &["is running", "is being started"]);
    }
    let uuid = String::from_utf8_lossy(&won[0].stdout).trim().to_owned();
    assert_eq!(running(&live), [("racer".to_owned(), uuid.clone())]);
    live.ok(&["stop", &uuid]);
}
