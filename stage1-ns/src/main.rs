//! `pod-stage1-ns`: the namespace stage1. stage0 execs it as
//! `pod-stage1-ns [--stream-logs] POD_DIR` (run the pod, exit with its
//! status) or `pod-stage1-ns gc POD_DIR` (clean up after a pod whose stage1
//! died), or, for a running pod, `pod-stage1-ns add-app POD_DIR APP`
//! (set up an app stage0 added to its `pod.json`) and `pod-stage1-ns
//! rm-app POD_DIR APP` (remove one: see addapp.rs), and `pod-stage1-ns
//! stats POD_DIR` (one usage sample as JSON: see sample.rs). See
//! spec::stage1 for the contract. A monitor whose pod has run a while
//! re-execs itself with the same argv into the lean supervisor
//! (supervise.rs), which finds its state in `POD_STAGE1_SUPERVISE`.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: pod-stage1-ns [--stream-logs] POD_DIR | pod-stage1-ns gc|stats POD_DIR | pod-stage1-ns add-app|rm-app POD_DIR APP"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lock_fd = std::env::var(spec::stage1::LOCK_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok());
    // Set only by the monitor's own re-exec (supervise.rs).
    let resumed = std::env::var(stage1_ns::supervise::STATE_ENV).ok();
    stage1_ns::sanitize();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["gc", dir] => match stage1_ns::monitor::gc(&PathBuf::from(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pod-stage1-ns: gc: {e}");
                ExitCode::from(1)
            }
        },
        ["stats", dir] => match stage1_ns::sample::sample(&PathBuf::from(dir)) {
            Ok(sample) => {
                println!("{}", serde_json::to_string(&sample).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pod-stage1-ns: stats: {e}");
                ExitCode::from(1)
            }
        },
        [verb @ ("add-app" | "rm-app"), dir, app] => {
            let Ok(app) = spec::AcName::new(*app) else { return usage() };
            let dir = PathBuf::from(dir);
            let done = if *verb == "add-app" {
                stage1_ns::addapp::add(&dir, &app)
            } else {
                stage1_ns::addapp::remove(&dir, &app)
            };
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pod-stage1-ns: {verb} {app}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        [flag @ .., dir] if flag.iter().all(|f| *f == "--stream-logs") => {
            let dir = PathBuf::from(dir);
            let done = match &resumed {
                Some(state) => stage1_ns::supervise::resume(&dir, state),
                None => stage1_ns::monitor::run(&dir, !flag.is_empty(), lock_fd),
            };
            match done {
                Ok(code) => ExitCode::from(spec::stage1::exit_code(code)),
                Err(e) => {
                    eprintln!("pod-stage1-ns: {e}");
                    // 125: the pod could not be started (as podman and
                    // systemd-nspawn use it).
                    ExitCode::from(125)
                }
            }
        }
        _ => usage(),
    }
}
