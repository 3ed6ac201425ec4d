//! `GetContainerEvents`, the kubelet's evented PLEG: each container's
//! creation, start, exit and removal, with its status and its sandbox's,
//! sent to every subscriber. A subscriber too slow for the backlog gets an
//! error naming how many events it missed, and subscribes again (as the
//! kubelet does).

use aurae_proto::cri;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::StreamExt;
use tonic::Status;

use super::state::{now_ns, Container};
use super::Cri;

/// Events kept for a subscriber that falls behind.
const BACKLOG: usize = 256;

pub type EventSender = tokio::sync::broadcast::Sender<cri::ContainerEventResponse>;

pub fn channel() -> EventSender {
    tokio::sync::broadcast::channel(BACKLOG).0
}

pub type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
>;

impl Cri {
    /// Sends `kind` for `c` to the subscribers, if there are any.
    pub(super) fn emit(&self, c: &Container, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let status = self
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .ok()
            .and_then(|r| r.status);
        let sandbox = self
            .sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: c.sandbox_id.clone(),
                verbose: false,
            })
            .ok()
            .and_then(|r| r.status);
        // An error here only means every subscriber left meanwhile.
        if self
            .events
            .send(cri::ContainerEventResponse {
                container_id: c.id.clone(),
                container_event_type: kind as i32,
                created_at: now_ns(),
                pod_sandbox_status: sandbox,
                containers_statuses: status.into_iter().collect(),
            })
            .is_err()
        {
            tracing::debug!("container {}: no one to tell of {kind:?}", c.id);
        }
    }

    /// The events from now on.
    pub(super) fn event_stream(&self) -> EventStream {
        let events = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        Box::pin(events.map(|r| {
            r.map_err(|BroadcastStreamRecvError::Lagged(n)| {
                Status::data_loss(format!(
                    "{n} container events were dropped (the subscriber fell {BACKLOG} behind); \
                     subscribe again"
                ))
            })
        }))
    }
}
