//! stage0's part of the appc metadata service (`spec::metadata`): the
//! service's socket, starting it on demand (`pod-metadata`, the metadata
//! crate), and each pod's record of what the service answers, written when
//! the pod is prepared.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use spec::metadata::{Annotation, AppRecord, PodRecord, POD_FILE};
use spec::stage1::{self, ResolvedPod};

use crate::paths::Dirs;
use crate::store::{ImageMeta, Store};

/// The service's unix socket for the pods of `dirs`.
pub fn socket(dirs: &Dirs) -> PathBuf {
    socket_in(&dirs.data)
}

fn socket_in(data: &Path) -> PathBuf {
    data.join("metadata").join("service.sock")
}

/// The socket of the running service for the data directory `data`,
/// started first if none runs (the `pod-metadata` beside `pod`, which
/// returns once it listens).
pub fn ensure(data: &Path) -> Result<PathBuf, String> {
    let socket = socket_in(data);
    if UnixStream::connect(&socket).is_ok() {
        return Ok(socket);
    }
    let bin = crate::run::bin_dir().join("pod-metadata");
    let status = Command::new(&bin)
        .arg("--dir")
        .arg(data)
        .arg("--background")
        .status()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    if !status.success() {
        return Err(format!("{} --background: {status}", bin.display()));
    }
    UnixStream::connect(&socket).map(|_| socket.clone()).map_err(|e| format!("{}: {e}", socket.display()))
}

/// What the record needs of one app's image, gathered while it is fetched.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub labels: Vec<spec::Label>,
    /// The image's manifest: an ACI's own, or one rendered for an OCI image.
    pub manifest: Value,
    pub annotations: Vec<Annotation>,
}

impl ImageFacts {
    /// An ACI's manifest as the image carries it; an OCI image's rendered
    /// as an appc image manifest of its name, labels and app.
    pub fn of(store: &Store, meta: &ImageMeta, image_app: Option<&spec::App>) -> Result<Self, String> {
        let labels: Vec<spec::Label> =
            meta.labels.iter().map(|(k, v)| spec::Label { name: k.clone(), value: v.clone() }).collect();
        let manifest = if meta.oci.is_none() {
            let path = store.image_dir(&meta.id).join("manifest");
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            let mut rendered = json!({
                "acKind": "ImageManifest",
                "acVersion": APPC_VERSION,
                "name": meta.name.to_string(),
                "labels": labels,
            });
            if let Some(app) = image_app {
                rendered["app"] = serde_json::to_value(app).map_err(|e| e.to_string())?;
            }
            rendered
        };
        let annotations = manifest
            .get("annotations")
            .and_then(|a| serde_json::from_value::<Vec<Annotation>>(a.clone()).ok())
            .unwrap_or_default();
        Ok(Self { labels, manifest, annotations })
    }
}

/// The appc version of the pod manifests the service renders.
const APPC_VERSION: &str = "0.8.11";

/// A new pod's secrets: the URL token (128 bits) and the HMAC key (512).
pub fn new_secrets() -> Result<(String, String), getrandom::Error> {
    let mut token = [0u8; 16];
    let mut key = [0u8; 64];
    getrandom::getrandom(&mut token)?;
    getrandom::getrandom(&mut key)?;
    Ok((hex::encode(token), hex::encode(key)))
}

/// Gives `app` the service's URL for a pod with this token (replacing any
/// it was given: the URL is the service's to say).
pub fn give_url(app: &mut stage1::App, token: &str) {
    app.env.retain(|(k, _)| k != "AC_METADATA_URL");
    app.env.push(("AC_METADATA_URL".into(), spec::metadata::url(token)));
}

/// The pod's appc pod manifest: its apps (each image by ID), volumes,
/// annotations and ports, with `images[i]` the facts of `pod.apps[i]`.
pub fn pod_manifest(pod: &ResolvedPod, images: &[ImageFacts], annotations: &[Annotation]) -> Value {
    let apps: Vec<Value> = pod.apps.iter().zip(images).map(|(app, image)| app_entry(app, image)).collect();
    let volumes: Vec<Value> = pod
        .volumes
        .iter()
        .map(|v| match &v.source {
            stage1::VolumeSource::Empty => json!({ "name": v.name.as_str(), "kind": "empty" }),
            stage1::VolumeSource::Host { path, read_only } => {
                json!({ "name": v.name.as_str(), "kind": "host", "source": path, "readOnly": read_only })
            }
        })
        .collect();
    let ports: Vec<Value> = pod
        .apps
        .iter()
        .flat_map(|a| &a.ports)
        .chain(&pod.ports)
        .filter(|p| p.host_port != 0)
        .map(|p| json!({ "name": p.name.as_str(), "hostPort": p.host_port }))
        .collect();
    json!({
        "acVersion": APPC_VERSION,
        "acKind": "PodManifest",
        "apps": apps,
        "volumes": volumes,
        "isolators": [],
        "annotations": annotations,
        "ports": ports,
    })
}

