//! The CRI ImageService: images are stage0's store, OCI and ACI alike;
//! pulls go through stage0's `Fetcher` under the same trust store as
//! `pod fetch`, verified unless the name is under an `--insecure-prefix`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use stage0::archive::Limits;
use stage0::fetch::{FetchOptions, Fetcher, Insecure, PullPolicy};
use stage0::paths::Dirs;
use stage0::pods::Pods;
use stage0::sources::Sources;
use stage0::store::{ImageMeta, Store, StoreError};
use stage0::trust::{Scope, TrustStore};
use tonic::{Request, Response, Status};

use crate::error::CriError;
use crate::fsinfo;
use crate::proto;
use crate::proto::image_service_server::ImageService;
use crate::reference::{self, cri_id, repo_digests, repo_tags};

/// How pulls are made: what `pod cri serve` was told.
#[derive(Debug, Clone, Default)]
pub struct PullConfig {
    /// Names under these prefixes are pulled without signature
    /// verification (each pull says so in the log).
    pub insecure_prefixes: Vec<Scope>,
    /// Extra CA certificates (PEM) trusted for registries.
    pub ca_certs: Vec<PathBuf>,
    /// Registry credentials (a containers-style auth.json) used when a
    /// request carries none.
    pub auth_file: Option<PathBuf>,
    pub limits: Limits,
}

/// The ImageService over one data and config directory.
#[derive(Debug, Clone)]
pub struct Images {
    dirs: Dirs,
    pull: Arc<PullConfig>,
}

impl Images {
    pub fn new(dirs: Dirs, pull: PullConfig) -> Self {
        Self { dirs, pull: Arc::new(pull) }
    }

    /// Runs a blocking library call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Dirs, &PullConfig) -> Result<T, CriError> + Send + 'static,
    ) -> Result<T, Status> {
        let dirs = self.dirs.clone();
        let pull = Arc::clone(&self.pull);
        let out = tokio::task::spawn_blocking(move || f(&dirs, &pull)).await.map_err(CriError::from)?;
        out.map_err(|e| {
            tracing::debug!(error = %e, "image request failed");
            Status::from(e)
        })
    }
}

/// An image as CRI describes it, with the user its config names.
pub fn to_image(store: &Store, m: &ImageMeta) -> proto::Image {
    let id = cri_id(&m.id);
    let (uid, username) = image_user(store, m);
    proto::Image {
        repo_tags: repo_tags(m),
        repo_digests: repo_digests(m),
        size: m.uncompressed_size,
        spec: Some(proto::ImageSpec { image: id.clone(), ..Default::default() }),
        id,
        uid: uid.map(|value| proto::Int64Value { value }),
        username,
        ..Default::default()
    }
}

/// The `config` section (User, Entrypoint, ...) of a stored OCI image's
/// config; `None` for an ACI or a config that cannot be read.
pub(crate) fn oci_config(store: &Store, m: &ImageMeta) -> Option<serde_json::Value> {
    m.oci.as_ref()?;
    let path = store.image_dir(&m.id).join(stage0::oci::store::CONFIG_FILE);
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(config["config"].take())
}

/// The user an OCI image's config runs as (`User`: `uid`, `name`, either
/// with `:group`): CRI's `uid` for a number, `username` for a name. An ACI
/// (or a config that cannot be read) reports neither.
fn image_user(store: &Store, m: &ImageMeta) -> (Option<i64>, String) {
    let user = oci_config(store, m).and_then(|c| c["User"].as_str().map(str::to_owned)).unwrap_or_default();
    parse_user(&user)
}

fn parse_user(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

/// The deadline a gRPC client sent (`grpc-timeout`: digits and a unit).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn spec_image(spec: Option<&proto::ImageSpec>) -> &str {
    spec.map_or("", |s| s.image.as_str())
}

