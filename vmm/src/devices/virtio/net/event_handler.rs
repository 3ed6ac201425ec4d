//! Event-manager glue: queue notifications and TAP readiness. While a frame
//! waits for rx buffers, the TAP is not watched (it would stay readable and
//! spin); the rx queue notification brings it back.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, RX, TX};
use super::tap::Tap;

impl MutEventSubscriber for Net<Tap> {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.queue_evts[RX], EventSet::IN));
        let _ = ops.add(Events::new(&self.queue_evts[TX], EventSet::IN));
        self.sync_backend_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[TX].as_raw_fd() {
            let _ = self.queue_evts[TX].read();
            self.process_tx();
        } else {
            if fd == self.queue_evts[RX].as_raw_fd() {
                let _ = self.queue_evts[RX].read();
            }
            if self.is_active() {
                self.process_rx();
            } else if fd == self.backend.as_raw_fd() {
                // Drain the TAP so it doesn't stay readable before the
                // driver is up.
                let mut buf = [0u8; 2048];
                while self.backend.read_frame(&mut buf).is_ok() {}
            }
        }
        // After every event, since a device reset (from a vCPU) may have
        // dropped the waiting frame.
        self.sync_backend_watch(ops);
    }
}

impl Net<Tap> {
    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Watches the TAP unless a frame waits for rx buffers.
    fn sync_backend_watch(&mut self, ops: &mut EventOps) {
        let want = self.pending.is_none();
        if want == self.backend_watched {
            return;
        }
        let events = Events::new(&self.backend, EventSet::IN);
        let done = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        if done.is_ok() {
            self.backend_watched = want;
        }
    }
}
