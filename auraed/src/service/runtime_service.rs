//! `aurae.runtime.v0.Runtime`: validates requests, calls [`Runtime`], and
//! converts the results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aurae_proto::runtime as pb;
use nix::sys::signal::Signal;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{convert, pod_convert, vm_convert};
use crate::error::ApiError;
use crate::logs::{Stream as LogStream, Subscription};
use crate::registry::Workload;
use crate::runtime::Runtime;
use crate::validation as v;

pub struct RuntimeService {
    runtime: Arc<Runtime>,
}

impl RuntimeService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

fn id_field(id: &str) -> Result<(), ApiError> {
    v::name("id", id)
}

/// Runs `work` to its end even if the caller goes away (a cancelled call,
/// an expired `grpc-timeout`): tonic drops a handler's future then, and a
/// set-up dropped halfway would skip its own rollback.
async fn to_the_end<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::Internal(format!("{what}: its task failed: {e}")))?
}

/// A client of the instance that runs the container `id` names.
fn container_client(
    t: &crate::pods::ContainerTarget,
) -> pb::runtime_client::RuntimeClient<tonic::transport::Channel> {
    pb::runtime_client::RuntimeClient::new(t.instance.channel())
}

/// The instance's answer about container `id`, its refusal kept.
pub(super) fn routed<T>(id: &str, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    r.map_err(|status| {
        ApiError::Instance {
            what: format!("id: {id}"),
            status: Box::new(status),
        }
        .into()
    })
}

/// A workload's status; a pod's with its containers and ports.
async fn full_status(w: &Workload) -> pb::WorkloadStatus {
    let mut status = convert::status(w);
    if let Workload::Instance(i) = w {
        if let Some(ports) = crate::pods::pod_ports(i) {
            let containers = if i.running() {
                crate::pods::container_statuses(i).await
            } else {
                Vec::new()
            };
            status.kind = pb::WorkloadKind::Pod as i32;
            status.pod = Some(pod_convert::pod_status(i, ports, containers));
        }
    }
    status
}

fn entry(line: &crate::logs::LogLine, dropped_before: u64) -> pb::LogEntry {
    pb::LogEntry {
        seq: line.seq,
        stream: match line.stream {
            LogStream::Stdout => pb::LogStream::Stdout,
            LogStream::Stderr => pb::LogStream::Stderr,
        } as i32,
        time: Some(convert::timestamp(line.time)),
        line: line.data.clone(),
        dropped_before,
        partial: line.partial,
    }
}

