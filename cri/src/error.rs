//! The CRI server's errors, and how each becomes a gRPC status: the same
//! classes as the CLI's exit codes (stage0::exit), so a verification failure
//! is PermissionDenied whichever of pod's front ends reports it.

use std::path::PathBuf;

use stage0::addapp::AddAppError;
use stage0::exit::{Exit, ExitCodeOf};
use stage0::fetch::FetchError;
use stage0::lifecycle::LifecycleError;
use stage0::prepare::PrepareError;
use stage0::render::RenderError;
use stage0::run::RunError;
use stage0::store::StoreError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid image reference {reference:?}: {why}")]
    Reference { reference: String, why: String },
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("image {image} is used by pod {pods}")]
    InUse { image: String, pods: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    AddApp(#[from] AddAppError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl CriError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Io { .. } | Self::Join(_) | Self::Failed(_) => Code::Internal,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Prepare(e) => code_of(e.exit()),
            Self::Run(e) => code_of(e.exit()),
            Self::AddApp(e) => code_of(e.exit()),
            Self::Reference { .. } | Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::ImageNotFound(_) => Code::NotFound,
            Self::InUse { .. } => Code::FailedPrecondition,
            Self::Fetch(e) => code_of(e.exit()),
            Self::Store(e) => code_of(e.exit()),
            Self::Lifecycle(e) => code_of(e.exit()),
            Self::Render(e) => code_of(e.exit()),
        }
    }
}

/// A CLI exit class as a gRPC code.
pub fn code_of(exit: Exit) -> Code {
    match exit {
        Exit::Ok => Code::Ok,
        Exit::Failure => Code::Internal,
        Exit::Usage | Exit::InvalidInput => Code::InvalidArgument,
        Exit::Verification => Code::PermissionDenied,
        Exit::NotFound => Code::NotFound,
        Exit::Network => Code::Unavailable,
        Exit::Conflict => Code::FailedPrecondition,
    }
}

/// The whole chain of causes, `: `-separated, as the CLI prints it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        cur = s.source();
    }
    msg
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Self {
        Status::new(e.code(), chain(&e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_grpc_codes() {
        assert_eq!(code_of(Exit::Verification), Code::PermissionDenied);
        assert_eq!(code_of(Exit::Network), Code::Unavailable);
        assert_eq!(code_of(Exit::NotFound), Code::NotFound);
        assert_eq!(code_of(Exit::InvalidInput), Code::InvalidArgument);
        assert_eq!(code_of(Exit::Conflict), Code::FailedPrecondition);
        let s: Status = CriError::InUse { image: "a".into(), pods: "p".into() }.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "image a is used by pod p");
    }
}
