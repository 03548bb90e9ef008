//! OCI images built without Docker: umoci makes an OCI image layout, one
//! layer per `unpack` / change / `repack` (deletions become `.wh.` whiteout
//! entries), `umoci config` sets the image config; indexes (manifest lists)
//! are written by hand into the layout; skopeo turns a layout into
//! `oci-archive` and `docker-archive` files.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{need_tools, p, run_ok, sha256_digest, skopeo, Skip};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn umoci(args: &[&str]) -> Command {
    let mut c = Command::new("umoci");
    c.args(args);
    c
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// One image (one tag) in an OCI image layout, built layer by layer.
#[derive(Debug)]
pub struct OciImage {
    layout: PathBuf,
    tag: String,
    /// Where layers are staged: `BUNDLE/rootfs` is unpacked afresh for each.
    work: PathBuf,
    layers: usize,
}

impl OciImage {
    /// A new image without layers, tagged `tag` in the layout at `layout`
    /// (created if it does not exist; several images may share one).
    pub fn new(layout: &Path, tag: &str) -> Result<Self, Skip> {
        need_tools(&["umoci", "skopeo"])?;
        if !layout.join("index.json").is_file() {
            fs::create_dir_all(layout.parent().unwrap()).unwrap();
            run_ok(&mut umoci(&["init", "--layout", p(layout)]));
        }
        let layout = layout.canonicalize().unwrap();
        let image = format!("{}:{tag}", p(&layout));
        run_ok(&mut umoci(&["new", "--image", &image]));
        let work = layout.with_file_name(format!("{}-{tag}.work", layout.file_name().unwrap().to_string_lossy()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        // umoci's own config leaves no entrypoint or cmd: a plain one.
        let img = Self { layout, tag: tag.to_owned(), work, layers: 0 };
        Ok(img)
    }

    /// A new image `tag` in `base`'s layout that starts as `base` (same
    /// manifest, so the same layers): images that share base layers.
    pub fn based_on(base: &OciImage, tag: &str) -> Self {
        run_ok(&mut umoci(&["tag", "--image", &base.umoci_image(), tag]));
        let layout = base.layout.clone();
        let work = layout.with_file_name(format!("{}-{tag}.work", layout.file_name().unwrap().to_string_lossy()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        Self { layout, tag: tag.to_owned(), work, layers: base.layers }
    }

    /// `DIR:TAG`, as umoci takes it.
    fn umoci_image(&self) -> String {
        format!("{}:{}", p(&self.layout), self.tag)
    }

    /// `oci:DIR:TAG`, as skopeo takes it.
    pub fn reference(&self) -> String {
        format!("oci:{}", self.umoci_image())
    }
    pub fn layout(&self) -> &Path {
        &self.layout
    }
    pub fn tag(&self) -> &str {
        &self.tag
    }
    pub fn layer_count(&self) -> usize {
        self.layers
    }

    /// Adds one layer: `change` edits the image's rootfs as it stands (files
    /// it writes are added, files it removes become whiteouts).
    pub fn layer_with(mut self, change: impl FnOnce(&Path)) -> Self {
        let bundle = self.work.join("bundle");
        let _ = fs::remove_dir_all(&bundle);
        let image = self.umoci_image();
        let rootless = if is_root() { vec![] } else { vec!["--rootless"] };
        let mut unpack = vec!["unpack"];
        unpack.extend(&rootless);
        unpack.extend(["--image", &image, p(&bundle)]);
        run_ok(&mut umoci(&unpack));
        change(&bundle.join("rootfs"));
        let mut repack = vec!["repack"];
        repack.extend(&rootless);
        repack.extend(["--image", &image, p(&bundle)]);
        run_ok(&mut umoci(&repack));
        fs::remove_dir_all(&bundle).unwrap();
        self.layers += 1;
        self
    }

    /// Adds one layer holding `files` (`(path relative to /, content)`),
    /// parent directories created.
    pub fn layer(self, files: &[(&str, &[u8])]) -> Self {
        self.layer_with(|root| {
            for (path, content) in files {
                let f = root.join(path.trim_start_matches('/'));
                fs::create_dir_all(f.parent().unwrap()).unwrap();
                fs::write(f, content).unwrap();
            }
        })
    }

    /// Adds one layer with a copy of directory `src`'s tree at `/`.
    pub fn layer_from_dir(self, src: &Path) -> Self {
        self.layer_with(|root| {
            run_ok(Command::new("cp").args(["-a", "--", &format!("{}/.", p(src)), p(root)]));
        })
    }

    /// Adds one layer that deletes `paths` (files or directories of earlier
    /// layers): `.wh.NAME` entries.
    pub fn whiteout(self, paths: &[&str]) -> Self {
        self.layer_with(|root| {
            for path in paths {
                let f = root.join(path.trim_start_matches('/'));
                let md = fs::symlink_metadata(&f).unwrap_or_else(|e| panic!("whiteout of {path}: {e}"));
                if md.is_dir() {
                    fs::remove_dir_all(&f).unwrap();
                } else {
                    fs::remove_file(&f).unwrap();
                }
            }
        })
    }

    /// Adds a busybox base layer: `/bin/busybox` (Debian's busybox-static)
    /// with a symlink per applet in `/bin`, `/etc/passwd`, `/etc/group`,
    /// `/tmp`, `/root`.
    pub fn busybox(self) -> Result<Self, Skip> {
        let bb = Path::new("/bin/busybox");
        need_tools(&["/bin/busybox"])?;
        let list = run_ok(Command::new(bb).arg("--list"));
        Ok(self.layer_with(|root| {
            let bin = root.join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::copy(bb, bin.join("busybox")).unwrap();
            for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
                let _ = symlink("busybox", bin.join(applet));
            }
            fs::create_dir_all(root.join("etc")).unwrap();
            fs::write(
                root.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            )
            .unwrap();
            fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
            for d in ["tmp", "root"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
        }))
    }

    /// `umoci config ARGS` on this image, e.g.
    /// `["--config.entrypoint", "/bin/sh", "--config.env", "A=1"]`. Allowed
    /// also between layers.
    pub fn config(self, args: &[&str]) -> Self {
        let image = self.umoci_image();
        let mut argv = vec!["config", "--image", &image];
        argv.extend(args);
        run_ok(&mut umoci(&argv));
        self
    }

    pub fn entrypoint(self, argv: &[&str]) -> Self {
        let args = repeat("--config.entrypoint", argv);
        self.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    pub fn cmd(self, argv: &[&str]) -> Self {
        let args = repeat("--config.cmd", argv);
        self.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    /// `KEY=VALUE` entries.
    pub fn env(self, vars: &[&str]) -> Self {
        let args = repeat("--config.env", vars);
        self.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    pub fn workdir(self, dir: &str) -> Self {
        self.config(&["--config.workingdir", dir])
    }
    /// `uid[:gid]` or a user name.
    pub fn user(self, user: &str) -> Self {
        self.config(&["--config.user", user])
    }
    /// `PORT/PROTO` entries.
    pub fn exposed_ports(self, ports: &[&str]) -> Self {
        let args = repeat("--config.exposedports", ports);
        self.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    pub fn volumes(self, paths: &[&str]) -> Self {
        let args = repeat("--config.volume", paths);
        self.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    pub fn stop_signal(self, sig: &str) -> Self {
        self.config(&["--config.stopsignal", sig])
    }
    pub fn label(self, key: &str, value: &str) -> Self {
        self.config(&["--config.label", &format!("{key}={value}")])
    }
    /// The config's `os` and `architecture` (e.g. "linux", "arm64").
    pub fn platform(self, os: &str, arch: &str) -> Self {
        self.config(&["--os", os, "--architecture", arch])
    }

    // -- What was built --------------------------------------------------------

    fn descriptor(&self) -> Value {
        let index: Value = serde_json::from_slice(&fs::read(self.layout.join("index.json")).unwrap()).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"][REF_NAME] == self.tag.as_str())
            .unwrap_or_else(|| panic!("no tag {} in {}", self.tag, self.layout.display()))
            .clone()
    }

    /// The manifest's descriptor in the layout's index.json.
    pub fn manifest_descriptor(&self) -> Value {
        self.descriptor()
    }
    /// `sha256:HEX` of the manifest (what the registry serves it under).
    pub fn manifest_digest(&self) -> String {
        self.descriptor()["digest"].as_str().unwrap().to_owned()
    }
    /// The manifest's bytes.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        read_blob(&self.layout, &self.manifest_digest())
    }
    pub fn manifest(&self) -> Value {
        serde_json::from_slice(&self.manifest_bytes()).unwrap()
    }
    /// The image config (`{architecture, os, config: {...}, rootfs, history}`).
    pub fn config_json(&self) -> Value {
        let digest = self.manifest()["config"]["digest"].as_str().unwrap().to_owned();
        serde_json::from_slice(&read_blob(&self.layout, &digest)).unwrap()
    }
    /// The layers' digests, base first.
    pub fn layer_digests(&self) -> Vec<String> {
        self.manifest()["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
    }
    /// A blob's file in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout, digest)
    }
    /// The entry names of layer `n` (0 = base), via `tar -tz`.
    pub fn layer_entries(&self, n: usize) -> Vec<String> {
        let digest = &self.layer_digests()[n];
        let out = run_ok(Command::new("tar").args(["-tzf", p(&self.blob_path(digest))]));
        out.lines().map(str::to_owned).collect()
    }

    /// `skopeo copy` to an `oci-archive` file.
    pub fn oci_archive(&self, file: &Path) -> PathBuf {
        run_ok(&mut skopeo(&["copy", &self.reference(), &format!("oci-archive:{}", p(file))]));
        file.to_owned()
    }
    /// `skopeo copy` to a `docker-archive` file (Docker's `docker save`
    /// format, schema2 manifest) tagged `repo_tag` (`REPO:TAG`).
    pub fn docker_archive(&self, file: &Path, repo_tag: &str) -> PathBuf {
        run_ok(&mut skopeo(&["copy", &self.reference(), &format!("docker-archive:{}:{repo_tag}", p(file))]));
        file.to_owned()
    }
}

impl Drop for OciImage {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.work);
    }
}

fn repeat(flag: &str, values: &[&str]) -> Vec<String> {
    values.iter().flat_map(|v| [flag.to_owned(), (*v).to_owned()]).collect()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(blob_path(layout, digest)).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// Writes `bytes` as a blob of the layout; returns its digest.
pub fn write_layout_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let f = blob_path(layout, &digest);
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(f, bytes).unwrap();
    digest
}

/// An image index (manifest list) tagged in an OCI layout, written by hand:
/// one entry per image, with the image's config `os`/`architecture` as its
/// platform. Push it with `Registry::push_ref(&index.reference(), ..)`,
/// which copies every platform's image too.
#[derive(Debug)]
pub struct OciIndex {
    layout: PathBuf,
    tag: String,
    digest: String,
}

impl OciIndex {
    /// Tags `tag` in `images[0]`'s layout (all must share it) as an index of
    /// `images`.
    pub fn new(tag: &str, images: &[&OciImage]) -> Self {
        let layout = images.first().expect("an index of no image").layout.clone();
        let entries: Vec<Value> = images
            .iter()
            .map(|img| {
                assert_eq!(img.layout, layout, "the images of an index share one layout");
                let cfg = img.config_json();
                let mut d = img.descriptor();
                d.as_object_mut().unwrap().remove("annotations");
                d["platform"] = json!({ "os": cfg["os"], "architecture": cfg["architecture"] });
                d
            })
            .collect();
        Self::from_entries(&layout, tag, entries)
    }

    /// Tags `tag` in `layout` as an index of the given descriptors, as they
    /// are (for odd platforms, variants, or hostile entries).
    pub fn from_entries(layout: &Path, tag: &str, manifests: Vec<Value>) -> Self {
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let bytes = serde_json::to_vec(&index).unwrap();
        let digest = write_layout_blob(layout, &bytes);
        let top_path = layout.join("index.json");
        let mut top: Value = serde_json::from_slice(&fs::read(&top_path).unwrap()).unwrap();
        let list = top["manifests"].as_array_mut().unwrap();
        list.retain(|d| d["annotations"][REF_NAME] != tag);
        list.push(json!({
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": bytes.len(),
            "annotations": { REF_NAME: tag },
        }));
        fs::write(&top_path, serde_json::to_vec(&top).unwrap()).unwrap();
        Self { layout: layout.to_owned(), tag: tag.to_owned(), digest }
    }

    /// `oci:DIR:TAG`.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", p(&self.layout), self.tag)
    }
    /// `sha256:HEX` of the index.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&read_blob(&self.layout, &self.digest)).unwrap()
    }
}
