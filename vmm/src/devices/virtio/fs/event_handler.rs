//! Event-manager glue: a notification of either queue runs that queue.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;
use crate::devices::event_loop::WatchOp;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // A failure is recorded for the VM to report (see
        // `devices::event_loop`).
        for (evt, what) in self
            .queue_evts
            .iter()
            .zip(["the hiprio queue's eventfd", "the request queue's eventfd"])
        {
            let events = Events::new(evt, EventSet::IN);
            self.watch_fault
                .apply(ops, WatchOp::Add, events, "virtio-fs", what);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let Some(q) = self
            .queue_evts
            .iter()
            .position(|e| e.as_raw_fd() == events.fd())
        else {
            return;
        };
        // Clears the notification; a failed read (EAGAIN: none pending)
        // changes nothing, the queue is served anyway.
        let _ = self.queue_evts[q].read();
        self.process_queue(q);
    }
}
