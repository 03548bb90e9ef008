//! Fetching images: from a file, an https URL, or a name with labels through
//! the configured sources; verifying the detached signature against the
//! trust store before the archive is parsed at all; importing into the store;
//! then the same for every dependency.
//!
//! Order of checks, each failing closed with nothing left in the store:
//! 1. the raw bytes are staged in `tmp/` while their SHA-512 is computed;
//! 2. the signature must parse and name a trusted key, and verify;
//! 3. only then is the archive decompressed and extracted (hardened);
//! 4. the key must be trusted for the manifest's name, and the name and
//!    labels must be the ones requested;
//! 5. the staging dir is renamed into the store.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, IsTerminal, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use spec::{AcIdentifier, Dependency, ImageId, ImageManifest};

use crate::archive::{self, ArchiveError, Limits};
use crate::crashpoint::crashpoint;
use crate::deps::{self, DepsError, ImageSource};
use crate::exit::{Exit, ExitCodeOf};
use crate::keys::{self, ImageSignature, KeyError};
use crate::render::{self, RenderError};
use crate::sha512::Sha512;
use crate::sources::{SourceError, Sources};
use crate::store::{self, ImageMeta, Store, StoreError};
use crate::trust::{TrustError, TrustStore};

mod oci;
mod stage;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `why` names the reference itself.
    #[error("{why}")]
    Reference { reference: String, why: String },
    #[error("refusing plain http for {0}: use https, or --insecure-options=http to allow it")]
    PlainHttp(String),
    #[error("fetching {url}: {why}")]
    Http { url: String, why: String },
    #[error("{0}: not found")]
    Missing(String),
    #[error("{location}: image is larger than the limit of {limit} bytes")]
    TooLarge { location: String, limit: u64 },
    #[error("no signature for {location} (expected {sig}); sign it with `pod image sign`, or pass --insecure-options=image to skip verification (not recommended)")]
    MissingSignature { location: String, sig: String },
    #[error("signature of {location}: {source}")]
    SignatureFormat {
        location: String,
        #[source]
        source: KeyError,
    },
    #[error("{location} is signed by key {key}, which is not trusted (see `pod trust list`)")]
    UnknownKey { location: String, key: String },
    #[error("bad signature: {location} does not match its signature by key {key}")]
    BadSignature { location: String, key: String },
    #[error("key {key} is trusted only for {prefixes}, not for image name {name} ({location})")]
    WrongPrefix { location: String, key: String, prefixes: String, name: String },
    #[error("{location}: requested image {wanted} but its manifest names {found}")]
    NameMismatch { location: String, wanted: String, found: String },
    #[error("{location}: requested label {label}={wanted:?} but the image has {found:?}")]
    LabelMismatch { location: String, label: String, wanted: String, found: Option<String> },
    #[error("{location}: {source}")]
    Archive {
        location: String,
        #[source]
        source: ArchiveError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Mirror(#[from] crate::mirrors::MirrorError),
    #[error(transparent)]
    Deps(#[from] DepsError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error(transparent)]
    Tls(#[from] crate::oci::tls::TlsError),
}

impl ExitCodeOf for FetchError {
    fn exit(&self) -> Exit {
        match self {
            Self::Io { .. } => Exit::Failure,
            Self::Reference { .. } | Self::TooLarge { .. } => Exit::InvalidInput,
            Self::Http { .. } => Exit::Network,
            Self::Missing(_) => Exit::NotFound,
            Self::PlainHttp(_)
            | Self::MissingSignature { .. }
            | Self::SignatureFormat { .. }
            | Self::UnknownKey { .. }
            | Self::BadSignature { .. }
            | Self::WrongPrefix { .. }
            | Self::NameMismatch { .. }
            | Self::LabelMismatch { .. } => Exit::Verification,
            Self::Archive { source, .. } => source.exit(),
            Self::Store(e) => e.exit(),
            Self::Trust(e) => e.exit(),
            Self::Source(e) => e.exit(),
            Self::Mirror(e) => e.exit(),
            Self::Deps(e) => e.exit(),
            Self::Render(e) => e.exit(),
            Self::Oci(e) => e.exit(),
            Self::Tls(e) => e.exit(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FetchError + 'a {
    move |source| FetchError::Io { op, path: path.to_owned(), source }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    File(PathBuf),
    Url(String),
    /// `example.com/redis:7.0,os=linux`: a name, `:version` and more labels.
    Name {
        name: AcIdentifier,
        labels: BTreeMap<String, String>,
    },
    /// An OCI image: `docker://`, `oci:`, `oci-archive:`, `docker-archive:`.
    Oci(spec::oci::OciSource),
}

impl ImageRef {
    /// Parses a fetch argument, in the syntax of pod files
    /// (`spec::pod::ImageSource::parse`); besides, a relative path to a file
    /// that exists is that file, though it may look like a name.
    pub fn parse(s: &str) -> Result<Self, FetchError> {
        if !s.contains("://") && Path::new(s).is_file() {
            return Ok(Self::File(PathBuf::from(s)));
        }
        match spec::pod::ImageSource::parse(s) {
            Ok(spec::pod::ImageSource::File(p)) => Ok(Self::File(PathBuf::from(p))),
            Ok(spec::pod::ImageSource::Url(u)) => Ok(Self::Url(u)),
            Ok(spec::pod::ImageSource::Name { name, labels }) => Ok(Self::Name { name, labels }),
            Ok(spec::pod::ImageSource::Oci(src)) => Ok(Self::Oci(src)),
            Err(why) => Err(FetchError::Reference { reference: s.to_owned(), why }),
        }
    }
}

/// `--insecure-options`: each check skipped must be asked for by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Insecure {
    /// Allow plain http.
    pub http: bool,
    /// Skip signature and trust verification.
    pub image: bool,
}

/// When a name is looked up in the store before fetching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the store; fetch only what is missing.
    #[default]
    Missing,
    /// Always fetch names again (URLs and files are always fetched).
    Always,
    /// Never fetch: the store only.
    Never,
}

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub insecure: Insecure,
    pub ca_certs: Vec<PathBuf>,
    pub limits: Limits,
    pub pull: PullPolicy,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
    /// The platform picked from OCI image indexes (default: the host's).
    pub platform: Option<crate::oci::pull::Platform>,
    /// A detached signature for an OCI layout or archive (`--signature`):
    /// the file holds cosign's base64 signature of the simple-signing
    /// payload beside it, the same path without `.sig`.
    pub signature: Option<PathBuf>,
    /// Registry credentials (a containers-style auth.json).
    pub auth_file: Option<PathBuf>,
}

/// The result of a fetch: the image and the trees its rootfs stacks.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub meta: ImageMeta,
    /// True if this fetch added the image (false: it was already stored).
    pub added: bool,
    /// The read-only lower layers, bottom to top: the flattened tree of an
    /// ACI and its dependencies, or an OCI image's layer trees.
    pub lower: Vec<PathBuf>,
}

/// The host's os and arch labels, used as defaults when matching names.
pub fn host_labels() -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        other => other,
    };
    [("os".to_owned(), std::env::consts::OS.to_owned()), ("arch".to_owned(), arch.to_owned())].into()
}

