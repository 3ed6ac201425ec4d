//! Failures to change what the device event loop watches.
//!
//! A device registers its file descriptors from
//! `MutEventSubscriber::init` and `process`, which can't return an error.
//! A registration that fails would leave the device deaf (a queue whose
//! notifications never arrive, a TAP or socket never read) or, for a
//! failed removal, leave event-manager holding a descriptor that may be
//! reused. So a device records the failure in its [`WatchFault`] (and logs
//! it); the VM checks the faults as soon as the subscribers are added
//! (`Vm::run` then returns the error) and after each pass of the event
//! loop (the VM then stops with the error as its exit reason).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events};

/// What a device asked of the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOp {
    Add,
    Modify,
    Remove,
}

impl std::fmt::Display for WatchOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatchOp::Add => "EventOps::add (epoll_ctl ADD)",
            WatchOp::Modify => "EventOps::modify (epoll_ctl MOD)",
            WatchOp::Remove => "EventOps::remove (epoll_ctl DEL)",
        })
    }
}

/// A failed registration with the device event loop.
#[derive(Debug, thiserror::Error)]
#[error("{device}: {op} for {what}")]
pub struct WatchError {
    pub device: &'static str,
    pub op: WatchOp,
    /// The descriptor, e.g. "queue 0's eventfd" or "the TAP".
    pub what: &'static str,
    #[source]
    pub source: event_manager::Error,
}

/// Where a device records the first registration it failed: shared with
/// the VM (clone it before the device goes into the event loop).
#[derive(Clone, Default)]
pub struct WatchFault(Arc<FaultInner>);

#[derive(Default)]
struct FaultInner {
    /// Set with the error: the event loop checks this after each pass.
    failed: AtomicBool,
    first: Mutex<Option<WatchError>>,
}

impl WatchFault {
    /// Logs `e` and keeps it, unless an earlier failure is kept already.
    pub fn record(&self, e: WatchError) {
        eprintln!("aurae-vmm: device event loop: {}", crate::error::chain(&e));
        let mut first = self.0.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        self.0.failed.store(true, Ordering::SeqCst);
    }

    /// Whether a registration failed (the error may have been taken).
    pub fn failed(&self) -> bool {
        self.0.failed.load(Ordering::SeqCst)
    }

    /// The first failure, once.
    pub fn take(&self) -> Option<WatchError> {
        if !self.failed() {
            return None;
        }
        self.0
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Runs `op` with `events` on `ops`; records a failure. Returns
    /// whether it worked.
    pub fn apply(
        &self,
        ops: &mut EventOps,
        op: WatchOp,
        events: Events,
        device: &'static str,
        what: &'static str,
    ) -> bool {
        let done = match op {
            WatchOp::Add => ops.add(events),
            WatchOp::Modify => ops.modify(events),
            WatchOp::Remove => ops.remove(events),
        };
        match done {
            Ok(()) => true,
            Err(source) => {
                self.record(WatchError {
                    device,
                    op,
                    what,
                    source,
                });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::error::Error as _;
    use vmm_sys_util::epoll::EventSet;

    /// Registers a descriptor that can't be open (-1; a closed one could
    /// be reused by another test's thread): epoll_ctl fails (EBADF).
    struct Closed(WatchFault);

    impl MutEventSubscriber for Closed {
        fn init(&mut self, ops: &mut EventOps) {
            self.0.apply(
                ops,
                WatchOp::Add,
                Events::new_raw(-1, EventSet::IN),
                "test",
                "a closed descriptor",
            );
        }

        fn process(&mut self, _: Events, _: &mut EventOps) {}
    }

    #[test]
    fn a_failed_registration_is_recorded_with_its_cause() {
        let fault = WatchFault::default();
        let mut em = EventManager::<Arc<Mutex<Closed>>>::new().expect("event manager");
        em.add_subscriber(Arc::new(Mutex::new(Closed(fault.clone()))));
        assert!(fault.failed());
        let e = fault.take().expect("the failure");
        assert_eq!(
            e.to_string(),
            "test: EventOps::add (epoll_ctl ADD) for a closed descriptor"
        );
        let source = e.source().expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<event_manager::Error>(),
                Some(event_manager::Error::Epoll(errno)) if errno.errno() == libc::EBADF
            ),
            "{source:?}"
        );
        assert!(fault.take().is_none(), "taken once");
        assert!(fault.failed(), "but still failed");
    }

    #[test]
    fn the_first_failure_is_kept() {
        let fault = WatchFault::default();
        assert!(!fault.failed());
        assert!(fault.take().is_none());
        for what in ["first", "second"] {
            fault.record(WatchError {
                device: "test",
                op: WatchOp::Remove,
                what,
                source: event_manager::Error::InvalidId,
            });
        }
        assert_eq!(fault.take().map(|e| e.what), Some("first"));
    }
}
