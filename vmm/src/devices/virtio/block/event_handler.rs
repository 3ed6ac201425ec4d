//! Event-manager glue: a queue notification runs the queue.

use event_manager::{EventOps, Events, MutEventSubscriber};

use crate::devices::event_loop::WatchOp;
use vmm_sys_util::epoll::EventSet;

use super::device::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        // A failure is recorded for the VM to report (see
        // `devices::event_loop`).
        let events = Events::new(&self.queue_evts[0], EventSet::IN);
        self.watch_fault.apply(
            ops,
            WatchOp::Add,
            events,
            "virtio-block",
            "queue 0's eventfd",
        );
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == std::os::fd::AsRawFd::as_raw_fd(&self.queue_evts[0]) {
            // Clears the notification; a failed read (EAGAIN: none
            // pending) changes nothing, the queue is served anyway.
            let _ = self.queue_evts[0].read();
            self.process_queue();
        }
    }
}
