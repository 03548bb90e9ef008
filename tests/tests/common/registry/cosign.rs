//! The real cosign (built by scripts/build-cosign.sh), kept offline: key
//! pairs, signatures stored in the registry (the `sha256-HEX.sig` tag of
//! cosign's default format), verification. No Rekor, no Fulcio, no TUF:
//! `--tlog-upload=false` and `--insecure-ignore-tlog=true`, a private
//! `TUF_ROOT`, and proxy variables that fail anything not on loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{no_internet, p, which, Registry, Skip, Tls};

/// Where scripts/build-cosign.sh installs cosign.
pub const COSIGN_INSTALLED: &str = "/usr/local/lib/pod-test/bin/cosign";

/// The cosign binary: `$POD_TEST_COSIGN`, the installed one, or PATH's.
pub fn cosign_bin() -> Result<PathBuf, Skip> {
    if let Some(c) = std::env::var_os("POD_TEST_COSIGN") {
        return which(&c.to_string_lossy()).ok_or_else(|| Skip(format!("cosign not found: POD_TEST_COSIGN={c:?}")));
    }
    which(COSIGN_INSTALLED)
        .or_else(|| which("cosign"))
        .ok_or_else(|| Skip("cosign not found (scripts/build-cosign.sh builds it)".into()))
}

/// A cosign key pair: `cosign.key` (encrypted with `password`) and
/// `cosign.pub` (PEM, ECDSA P-256).
#[derive(Debug, Clone)]
pub struct CosignKey {
    pub key: PathBuf,
    pub public: PathBuf,
    pub password: String,
}

/// A cosign command with an environment of its own under `state`: no
/// docker config but `docker_config`, a private TUF cache, no internet.
fn cosign_cmd(bin: &Path, state: &Path, docker_config: Option<&Path>) -> Command {
    let mut c = Command::new(bin);
    let tuf = state.join("tuf");
    fs::create_dir_all(&tuf).unwrap();
    c.env("TUF_ROOT", &tuf)
        .env("HOME", state)
        .env("SIGSTORE_NO_CACHE", "1")
        .env_remove("COSIGN_EXPERIMENTAL")
        .env_remove("COSIGN_REPOSITORY")
        .env_remove("SIGSTORE_ROOT_FILE")
        .stdin(Stdio::null());
    match docker_config {
        Some(d) => c.env("DOCKER_CONFIG", d),
        None => c.env("DOCKER_CONFIG", state.join("no-docker-config")),
    };
    no_internet(&mut c);
    c
}

/// `cosign generate-key-pair` into `dir` (created) with `password`.
pub fn cosign_generate_key_pair(dir: &Path, password: &str) -> Result<CosignKey, Skip> {
    let bin = cosign_bin()?;
    fs::create_dir_all(dir).unwrap();
    let out = cosign_cmd(&bin, dir, None)
        .args(["generate-key-pair", "--output-key-prefix", p(&dir.join("cosign"))])
        .env("COSIGN_PASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "cosign generate-key-pair: {}", String::from_utf8_lossy(&out.stderr));
    Ok(CosignKey { key: dir.join("cosign.key"), public: dir.join("cosign.pub"), password: password.to_owned() })
}

/// The registry options cosign needs: its CA, or http/self-signed allowed.
fn registry_flags(reg: &Registry) -> Vec<String> {
    match reg.opts().tls {
        Tls::Plain => vec!["--allow-http-registry=true".into(), "--allow-insecure-registry=true".into()],
        Tls::Ca | Tls::SelfSigned => vec!["--registry-cacert".into(), p(reg.ca_cert()).into()],
    }
}

/// `cosign sign --key KEY` of `image` (`HOST/REPO@sha256:HEX`) in `reg`,
/// without the transparency log; the signature goes to the registry as tag
/// `sha256-HEX.sig` (see `cosign_sig_tag`). Panics unless it works.
pub fn cosign_sign(key: &CosignKey, image: &str, reg: &Registry) {
    let out = cosign_sign_output(key, image, reg, &[]);
    assert!(out.status.success(), "cosign sign {image}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `cosign sign` with `extra` arguments (e.g. `-a key=value`), not asserted.
pub fn cosign_sign_output(key: &CosignKey, image: &str, reg: &Registry, extra: &[&str]) -> Output {
    let bin = cosign_bin().expect("cosign");
    let state = key.key.parent().unwrap();
    let mut c = cosign_cmd(&bin, state, Some(reg.docker_config()));
    c.args(["sign", "--key", p(&key.key), "--tlog-upload=false", "--yes"])
        .args(registry_flags(reg))
        .args(extra)
        .arg(image)
        .env("COSIGN_PASSWORD", &key.password);
    c.output().unwrap()
}

/// `cosign verify --key PUB --insecure-ignore-tlog=true image`: its output
/// (stdout: the verified payloads as JSON).
pub fn cosign_verify(public: &Path, image: &str, reg: &Registry) -> Output {
    let bin = cosign_bin().expect("cosign");
    let state = public.parent().unwrap();
    let mut c = cosign_cmd(&bin, state, Some(reg.docker_config()));
    c.args(["verify", "--key", p(public), "--insecure-ignore-tlog=true", "--offline=true"])
        .args(registry_flags(reg))
        .arg(image);
    c.output().unwrap()
}

/// `cosign version`'s GitVersion line, e.g. `v2.6.5`.
pub fn cosign_version() -> Result<String, Skip> {
    let bin = cosign_bin()?;
    let out = Command::new(bin).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().find_map(|l| l.strip_prefix("GitVersion:")).unwrap_or("?").trim().to_owned())
}

/// The tag cosign stores the signature of manifest `digest` under.
pub fn cosign_sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}