/// One app in the pod manifest.
fn app_entry(app: &stage1::App, image: &ImageFacts) -> Value {
    let mut entry = json!({
        "name": app.name.as_str(),
        "image": { "name": app.image_name.to_string(), "id": app.image_id.to_string(), "labels": image.labels },
        "mounts": app.mounts.iter().map(|m| json!({ "volume": m.volume.as_str(), "path": m.path })).collect::<Vec<_>>(),
        "annotations": [],
    });
    if app.read_only_root_fs {
        entry["readOnlyRootFS"] = json!(true);
    }
    // The app as it runs; appc wants a group, which an app given a user
    // alone only has once its passwd is read: left out then.
    if !app.group.is_empty() {
        entry["app"] = json!({
            "exec": app.exec,
            "user": app.user,
            "group": app.group,
            "workingDirectory": app.working_directory,
            "environment": app.env.iter()
                .filter(|(k, _)| k != "AC_METADATA_URL")
                .map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
        });
    }
    entry
}

fn app_record(app: &stage1::App, image: &ImageFacts) -> AppRecord {
    AppRecord {
        name: app.name.to_string(),
        image_id: app.image_id.to_string(),
        image_manifest: image.manifest.clone(),
        annotations: image.annotations.clone(),
    }
}

/// The pod's record, or why it has none readable (a pod without the
/// service has none: its apps get no `AC_METADATA_URL`). The service reads
/// it afresh for each request (`pod app add` rewrites it).
pub fn read_record(pod_dir: &Path) -> Result<PodRecord, String> {
    let path = pod_dir.join(POD_FILE);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces the pod's record (temp file and rename: the service reads it
/// at any time).
fn rewrite_record(pod_dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    let tmp = pod_dir.join(format!(".{POD_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    write_record_at(&tmp, record)?;
    fs::rename(&tmp, pod_dir.join(POD_FILE))
}

/// An app added to the running pod (`pod app add`): its entry in the pod
/// manifest and its own record.
pub fn add_app(pod_dir: &Path, app: &stage1::App, image: &ImageFacts) -> std::io::Result<()> {
    let Ok(mut record) = read_record(pod_dir) else { return Ok(()) };
    remove_from(&mut record, app.name.as_str());
    if let Some(apps) = record.manifest.get_mut("apps").and_then(Value::as_array_mut) {
        apps.push(app_entry(app, image));
    }
    record.apps.push(app_record(app, image));
    rewrite_record(pod_dir, &record)
}

/// An app removed from the running pod.
pub fn remove_app(pod_dir: &Path, name: &str) -> std::io::Result<()> {
    let Ok(mut record) = read_record(pod_dir) else { return Ok(()) };
    remove_from(&mut record, name);
    rewrite_record(pod_dir, &record)
}

fn remove_from(record: &mut PodRecord, name: &str) {
    if let Some(apps) = record.manifest.get_mut("apps").and_then(Value::as_array_mut) {
        apps.retain(|a| a.get("name").and_then(Value::as_str) != Some(name));
    }
    record.apps.retain(|a| a.name != name);
}

/// Writes the pod's record into its directory, readable by root alone.
pub fn write_record(pod_dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    write_record_at(&pod_dir.join(POD_FILE), record)
}

fn write_record_at(path: &Path, record: &PodRecord) -> std::io::Result<()> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(&json)
}

/// The record of a prepared pod.
pub fn record(
    pod: &ResolvedPod,
    images: &[ImageFacts],
    annotations: &[Annotation],
    (token, hmac_key): (String, String),
) -> PodRecord {
    let apps = pod.apps.iter().zip(images).map(|(app, image)| app_record(app, image)).collect();
    PodRecord { token, hmac_key, manifest: pod_manifest(pod, images, annotations), apps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_hex_of_their_size() {
        let (t1, k1) = new_secrets().expect("random");
        let (t2, _) = new_secrets().expect("random");
        assert_eq!((t1.len(), k1.len()), (32, 128));
        assert_ne!(t1, t2);
        assert!(t1.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
