//! Twenty `pod fetch`es or `pod run`s of one image at once.

use super::*;

// ---------------------------------------------------------------------------
// Concurrency.

const RACERS: usize = 20;

/// Starts `RACERS` copies of `pod ARGS` at once and waits for all of them.
/// Each `pod run` names its pod `racer-<i>`: a pod's name is unique among
/// running pods.
fn race(live: &Live, args: &[&str], limit: Duration) -> Vec<Output> {
    let started = Instant::now();
    let handles: Vec<_> = (0..RACERS)
        .map(|i| {
            let name = format!("racer-{i}");
            let cmd = match args {
                ["run", rest @ ..] => live.cmd(&[&["run", "--name", &name][..], rest].concat()),
                _ => live.cmd(args),
            };
            let what = args.join(" ");
            std::thread::spawn(move || output_within(cmd, limit, &what))
        })
        .collect();
    let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("{RACERS} x `pod {}` at once: {:.1?}", args[0], started.elapsed());
    for (i, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "racer {i} of {RACERS} failed:\n{}", describe(args, out));
    }
    outs
}

/// An environment trusting the example key, with an empty store.
fn empty_store(net: bool) -> Live {
    let live = if net { Live::with_net(&[Example::Busybox]) } else { Live::new(&[Example::Busybox]) };
    live.ok(&["image", "rm", BUSYBOX]);
    live.ok(&["image", "gc"]);
    assert!(live.image_dirs().is_empty() && live.trees().is_empty(), "an empty store");
    live
}

// 20 `pod fetch` of one signed image into an empty store: every one
// succeeds with the same ID, and the store holds one verified entry, one
// tree, and no temp files.
#[test]
fn twenty_concurrent_fetches_of_one_image_make_one_entry() {
    let _turn = serial();
    let aci = example_image(Example::Busybox);
    let live = empty_store(false);
    let outs = race(&live, &["fetch", p(&aci)], Duration::from_secs(180));
    let ids: std::collections::BTreeSet<String> =
        outs.iter().map(|o| assert_id(&String::from_utf8_lossy(&o.stdout))).collect();
    assert_eq!(ids.len(), 1, "every fetch printed the same ID: {ids:?}");
    assert_eq!(live.image_dirs().len(), 1, "one store entry: {:?}", live.image_dirs());
    assert_eq!(live.trees().len(), 1, "one rendered tree: {:?}", live.trees());
    assert_store_sound(&live, "after 20 concurrent fetches");
    assert_eq!(live.list().len(), 1, "pod image list shows one image");
    eprintln!("20 concurrent fetches: one ID, one entry, one tree, verified, no temp files");
}

// 20 `pod run` of one image at once, twice: into an empty store (all 20
// fetch, verify, extract and render it concurrently), then with the image
// stored. Every pod exits 0 with its output; one entry and one tree; gc
// leaves the host as before.
#[test]
fn twenty_concurrent_runs_of_one_image_all_succeed() {
    let _turn = serial();
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    let aci = example_image(Example::Busybox);
    let live = empty_store(false);
    let footprint = Footprint::take(&live);
    let pod_file = |name: &str, image: &str| {
        live.pod_file(
            name,
            &format!(
                "name: {name}\nnetwork: none\napps:\n- name: a\n  image: {image}\n  \
                 exec: [/bin/sh, -c, \"echo racing {name}\"]\n"
            ),
        )
    };
    let by_file = pod_file("by-file", p(&aci));
    let by_name = pod_file("by-name", BUSYBOX);
    for (round, file) in [("empty store", &by_file), ("image stored", &by_name)] {
        let outs = race(&live, &["run", p(file)], Duration::from_secs(300));
        let stem = file.file_stem().unwrap().to_string_lossy();
        for out in &outs {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(&format!("[a] racing {stem}")), "{}", describe(&["run"], out));
        }
        assert_eq!(live.image_dirs().len(), 1, "{round}: one store entry: {:?}", live.image_dirs());
        assert_eq!(live.trees().len(), 1, "{round}: one rendered tree: {:?}", live.trees());
        let pods = live.pods();
        assert_eq!(pods.len(), RACERS, "{round}: one pod per run: {pods:?}");
        assert!(pods.iter().all(|e| e["state"] == "exited"), "{round}: every pod exited: {pods:?}");
        let uuids = pod_uuids(&live);
        gc_ok(&live, round);
        assert_store_sound(&live, &format!("{round}: after 20 concurrent runs and gc"));
        let left = footprint.left(&uuids);
        assert!(left.is_empty(), "{round}: left on the host: {left:#?}");
        eprintln!("{round}: 20 concurrent runs exited 0; one entry, one tree; gc left nothing");
    }

    // And with `pod gc` running over and over meanwhile: gc takes neither a
    // pod being prepared nor one running, and gcs never trip on each other.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gcs: Vec<_> = (0..3)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            let cmd = || live.cmd(&["gc"]);
            let mut cmds: Vec<Command> = (0..200).map(|_| cmd()).collect();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some(c) = cmds.pop() else { break };
                    let out = output_within(c, Duration::from_secs(60), "gc");
                    assert!(out.status.success(), "a gc beside the runs failed:\n{}", describe(&["gc"], &out));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let outs = race(&live, &["run", p(&by_name)], Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds: usize = gcs.into_iter().map(|h| h.join().unwrap()).sum();
    for out in &outs {
        assert!(String::from_utf8_lossy(&out.stdout).contains("[a] racing by-name"), "{}", describe(&["run"], out));
    }
    let uuids = pod_uuids(&live);
    gc_ok(&live, "after runs beside gcs");
    assert_store_sound(&live, "after 20 concurrent runs beside gcs");
    let left = footprint.left(&uuids);
    assert!(left.is_empty(), "runs beside gcs: left on the host: {left:#?}");
    eprintln!("20 concurrent runs beside {rounds} concurrent gcs: all exited 0; gc left nothing");
}
