//! stage0's documented exit codes. Every error a command can return maps to
//! one of these; the table is repeated in README.md and `pod --help`.

/// Exit codes of `pod` itself (a pod's own status is passed through by `pod run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An unexpected failure (I/O error, a tool that failed, a bug).
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// Signature or trust verification failed: unsigned, bad signature,
    /// unknown key, key not trusted for the name, name mismatch.
    Verification = 3,
    /// The image, pod, key or source named does not exist.
    NotFound = 4,
    /// Input rejected as invalid or hostile: archive, manifest, recipe, key
    /// file, pod file, dependency cycle.
    InvalidInput = 5,
    /// Fetching failed: network, HTTP status, TLS.
    Network = 6,
    /// The request conflicts with the state: an image in use, an ambiguous
    /// prefix, a store locked by another `pod`.
    Conflict = 7,
}

impl Exit {
    /// The numeric code passed to the OS.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Implemented by every library error so `main` can pick the exit code.
pub trait ExitCodeOf {
    fn exit(&self) -> Exit;
}