/// Fetches and imports images. Holds the store lock shared for its life.
#[derive(Debug)]
pub struct Fetcher<'a> {
    store: &'a Store,
    trust: &'a TrustStore,
    sources: &'a Sources,
    opts: FetchOptions,
    client: Option<reqwest::blocking::Client>,
    _lock: store::StoreLock,
}

struct Staged {
    staging: store::Staging,
    image: PathBuf,
    size: u64,
    prehash: Sha512,
    sig: Option<Vec<u8>>,
}

impl<'a> Fetcher<'a> {
    pub fn new(
        store: &'a Store,
        trust: &'a TrustStore,
        sources: &'a Sources,
        opts: FetchOptions,
    ) -> Result<Self, FetchError> {
        if opts.insecure.image {
            tracing::warn!(
                "--insecure-options=image: signatures are NOT verified; whoever can alter these images controls what runs"
            );
        }
        let lock = store.lock_shared()?;
        Ok(Self { store, trust, sources, opts, client: None, _lock: lock })
    }

    /// The store this fetcher imports into.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Fetches `r` and its dependencies, then renders the flattened tree.
    pub fn fetch(&mut self, r: &ImageRef) -> Result<Fetched, FetchError> {
        let (meta, added) = match r {
            ImageRef::Name { name, labels } => self.by_name(name, labels, None)?,
            ImageRef::Oci(src) => self.fetch_oci(src)?,
            other => self.fetch_location(other, None)?,
        };
        if let Some(oci) = &meta.oci {
            let lower = crate::oci::pull::layer_trees(self.store.dirs(), oci)?;
            return Ok(Fetched { meta, added, lower });
        }
        let manifest = self.store.manifest(&meta.id)?;
        let resolution = deps::resolve(meta.id.clone(), &manifest, self)?;
        let tree = render::render(self.store.dirs(), &resolution)?;
        Ok(Fetched { meta, added, lower: vec![tree.path] })
    }

