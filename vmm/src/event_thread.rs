//! The device event loop's thread: it serves the devices' file
//! descriptors (event-manager, over epoll) until the VM stops, and stops the
//! VM if a device loses an event-loop registration (see
//! [`crate::devices::event_loop`]).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::event_loop::{WatchFault, WatchOp};
use crate::error::chain;
use crate::guest_ram::GuestRam;
use crate::state::{ExitReason, VmState};
use crate::VmmError;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the device event loop when the VM stops (see `VmState::exit`).
struct StopWatch(Arc<VmState>, WatchFault);

impl MutEventSubscriber for StopWatch {
    fn init(&mut self, ops: &mut EventOps) {
        // Without it the loop would not notice a stop: `start` fails.
        let events = Events::new(self.0.stop_event(), EventSet::IN);
        self.1
            .apply(ops, WatchOp::Add, events, "vm", "the stop eventfd");
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Only clears the wake-up; the loop ends once `stopping()`, read or
        // not (EAGAIN: nothing to clear).
        let _ = self.0.stop_event().read();
    }
}

/// Stops the VM with the first registration a device failed, if any (the
/// device has logged it already).
fn check_faults(state: &VmState, faults: &[WatchFault]) {
    for f in faults.iter().filter(|f| f.failed()) {
        if let Some(e) = f.take() {
            state.exit(ExitReason::Error(chain(&VmmError::from(e))));
        }
    }
}

/// Registers the subscribers (whose registration failures are recorded in
/// `faults`) and starts the loop's thread. A registration that fails here
/// fails the start.
pub fn start(
    subscribers: Vec<Subscriber>,
    mut faults: Vec<WatchFault>,
    state: Arc<VmState>,
    ram: Arc<GuestRam>,
    filter: crate::seccomp::ThreadKind,
) -> Result<JoinHandle<()>, VmmError> {
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|source| VmmError::EventManager { source })?;
    for s in subscribers {
        em.add_subscriber(s);
    }
    let stop_fault = WatchFault::default();
    faults.push(stop_fault.clone());
    em.add_subscriber(Arc::new(Mutex::new(StopWatch(state.clone(), stop_fault))));
    // The subscribers registered their descriptors just now (in
    // `add_subscriber`).
    if let Some(e) = faults.iter().find_map(WatchFault::take) {
        return Err(e.into());
    }
    std::thread::Builder::new()
        .name("vmm-events".into())
        .spawn(move || {
            // Locals drop in reverse, unwinding too: the devices (in `em`)
            // before the guest memory they use.
            let _ram = ram;
            let mut em = em;
            let _guard = crate::state::ExitOnPanic {
                state: state.clone(),
                thread: "the device event loop".into(),
            };
            if let Err(e) = crate::seccomp::apply(filter) {
                state.exit(ExitReason::Error(chain(&e)));
            }
            // It sleeps until a device has work, or the VM stops.
            while !state.stopping() {
                if let Err(source) = em.run_with_timeout(-1) {
                    let e = VmmError::EventLoopRun { source };
                    state.exit(ExitReason::Error(chain(&e)));
                }
                // A device that lost a registration stops the VM.
                check_faults(&state, &faults);
            }
        })
        .map_err(|source| VmmError::Spawn {
            thread: "vmm-events".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::event_loop::WatchError;
    use std::time::{Duration, Instant};

    /// A registration a device failed while the loop ran stops the VM,
    /// with the failed call and its cause as the reason.
    #[test]
    fn a_device_fault_stops_the_vm_with_its_error() {
        let state = VmState::new(Instant::now()).expect("state");
        let (quiet, faulty) = (WatchFault::default(), WatchFault::default());
        let faults = [quiet, faulty.clone()];
        check_faults(&state, &faults);
        assert!(!state.stopping(), "no fault, no stop");
        faulty.record(WatchError {
            device: "virtio-net",
            op: WatchOp::Add,
            what: "the TAP",
            source: event_manager::Error::FdAlreadyRegistered,
        });
        check_faults(&state, &faults);
        match state.wait(Some(Duration::from_secs(1))) {
            Some(ExitReason::Error(e)) => {
                assert!(
                    e.starts_with("virtio-net: EventOps::add (epoll_ctl ADD) for the TAP: "),
                    "{e}"
                );
                let cause = event_manager::Error::FdAlreadyRegistered.to_string();
                assert!(e.ends_with(&cause), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
