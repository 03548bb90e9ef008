//! The CRI RuntimeService: Version and Status for now. Sandboxes and
//! containers (pods and their apps) come next; until then those calls
//! answer Unimplemented (tonic's default stubs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::runtime_service_server::RuntimeService;

/// The runtime's name as CRI clients see it.
pub const RUNTIME_NAME: &str = "pod";
/// The CRI API this server speaks.
pub const RUNTIME_API_VERSION: &str = "v1";

/// The RuntimeService.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where CNI network configurations are (NetworkReady needs one).
    pub cni_conf_dir: PathBuf,
    /// Shown by `Status` with `verbose` (`crictl info`).
    pub config: HashMap<String, String>,
}

/// True if `dir` holds a CNI network configuration, as libcni finds them.
pub fn has_cni_config(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let p = e.path();
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("conf" | "conflist" | "json"))
        })
    })
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> proto::RuntimeCondition {
    proto::RuntimeCondition {
        r#type: kind.to_owned(),
        status: ok,
        reason: if ok { String::new() } else { reason.to_owned() },
        message: if ok { String::new() } else { message },
    }
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(proto::VersionResponse {
            // The version of the kubelet runtime API, as every runtime answers.
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let dir = self.cni_conf_dir.clone();
        let network = tokio::task::spawn_blocking(move || has_cni_config(&dir))
            .await
            .map_err(|e| Status::internal(format!("a blocking task failed: {e}")))?;
        let conditions = vec![
            condition("RuntimeReady", true, "", String::new()),
            condition(
                "NetworkReady",
                network,
                "NetworkPluginNotReady",
                format!("no CNI network configuration in {}", self.cni_conf_dir.display()),
            ),
        ];
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            let config: serde_json::Map<String, serde_json::Value> =
                self.config.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            info.insert("config".to_owned(), serde_json::Value::Object(config).to_string());
        }
        Ok(Response::new(proto::StatusResponse {
            status: Some(proto::RuntimeStatus { conditions }),
            info,
            ..Default::default()
        }))
    }
}
