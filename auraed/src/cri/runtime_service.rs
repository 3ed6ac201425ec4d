//! The CRI `RuntimeService`: each call handed to the sandbox, container or
//! exec code, or answered `UNIMPLEMENTED` naming what is not built yet.

use std::pin::Pin;

use aurae_proto::cri;
use aurae_proto::cri::runtime_service_server::RuntimeService;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::pages::pages;
use super::{Cri, CriService};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What is not built yet, named.
pub fn not_yet(call: &str, what: &str) -> Status {
    Status::unimplemented(format!("{call}: {what} is not built yet"))
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        _r: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "auraed".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        // Run to the end even if the caller goes away (its deadline may be
        // shorter than a microVM's boot): a set-up dropped halfway would
        // skip its own rollback. A sandbox the kubelet never heard of is
        // listed, and removed by its garbage collection.
        let cri = self.0.clone();
        let made = tokio::spawn(async move { cri.run_sandbox(r.into_inner()).await })
            .await
            .map_err(|e| Status::internal(format!("RunPodSandbox: its task failed: {e}")))?;
        Ok(Response::new(made?))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.stop_sandbox(&r.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.remove_sandbox(&r.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        Ok(Response::new(self.sandbox_status(r.into_inner())?))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Ok(Response::new(self.list_sandboxes(r.into_inner())))
    }

    type StreamPodSandboxesStream = Streamed<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let list = self.list_sandboxes(cri::ListPodSandboxRequest {
            filter: r.into_inner().filter,
        });
        Ok(Response::new(pages(list.items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        Ok(Response::new(
            Cri::create_container(&self, r.into_inner()).await?,
        ))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        Cri::start_container(&self.0, &r.into_inner().container_id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let r = r.into_inner();
        Cri::stop_container(&self, &r.container_id, r.timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        Cri::remove_container(&self, &r.into_inner().container_id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Ok(Response::new(Cri::list_containers(&self, r.into_inner())))
    }

    type StreamContainersStream = Streamed<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let list = Cri::list_containers(
            self,
            cri::ListContainersRequest {
                filter: r.into_inner().filter,
            },
        );
        Ok(Response::new(pages(list.containers, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        Ok(Response::new(Cri::container_status(&self, r.into_inner())?))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        self.update_resources(r.into_inner()).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.reopen_log(&r.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        Ok(Response::new(Cri::exec_sync(&self, r.into_inner()).await?))
    }

    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let url = Cri::exec_url(self, r.into_inner())?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let url = Cri::attach_url(self, r.into_inner())?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let url = Cri::port_forward_url(self, r.into_inner())?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats = Cri::container_stats(self, &r.into_inner().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let stats = Cri::list_container_stats(self, r.into_inner().filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = Streamed<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let stats = Cri::list_container_stats(self, r.into_inner().filter).await;
        Ok(Response::new(pages(stats, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        let sandbox = self.state.sandbox("pod_sandbox_id", &id)?;
        let stats = self
            .list_pod_stats(Some(cri::PodSandboxStatsFilter {
                id: sandbox.id.clone(),
                ..Default::default()
            }))
            .await
            .into_iter()
            .next();
        Ok(Response::new(cri::PodSandboxStatsResponse { stats }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let stats = self.list_pod_stats(r.into_inner().filter).await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = Streamed<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let stats = self.list_pod_stats(r.into_inner().filter).await;
        Ok(Response::new(pages(stats, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR is the CNI configuration's business (its IPAM):
        // accepted, and logged.
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        tracing::info!("CRI: pod CIDR {cidr:?} noted; pod networks are the CNI configuration's");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        r: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let runtime_ready = self.runtime.instances.is_some() && self.runtime.cells.is_ok();
        let (network_ready, reason, message) = match super::cni::load(&self.cfg.cni_conf_dir) {
            Ok(Some(_)) => (true, String::new(), String::new()),
            Ok(None) => (
                false,
                "NoCniConfig".to_string(),
                format!(
                    "no CNI network configuration in {}",
                    self.cfg.cni_conf_dir.display()
                ),
            ),
            Err(e) => (
                false,
                "CniConfigInvalid".to_string(),
                crate::error::chain(&e),
            ),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: runtime_ready,
                reason: if runtime_ready { "" } else { "NoInstances" }.into(),
                message: if runtime_ready {
                    String::new()
                } else {
                    "pod sandboxes are instances, and this auraed can't spawn them (no \
                     [instances] configuration, or cells are unavailable)"
                        .into()
                },
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network_ready,
                reason,
                message,
            },
        ];
        let mut info = std::collections::HashMap::new();
        if r.into_inner().verbose {
            info.insert(
                "config".to_string(),
                serde_json::json!({
                    "socket": self.cfg.socket,
                    "handlers": [super::sandboxes::CELL_HANDLER, super::sandboxes::MICROVM_HANDLER],
                    "registries": self.cfg.registries.keys().collect::<Vec<_>>(),
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: [
                super::sandboxes::CELL_HANDLER,
                super::sandboxes::MICROVM_HANDLER,
            ]
            .into_iter()
            .map(|name| cri::RuntimeHandler {
                name: name.into(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect(),
            features: None,
        }))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer", "checkpointing a container"))
    }

    type GetContainerEventsStream = Streamed<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(self.event_stream()))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: super::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: self.list_pod_metrics().await,
        }))
    }

    type StreamPodSandboxMetricsStream = Streamed<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let metrics = self.list_pod_metrics().await;
        Ok(Response::new(pages(metrics, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })))
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        Err(not_yet(
            "UpdatePodSandboxResources",
            "changing a running pod's limits",
        ))
    }
}