    fn by_name(
        &mut self,
        name: &AcIdentifier,
        labels: &BTreeMap<String, String>,
        pinned: Option<&ImageId>,
    ) -> Result<(ImageMeta, bool), FetchError> {
        if let Some(id) = pinned {
            if let Ok(meta) = self.store.meta(id) {
                return Ok((meta, false));
            }
        }
        if self.opts.pull != PullPolicy::Always {
            let host = host_labels();
            let hit = self.store.list()?.into_iter().find(|m| {
                m.matches(name, labels)
                    && host.iter().all(|(k, v)| labels.contains_key(k) || m.labels.get(k).is_none_or(|x| x == v))
            });
            if let Some(meta) = hit {
                return Ok((meta, false));
            }
        }
        if self.opts.pull == PullPolicy::Never {
            return Err(StoreError::NotFound(format!("{name} {labels:?} (pull policy: never)")).into());
        }
        let mut full = host_labels();
        full.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let url = self.sources.url_for(name, &full)?;
        let location = match ImageRef::parse(&url)? {
            ImageRef::Name { .. } => {
                return Err(FetchError::Reference { why: format!("source {url:?} must be a URL"), reference: url })
            }
            // A registry: the image is stored, and its signature checked,
            // under the registry's name for it.
            ImageRef::Oci(src) => return self.fetch_oci(&src),
            loc => loc,
        };
        self.fetch_location(&location, Some((name, labels)))
    }

    fn fetch_location(
        &mut self,
        r: &ImageRef,
        expect: Option<(&AcIdentifier, &BTreeMap<String, String>)>,
    ) -> Result<(ImageMeta, bool), FetchError> {
        let staged = match r {
            ImageRef::File(p) => self.stage_file(p)?,
            ImageRef::Url(u) => self.stage_url(u)?,
            ImageRef::Name { .. } | ImageRef::Oci(_) => {
                return Err(FetchError::Reference {
                    reference: format!("{r:?}"),
                    why: format!("{r:?} is not a location"),
                })
            }
        };
        let location = match r {
            ImageRef::File(p) => p.display().to_string(),
            ImageRef::Url(u) => u.clone(),
            ImageRef::Name { name, .. } => name.to_string(),
            ImageRef::Oci(src) => src.to_string(),
        };
        self.import(staged, &location, expect)
    }

