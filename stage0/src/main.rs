//! `pod`: the command line. Parses, calls the library, maps errors to the
//! documented exit codes (see `exit.rs` and README.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stage0::archive::Limits;
use stage0::build;
use stage0::exit::{Exit, ExitCodeOf};
use stage0::fetch::{FetchOptions, Fetcher, ImageRef, Insecure, PullPolicy};
use stage0::keys;
use stage0::mirrors::{Mirror, Mirrors};
use stage0::oci::sigstore;
use stage0::paths::{Dirs, DEFAULT_CONFIG_DIR, DEFAULT_DATA_DIR};
use stage0::sources::{Source, Sources};
use stage0::store::Store;
use stage0::trust::{Scope, TrustStore};

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failure, 2 usage, 3 verification failed (signature, \
trust, name), 4 not found, 5 invalid or hostile input, 6 network, 7 conflict (in use, ambiguous, locked)";

#[derive(Debug, Parser)]
#[command(name = "pod", version, about = "Run pods of signed images", after_help = EXIT_CODES)]
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
    /// Signing keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Keys trusted to sign images, per name prefix.
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Where images are fetched from by name.
    #[command(subcommand)]
    Source(SourceCmd),
    /// Fetch images (file, https URL, name[:version][,label=value], or OCI:
    /// docker://HOST/REPO[:TAG][@DIGEST], oci:DIR[:TAG], oci-archive:FILE,
    /// docker-archive:FILE) into the store, verifying their signatures;
    /// prints each image ID.
    Fetch(FetchArgs),
    /// Build, sign and manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run a pod file: fetch and verify its images, prepare it, start it.
    Run(RunArgs),
    /// List pods.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a pod's apps: state, pid, exit code or signal.
    Status {
        pod: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Per app CPU %, memory and its limit, network and block I/O, pids of
    /// running pods (all, or those named), refreshed every --interval.
    Stats {
        pods: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Print once (figures over one second) and exit.
        #[arg(long)]
        no_stream: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Print a pod's app logs.
    Logs {
        /// Keep printing new lines while the pod runs.
        #[arg(short, long)]
        follow: bool,
        pod: String,
        app: Option<String>,
    },
    /// Stop a running pod: SIGTERM to its apps, SIGKILL after the grace period.
    Stop {
        pod: String,
        /// Seconds before SIGKILL (default: the longest app stop timeout plus 5).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Run a command in a running pod's app (default: the first app, /bin/sh).
    Enter {
        pod: String,
        #[arg(long)]
        app: Option<String>,
        /// Run the command on a new terminal of the app's (the user's is
        /// raw meanwhile and its size followed), as `podman exec -t`.
        #[arg(short = 't', long)]
        tty: bool,
        /// Keep stdin open to the command (podman's -i; pod enter always
        /// passes stdin, so this is accepted for podman's habits).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Instead of a command: join stdin and stdout to this TCP port on
        /// the pod's loopback (in a VM pod, the guest's), as the CRI's
        /// port-forward does.
        #[arg(long, conflicts_with = "command")]
        port: Option<u16>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Attach to a running app's terminal (`terminal: true`), or its output
    /// and stdin FIFO (`stdin: true`): until it ends (exit code: its
    /// status) or the detach keys (ctrl-p ctrl-q) leave it running.
    Attach {
        pod: String,
        /// The app (default: the pod's first app).
        #[arg(long)]
        app: Option<String>,
        /// Require the app's stdin (exit 7 if it has none); by default it
        /// is written to when the app has one.
        #[arg(short = 'i', long, conflicts_with = "no_stdin")]
        interactive: bool,
        /// Only show the app's output.
        #[arg(long)]
        no_stdin: bool,
        /// Keys that detach (podman's syntax; "" for none).
        #[arg(long, default_value = stage0::terminal::DEFAULT_DETACH_KEYS)]
        detach_keys: String,
    },
    /// The apps of a running pod: list, add, start, stop and remove them while it runs.
    #[command(subcommand)]
    App(AppCmd),
    /// Remove exited or prepared pods.
    Rm {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove exited pods and whatever a killed pod left behind.
    Gc,
    /// Print configuration for other tools: `pod generate systemd FILE`.
    #[command(subcommand)]
    Generate(GenerateCmd),
    /// Kubernetes CRI: `pod cri serve [--listen unix:///run/pod/cri.sock]`
    /// (runs pod-cri, installed beside pod; `pod cri --help` for its options).
    #[command(disable_help_flag = true)]
    Cri {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Serve the appc metadata service (AC_METADATA_URL) for the pods in
    /// the foreground, as a systemd service would; `pod run` starts it on
    /// demand otherwise (runs pod-metadata, installed beside pod).
    MetadataService,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Stage1Arg {
    Ns,
    Vm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum UsernsArg {
    Host,
    Auto,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Start in the background and print the pod's uuid.
    #[arg(short, long)]
    pub(crate) detach: bool,
    /// Override the pod file's isolation.
    #[arg(long, value_enum)]
    pub(crate) stage1: Option<Stage1Arg>,
    /// Override the pod file's accelerator for VM pods: kvm where the CPU
    /// has vmx/svm, tcg (emulation) anywhere; auto picks kvm, else tcg.
    #[arg(long, value_enum)]
    pub(crate) accel: Option<AccelArg>,
    /// Override the pod file's network: none, host, default or a CNI network name.
    #[arg(long)]
    pub(crate) net: Option<String>,
    /// Override the pod file's user namespace: auto maps the pod's root to
    /// an unprivileged host range of its own; host is root on the host.
    #[arg(long, value_enum)]
    pub(crate) userns: Option<UsernsArg>,
    /// Keep the pod, its namespaces and network, once its apps have ended,
    /// until `pod stop` (as a pod file with `apps: []` does); its apps are
    /// stopped, started, added and removed with `pod app` (namespace and VM
    /// pods).
    #[arg(long)]
    pub(crate) sandbox: bool,
    /// Keep stdin open to the interactive app (a FIFO, `stdin: true`) and
    /// pass this process's stdin into it, as `podman run -i`.
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Give the interactive app a terminal (`terminal: true`) and attach
    /// this one to it (raw meanwhile, its size followed), as `podman run -t`.
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// The interactive app of -i/-t (default: the pod's only app).
    #[arg(long)]
    pub(crate) app: Option<spec::AcName>,
    /// The pod's name instead of the pod file's. A pod's name is unique
    /// among running pods (and pods being started): a second one is refused
    /// (exit 7) unless --replace.
    #[arg(long)]
    pub(crate) name: Option<spec::AcName>,
    /// Stop and remove a running pod of the same name first, as `podman run
    /// --replace`.
    #[arg(long)]
    pub(crate) replace: bool,
    /// No appc metadata service for this pod: its apps get no
    /// AC_METADATA_URL, and a VM pod of network none no NIC for it.
    #[arg(long)]
    pub(crate) no_metadata: bool,
    /// Keys that detach from the app and leave the pod running (podman's
    /// syntax; "" for none).
    #[arg(long, default_value = stage0::terminal::DEFAULT_DETACH_KEYS)]
    pub(crate) detach_keys: String,
    #[command(flatten)]
    pub(crate) fetch: FetchFlags,
    pub(crate) file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AppCmd {
    /// List the pod's apps, as its PID 1 sees them: state, pid, exit code or signal, restarts.
    List {
        pod: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Stop an app (its stop signal, SIGKILL after its stop timeout) and wait
    /// until it has ended; it is not restarted, the pod keeps running.
    Stop {
        pod: String,
        app: spec::AcName,
        /// Seconds before SIGKILL instead of the app's stop timeout (0: at once).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Start a stopped or ended app again, as at the pod's start; waits until
    /// it runs (or failed to).
    Start { pod: String, app: spec::AcName },
    /// Add an app to a running pod (namespaces or VM) and start it: its image is
    /// fetched and verified as for `pod run`, the app resolved as an app
    /// of a pod file (default capabilities, seccomp profile, no_new_privs).
    Add(Box<AddArgs>),
    /// Remove an app from a running pod: stop it (stop signal, SIGKILL
    /// after its stop timeout), then unmount and remove its rootfs,
    /// cgroups, unit, status and log.
    Rm { pod: String, app: spec::AcName },
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    pub(crate) pod: String,
    /// The app's name, unique in the pod.
    #[arg(long)]
    pub(crate) name: spec::AcName,
    /// Its image, as `pod fetch` takes it.
    #[arg(long)]
    pub(crate) image: String,
    /// Environment variable K=V, added to the image's (repeatable).
    #[arg(long, value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// Replaces the image's user (name or ID).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Replaces the image's group.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Replaces the image's working directory.
    #[arg(long)]
    pub(crate) working_directory: Option<String>,
    /// Mounts one of the pod's volumes: VOLUME:PATH[:ro] (repeatable).
    #[arg(long, value_parser = parse_mount)]
    pub(crate) mount: Vec<(String, String, bool)>,
    /// More keys of the app, as a pod file writes them, as one JSON object
    /// (e.g. '{"resources": {"memory": "64Mi"}, "mounts": [{"host":
    /// "/srv/x", "path": "/x", "propagation": "rslave"}]}'); checked as a
    /// pod file's, host directories by the host volume rules.
    #[arg(long, value_parser = parse_app_keys)]
    pub(crate) app_keys: Option<serde_json::Map<String, serde_json::Value>>,
    #[command(flatten)]
    pub(crate) fetch: FetchFlags,
    /// Replaces the image's exec: every argument after it (give it last).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub(crate) exec: Option<Vec<String>>,
}

fn parse_app_keys(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s).map_err(|e| format!("not a JSON object of app keys: {e}"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

fn parse_mount(s: &str) -> Result<(String, String, bool), String> {
    let (rest, read_only) = match s.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    match rest.split_once(':') {
        Some((v, p)) if !v.is_empty() && p.starts_with('/') => Ok((v.to_owned(), p.to_owned(), read_only)),
        _ => Err(format!("{s:?} is not VOLUME:PATH[:ro] with an absolute PATH")),
    }
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Generate a keypair: NAME.key (mode 0600) and NAME.pub (pod-ed25519),
    /// or, with --format cosign, cosign.key (encrypted with $COSIGN_PASSWORD
    /// or a prompted password) and cosign.pub as `cosign generate-key-pair`.
    Gen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: KeyFormat,
        /// File name stem (pod-ed25519 only; cosign's are always cosign.*).
        #[arg(long, default_value = "pod")]
        name: String,
        /// Comment in the key files (pod-ed25519 only).
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
enum KeyFormat {
    /// pod's own Ed25519 keys, for ACI images.
    #[default]
    PodEd25519,
    /// cosign's ECDSA P-256 keys, for OCI images.
    Cosign,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ScopeArg {
    /// Trust the key for image names under this prefix: an appc name prefix
    /// (example.com/) or a registry one (127.0.0.1:5000/team/, registry.example.com/).
    #[arg(long)]
    prefix: Option<String>,
    /// Trust the key for every image name.
    #[arg(long)]
    root: bool,
}

impl ScopeArg {
    fn scope(&self) -> Result<Scope, Failed> {
        match &self.prefix {
            Some(p) => Ok(Scope::prefix(p)?),
            None => Ok(Scope::Root),
        }
    }
}

#[derive(Debug, Subcommand)]
enum GenerateCmd {
    /// A systemd service (Type=notify) running the pod file in the
    /// foreground: `pod generate systemd web-db.yaml > /etc/systemd/system/web-db.service`.
    Systemd { file: PathBuf },
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum TrustCmd {
    /// Trust a public key file for a prefix (or --root for all names): a
    /// pod-ed25519 .pub, or a PEM key (cosign.pub: ECDSA P-256, or Ed25519).
    Add {
        #[command(flatten)]
        scope: ScopeArg,
        key: PathBuf,
    },
    /// List trusted keys.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Stop trusting a key (by ID or an 8+ digit prefix of it).
    Rm {
        key: String,
        /// Only for this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Only its all-names trust.
        #[arg(long, conflicts_with = "prefix")]
        root: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SourceCmd {
    /// Fetch names under PREFIX from URL (a template: {name}, {basename}, {version}, {os}, {arch}, {<label>}).
    Add {
        #[arg(long)]
        prefix: String,
        url: String,
    },
    List,
    Rm {
        prefix: String,
    },
    /// Registry mirrors: pull registry images under a prefix from a mirror
    /// first, keeping their own name (tags, trust prefix), as
    /// registries.conf mirrors.
    #[command(subcommand)]
    Mirror(MirrorCmd),
}

#[derive(Debug, Subcommand)]
enum MirrorCmd {
    /// Look for registry images under PREFIX at MIRROR (docker://HOST[:PORT][/PATH]) first: the rest of the
    /// name goes under PATH. Several mirrors of a prefix are tried in the order added, then the image's own registry.
    Add {
        #[arg(long)]
        prefix: String,
        mirror: String,
    },
    List,
    /// Remove every mirror of PREFIX.
    Rm {
        prefix: String,
    },
}

fn parse_insecure(s: &str) -> Result<Insecure, String> {
    let mut i = Insecure::default();
    for part in s.split(',') {
        match part {
            "image" => i.image = true,
            "http" => i.http = true,
            "all" => i = Insecure { http: true, image: true },
            "none" | "" => {}
            other => return Err(format!("unknown insecure option {other:?} (image, http, all)")),
        }
    }
    Ok(i)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('G') => (t[..t.len() - 1].to_owned(), 1u64 << 30),
        t if t.ends_with('M') => (t[..t.len() - 1].to_owned(), 1 << 20),
        t if t.ends_with('K') => (t[..t.len() - 1].to_owned(), 1 << 10),
        t => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 4G, 512M or 1048576"))
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
enum Pull {
    #[default]
    Missing,
    Always,
    Never,
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[command(flatten)]
    flags: FetchFlags,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct FetchFlags {
    /// Skip checks, each by name: image (signature verification), http (plain http), all.
    #[arg(long, value_parser = parse_insecure, default_value = "none")]
    insecure_options: Insecure,
    /// Extra CA certificate (PEM) trusted for https, besides the system's.
    #[arg(long)]
    ca_cert: Vec<PathBuf>,
    /// For names: use the store (missing), always fetch (always), or store only (never).
    #[arg(long, value_enum, default_value_t)]
    pull_policy: Pull,
    /// Largest image accepted, compressed or not (e.g. 4G, 512M).
    #[arg(long, value_parser = parse_size, env = "POD_MAX_IMAGE_SIZE")]
    max_image_size: Option<u64>,
    /// Most files, directories and links an image may hold (default 1000000).
    #[arg(long, env = "POD_MAX_IMAGE_ENTRIES")]
    max_image_entries: Option<u64>,
    /// OCI: the platform picked from an image index (default: the host's, linux/amd64).
    #[arg(long, value_parser = stage0::oci::pull::Platform::parse)]
    platform: Option<stage0::oci::pull::Platform>,
    /// OCI layouts and archives: cosign's signature (base64) of the
    /// simple-signing payload in the file of the same name without `.sig`.
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Registry credentials: a containers-style auth.json (default:
    /// $REGISTRY_AUTH_FILE, then $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json).
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
}

impl FetchFlags {
    pub(crate) fn options(&self) -> FetchOptions {
        let mut limits = Limits::default();
        if let Some(max) = self.max_image_size {
            limits.max_uncompressed = max;
        }
        if let Some(max) = self.max_image_entries {
            limits.max_entries = max;
        }
        FetchOptions {
            insecure: self.insecure_options,
            ca_certs: self.ca_cert.clone(),
            limits,
            pull: match self.pull_policy {
                Pull::Missing => PullPolicy::Missing,
                Pull::Always => PullPolicy::Always,
                Pull::Never => PullPolicy::Never,
            },
            progress: true,
            platform: self.platform.clone(),
            signature: self.signature.clone(),
            auth_file: self.authfile.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum CompressionArg {
    #[default]
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCmd {
    /// Build an image from a recipe (a directory and/or Debian packages).
    Build {
        recipe: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        compression: CompressionArg,
        /// Where downloaded .deb files are cached.
        #[arg(long, default_value = build::DEFAULT_CACHE_DIR)]
        cache_dir: PathBuf,
        /// Clamp timestamps to this time (seconds since the epoch) so that
        /// rebuilding gives the same image ID.
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: Option<u64>,
    },
    /// Sign ACI files with a pod key, writing IMAGE.sig beside each; or
    /// images in a registry (docker://HOST/REPO:TAG) with a cosign key as
    /// `cosign sign --key` does (password: $COSIGN_PASSWORD or a prompt).
    Sign {
        /// A pod-ed25519 secret key (ACI files) or cosign.key (docker://).
        #[arg(long)]
        key: PathBuf,
        /// docker://: extra CA certificate (PEM) trusted for https.
        #[arg(long)]
        ca_cert: Vec<PathBuf>,
        /// docker://: http allows plain http to the registry.
        #[arg(long, value_parser = parse_insecure, default_value = "none")]
        insecure_options: Insecure,
        /// docker://: registry credentials, a containers-style auth.json
        /// (default: as for fetch).
        #[arg(long, env = "REGISTRY_AUTH_FILE")]
        authfile: Option<PathBuf>,
        /// ACI files, or docker://HOST/REPO[:TAG][@sha256:DIGEST] images.
        #[arg(required = true, value_parser = stage0::oci::sign::SignTarget::parse)]
        images: Vec<stage0::oci::sign::SignTarget>,
    },
    /// List stored images.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove images from the store.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove leftovers of interrupted imports and unused rendered trees.
    Gc,
    /// Print an image's manifest.
    CatManifest { image: String },
    /// Write a stored image file (as fetched) to OUT, with its signature.
    Export { image: String, out: PathBuf },
    /// Re-hash store entries (all if none named) against their IDs.
    Verify { images: Vec<String> },
}

/// An error on its way out of `main`, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failed {
    exit: Exit,
    err: anyhow::Error,
    /// A status passed through as is (a command's, under `pod enter`),
    /// printed without the error line.
    code: Option<i32>,
}

impl<E: ExitCodeOf + std::error::Error + Send + Sync + 'static> From<E> for Failed {
    fn from(e: E) -> Self {
        Self { exit: e.exit(), err: e.into(), code: None }
    }
}

pub(crate) fn fail(exit: Exit, msg: String) -> Failed {
    Failed { exit, err: anyhow::anyhow!(msg), code: None }
}

/// The error and its causes, skipping causes already spelled out above them.
fn describe(err: &anyhow::Error) -> String {
    let mut s = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}

mod generate_cmd;
mod image_cmd;
mod pods_cmd;
mod stats_cmd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("POD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed { code: Some(code), .. }) => ExitCode::from(spec::stage1::exit_code(code)),
        Err(f) => {
            eprintln!("pod: {}", describe(&f.err));
            ExitCode::from(f.exit.code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Failed> {
    let dirs = Dirs::new(&cli.dir, &cli.config);
    match cli.command {
        Command::Key(KeyCmd::Gen { out, format: KeyFormat::PodEd25519, name, comment }) => {
            let key = keys::generate()?;
            let public = keys::write_keypair(&out, &name, &key, &comment)?;
            println!("{}", public.id);
            eprintln!("wrote {0}/{name}.key (keep it secret) and {0}/{name}.pub", out.display());
        }
        Command::Key(KeyCmd::Gen { out, format: KeyFormat::Cosign, .. }) => {
            let password = sigstore::password(std::env::var_os(sigstore::PASSWORD_ENV), true)?;
            let public = sigstore::CosignPrivateKey::generate()?.write_pair(&out, &password)?;
            println!("{}", public.id);
            eprintln!("wrote {0}/cosign.key (keep it secret) and {0}/cosign.pub", out.display());
        }
        Command::Trust(cmd) => trust(&dirs, cmd)?,
        Command::Source(cmd) => source(&dirs, cmd)?,
        Command::Fetch(args) => {
            let store = Store::open(&dirs)?;
            let trust = TrustStore::new(dirs.trust());
            let sources = Sources::new(dirs.sources());
            let mut fetcher = Fetcher::new(&store, &trust, &sources, args.flags.options())?;
            for img in &args.images {
                let r = ImageRef::parse(img)?;
                let fetched = fetcher.fetch(&r)?;
                println!("{}", fetched.meta.id);
            }
        }
        Command::Image(cmd) => image_cmd::image(&dirs, cmd)?,
        Command::Cri { args } => return cri(&dirs, cli.debug, args),
        Command::MetadataService => return helper("pod-metadata", &dirs, cli.debug, Vec::new()),
        Command::Run(args) => return pods_cmd::run(&dirs, args, cli.debug),
        Command::List { format } => pods_cmd::list(&dirs, format)?,
        Command::Status { pod, format } => pods_cmd::status(&dirs, &pod, format)?,
        Command::Generate(GenerateCmd::Systemd { file }) => generate_cmd::systemd(&dirs, &file)?,
        Command::Stats { pods, format, no_stream, interval } => stats_cmd::stats(
            &dirs,
            stats_cmd::StatsArgs { pods, format, no_stream, interval: std::time::Duration::from_secs(interval) },
        )?,
        Command::Logs { follow, pod, app } => pods_cmd::logs(&dirs, &pod, app.as_deref(), follow)?,
        Command::Stop { pod, timeout } => pods_cmd::stop(&dirs, &pod, timeout)?,
        Command::Rm { pods } => pods_cmd::rm(&dirs, &pods)?,
        Command::Enter { pod, app, port: Some(port), .. } => {
            return pods_cmd::connect_port(&dirs, &pod, app.as_deref(), port)
        }
        Command::Enter { pod, app, command, port: None, tty, .. } => {
            return pods_cmd::enter(&dirs, &pod, app.as_deref(), &command, tty)
        }
        Command::App(cmd) => pods_cmd::app(&dirs, cmd)?,
        Command::Attach { pod, app, interactive, no_stdin, detach_keys } => {
            let stdin = if no_stdin { None } else { Some(interactive) };
            return pods_cmd::attach(&dirs, &pod, app.as_deref(), stdin, &detach_keys);
        }
        Command::Gc => pods_cmd::gc(&dirs)?,
    }
    Ok(())
}

/// `pod cri ARGS`: execs pod-cri (the cri crate's binary, beside pod), so
/// that neither stage0's library nor the `pod` binary links tokio and gRPC.
fn cri(dirs: &Dirs, debug: bool, args: Vec<String>) -> Result<(), Failed> {
    helper("pod-cri", dirs, debug, args)
}

/// Execs `name`, a binary installed beside pod, with the data and config
/// directories in its environment.
fn helper(name: &str, dirs: &Dirs, debug: bool, args: Vec<String>) -> Result<(), Failed> {
    use std::os::unix::process::CommandExt;
    let bin = stage0::run::bin_dir().join(name);
    let mut cmd = std::process::Command::new(&bin);
    if debug {
        cmd.arg("--debug");
    }
    let err = cmd.args(args).env("POD_DIR", &dirs.data).env("POD_CONFIG", &dirs.config).exec();
    let exit = if err.kind() == std::io::ErrorKind::NotFound { Exit::NotFound } else { Exit::Failure };
    Err(fail(exit, format!("cannot run {}: {err} (it is installed beside pod)", bin.display())))
}

fn trust(dirs: &Dirs, cmd: TrustCmd) -> Result<(), Failed> {
    let store = TrustStore::new(dirs.trust());
    match cmd {
        TrustCmd::Add { scope, key } => {
            let scope = scope.scope()?;
            let k = store.add(&scope, &key)?;
            eprintln!("trusting {} key {} for {scope}", k.kind(), k.id);
        }
        TrustCmd::List { format } => {
            let list = store.list()?;
            match format {
                Format::Json => {
                    let v: Vec<_> = list
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "key": t.key.id.as_str(),
                                "prefix": match &t.scope { Scope::Root => None, Scope::Prefix(p) => Some(p) },
                                "root": t.scope == Scope::Root,
                                "kind": t.key.kind().as_str(),
                                "comment": t.key.comment,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut out = String::from("PREFIX\tKEY\tKIND\tCOMMENT\n");
                    for t in &list {
                        out.push_str(&format!("{}\t{}\t{}\t{}\n", t.scope, t.key.id, t.key.kind(), t.key.comment));
                    }
                    print_table(&out);
                }
            }
        }
        TrustCmd::Rm { key, prefix, root } => {
            let scope = match (prefix, root) {
                (Some(p), _) => Some(Scope::prefix(&p)?),
                (None, true) => Some(Scope::Root),
                (None, false) => None,
            };
            let n = store.remove(&key, scope.as_ref())?;
            eprintln!("removed {n} trust entr{}", if n == 1 { "y" } else { "ies" });
        }
    }
    Ok(())
}

fn source(dirs: &Dirs, cmd: SourceCmd) -> Result<(), Failed> {
    let sources = Sources::new(dirs.sources());
    match cmd {
        SourceCmd::Add { prefix, url } => sources.add(Source::new(&prefix, &url)?)?,
        SourceCmd::List => {
            let mut out = String::from("PREFIX\tURL\n");
            for s in sources.list()? {
                out.push_str(&format!("{}\t{}\n", s.prefix, s.url));
            }
            print_table(&out);
        }
        SourceCmd::Rm { prefix } => sources.remove(&prefix)?,
        SourceCmd::Mirror(cmd) => mirror(dirs, cmd)?,
    }
    Ok(())
}

fn mirror(dirs: &Dirs, cmd: MirrorCmd) -> Result<(), Failed> {
    let mirrors = Mirrors::new(dirs.mirrors());
    match cmd {
        MirrorCmd::Add { prefix, mirror } => mirrors.add(Mirror::new(&prefix, &mirror)?)?,
        MirrorCmd::List => {
            let mut out = String::from("PREFIX\tMIRROR\n");
            for m in mirrors.list()? {
                out.push_str(&format!("{}\t{}\n", m.prefix, m.mirror));
            }
            print_table(&out);
        }
        MirrorCmd::Rm { prefix } => mirrors.remove(&prefix)?,
    }
    Ok(())
}

/// Prints tab-separated rows as aligned columns.
pub(crate) fn print_table(text: &str) {
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // A closed pipe (pod image list | head) is not an error worth reporting.
    let _ = std::io::stdout().write_all(out.as_bytes());
}
