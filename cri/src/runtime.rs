//! The CRI RuntimeService: Version, Status, and the sandbox and container
//! lifecycle for the namespace handler (sandbox.rs); stats and metrics
//! (stats.rs, metrics.rs), resource updates (update.rs) and the runtime
//! config (the pod CIDR, kept in live.rs; RuntimeConfig names the cgroupfs
//! driver); ExecSync, and Exec, Attach and
//! PortForward as URLs on the streaming server (streaming/). Calls not
//! served yet answer Unimplemented (tonic's default stubs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::container;
use crate::error::CriError;
use crate::live::Live;
use crate::proto;
use crate::proto::runtime_service_server::RuntimeService;
use crate::sandbox::{self, Host};
use crate::streaming::{self, Pending};
use crate::{metrics, stats, update};

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
    /// Where pods run.
    pub host: Host,
    /// What the server keeps in memory: CPU samples, the pod CIDR.
    pub live: Arc<Live>,
    /// Where Exec, Attach and PortForward URLs point.
    pub streaming: Arc<crate::streaming::Server>,
}

impl Runtime {
    /// Runs a blocking library call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Host) -> Result<T, CriError> + Send + 'static,
    ) -> Result<T, Status> {
        let host = self.host.clone();
        let out = tokio::task::spawn_blocking(move || f(&host)).await.map_err(CriError::from)?;
        out.map_err(|e| {
            tracing::debug!(error = %e, "runtime request failed");
            Status::from(e)
        })
    }
}

impl Runtime {
    /// [`Runtime::blocking`] with the in-memory state too.
    async fn blocking_live<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Host, &Live) -> Result<T, CriError> + Send + 'static,
    ) -> Result<T, Status> {
        let live = Arc::clone(&self.live);
        self.blocking(move |host| f(host, &live)).await
    }
}

/// How many items one message of a streamed list carries (KEP-5825's
/// streams exist to stay under gRPC's message size limit).
const STREAM_CHUNK: usize = 100;