    /// Verifies, extracts, checks and commits a staged image.
    fn import(
        &mut self,
        staged: Staged,
        location: &str,
        expect: Option<(&AcIdentifier, &BTreeMap<String, String>)>,
    ) -> Result<(ImageMeta, bool), FetchError> {
        tracing::debug!(size = staged.size, "staged");
        crashpoint("fetch.staged");
        let signer = if self.opts.insecure.image { None } else { Some(self.verify_signature(&staged, location)?) };
        tracing::debug!("signature checked");
        crashpoint("fetch.verified");
        let dir = staged.staging.path().to_owned();
        let extract_dir = dir.join("extract");
        fs::create_dir(&extract_dir).map_err(io_err("create directory", &extract_dir))?;
        let f = File::open(&staged.image).map_err(io_err("open", &staged.image))?;
        let extracted = archive::extract_aci(BufReader::with_capacity(1 << 20, f), &extract_dir, &self.opts.limits)
            .map_err(|source| FetchError::Archive { location: location.to_owned(), source })?;
        for part in ["manifest", "rootfs"] {
            let (from, to) = (extract_dir.join(part), dir.join(part));
            fs::rename(&from, &to).map_err(io_err("rename", &from))?;
        }
        fs::remove_dir(&extract_dir).map_err(io_err("remove", &extract_dir))?;
        let manifest = &extracted.manifest;

        if let Some((key, scopes)) = &signer {
            if !scopes.iter().any(|s| s.covers(&manifest.name)) {
                let prefixes = scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                return Err(FetchError::WrongPrefix {
                    location: location.to_owned(),
                    key: key.clone(),
                    prefixes,
                    name: manifest.name.to_string(),
                });
            }
        }
        if let Some((name, labels)) = expect {
            check_expected(location, manifest, name, labels)?;
        }
        let meta = ImageMeta {
            id: extracted.id.clone(),
            name: manifest.name.clone().into(),
            labels: manifest.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
            size: staged.size,
            uncompressed_size: extracted.uncompressed_size,
            signer: signer.map(|(k, _)| k),
            imported_at: store::now_rfc3339(),
            source: location.to_owned(),
            oci: None,
            other_names: Vec::new(),
        };
        let meta_path = dir.join("meta.json");
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io_err("serialize", &meta_path)(e.into()))?;
        fs::write(&meta_path, json).map_err(io_err("write", &meta_path))?;
        if let Some(sig) = &staged.sig {
            let p = dir.join("image.aci.sig");
            fs::write(&p, sig).map_err(io_err("write", &p))?;
        }
        crashpoint("fetch.extracted");
        let added = self.store.commit(staged.staging, &meta.id)?;
        tracing::info!(id = %meta.id, name = %meta.name, added, "imported");
        let meta = if added { meta } else { self.store.meta(&meta.id)? };
        Ok((meta, added))
    }

    /// Returns the signer's key ID and the scopes it is trusted for.
    fn verify_signature(
        &self,
        staged: &Staged,
        location: &str,
    ) -> Result<(String, Vec<crate::trust::Scope>), FetchError> {
        let Some(sig_bytes) = &staged.sig else {
            return Err(FetchError::MissingSignature { location: location.to_owned(), sig: format!("{location}.sig") });
        };
        let sig = ImageSignature::parse(sig_bytes, Path::new(&format!("{location}.sig")))
            .map_err(|source| FetchError::SignatureFormat { location: location.to_owned(), source })?;
        let trusted = self.trust.by_id(&sig.key_id)?;
        let Some(first) = trusted.first() else {
            return Err(FetchError::UnknownKey { location: location.to_owned(), key: sig.key_id.to_string() });
        };
        if !keys::verify(&first.key.key, staged.prehash.clone(), &sig) {
            return Err(FetchError::BadSignature { location: location.to_owned(), key: sig.key_id.to_string() });
        }
        Ok((sig.key_id.to_string(), trusted.into_iter().map(|t| t.scope).collect()))
    }

    fn progress(&self, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
        if !self.opts.progress || !io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = len.map_or_else(indicatif::ProgressBar::new_spinner, indicatif::ProgressBar::new);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
        {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar
    }

    /// Copies the bytes into a staging dir, hashing them and enforcing the cap.
    fn stage_stream(&self, src: impl Read, location: &str, len: Option<u64>) -> Result<Staged, FetchError> {
        let staging = self.store.staging("fetch")?;
        let image = staging.path().join("image.aci");
        let out = File::create(&image).map_err(io_err("create", &image))?;
        let bar = self.progress(len, location);
        let cap = self.opts.limits.max_uncompressed;
        let copied = stage::copy_hashing(src, out, &image, location, cap, |n| bar.inc(n))?;
        bar.finish_and_clear();
        Ok(Staged { staging, image, size: copied.size, prehash: copied.hash, sig: None })
    }

    fn stage_file(&self, path: &Path) -> Result<Staged, FetchError> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FetchError::Missing(path.display().to_string()))
            }
            Err(e) => return Err(FetchError::Io { op: "open", path: path.to_owned(), source: e }),
        };
        let len = f.metadata().ok().map(|m| m.len());
        let location = path.display().to_string();
        let mut staged = self.stage_stream(f, &location, len)?;
        if !self.opts.insecure.image {
            let mut sig_path = path.as_os_str().to_owned();
            sig_path.push(".sig");
            // Non-blocking, so that a fifo planted as the signature cannot
            // hang the fetch; then only a regular file is read.
            let opened =
                fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(&sig_path);
            staged.sig = match opened {
                Ok(f) => {
                    let sig_path = PathBuf::from(sig_path);
                    let is_file = f.metadata().map_err(io_err("stat", &sig_path))?.is_file();
                    if !is_file {
                        return Err(FetchError::SignatureFormat {
                            location,
                            source: KeyError::Format {
                                path: sig_path,
                                what: "signature",
                                why: "not a regular file".to_owned(),
                            },
                        });
                    }
                    let mut v = Vec::new();
                    f.take(8192).read_to_end(&mut v).map_err(io_err("read", &sig_path))?;
                    Some(v)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(FetchError::Io { op: "open", path: sig_path.into(), source: e }),
            };
        }
        Ok(staged)
    }

    fn client(&mut self) -> Result<reqwest::blocking::Client, FetchError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // The registry client's TLS: system roots plus --ca-cert, where a
        // server's own self-signed certificate may be given too.
        let c = crate::oci::tls::http_client(
            &self.opts.ca_certs,
            !self.opts.insecure.http,
            reqwest::redirect::Policy::limited(10),
        )?;
        self.client = Some(c.clone());
        Ok(c)
    }

    fn get(&mut self, url: &str) -> Result<reqwest::blocking::Response, FetchError> {
        if url.starts_with("http://") && !self.opts.insecure.http {
            return Err(FetchError::PlainHttp(url.to_owned()));
        }
        let resp = self.client()?.get(url).send().map_err(|e| {
            let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
            FetchError::Http { url: url.to_owned(), why: crate::oci::tls::explain(&e, &host) }
        })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            reqwest::StatusCode::NOT_FOUND => Err(FetchError::Missing(url.to_owned())),
            s => Err(FetchError::Http { url: url.to_owned(), why: format!("HTTP status {s}") }),
        }
    }

    fn stage_url(&mut self, url: &str) -> Result<Staged, FetchError> {
        // The signature first: no point downloading an image we would refuse.
        let sig = if self.opts.insecure.image {
            None
        } else {
            let sig_url = format!("{url}.sig");
            match self.get(&sig_url) {
                Ok(resp) => {
                    let mut v = Vec::new();
                    resp.take(8192)
                        .read_to_end(&mut v)
                        .map_err(|e| FetchError::Http { url: sig_url, why: e.to_string() })?;
                    Some(v)
                }
                Err(FetchError::Missing(_)) => None,
                Err(e) => return Err(e),
            }
        };
        let resp = self.get(url)?;
        let len = resp.content_length();
        let mut staged = self.stage_stream(resp, url, len)?;
        staged.sig = sig;
        Ok(staged)
    }
}