/// Pulls `image` into the store and returns it.
pub fn pull(
    dirs: &Dirs,
    cfg: &PullConfig,
    image: &str,
    auth: Option<&proto::AuthConfig>,
) -> Result<ImageMeta, CriError> {
    let r = reference::fetch_ref(image)?;
    let reg = reference::registry_ref(&r)
        .ok_or_else(|| CriError::InvalidArgument(format!("{image}: not a registry image")))?;
    let name = reg.name();
    let insecure = cfg.insecure_prefixes.iter().find(|s| s.covers(name.as_str()));
    if let Some(prefix) = insecure {
        tracing::warn!(
            image,
            %prefix,
            "pulling WITHOUT signature verification: the name is under an --insecure-prefix; whoever can alter this image controls what runs"
        );
    }
    // Credentials sent with the request, in a private file for the fetcher
    // (removed when the pull ends).
    let auth_file = match auth.and_then(credentials) {
        Some(basic) => Some(write_auth(dirs, &reg.registry, &basic)?),
        None => None,
    };
    let store = Store::open(dirs)?;
    let trust = TrustStore::new(dirs.trust());
    let sources = Sources::new(dirs.sources());
    let opts = FetchOptions {
        insecure: Insecure { http: false, image: insecure.is_some() },
        ca_certs: cfg.ca_certs.clone(),
        limits: cfg.limits.clone(),
        // kubelet decides when to pull (its imagePullPolicy); a pull by tag
        // asks the registry again.
        pull: PullPolicy::Always,
        progress: false,
        platform: None,
        signature: None,
        auth_file: auth_file.as_ref().map(|f| f.path().to_owned()).or_else(|| cfg.auth_file.clone()),
    };
    let mut fetcher = Fetcher::new(&store, &trust, &sources, opts)?;
    let fetched = fetcher.fetch(&r)?;
    tracing::info!(image, id = %fetched.meta.id, added = fetched.added, signer = ?fetched.meta.signer, "pulled");
    Ok(fetched.meta)
}

/// `user:password` from a CRI AuthConfig, base64 as auth.json keeps it.
fn credentials(a: &proto::AuthConfig) -> Option<String> {
    if !a.auth.is_empty() {
        return Some(a.auth.clone());
    }
    if !a.username.is_empty() {
        return Some(base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", a.username, a.password)));
    }
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        tracing::warn!("identity and registry tokens are not supported yet; pulling without them");
    }
    None
}

fn write_auth(dirs: &Dirs, registry: &str, basic: &str) -> Result<tempfile::NamedTempFile, CriError> {
    let tmp = dirs.tmp();
    let mut f = tempfile::Builder::new().prefix("cri-auth-").tempfile_in(&tmp).map_err(|source| CriError::Io {
        op: "create a file in",
        path: tmp.clone(),
        source,
    })?;
    let json = serde_json::json!({ "auths": { registry: { "auth": basic } } });
    f.write_all(json.to_string().as_bytes()).map_err(|source| CriError::Io {
        op: "write",
        path: f.path().to_owned(),
        source,
    })?;
    Ok(f)
}