/// Streams the history (unless `new_only`), then live lines, marking gaps
/// with `dropped_before`.
fn log_stream(mut sub: Subscription, new_only: bool) -> LogsStream {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    // Sequence numbers start at 0, so a gap before a line counts the lines
    // lost to eviction or to this follower lagging behind; without the
    // replay, counting starts after it.
    let mut next = 0u64;
    if new_only {
        next = sub
            .history
            .last()
            .map(|l| l.seq + 1)
            .unwrap_or(sub.first_seq);
        sub.history.clear();
    }
    tokio::spawn(async move {
        let emit = |line: &crate::logs::LogLine, next: &mut u64| {
            let dropped = line.seq.saturating_sub(*next);
            *next = line.seq + 1;
            entry(line, dropped)
        };
        for line in &sub.history {
            if tx.send(Ok(emit(line, &mut next))).await.is_err() {
                return;
            }
        }
        let Some(mut live) = sub.live else { return };
        loop {
            match live.recv().await {
                Ok(line) => {
                    if line.seq < next {
                        continue;
                    }
                    if tx.send(Ok(emit(&line, &mut next))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::runtime_server::Runtime for RuntimeService {
    async fn run_executable(
        &self,
        request: Request<pb::RunExecutableRequest>,
    ) -> Result<Response<pb::RunExecutableResponse>, Status> {
        let r = request.into_inner();
        let name = if r.name.is_empty() {
            None
        } else {
            v::name("name", &r.name)?;
            Some(r.name.clone())
        };
        let cell = if r.cell.is_empty() {
            None
        } else {
            v::name("cell", &r.cell)?;
            Some(r.cell.clone())
        };
        let exe = r
            .executable
            .as_ref()
            .ok_or_else(|| ApiError::invalid("executable", "is required"))?;
        let req = convert::exec_request("executable", exe, true)?;
        let exe = self.runtime.run_executable(name, cell, req).await?;
        Ok(Response::new(pb::RunExecutableResponse {
            id: exe.id.clone(),
            pid: exe.pid as u32,
        }))
    }

    async fn run_cell(
        &self,
        request: Request<pb::RunCellRequest>,
    ) -> Result<Response<pb::RunCellResponse>, Status> {
        let r = request.into_inner();
        let spec = convert::cell_spec(&r)?;
        let first_name = if r.executable_name.is_empty() {
            None
        } else {
            v::name("executable_name", &r.executable_name)?;
            Some(r.executable_name.clone())
        };
        let first = r
            .executable
            .as_ref()
            .map(|e| convert::exec_request("executable", e, spec.image.is_none()))
            .transpose()?;
        let (cell, exe) = self.runtime.run_cell(spec, first, first_name).await?;
        Ok(Response::new(pb::RunCellResponse {
            name: cell.name.clone(),
            executable_id: exe.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
            pid: exe.as_ref().map(|e| e.pid as u32).unwrap_or(0),
        }))
    }

    async fn run_virtual_machine(
        &self,
        request: Request<pb::RunVirtualMachineRequest>,
    ) -> Result<Response<pb::RunVirtualMachineResponse>, Status> {
        let spec = vm_convert::vm_spec(request.get_ref())?;
        let rt = self.runtime.clone();
        let vm = to_the_end("RunVirtualMachine", async move { rt.run_vm(spec).await }).await?;
        Ok(Response::new(pb::RunVirtualMachineResponse {
            name: vm.name.clone(),
            vm: Some(vm_convert::vm_status(&vm)),
        }))
    }

    async fn spawn(
        &self,
        request: Request<pb::SpawnRequest>,
    ) -> Result<Response<pb::SpawnResponse>, Status> {
        let spec = convert::spawn_spec(request.get_ref())?;
        let rt = self.runtime.clone();
        let instance = to_the_end("Spawn", async move { rt.spawn(spec).await }).await?;
        Ok(Response::new(pb::SpawnResponse {
            name: instance.name.clone(),
            address: instance.address.to_string(),
            spiffe_id: instance.spiffe_id.clone(),
            instance: Some(convert::instance(&instance)),
        }))
    }

    async fn run_pod(
        &self,
        request: Request<pb::RunPodRequest>,
    ) -> Result<Response<pb::RunPodResponse>, Status> {
        let spec = pod_convert::pod_spec(request.get_ref())?;
        let ports = spec.ports.clone();
        let rt = self.runtime.clone();
        let instance = to_the_end("RunPod", async move { rt.run_pod(spec).await }).await?;
        let containers = crate::pods::container_statuses(&instance).await;
        Ok(Response::new(pb::RunPodResponse {
            name: instance.name.clone(),
            pod: Some(pod_convert::pod_status(&instance, ports, containers)),
        }))
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        let r = request.into_inner();
        if let Some(t) = self.runtime.pod_container(&r.id)? {
            let asked = pb::StopRequest {
                id: t.cell.clone(),
                ..r.clone()
            };
            return routed(&r.id, container_client(&t).stop(asked).await);
        }
        id_field(&r.id)?;
        let signal = match r.signal {
            0 => Signal::SIGTERM,
            n => Signal::try_from(n)
                .map_err(|_| ApiError::invalid("signal", format!("{n} is not a signal number")))?,
        };
        let grace = r.grace_period_ms.unwrap_or(10_000);
        v::range("grace_period_ms", grace.into(), 0, 3_600_000)?;
        let w = self
            .runtime
            .stop(&r.id, signal, Duration::from_millis(grace.into()))
            .await?;
        Ok(Response::new(pb::StopResponse {
            status: Some(convert::status(&w)),
        }))
    }

    async fn free(
        &self,
        request: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        let r = request.into_inner();
        if let Some(t) = self.runtime.pod_container(&r.id)? {
            let asked = pb::FreeRequest { id: t.cell.clone() };
            return routed(&r.id, container_client(&t).free(asked).await);
        }
        id_field(&r.id)?;
        self.runtime.free(&r.id).await?;
        Ok(Response::new(pb::FreeResponse {}))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let workloads = self.runtime.list();
        let mut statuses = Vec::with_capacity(workloads.len());
        for w in &workloads {
            statuses.push(full_status(w).await);
        }
        // The instance tree: each running instance lists its own, which
        // list theirs, hop by hop.
        for (w, status) in workloads.iter().zip(statuses.iter_mut()) {
            if let (Workload::Instance(i), Some(own)) = (w, status.instance.as_mut()) {
                if i.running() {
                    own.children = crate::instances::children_of(i).await;
                }
            }
        }
        Ok(Response::new(pb::ListResponse {
            workloads: statuses,
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::WorkloadStatus>, Status> {
        let r = request.into_inner();
        if let Some(t) = self.runtime.pod_container(&r.id)? {
            let asked = pb::StatusRequest { id: t.cell.clone() };
            return routed(&r.id, container_client(&t).status(asked).await);
        }
        id_field(&r.id)?;
        Ok(Response::new(
            full_status(&self.runtime.get(&r.id, "id")?).await,
        ))
    }

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        if let Some(t) = self.runtime.pod_container(&r.id)? {
            let asked = pb::LogsRequest {
                id: t.executable_id.clone(),
                ..r.clone()
            };
            let stream = routed(&r.id, container_client(&t).logs(asked).await)?.into_inner();
            return Ok(Response::new(Box::pin(stream) as LogsStream));
        }
        id_field(&r.id)?;
        let workload = if r.wait_for_start {
            self.runtime
                .get_or_wait(&r.id, Duration::from_secs(30))
                .await?
        } else {
            self.runtime.get(&r.id, "id")?
        };
        match workload {
            Workload::Executable(e) => Ok(Response::new(log_stream(
                e.logs.subscribe(r.follow),
                r.new_only,
            ))),
            // An instance's console: what its auraed prints.
            Workload::Instance(i) => Ok(Response::new(log_stream(
                i.init.logs.subscribe(r.follow),
                r.new_only,
            ))),
            // A VM's serial console.
            Workload::Vm(vm) => Ok(Response::new(log_stream(
                vm.init.logs.subscribe(r.follow),
                r.new_only,
            ))),
            Workload::Cell(_) => Err(ApiError::invalid(
                "id",
                format!(
                    "{:?} is a cell; ask for the logs of one of its executables",
                    r.id
                ),
            )
            .into()),
        }
    }

    async fn wait(
        &self,
        request: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WorkloadStatus>, Status> {
        let r = request.into_inner();
        if let Some(t) = self.runtime.pod_container(&r.id)? {
            let asked = pb::WaitRequest {
                id: t.executable_id.clone(),
                ..r.clone()
            };
            return routed(&r.id, container_client(&t).wait(asked).await);
        }
        id_field(&r.id)?;
        let w = self.runtime.get(&r.id, "id")?;
        let timeout = r
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(Duration::MAX);
        let waited = async {
            match &w {
                Workload::Executable(e) => {
                    e.wait().await;
                }
                Workload::Cell(c) => {
                    while c.state() != crate::cells::CellState::Stopped {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Workload::Instance(i) => {
                    i.init.wait().await;
                }
                Workload::Vm(vm) => {
                    vm.init.wait().await;
                }
            }
        };
        if tokio::time::timeout(timeout, waited).await.is_err() {
            return Err(ApiError::DeadlineExceeded(format!(
                "{} is still running after timeout_ms",
                r.id
            ))
            .into());
        }
        Ok(Response::new(convert::status(&w)))
    }

    async fn freeze(
        &self,
        request: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::FreezeResponse>, Status> {
        let r = request.into_inner();
        id_field(&r.id)?;
        let cell = self.runtime.set_frozen(&r.id, true).await?;
        Ok(Response::new(pb::FreezeResponse {
            status: Some(convert::cell_status(&cell)),
        }))
    }

    async fn update_limits(
        &self,
        request: Request<pb::UpdateLimitsRequest>,
    ) -> Result<Response<pb::UpdateLimitsResponse>, Status> {
        let r = request.into_inner();
        id_field(&r.id)?;
        let limits = convert::limits(&r.limits.unwrap_or_default())?;
        let cell = self.runtime.cell(&r.id, "id")?;
        let ctx = self
            .runtime
            .cells
            .as_ref()
            .map_err(|e| ApiError::FailedPrecondition(format!("cells are unavailable: {e}")))?;
        let (hierarchy, cgroup) = (ctx.hierarchy.clone(), cell.cgroup.clone());
        crate::blocking::run("updating a cell's limits", move || {
            hierarchy.update_cell(&cgroup, &limits)
        })
        .await?
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdateLimitsResponse {
            status: Some(convert::cell_status(&cell)),
        }))
    }

    async fn input(
        &self,
        request: Request<tonic::Streaming<pb::InputRequest>>,
    ) -> Result<Response<pb::InputResponse>, Status> {
        super::input::input(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put_image(
        &self,
        request: Request<tonic::Streaming<pb::PutImageRequest>>,
    ) -> Result<Response<pb::PutImageResponse>, Status> {
        super::put_image::put_image(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn thaw(
        &self,
        request: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::FreezeResponse>, Status> {
        let r = request.into_inner();
        id_field(&r.id)?;
        let cell = self.runtime.set_frozen(&r.id, false).await?;
        Ok(Response::new(pb::FreezeResponse {
            status: Some(convert::cell_status(&cell)),
        }))
    }
}