fn check_expected(
    location: &str,
    manifest: &ImageManifest,
    name: &AcIdentifier,
    labels: &BTreeMap<String, String>,
) -> Result<(), FetchError> {
    if &manifest.name != name {
        return Err(FetchError::NameMismatch {
            location: location.to_owned(),
            wanted: name.to_string(),
            found: manifest.name.to_string(),
        });
    }
    for (k, v) in labels {
        let found = manifest.label(k);
        if found != Some(v.as_str()) {
            return Err(FetchError::LabelMismatch {
                location: location.to_owned(),
                label: k.clone(),
                wanted: v.clone(),
                found: found.map(str::to_owned),
            });
        }
    }
    Ok(())
}

fn dep_err(dep: &Dependency, e: impl ExitCodeOf + std::error::Error + Send + Sync + 'static) -> DepsError {
    DepsError::Source { image: deps::describe(dep), exit: e.exit(), source: Box::new(e) }
}

impl ImageSource for Fetcher<'_> {
    fn get(&mut self, dep: &Dependency) -> Result<(ImageId, ImageManifest), DepsError> {
        let labels: BTreeMap<String, String> = dep.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
        let (meta, _) = self.by_name(&dep.image_name, &labels, dep.image_id.as_ref()).map_err(|e| dep_err(dep, e))?;
        if meta.oci.is_some() {
            return Err(DepsError::NotFound {
                image: format!("{} (its source gives an OCI image, not an ACI)", deps::describe(dep)),
            });
        }
        let manifest = self.store.manifest(&meta.id).map_err(|e| dep_err(dep, e))?;
        Ok((meta.id, manifest))
    }
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