/// A list as a stream of messages of at most [`STREAM_CHUNK`] items each.
fn chunked<T: Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R + Send + 'static,
) -> tonic::codegen::BoxStream<R> {
    let mut items = items.into_iter().peekable();
    let mut chunks = Vec::new();
    while items.peek().is_some() {
        chunks.push(Ok(wrap(items.by_ref().take(STREAM_CHUNK).collect())));
    }
    Box::pin(tokio_stream::iter(chunks))
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
            let mut config: serde_json::Map<String, serde_json::Value> =
                self.config.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            // As containerd shows it: the CIDR kubelet gave, for CNI templates.
            if let Some(cidr) = self.live.pod_cidr() {
                config.insert("podCIDR".to_owned(), serde_json::Value::String(cidr));
            }
            info.insert("config".to_owned(), serde_json::Value::Object(config).to_string());
        }
        Ok(Response::new(proto::StatusResponse {
            status: Some(proto::RuntimeStatus { conditions }),
            info,
            runtime_handlers: crate::podcfg::with_features(crate::vm::runtime_handlers()),
            features: Some(crate::secctx::features()),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req.config.unwrap_or_default();
        let handler = req.runtime_handler;
        let pod_sandbox_id = self.blocking(move |host| sandbox::run_sandbox(host, config, &handler)).await?;
        Ok(Response::new(proto::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.blocking(move |host| sandbox::stop_sandbox(&host.dirs, &id)).await?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.blocking(move |host| sandbox::remove_sandbox(&host.dirs, &id)).await?;
        Ok(Response::new(proto::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let status = self
            .blocking(move |host| {
                sandbox::find_sandbox(&host.dirs, &id)?
                    .map(|s| s.status())
                    .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))
            })
            .await?;
        Ok(Response::new(proto::PodSandboxStatusResponse { status: Some(status), ..Default::default() }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        let items = self.blocking(move |host| sandbox::list_sandboxes(&host.dirs, filter)).await?;
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req.config.unwrap_or_default();
        let container_id = self
            .blocking(move |host| {
                container::create_container(&host.dirs, &req.pod_sandbox_id, config, req.sandbox_config)
            })
            .await?;
        Ok(Response::new(proto::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking(move |host| container::start_container(&host.dirs, &id)).await?;
        Ok(Response::new(proto::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        self.blocking(move |host| container::stop_container(&host.dirs, &req.container_id, timeout)).await?;
        Ok(Response::new(proto::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking(move |host| container::remove_container(&host.dirs, &id)).await?;
        Ok(Response::new(proto::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        let containers = self.blocking(move |host| container::list_containers(&host.dirs, filter)).await?;
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking(move |host| crate::logs::reopen_container_log(&host.dirs, &id)).await?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let id = request.into_inner().container_id;
        let status = self
            .blocking_live(move |host, live| {
                let c = container::find_container(&host.dirs, &id)?;
                let mut status = c.status();
                if let Some(resources) = update::resources_of(live, &c)? {
                    status.resources = Some(resources);
                }
                Ok(status)
            })
            .await?;
        Ok(Response::new(proto::ContainerStatusResponse { status: Some(status), ..Default::default() }))
    }

    async fn update_container_resources(
        &self,
        request: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Result<Response<proto::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        self.blocking_live(move |host, live| update::update_container(&host.dirs, live, &req.container_id, req.linux))
            .await?;
        Ok(Response::new(proto::UpdateContainerResourcesResponse {}))
    }

    async fn update_runtime_config(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        // Only the pod CIDR means anything here; the rest is accepted.
        let cidr = request.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        if let Some(cidr) = cidr {
            tracing::info!(pod_cidr = %cidr, "runtime config updated");
            self.live.set_pod_cidr((!cidr.is_empty()).then_some(cidr));
        }
        Ok(Response::new(proto::UpdateRuntimeConfigResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        // kubelet (1.31+) picks its own cgroup driver from this answer: pod
        // manages cgroups through the filesystem, in v1 and v2 alike.
        Ok(Response::new(proto::RuntimeConfigResponse {
            linux: Some(proto::LinuxRuntimeConfiguration { cgroup_driver: proto::CgroupDriver::Cgroupfs as i32 }),
        }))
    }

    async fn container_stats(
        &self,
        request: Request<proto::ContainerStatsRequest>,
    ) -> Result<Response<proto::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let stats = self.blocking_live(move |host, live| stats::container_stats(&host.dirs, live, &id)).await?;
        Ok(Response::new(proto::ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<proto::ListContainerStatsRequest>,
    ) -> Result<Response<proto::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let stats = self.blocking_live(move |host, live| stats::list_container_stats(&host.dirs, live, filter)).await?;
        Ok(Response::new(proto::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<proto::PodSandboxStatsRequest>,
    ) -> Result<Response<proto::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let stats = self.blocking_live(move |host, live| stats::pod_sandbox_stats(&host.dirs, live, &id)).await?;
        Ok(Response::new(proto::PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Result<Response<proto::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let stats =
            self.blocking_live(move |host, live| stats::list_pod_sandbox_stats(&host.dirs, live, filter)).await?;
        Ok(Response::new(proto::ListPodSandboxStatsResponse { stats }))
    }

    async fn stream_container_stats(
        &self,
        request: Request<proto::StreamContainerStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamContainerStatsResponse>>, Status> {
        let filter = request.into_inner().filter;
        let stats = self.blocking_live(move |host, live| stats::list_container_stats(&host.dirs, live, filter)).await?;
        let wrap = |container_stats| proto::StreamContainerStatsResponse { container_stats };
        Ok(Response::new(chunked(stats, wrap)))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<proto::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamPodSandboxStatsResponse>>, Status> {
        let filter = request.into_inner().filter;
        let stats =
            self.blocking_live(move |host, live| stats::list_pod_sandbox_stats(&host.dirs, live, filter)).await?;
        let wrap = |pod_sandbox_stats| proto::StreamPodSandboxStatsResponse { pod_sandbox_stats };
        Ok(Response::new(chunked(stats, wrap)))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<proto::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamPodSandboxMetricsResponse>>, Status> {
        let metrics = self.blocking_live(move |host, live| metrics::list_pod_sandbox_metrics(&host.dirs, live)).await?;
        let wrap = |pod_sandbox_metrics| proto::StreamPodSandboxMetricsResponse { pod_sandbox_metrics };
        Ok(Response::new(chunked(metrics, wrap)))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<proto::ListMetricDescriptorsRequest>,
    ) -> Result<Response<proto::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(proto::ListMetricDescriptorsResponse { descriptors: metrics::descriptors() }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<proto::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<proto::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics =
            self.blocking_live(move |host, live| metrics::list_pod_sandbox_metrics(&host.dirs, live)).await?;
        Ok(Response::new(proto::ListPodSandboxMetricsResponse { pod_metrics }))
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let (target, argv) = self.exec_target(req.container_id, req.cmd).await?;
        let timeout = u64::try_from(req.timeout).ok().filter(|t| *t > 0).map(Duration::from_secs);
        let out = streaming::exec::exec_sync(&target, &argv, timeout).await.map_err(|e| match e {
            streaming::exec::ExecError::Timeout { .. } => Status::from(CriError::DeadlineExceeded(e.to_string())),
            streaming::exec::ExecError::Spawn(_) => Status::from(CriError::Failed(e.to_string())),
        })?;
        Ok(Response::new(proto::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code }))
    }

    async fn exec(&self, request: Request<proto::ExecRequest>) -> Result<Response<proto::ExecResponse>, Status> {
        let req = request.into_inner();
        streaming_options(req.stdin, req.stdout, req.stderr, req.tty)?;
        self.exec_target(req.container_id.clone(), req.cmd.clone()).await?;
        let url = self.streaming.url_for(Pending::Exec(req)).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(proto::ExecResponse { url }))
    }

    async fn attach(&self, request: Request<proto::AttachRequest>) -> Result<Response<proto::AttachResponse>, Status> {
        let req = request.into_inner();
        streaming_options(req.stdin, req.stdout, req.stderr, req.tty)?;
        self.running_container(req.container_id.clone()).await?;
        let url =
            self.streaming.url_for(Pending::Attach(req)).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(proto::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<proto::PortForwardRequest>,
    ) -> Result<Response<proto::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let id = req.pod_sandbox_id.clone();
        self.blocking(move |host| {
            if id.is_empty() {
                return Err(CriError::InvalidArgument("no pod sandbox ID given".into()));
            }
            let s = sandbox::find_sandbox(&host.dirs, &id)?
                .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
            if !s.ready() {
                return Err(CriError::FailedPrecondition(format!("pod sandbox {} is not ready", s.pod.uuid)));
            }
            Ok(())
        })
        .await?;
        let url =
            self.streaming.url_for(Pending::PortForward(req)).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(proto::PortForwardResponse { url }))
    }
}

/// Exec and Attach options as kubelet's streaming server checks them.
fn streaming_options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
    }
    Ok(())
}

impl Runtime {
    /// A running container, or why not.
    async fn running_container(&self, id: String) -> Result<container::Container, Status> {
        self.blocking(move |host| {
            let c = container::find_container(&host.dirs, &id)?;
            let state = c.status().state;
            if state != proto::ContainerState::ContainerRunning as i32 {
                let name = proto::ContainerState::try_from(state).map_or("unknown", |s| s.as_str_name());
                return Err(CriError::FailedPrecondition(format!("container {} is not running ({name})", c.id())));
            }
            Ok(c)
        })
        .await
    }

    /// Where a command of a running container runs.
    async fn exec_target(
        &self,
        id: String,
        cmd: Vec<String>,
    ) -> Result<(streaming::exec::Target, Vec<String>), Status> {
        if cmd.is_empty() {
            return Err(Status::invalid_argument("no command given (cmd is empty)"));
        }
        let c = self.running_container(id).await?;
        Ok((streaming::exec::Target::of(&c, &self.host.dirs), cmd))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn lists_stream_in_chunks() {
        let sizes: Vec<usize> =
            chunked((0..250).collect(), |v: Vec<i32>| v.len()).map(Result::unwrap).collect::<Vec<_>>().await;
        assert_eq!(sizes, [100, 100, 50]);
        let none: Vec<_> = chunked(Vec::<i32>::new(), |v| v.len()).collect::<Vec<_>>().await;
        assert!(none.is_empty(), "nothing to send, no message");
    }
}
