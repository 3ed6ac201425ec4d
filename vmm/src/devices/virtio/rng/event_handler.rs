//! Event-manager glue: a queue notification runs the queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Rng;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.queue_evts[0], EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == std::os::fd::AsRawFd::as_raw_fd(&self.queue_evts[0]) {
            let _ = self.queue_evts[0].read();
            self.process_queue();
        }
    }
}
