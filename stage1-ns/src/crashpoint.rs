//! Deterministic kill points of the stage1s for the crash tests, as in
//! stage0 (`stage0/src/crashpoint.rs` lists every step): in a debug build,
//! `POD_TEST_KILL_AT=<step>` — passed on by a debug `pod` — makes the
//! monitor SIGKILL itself at `<step>`. Release builds have none.

#[cfg(debug_assertions)]
static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Reads `POD_TEST_KILL_AT`; called by [`crate::sanitize`] before it empties
/// the environment.
pub fn arm() {
    #[cfg(debug_assertions)]
    ARMED.get_or_init(|| std::env::var("POD_TEST_KILL_AT").ok());
}

/// Dies by SIGKILL if armed for `step` (debug builds only).
pub fn crashpoint(step: &str) {
    #[cfg(debug_assertions)]
    if ARMED.get().and_then(Option::as_deref) == Some(step) {
        // One write: pod-init's lines go to the same pipe, and eprintln!
        // writes its pieces one by one (the tests look for the whole line).
        let line = format!("pod-stage1: POD_TEST_KILL_AT={step}: SIGKILL\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}