/// Removes an image unless a pod uses it; true if it was there. Then
/// collects the OCI blobs and trees no image needs any more, unless another
/// pod process holds the store (they are collected next time).
pub fn remove(dirs: &Dirs, image: &str) -> Result<bool, CriError> {
    let store = Store::open(dirs)?;
    let Some(meta) = reference::resolve(&store, image)? else { return Ok(false) };
    let users = stage0::lifecycle::pods_using(&Pods::new(dirs), &meta.id)?;
    if !users.is_empty() {
        return Err(CriError::InUse { image: meta.name.to_string(), pods: users.join(", ") });
    }
    match store.remove(&meta.id) {
        Ok(()) => {}
        // Removed by a concurrent RemoveImage since it was resolved: gone
        // is what both asked for.
        Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(image, id = %meta.id, "removed");
    match store.try_lock_exclusive() {
        Ok(_lock) => {
            stage0::render::gc_trees(dirs, |layers| {
                layers.iter().all(|id| store.image_dir(id).join("meta.json").is_file())
            })?;
            let keep: Vec<_> = store.list()?.into_iter().filter_map(|m| m.oci).collect();
            stage0::oci::store::gc(dirs, &keep)?;
        }
        Err(e) => tracing::debug!(error = %e, "blobs not collected now"),
    }
    Ok(true)
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let filter = request.into_inner().filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
        let images = self
            .blocking(move |dirs, _| {
                let store = Store::open(dirs)?;
                let metas = match filter {
                    Some(f) => reference::resolve(&store, &f)?.into_iter().collect(),
                    None => store.list()?,
                };
                Ok(metas.iter().map(|m| to_image(&store, m)).collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        request: Request<proto::StreamImagesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamImagesResponse>>, Status> {
        let filter = request.into_inner().filter;
        let list = self.list_images(Request::new(proto::ListImagesRequest { filter })).await?.into_inner();
        let one = proto::StreamImagesResponse { images: list.images };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(one)]))))
    }

    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref()).to_owned();
        let found = self
            .blocking(move |dirs, _| {
                let store = Store::open(dirs)?;
                Ok(reference::resolve(&store, &image)?.map(|m| (to_image(&store, &m), m)))
            })
            .await?;
        // CRI: an image that is not there is no error, just no image.
        let Some((image, meta)) = found else { return Ok(Response::new(proto::ImageStatusResponse::default())) };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let json = serde_json::to_string(&meta).map_err(|e| Status::internal(format!("image metadata: {e}")))?;
            info.insert("info".to_owned(), json);
        }
        Ok(Response::new(proto::ImageStatusResponse { image: Some(image), info }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref()).to_owned();
        tracing::info!(image, "pull");
        let auth = req.auth;
        let named = image.clone();
        let pulling = self.blocking(move |dirs, cfg| pull(dirs, cfg, &image, auth.as_ref()));
        let meta = match deadline {
            // Answered a little before tonic's own timeout, which would say
            // Cancelled: a client whose deadline passed is told so. The pull
            // itself goes on (a blocking task cannot be interrupted), and its
            // image lands in the store whole or not at all.
            Some(d) => tokio::time::timeout(d.saturating_sub(Duration::from_millis(1)), pulling)
                .await
                .map_err(|_| Status::deadline_exceeded(format!("pulling {named}: the client's deadline passed")))??,
            None => pulling.await?,
        };
        Ok(Response::new(proto::PullImageResponse { image_ref: cri_id(&meta.id) }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let image = spec_image(request.into_inner().image.as_ref()).to_owned();
        // CRI: removing an image that is gone is no error.
        self.blocking(move |dirs, _| remove(dirs, &image)).await?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<proto::ImageFsInfoRequest>,
    ) -> Result<Response<proto::ImageFsInfoResponse>, Status> {
        let (data, used) = self
            .blocking(|dirs, _| Ok((dirs.data.clone(), fsinfo::usage(&dirs.data, &fsinfo::store_dirs(dirs))?)))
            .await?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let fs = proto::FilesystemUsage {
            timestamp,
            fs_id: Some(proto::FilesystemIdentifier { mountpoint: data.display().to_string() }),
            used_bytes: Some(proto::UInt64Value { value: used.bytes }),
            inodes_used: Some(proto::UInt64Value { value: used.inodes }),
        };
        Ok(Response::new(proto::ImageFsInfoResponse { image_filesystems: vec![fs], container_filesystems: vec![] }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_user;

    #[test]
    fn grpc_timeouts_are_read_in_their_units() {
        use std::time::Duration;
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(super::grpc_timeout(&m), None);
        for (v, d) in
            [("1m", Duration::from_millis(1)), ("2S", Duration::from_secs(2)), ("3M", Duration::from_secs(180))]
        {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(super::grpc_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(super::grpc_timeout(&m), None);
    }

    #[test]
    fn an_image_user_is_a_uid_or_a_name() {
        assert_eq!(parse_user(""), (None, String::new()));
        assert_eq!(parse_user("1002"), (Some(1002), String::new()));
        assert_eq!(parse_user("1003:users"), (Some(1003), String::new()));
        assert_eq!(parse_user("www-data"), (None, "www-data".to_owned()));
        assert_eq!(parse_user("www-data:users"), (None, "www-data".to_owned()));
    }
}
