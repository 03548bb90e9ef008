//! The cases' kit: OCI images written by hand, and the environment each
//! case runs in.

use super::*;

// ---------------------------------------------------------------------------
// Images written by hand.

/// One layer blob and the diff ID of what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) blob: Vec<u8>,
    pub(crate) diff_id: String,
    pub(crate) media_type: &'static str,
}

/// A gzip layer of `tar` (a `RawTar::finish()`).
pub(crate) fn gz(tar: &[u8]) -> Layer {
    Layer { blob: compress(&["gzip", "-c", "-n"], tar), diff_id: sha256_digest(tar), media_type: GZIP_LAYER }
}

/// An uncompressed layer: the blob is the tar.
pub(crate) fn plain(tar: &[u8]) -> Layer {
    Layer { blob: tar.to_vec(), diff_id: sha256_digest(tar), media_type: TAR_LAYER }
}

/// A layer with the files `(path, content)`.
pub(crate) fn files(entries: &[(&str, &[u8])]) -> Layer {
    let mut t = RawTar::new();
    for (path, content) in entries {
        t.file(path, content);
    }
    gz(&t.finish())
}

/// A linux/amd64 config listing `diff_ids`.
pub(crate) fn config_of(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

pub(crate) fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len() })
}

/// An image: layers, a config (by default one that lists the layers'
/// diff IDs) and the manifest naming them, as JSON the test may still edit.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub(crate) layers: Vec<Layer>,
    pub(crate) config: Vec<u8>,
    pub(crate) manifest: Value,
}

impl Image {
    pub(crate) fn new(layers: Vec<Layer>) -> Self {
        let config = config_of(&layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
        Self::with_config(layers, config)
    }

    pub(crate) fn with_config(layers: Vec<Layer>, config: Vec<u8>) -> Self {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(l.media_type, &l.blob)).collect::<Vec<_>>(),
        });
        Self { layers, config, manifest }
    }

    pub(crate) fn manifest_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.manifest).unwrap()
    }

    pub(crate) fn digest(&self) -> String {
        sha256_digest(&self.manifest_bytes())
    }

    pub(crate) fn layer_digest(&self, n: usize) -> String {
        sha256_digest(&self.layers[n].blob)
    }

    /// Pushes the blobs and the manifest through the registry's API (which
    /// checks that the blobs exist); returns the manifest digest.
    pub(crate) fn push(&self, reg: &Registry, repo: &str, tag: &str) -> String {
        reg.put_blob(repo, &self.config);
        for l in &self.layers {
            reg.put_blob(repo, &l.blob);
        }
        let (status, body) = reg.put_manifest(repo, tag, OCI_MANIFEST, &self.manifest_bytes());
        assert!(status < 300, "PUT manifest {repo}:{tag}: {status} {body}\n{}", reg.log());
        self.digest()
    }

    /// Writes the image into a new OCI layout at `dir`, tagged `tag`.
    pub(crate) fn write_layout(&self, dir: &Path, tag: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        write_layout_blob(dir, &self.config);
        for l in &self.layers {
            write_layout_blob(dir, &l.blob);
        }
        let bytes = self.manifest_bytes();
        write_layout_blob(dir, &bytes);
        let mut desc = descriptor(OCI_MANIFEST, &bytes);
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc] });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// Serves the blobs and the manifest (at `tag`, and at its digest) from
    /// the fake registry.
    pub(crate) fn serve(&self, fake: &FakeRegistry, repo: &str, tag: &str) {
        fake.blob(repo, &sha256_digest(&self.config), &self.config);
        for l in &self.layers {
            fake.blob(repo, &sha256_digest(&l.blob), &l.blob);
        }
        let bytes = self.manifest_bytes();
        fake.manifest(repo, tag, OCI_MANIFEST, &bytes, &self.digest());
        fake.manifest(repo, &self.digest(), OCI_MANIFEST, &bytes, &self.digest());
    }
}

// ---------------------------------------------------------------------------
// The environment of a case.

/// A pod environment whose store already holds an OCI image (so that
/// "untouched" covers blobs/, layers/ and images/), and the registry it came
/// from.
pub(crate) struct Env {
    pub(crate) pod: Pod,
    pub(crate) reg: Registry,
    pub(crate) ca: String,
}

pub(crate) fn env() -> Result<Env, Skip> {
    let pod = seeded()?;
    let reg = Registry::start(&pod.work.join("registry"), RegistryOpts::https())?;
    let ca = p(reg.ca_cert()).to_owned();
    Ok(Env { pod, reg, ca })
}

/// A pod environment whose store holds one OCI image, fetched from a
/// layout written by hand.
pub(crate) fn seeded() -> Result<Pod, Skip> {
    need_tools(&["gzip"])?;
    let pod = Pod::new();
    let layout = pod.work.join("seed-layout");
    Image::new(vec![files(&[("etc/seed", b"seed\n")])]).write_layout(&layout, "seed");
    pod.ok(&["fetch", "--insecure-options=image", &format!("oci:{}:seed", p(&layout))]);
    assert!(pod.data.join("layers").is_dir() && pod.data.join("blobs").is_dir(), "the seed image was not stored");
    Ok(pod)
}

impl Env {
    /// `fetch --ca-cert CA --insecure-options=image docker://HOST/REFERENCE`.
    pub(crate) fn fetch_args(&self, reference: &str) -> Vec<String> {
        ["fetch", "--ca-cert", &self.ca, "--insecure-options=image", &self.reg.docker_ref(reference)]
            .map(str::to_owned)
            .to_vec()
    }

    /// Fetches `reference` (insecure, so the content is what is judged):
    /// exit `code`, a message naming all of `words`, the store untouched.
    pub(crate) fn refused(&self, reference: &str, extra: &[&str], code: i32, words: &[&str]) -> String {
        let mut args = self.fetch_args(reference);
        args.splice(1..1, extra.iter().map(|s| (*s).to_owned()));
        refused(&self.pod, &args.iter().map(String::as_str).collect::<Vec<_>>(), code, words)
    }
}

/// Runs `pod ARGS`: exit `code`, a message naming all of `words`, the store
/// byte-identical, `outside/` empty and nothing new beside the store.
pub(crate) fn refused(pod: &Pod, args: &[&str], code: i32, words: &[&str]) -> String {
    let before = pod.snapshot();
    let beside = top_level(pod.root());
    let err = pod.fails(args, code);
    eprintln!("pod said: {err}");
    assert_mentions(&err, words);
    pod.assert_untouched(&before, &args.join(" "));
    assert_eq!(top_level(pod.root()), beside, "{}: written beside the store", args.join(" "));
    err
}

pub(crate) fn top_level(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Every path under `dir` (not following symlinks) whose name is `name`.
pub(crate) fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let path = e.path();
        if e.file_name() == name {
            out.push(path.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&path, name));
        }
    }
    out
}

/// A fake registry over TLS, and `fetch` arguments trusting its CA.
pub(crate) fn fake(pod: &Pod, name: &str) -> Result<FakeRegistry, Skip> {
    FakeRegistry::start(&pod.work.join(name), true)
}

pub(crate) fn fake_fetch_args<'a>(fake: &'a FakeRegistry, reference: &'a str) -> [&'a str; 5] {
    ["fetch", "--ca-cert", p(fake.ca_cert()), "--insecure-options=image", reference]
}
