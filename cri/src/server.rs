//! `pod cri serve`: binds the unix socket and serves both CRI services on it
//! until SIGTERM or SIGINT, then removes the socket.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::images::Images;
use crate::proto::image_service_server::ImageServiceServer;
use crate::proto::runtime_service_server::RuntimeServiceServer;
use crate::runtime::Runtime;

/// kubelet's default for a CRI runtime's socket, as `--listen` spells it.
pub const DEFAULT_LISTEN: &str = "unix:///run/pod/cri.sock";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--listen {0:?}: only unix:///PATH (or an absolute PATH) is supported")]
    Listen(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `--listen` value.
pub fn socket_path(listen: &str) -> Result<PathBuf, ServeError> {
    let path = listen.strip_prefix("unix://").unwrap_or(listen);
    if path.starts_with('/') && !path.contains("://") {
        Ok(PathBuf::from(path))
    } else {
        Err(ServeError::Listen(listen.to_owned()))
    }
}

/// Binds `path`: its directory is created (0755), a stale socket left by a
/// killed server is replaced, a live one is not. The socket is 0660: the
/// CRI is root's (as kubelet runs).
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
        move |source| ServeError::Io { op, path: path.to_owned(), source }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_owned()));
            }
            fs::remove_file(path).map_err(io("remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(ServeError::Io {
                op: "bind",
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io("chmod", path))?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(listener: UnixListener, path: &Path, runtime: Runtime, images: Images) -> Result<(), ServeError> {
    let shutdown = async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stopping");
    };
    tracing::info!(socket = %path.display(), "serving CRI v1");
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(socket = %path.display(), error = %e, "socket not removed");
    }
    Ok(result?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_unix_paths_only() {
        assert_eq!(socket_path("unix:///run/pod/cri.sock").unwrap(), PathBuf::from("/run/pod/cri.sock"));
        assert_eq!(socket_path("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("tcp://127.0.0.1:1234").is_err());
        assert!(socket_path("unix://relative").is_err());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/cri.sock");
        let live = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(ServeError::InUse(_))));
        drop(live);
        bind(&path).unwrap();
    }
}
