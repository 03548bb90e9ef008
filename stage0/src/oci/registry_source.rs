//! A registry as a [`BlobSource`]: the distribution API client
//! ([`super::registry`]) over one repository.

use spec::oci::Reference;

use super::pull::{BlobSource, RawManifest};
use super::registry::{ClientOptions, RegistryClient, RegistryError};
use super::OciError;
use crate::exit::ExitCodeOf;
use crate::fetch::FetchOptions;

#[derive(Debug)]
pub struct RegistrySource {
    client: RegistryClient,
    repository: String,
    describe: String,
}

fn oci_err(e: RegistryError) -> OciError {
    match e {
        RegistryError::NotFound { .. } => OciError::NotFound(e.to_string()),
        other => OciError::Other { exit: other.exit(), message: other.to_string() },
    }
}

impl RegistrySource {
    pub fn new(r: &Reference, opts: &FetchOptions) -> Result<Self, OciError> {
        let client_opts = ClientOptions {
            plain_http: opts.insecure.http,
            ca_certs: opts.ca_certs.clone(),
            auth_file: opts.auth_file.clone(),
            ..ClientOptions::default()
        };
        let client = RegistryClient::new(&r.registry, &client_opts).map_err(oci_err)?;
        Ok(Self {
            client,
            repository: r.repository.clone(),
            describe: format!("docker://{}/{}", r.registry, r.repository),
        })
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }
}

impl BlobSource for RegistrySource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn manifest(&self, reference: &str) -> Result<RawManifest, OciError> {
        let m = self.client.get_manifest(&self.repository, reference).map_err(oci_err)?;
        let raw = RawManifest::new(Some(m.media_type), m.bytes);
        // The client checked a digest reference against the bytes; ours is
        // computed from the same bytes.
        Ok(raw)
    }

    fn blob(
        &self,
        digest: &str,
        size: u64,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), OciError> {
        // The client reports totals; the pull's bars take increments.
        let mut last = 0u64;
        let mut delta = |total: u64| {
            progress(total.saturating_sub(last));
            last = total;
        };
        self.client.get_blob(&self.repository, digest, Some(size), out, &mut delta).map_err(oci_err)?;
        Ok(())
    }
}
