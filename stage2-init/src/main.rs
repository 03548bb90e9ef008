//! `pod-init`: the pod's PID 1. A thin adapter over the `stage2_init`
//! library: arguments in, exit code out.
//!
//! `no_main`: glibc calls `main` below directly, skipping std's runtime
//! start-up. PID 1 has no use for it (a stack-overflow guard that parses
//! /proc/self/maps with sscanf, a signal alternate stack, SIGPIPE ignored:
//! the library does that itself), and in a static binary it costs some
//! 140 KB of resident text, most of the way to the 1 MB RSS budget. std's
//! `args_os` still works: glibc hands argv to std's `.init_array` hook.
// (Under `cargo test` the harness brings its own `main`.)
#![cfg_attr(not(test), no_main)]

use std::ffi::c_int;
use std::path::PathBuf;

use stage2_init::{Options, EXIT_INIT_FAILED};

const USAGE: &str = "usage: pod-init [--root DIR] [--sandbox] [--control-fd FD]

The pod's PID 1: starts the apps of DIR/units/<app>.unit (default DIR: /)
in dependency order, supervises them, and exits with the pod's status.
Writes DIR/status/<app>.json, DIR/status/pod.json and DIR/logs/<app>.log;
serves DIR/control.sock (inspect, stop and start apps). --sandbox: run with
no app, and outlive the apps until SIGTERM. --control-fd: DIR/control.sock
is already bound, listening on FD (stage1 binds it for a pod with a user
namespace).
Exit: 0 if every app succeeded, else the first failed app's code
(128+signal for a signal); 125 if pod-init itself failed.";

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Options),
    Help,
    Version,
}

fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Command, String> {
    let mut root = PathBuf::from("/");
    let mut sandbox = false;
    let mut control_fd = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--root") => root = args.next().ok_or("--root needs a directory")?.into(),
            Some(a) if a.starts_with("--root=") => root = a.trim_start_matches("--root=").into(),
            Some("--sandbox") => sandbox = true,
            Some("--control-fd") => {
                let fd = args.next().and_then(|f| f.to_str().and_then(|f| f.parse::<i32>().ok()));
                control_fd = Some(fd.filter(|fd| *fd > 2).ok_or("--control-fd needs an open fd above 2")?);
            }
            Some("-h" | "--help") => return Ok(Command::Help),
            Some("--version") => return Ok(Command::Version),
            _ => return Err(format!("unexpected argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(Command::Run(Options { sandbox, control_fd, ..Options::new(root) }))
}

// glibc's start code calls this; `no_main` leaves no other `main`.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: c_int, _argv: *const *const std::ffi::c_char) -> c_int {
    use std::io::Write;
    // A VM's /init: boot the guest around the pod (spec::vm), then reboot.
    if stage2_init::vm::is_guest() {
        return stage2_init::vm::boot();
    }
    let options = match parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return 0;
        }
        Ok(Command::Version) => {
            let _ = writeln!(std::io::stdout(), "pod-init {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(message) => {
            stage2_init::log!("{message}");
            return EXIT_INIT_FAILED.into();
        }
    };
    match stage2_init::run(&options) {
        Ok(code) => code.into(),
        Err(e) => {
            stage2_init::log!("{e}");
            EXIT_INIT_FAILED.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, String> {
        parse(list.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn arguments() {
        let root = |list: &[&str]| match args(list) {
            Ok(Command::Run(o)) => Some(o.root),
            _ => None,
        };
        assert_eq!(root(&[]), Some(PathBuf::from("/")));
        assert_eq!(root(&["--root", "/pod"]), Some(PathBuf::from("/pod")));
        assert_eq!(root(&["--root=/pod"]), Some(PathBuf::from("/pod")));
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["--version"]), Ok(Command::Version)));
        assert!(args(&["--root"]).is_err());
        assert!(
            matches!(args(&["--sandbox"]), Ok(Command::Run(o)) if o.sandbox && o.control == Some("/control.sock".into()))
        );
        assert!(matches!(args(&[]), Ok(Command::Run(o)) if !o.sandbox && o.control_fd.is_none()));
        assert!(matches!(args(&["--control-fd", "7"]), Ok(Command::Run(o)) if o.control_fd == Some(7)));
        assert!(args(&["--control-fd", "1"]).is_err() && args(&["--control-fd"]).is_err());
        assert!(args(&["extra"]).is_err_and(|e| e.contains("usage: pod-init")));
        assert!(c_int::from(EXIT_INIT_FAILED) == 125);
    }
}
