//! `pod-stage1-vm`: reserved for its own issue (see DESIGN.md). It refuses to run
//! rather than pretend, so stage0 never mistakes it for a working stage.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("pod-stage1-vm: not built yet in this version of pod");
    std::process::ExitCode::from(70)
}
