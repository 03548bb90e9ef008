//! Raw access to the registry for hostile tests: its API through curl (a
//! bearer token fetched for the scope under token auth), and its
//! filesystem storage written directly, so that it serves what the API
//! would refuse (a layer whose bytes do not match its digest, a manifest
//! that names absent blobs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{p, run_ok, sha256_digest, Registry, HARNESS_AGENT, TEST_PASSWORD, TEST_USER, TOKEN_SERVICE};

impl Registry {
    /// A curl command for `path` on the registry (with a bearer token for
    /// `scope`, e.g. `repository:REPO:pull,push`, under token auth).
    pub fn curl(&self, path: &str, scope: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--noproxy", "*", "-A", HARNESS_AGENT]);
        if let Some(t) = &self.trust {
            c.args(["--cacert", p(t)]);
        }
        if self.token.is_some() {
            c.args(["-H", &format!("Authorization: Bearer {}", self.token_for(scope))]);
        }
        c.arg(format!("{}{path}", self.base_url()));
        c
    }

    /// A token from the token server for `scope`, with the test credentials.
    pub fn token_for(&self, scope: &str) -> String {
        let realm = self.realm().expect("no token server");
        let url = format!("{realm}?service={TOKEN_SERVICE}&scope={scope}");
        let out = run_ok(Command::new("curl").args([
            "-sSf",
            "--noproxy",
            "*",
            "-A",
            HARNESS_AGENT,
            "--cacert",
            p(&self.ca.cert),
            "-u",
            &format!("{TEST_USER}:{TEST_PASSWORD}"),
            &url,
        ]));
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Uploads `bytes` as a blob of `repo` through the API; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let scope = format!("repository:{repo}:pull,push");
        let headers = run_ok(self.curl(&format!("/v2/{repo}/blobs/uploads/"), &scope).args([
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ]));
        let location = headers
            .lines()
            .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
            .unwrap_or_else(|| panic!("no upload location in {headers}"))
            .trim()
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let path = location.strip_prefix(&self.base_url()).unwrap_or(&location);
        let file = self.scratch_file(bytes);
        let status = run_ok(self.curl(&format!("{path}{sep}digest={digest}"), &scope).args([
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", p(&file)),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]));
        assert_eq!(status, "201", "blob upload of {digest} to {repo}:\n{}", self.log());
        digest
    }

    /// PUTs a manifest (or index) through the API, where the registry checks
    /// it; returns (HTTP status, the registry's answer).
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> (u16, String) {
        let file = self.scratch_file(bytes);
        let out = run_ok(
            self.curl(&format!("/v2/{repo}/manifests/{reference}"), &format!("repository:{repo}:pull,push")).args([
                "-X",
                "PUT",
                "-H",
                &format!("Content-Type: {media_type}"),
                "--data-binary",
                &format!("@{}", p(&file)),
                "-w",
                "\n%{http_code}",
            ]),
        );
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_owned())
    }

    /// GETs `path` (e.g. `/v2/REPO/manifests/TAG`) from the registry:
    /// (status, body).
    pub fn get(&self, path: &str, accept: &str, scope: &str) -> (u16, Vec<u8>) {
        let out = self
            .curl(path, scope)
            .args(["-H", &format!("Accept: {accept}"), "-w", "\n%{http_code}"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let body = out.stdout;
        let cut = body.iter().rposition(|&b| b == b'\n').unwrap();
        let status = String::from_utf8_lossy(&body[cut + 1..]).trim().parse().unwrap();
        (status, body[..cut].to_vec())
    }

    fn scratch_file(&self, bytes: &[u8]) -> PathBuf {
        let f = self.dir.join(format!("upload-{}", hex::encode(&Sha256::digest(bytes)[..8])));
        fs::write(&f, bytes).unwrap();
        f
    }

    fn v2(&self) -> PathBuf {
        self.storage().join("docker/registry/v2")
    }

    /// The storage file of blob `digest` (`sha256:HEX`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.v2().join("blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Writes `bytes` straight into storage as blob `digest` of `repo`,
    /// whether or not they hash to it: the registry serves them as they are.
    pub fn write_blob_raw(&self, repo: &str, digest: &str, bytes: &[u8]) {
        let data = self.blob_path(digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let hex = &digest["sha256:".len()..];
        write_link(&self.v2().join("repositories").join(repo).join("_layers/sha256").join(hex), digest);
    }

    /// Replaces the content of an existing blob (every repository sees it).
    pub fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        let data = self.blob_path(digest);
        assert!(data.is_file(), "no blob {digest} in the registry");
        fs::write(&data, bytes).unwrap();
    }

    /// Writes `bytes` straight into storage as the manifest tagged `tag` of
    /// `repo`, bypassing the API's checks and its 4 MiB limit; returns its
    /// digest. The registry answers with the media type the JSON names. At
    /// most 4 MiB: distribution reads no more (a 500, "read exceeds limit").
    pub fn write_manifest_raw(&self, repo: &str, tag: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let hex = &digest["sha256:".len()..];
        let data = self.blob_path(&digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let m = self.v2().join("repositories").join(repo).join("_manifests");
        write_link(&m.join("revisions/sha256").join(hex), &digest);
        write_link(&m.join("tags").join(tag).join("current"), &digest);
        write_link(&m.join("tags").join(tag).join("index/sha256").join(hex), &digest);
        digest
    }
}

fn write_link(dir: &Path, digest: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("link"), digest).unwrap();
}
