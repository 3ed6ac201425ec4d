//! The table of workloads by id. Ids are unique across kinds; a name is
//! reserved while its workload is being created, so that concurrent
//! requests for the same name get ALREADY_EXISTS instead of racing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::cells::Cell;
use crate::error::ApiError;
use crate::executables::Executable;

#[derive(Clone)]
pub enum Workload {
    Executable(Arc<Executable>),
    Cell(Arc<Cell>),
    Instance(Arc<crate::instances::Instance>),
    /// A plain VM (RunVirtualMachine).
    Vm(Arc<crate::instances::plain_vm::Vm>),
}

enum Slot {
    Reserved,
    Ready(Workload),
}

pub struct Registry {
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Bumped whenever a workload is committed, for waiters.
    created: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            slots: Mutex::new(BTreeMap::new()),
            created: tokio::sync::watch::channel(0).0,
        }
    }
}

/// A reserved name; released on drop unless a workload was committed.
pub struct Reservation<'a> {
    registry: &'a Registry,
    id: String,
    committed: bool,
}

impl Reservation<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn commit(mut self, workload: Workload) {
        self.registry
            .lock()
            .insert(self.id.clone(), Slot::Ready(workload));
        self.committed = true;
        self.registry.created.send_modify(|n| *n += 1);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.registry.lock().remove(&self.id);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `id`; `field` names the request field it came from.
    pub fn reserve(&self, id: &str, field: &str) -> Result<Reservation<'_>, ApiError> {
        let mut slots = self.lock();
        if slots.contains_key(id) {
            return Err(ApiError::AlreadyExists(format!(
                "{field}: a workload named {id:?} already exists"
            )));
        }
        slots.insert(id.to_string(), Slot::Reserved);
        Ok(Reservation {
            registry: self,
            id: id.to_string(),
            committed: false,
        })
    }

    pub fn get(&self, id: &str) -> Option<Workload> {
        match self.lock().get(id) {
            Some(Slot::Ready(w)) => Some(w.clone()),
            _ => None,
        }
    }

    /// The workload `id`, waiting up to `timeout` for it to be created.
    pub async fn wait_for(&self, id: &str, timeout: std::time::Duration) -> Option<Workload> {
        let mut rx = self.created.subscribe();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(w) = self.get(id) {
                    return Some(w);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn list(&self) -> Vec<Workload> {
        self.lock()
            .values()
            .filter_map(|s| match s {
                Slot::Ready(w) => Some(w.clone()),
                Slot::Reserved => None,
            })
            .collect()
    }

    /// Executables that run in `cell`.
    pub fn executables_in(&self, cell: &str) -> Vec<Arc<Executable>> {
        self.list()
            .into_iter()
            .filter_map(|w| match w {
                Workload::Executable(e) if e.cell.as_deref() == Some(cell) => Some(e),
                _ => None,
            })
            .collect()
    }
}
