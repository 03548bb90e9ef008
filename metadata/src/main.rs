//! `pod-metadata`: the appc metadata service for the pods of a data
//! directory. `pod metadata-service` runs it in the foreground (as a
//! systemd service would); `pod run` starts it on demand with
//! `--background`, which returns once the service listens. Kept out of the
//! `pod` binary, as the CRI server is, so that stage0 stays free of tokio.

use std::fs;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use stage0::paths::{Dirs, DEFAULT_CONFIG_DIR, DEFAULT_DATA_DIR};

#[derive(Debug, Parser)]
#[command(name = "pod-metadata", version, about = "appc metadata service for pod's pods")]
struct Cli {
    /// Data directory: the pods it answers for.
    #[arg(long, env = "POD_DIR", default_value = DEFAULT_DATA_DIR)]
    dir: PathBuf,
    /// Return once listening, the service running on in the background
    /// (its log: DIR/metadata/service.log); a service already running for
    /// DIR is success.
    #[arg(long)]
    background: bool,
    /// Log debug detail.
    #[arg(long)]
    debug: bool,
}

/// Exit status when another service holds the directory (foreground).
const EXIT_CONFLICT: u8 = 7;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "info" };
    tracing_subscriber::fmt().with_env_filter(level).with_writer(std::io::stderr).with_ansi(false).init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pod-metadata: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let dirs = Dirs::new(&cli.dir, DEFAULT_CONFIG_DIR);
    let socket = stage0::metadata::socket(&dirs);
    let dir = socket.parent().context("socket path")?.to_owned();
    stage0::paths::create_private_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    // One service per data directory: the lock is held for its life.
    let lock_path = dir.join("service.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) if cli.background => return Ok(ExitCode::SUCCESS),
        Err(_) => {
            eprintln!("pod-metadata: a service already runs for {} ({})", cli.dir.display(), lock_path.display());
            return Ok(ExitCode::from(EXIT_CONFLICT));
        }
    };
    let _ = fs::remove_file(&socket);
    let control = UnixListener::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
    if cli.background {
        let log_path = dir.join("service.log");
        let log = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log_path)?;
        // Listening already: the parent returns, its caller connects.
        // SAFETY: single-threaded here (no runtime or thread yet).
        match unsafe { nix::unistd::fork() }.context("fork")? {
            nix::unistd::ForkResult::Parent { .. } => {
                // The lock is the child's now: dropping it here would
                // unlock the description the child shares.
                std::mem::forget(lock);
                return Ok(ExitCode::SUCCESS);
            }
            nix::unistd::ForkResult::Child => {}
        }
        nix::unistd::setsid().context("setsid")?;
        let null = fs::File::open("/dev/null")?;
        nix::unistd::dup2(null.as_raw_fd(), 0)?;
        nix::unistd::dup2(log.as_raw_fd(), 1)?;
        nix::unistd::dup2(log.as_raw_fd(), 2)?;
        // Out of the caller's directory (a mount it may want unmounted).
        std::env::set_current_dir("/")?;
    }
    fs::write(dir.join("service.pid"), format!("{}\n", std::process::id()))?;
    tracing::info!(socket = %socket.display(), "listening");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let service = metadata::service::Service::new(stage0::pods::Pods::new(&dirs));
    let handle = rt.handle().clone();
    service.adopt(&socket, &handle);
    std::thread::Builder::new().name("registrations".into()).spawn(move || service.serve_control(&control, &handle))?;
    rt.block_on(socket_gone(&socket));
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// How often the service checks that its socket is still its own.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Returns once the service's socket is removed or replaced (its data
/// directory deleted, or another service bound the path): nothing can
/// reach the service any more, which would otherwise run on for ever.
async fn socket_gone(socket: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let id = || fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok();
    let bound = id();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        if id() != bound {
            tracing::info!(socket = %socket.display(), "the socket was removed or replaced: exiting");
            return;
        }
    }
}
