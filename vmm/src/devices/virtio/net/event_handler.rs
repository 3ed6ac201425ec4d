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
        let _ = ops.add(Events::new(&self.backend, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let was_waiting = self.pending.is_some();
        if fd == self.queue_evts[TX].as_raw_fd() {
            let _ = self.queue_evts[TX].read();
            self.process_tx();
            return;
        }
        if fd == self.queue_evts[RX].as_raw_fd() {
            let _ = self.queue_evts[RX].read();
        }
        if !self.is_active() {
            // Drain the TAP so it doesn't stay readable before the driver
            // is up.
            let mut buf = [0u8; 2048];
            while fd == self.backend.as_raw_fd() && self.backend.read_frame(&mut buf).is_ok() {}
            return;
        }
        let waiting = self.process_rx();
        if waiting && !was_waiting {
            let _ = ops.remove(Events::new(&self.backend, EventSet::IN));
        } else if !waiting && was_waiting {
            let _ = ops.add(Events::new(&self.backend, EventSet::IN));
        }
    }
}

impl Net<Tap> {
    fn is_active(&self) -> bool {
        self.active.is_some()
    }
}
