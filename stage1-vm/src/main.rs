//! `pod-stage1-vm`: the VM stage1. stage0 execs it as
//! `pod-stage1-vm [--stream-logs] POD_DIR` (run the pod in a qemu VM, exit
//! with its status), `pod-stage1-vm gc POD_DIR` (clean up after a pod
//! whose stage1 died) or, for a running pod, `pod-stage1-vm add-app|rm-app
//! POD_DIR APP` (see addapp.rs) and `pod-stage1-vm stats POD_DIR` (one
//! usage sample as JSON: see sample.rs). See spec::stage1 and spec::vm for
//! the contracts.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: pod-stage1-vm [--stream-logs] POD_DIR | pod-stage1-vm gc|stats POD_DIR | pod-stage1-vm add-app|rm-app POD_DIR APP"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The pod's lock fd (POD_LOCK_FD) stays open in this process, which
    // holds the pod "running"; sanitize makes it close-on-exec so qemu does
    // not hold it past us.
    stage1_ns::sanitize();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["gc", dir] => match stage1_vm::monitor::gc(&PathBuf::from(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pod-stage1-vm: gc: {e}");
                ExitCode::from(1)
            }
        },
        ["stats", dir] => match stage1_vm::sample::sample(&PathBuf::from(dir)) {
            Ok(sample) => {
                println!("{}", serde_json::to_string(&sample).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pod-stage1-vm: stats: {e}");
                ExitCode::from(1)
            }
        },
        [verb @ ("add-app" | "rm-app"), dir, app] => {
            let Ok(app) = spec::AcName::new(*app) else { return usage() };
            let dir = PathBuf::from(dir);
            let done = if *verb == "add-app" {
                stage1_vm::addapp::add(&dir, &app)
            } else {
                stage1_vm::addapp::remove(&dir, &app)
            };
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pod-stage1-vm: {verb} {app}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        [flag @ .., dir] if flag.iter().all(|f| *f == "--stream-logs") => {
            match stage1_vm::monitor::run(&PathBuf::from(dir), !flag.is_empty()) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
                Err(e) => {
                    eprintln!("pod-stage1-vm: {e}");
                    // 125: the pod could not be started (as stage1-ns).
                    ExitCode::from(125)
                }
            }
        }
        _ => usage(),
    }
}
