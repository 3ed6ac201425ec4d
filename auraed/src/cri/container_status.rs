//! A container's status and the container list, as the CRI reports them.

use aurae_proto::cri;
use tonic::Status;

use super::state::matches;
use super::Cri;

impl Cri {
    pub(super) fn container_status(
        &self,
        r: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status> {
        let c = self.state.container("container_id", &r.container_id)?;
        let run = c.run();
        Ok(cri::ContainerStatusResponse {
            status: Some(cri::ContainerStatus {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                state: run.state,
                created_at: c.created_at,
                started_at: run.started_at,
                finished_at: run.finished_at,
                exit_code: run.exit_code,
                image: Some(cri::ImageSpec {
                    image: c.image.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_ref.clone(),
                image_id: c.image_id.clone(),
                reason: run.reason,
                message: run.message,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                log_path: c
                    .log_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                mounts: c.config.mounts.clone(),
                ..Default::default()
            }),
            info: Default::default(),
        })
    }

    pub(super) fn list_containers(
        &self,
        r: cri::ListContainersRequest,
    ) -> cri::ListContainersResponse {
        let f = r.filter.unwrap_or_default();
        let containers = self
            .state
            .all_containers()
            .into_iter()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| matches(&c.config.labels, &f.label_selector))
            .filter(|c| f.state.as_ref().is_none_or(|s| s.state == c.run().state))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image: c.image.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_ref.clone(),
                image_id: c.image_id.clone(),
                state: c.run().state,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            })
            .collect();
        cri::ListContainersResponse { containers }
    }
}
