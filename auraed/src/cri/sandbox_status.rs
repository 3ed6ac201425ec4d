//! What a pod sandbox is, as the kubelet asks: its state (ready while its
//! instance runs), its status and the list.

use aurae_proto::cri;
use tonic::Status;

use super::state::{matches, now_ns, Sandbox};
use super::Cri;

impl Cri {
    fn sandbox_state(&self, s: &Sandbox) -> cri::PodSandboxState {
        let running = match self.runtime.get(&s.instance, "id") {
            Ok(crate::registry::Workload::Instance(i)) => i.running(),
            _ => false,
        };
        if s.is_ready() && running {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        }
    }

    pub(super) fn sandbox_status(
        &self,
        r: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status> {
        let s = self.state.sandbox("pod_sandbox_id", &r.pod_sandbox_id)?;
        let state = self.sandbox_state(&s);
        let namespace_options = s
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|c| c.namespace_options.clone());
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({ "instance": s.instance, "handler": s.handler }).to_string(),
            );
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: s.id.clone(),
                metadata: s.metadata(),
                state: state as i32,
                created_at: s.created_at,
                network: Some(cri::PodSandboxNetworkStatus {
                    ip: if state == cri::PodSandboxState::SandboxReady {
                        s.ip.clone()
                    } else {
                        String::new()
                    },
                    additional_ips: Vec::new(),
                }),
                linux: Some(cri::LinuxPodSandboxStatus {
                    namespaces: Some(cri::Namespace {
                        options: namespace_options,
                    }),
                }),
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.handler.clone(),
            }),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        })
    }

    pub(super) fn list_sandboxes(
        &self,
        r: cri::ListPodSandboxRequest,
    ) -> cri::ListPodSandboxResponse {
        let filter = r.filter.unwrap_or_default();
        let items = self
            .state
            .all_sandboxes()
            .into_iter()
            .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
            .filter(|s| matches(&s.config.labels, &filter.label_selector))
            .map(|s| {
                let state = self.sandbox_state(&s);
                cri::PodSandbox {
                    id: s.id.clone(),
                    metadata: s.metadata(),
                    state: state as i32,
                    created_at: s.created_at,
                    labels: s.config.labels.clone(),
                    annotations: s.config.annotations.clone(),
                    runtime_handler: s.handler.clone(),
                }
            })
            .filter(|p| filter.state.as_ref().is_none_or(|v| v.state == p.state))
            .collect();
        cri::ListPodSandboxResponse { items }
    }
}
