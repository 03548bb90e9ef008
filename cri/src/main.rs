//! `pod-cri`: the CRI server's binary; `pod cri ARGS` runs it (it is
//! installed beside `pod`), so that stage0 and the `pod` binary stay free of
//! tokio and gRPC.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cri::images::{Images, PullConfig};
use cri::runtime::Runtime;
use cri::sandbox::Host;
use cri::server;
use stage0::paths::{Dirs, DEFAULT_CONFIG_DIR, DEFAULT_DATA_DIR};
use stage0::trust::Scope;

#[derive(Debug, Parser)]
#[command(name = "pod cri", bin_name = "pod cri", version, about = "Kubernetes CRI v1 for pod")]
struct Cli {
    /// Data directory: the image store, trees and pods.
    #[arg(long, global = true, env = "POD_DIR", default_value = DEFAULT_DATA_DIR)]
    dir: PathBuf,
    /// Configuration directory: trusted keys and image sources.
    #[arg(long, global = true, env = "POD_CONFIG", default_value = DEFAULT_CONFIG_DIR)]
    config: PathBuf,
    /// Log debug detail to stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CRI v1 (RuntimeService: Version, Status, sandboxes and
    /// containers, ReopenContainerLog, stats and metrics,
    /// UpdateContainerResources, UpdateRuntimeConfig, RuntimeConfig, ExecSync, and Exec,
    /// Attach and PortForward through a streaming server speaking SPDY/3.1
    /// and WebSocket; the whole ImageService) over gRPC until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where to listen: unix:///PATH.
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    listen: String,
    /// Pull images named under PREFIX without verifying their signatures
    /// (repeatable; each such pull is logged as a warning).
    #[arg(long, value_parser = parse_scope)]
    insecure_prefix: Vec<Scope>,
    /// Extra CA certificate (PEM) trusted for registries, besides the system's.
    #[arg(long)]
    ca_cert: Vec<PathBuf>,
    /// Registry credentials for pulls whose request carries none: a
    /// containers-style auth.json.
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// CNI network configurations (NetworkReady needs one; default:
    /// CONFIG/net.d, as `pod run` uses).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Where the streaming server (Exec, Attach, PortForward: SPDY/3.1 and
    /// WebSocket) listens; port 0 picks a free one. Its URLs hold one-shot
    /// tokens and no other credential: keep it on loopback.
    #[arg(long, default_value = cri::streaming::DEFAULT_ADDRESS)]
    streaming_address: std::net::SocketAddr,
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::prefix(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod cri: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dirs = Dirs::new(cli.dir, cli.config);
    let debug = cli.debug;
    let Command::Serve(args) = cli.command;
    // The store's directories exist before the first request.
    stage0::store::Store::open(&dirs)?;
    let path = server::socket_path(&args.listen)?;
    let cni_conf_dir = args.cni_conf_dir.unwrap_or_else(|| dirs.config.join("net.d"));
    let insecure: Vec<String> = args.insecure_prefix.iter().map(ToString::to_string).collect();
    if !insecure.is_empty() {
        tracing::warn!(prefixes = ?insecure, "images under these prefixes are pulled WITHOUT signature verification");
    }
    let config = HashMap::from([
        ("dataDir".to_owned(), dirs.data.display().to_string()),
        ("configDir".to_owned(), dirs.config.display().to_string()),
        // As containerd names its own: critest probes idmapped mounts on
        // the filesystem of its parent, here the data directory, where the
        // image trees and the pods' upper layers are.
        ("stateDir".to_owned(), dirs.data.join("pods").display().to_string()),
        ("cniConfDir".to_owned(), cni_conf_dir.display().to_string()),
        ("insecurePrefixes".to_owned(), insecure.join(",")),
    ]);
    let host = Host { dirs: dirs.clone(), cni_conf_dir: cni_conf_dir.clone(), debug };
    let streaming_dirs = dirs.clone();
    let images = Images::new(
        dirs,
        PullConfig {
            insecure_prefixes: args.insecure_prefix,
            ca_certs: args.ca_cert,
            auth_file: args.authfile,
            ..PullConfig::default()
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = server::bind(&path)?;
        let streaming = cri::streaming::Server::start(args.streaming_address, streaming_dirs).await?;
        let runtime = Runtime { cni_conf_dir, config, host, live: Default::default(), streaming };
        server::serve(listener, &path, runtime, images).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
