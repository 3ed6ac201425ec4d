//! The runtime's side of instances: spawn one under a reserved name, watch
//! it, and hand out its link for routing.

use std::sync::Arc;

use super::{Instance, InstanceSpec};
use crate::error::ApiError;
use crate::registry::Workload;
use crate::runtime::Runtime;

impl Runtime {
    /// Spawns an instance and registers it; a failure leaves nothing.
    pub async fn spawn(&self, spec: InstanceSpec) -> Result<Arc<Instance>, ApiError> {
        let instances = self.instances.clone().ok_or_else(|| {
            ApiError::FailedPrecondition("spawn: this auraed has no instances configuration".into())
        })?;
        let cells = self.cells.clone().map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "spawn: instances run in cells, which are unavailable: {e}"
            ))
        })?;
        let reservation = self.registry.reserve(&spec.name, "name")?;
        let instance = Arc::new(instances.spawn(&spec, &cells, self.log_bytes).await?);
        let remembered = match instances.remember(&spec, &instance).await {
            Ok(()) if spec.keep => instances.keep(&instance, spec.vcpus, spec.memory_mib),
            other => other,
        };
        if let Err(e) = remembered {
            if let Err(undo) = instance.tear_down().await {
                tracing::error!("instance {}: tearing down: {undo}", instance.name);
            }
            instances.forget(&instance);
            return Err(e);
        }
        tracing::info!(
            instance = %instance.name,
            id = %instance.spiffe_id,
            address = %instance.address,
            ready_ms = instance.ready_after.as_millis() as u64,
            "instance spawned ({})",
            instance.choice.reason
        );
        watch(&instance);
        reservation.commit(Workload::Instance(instance.clone()));
        Ok(instance)
    }

    /// Takes back the instances a previous auraed kept running (see
    /// [`super::kept`]); one that can't be taken back is removed.
    pub async fn adopt_kept(&self) {
        let left = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        let (Some(instances), Ok(cells)) = (&self.instances, &self.cells) else {
            for s in left {
                discard(s.record.name, s.cgroup, s.dir).await;
            }
            return;
        };
        for s in left {
            let name = s.record.name.clone();
            let reservation = match self.registry.reserve(&name, "name") {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("instance {name}: not taken back ({e}); removing it");
                    discard(name, s.cgroup, s.dir).await;
                    continue;
                }
            };
            let spec = super::kept::spec_of(&s.record);
            let (dir, cgroup) = (s.dir.clone(), s.cgroup.clone());
            let adopted = match instances.adopt_instance(s, cells, self.log_bytes).await {
                Ok(i) => {
                    let i = Arc::new(i);
                    match instances.remember(&spec, &i).await {
                        Ok(()) => Ok(i),
                        Err(e) => {
                            instances.forget(&i);
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match adopted {
                Ok(i) => {
                    tracing::info!(instance = %i.name, pid = i.init.pid, address = %i.address, "took back an instance left running");
                    watch(&i);
                    reservation.commit(Workload::Instance(i));
                }
                Err(e) => {
                    tracing::error!("instance {name}: not taken back ({e}); removing it");
                    discard(name, cgroup, dir).await;
                }
            }
        }
    }
}

impl Runtime {
    /// Frees the instances taken back after a restart that nothing claims
    /// (a CRI sandbox's whose record is gone), but those `claimed`.
    pub async fn free_unclaimed(&self, claimed: &[String]) {
        for w in self.registry.list() {
            let Workload::Instance(i) = w else { continue };
            if !i.keep.load(std::sync::atomic::Ordering::SeqCst) || claimed.contains(&i.name) {
                continue;
            }
            tracing::warn!(
                "instance {}: kept by a previous auraed, claimed by nothing; freeing it",
                i.name
            );
            if let Err(e) = self.free(&i.name).await {
                tracing::error!("freeing instance {}: {e}", i.name);
            }
        }
    }
}

/// Removes a kept instance that is not taken back (its cell's removal
/// waits for its processes: off the async threads).
async fn discard(name: String, cgroup: crate::cgroup::CellCgroup, dir: std::path::PathBuf) {
    let removed = crate::blocking::run("removing an instance not taken back", move || {
        super::kept::discard(&name, &cgroup, &dir)
    })
    .await;
    if let Err(e) = removed {
        tracing::error!("{e}");
    }
}

/// Watches an instance's auraed: a dead one's resources are reclaimed at
/// once; the status says it exited until the instance is freed.
fn watch(instance: &Arc<Instance>) {
    let watched = instance.clone();
    tokio::spawn(async move {
        let exit = watched.init.wait().await;
        if watched.running_flag() {
            tracing::warn!(
                "instance {}: its auraed exited ({:?}); tearing it down",
                watched.name,
                exit.exit
            );
        }
        if let Err(e) = watched.tear_down().await {
            tracing::error!("instance {}: tearing down: {e}", watched.name);
        }
    });
}

impl Runtime {
    /// Starts keeping `[instances] pool` instances started ahead.
    pub fn start_pool(&self) {
        if let (Some(instances), Ok(cells)) = (&self.instances, &self.cells) {
            instances.start_pool(cells.clone(), self.log_bytes);
        }
    }

    /// Boots a plain VM and registers it; a failure leaves nothing.
    pub async fn run_vm(
        &self,
        spec: super::plain_vm::VmSpec,
    ) -> Result<Arc<super::plain_vm::Vm>, ApiError> {
        let instances = self.instances.clone().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "RunVirtualMachine: this auraed has no instances configuration (its bridge and VMM)"
                    .into(),
            )
        })?;
        let cells = self.cells.clone().map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "RunVirtualMachine: a VMM runs in a cell, and cells are unavailable: {e}"
            ))
        })?;
        let reservation = self.registry.reserve(&spec.name, "name")?;
        let vm = Arc::new(instances.run_vm(&spec, &cells, self.log_bytes).await?);
        tracing::info!(vm = %vm.name, address = %vm.address, tap = %vm.tap_name, "VM started");
        reservation.commit(Workload::Vm(vm.clone()));
        Ok(vm)
    }

    /// Takes back the VMs a previous auraed left running (as
    /// `[instances] vm_restart = "adopt"` has it); one that can't be taken
    /// back is removed.
    pub async fn adopt_left_running(&self) {
        let left =
            std::mem::take(&mut *self.left_running.lock().unwrap_or_else(|e| e.into_inner()));
        let (Some(instances), Ok(_)) = (&self.instances, &self.cells) else {
            left.iter().for_each(crate::instances::plain_vm::discard);
            return;
        };
        for s in left {
            let name = s.record.name.clone();
            let reservation = match self.registry.reserve(&name, "name") {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("vm {name}: not taken back ({e}); removing it");
                    crate::instances::plain_vm::discard(&s);
                    continue;
                }
            };
            let (dir, cgroup) = (s.dir.clone(), s.cgroup.clone());
            match instances.adopt_vm(s, self.log_bytes).await {
                Ok(vm) => {
                    tracing::info!(vm = %vm.name, pid = vm.init.pid, tap = %vm.tap_name, "took back a VM left running");
                    reservation.commit(Workload::Vm(Arc::new(vm)));
                }
                Err(e) => {
                    tracing::error!("vm {name}: not taken back ({e}); removing it");
                    crate::instances::plain_vm::discard_parts(&name, &cgroup, &dir);
                }
            }
        }
    }

    /// The instance `name`, for routing a request to it.
    pub fn instance(&self, name: &str) -> Result<Arc<Instance>, ApiError> {
        match self.get(name, "aurae-instance")? {
            Workload::Instance(i) if i.running() => Ok(i),
            Workload::Instance(_) => Err(ApiError::FailedPrecondition(format!(
                "aurae-instance: instance {name:?} is not running"
            ))),
            _ => Err(ApiError::invalid(
                "aurae-instance",
                format!("{name:?} is not an instance"),
            )),
        }
    }
}
