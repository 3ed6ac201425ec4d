//! Event-manager glue: queue notifications and TAP readiness. While a frame
//! waits for rx buffers, the TAP is not watched (it would stay readable and
//! spin); the rx queue notification brings it back.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Backend, Net, MAX_DRAIN, RX, TX};
use crate::devices::event_loop::WatchOp;

/// A backend the event loop can watch: the TAP, or a test double.
impl<B: Backend + AsRawFd> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        // Failures are recorded for the VM to report (see
        // `devices::event_loop`).
        for (q, what) in [
            (RX, "the rx queue's eventfd"),
            (TX, "the tx queue's eventfd"),
        ] {
            let events = Events::new(&self.queue_evts[q], EventSet::IN);
            self.watch_fault
                .apply(ops, WatchOp::Add, events, "virtio-net", what);
        }
        self.sync_backend_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        // The eventfd reads only clear a notification; a failed one
        // (EAGAIN: none pending) changes nothing, the queue is served
        // anyway.
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
                // driver is up; a flood is taken in turns (the TAP stays
                // readable, and the loop comes back to it).
                let mut buf = [0u8; 2048];
                for _ in 0..MAX_DRAIN {
                    if self.backend.recv(&mut buf).is_err() {
                        break;
                    }
                }
            }
        }
        // After every event, since a device reset (from a vCPU) may have
        // dropped the waiting frame.
        self.sync_backend_watch(ops);
    }
}

impl<B: Backend + AsRawFd> Net<B> {
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
        let op = if want { WatchOp::Add } else { WatchOp::Remove };
        // A failure is recorded (the VM then stops with it): a TAP that
        // can't be watched would never be read again.
        if self
            .watch_fault
            .apply(ops, op, events, "virtio-net", "the TAP")
        {
            self.backend_watched = want;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::device::HDR_LEN;
    use crate::devices::virtio::test_utils::{TestQueue, WRITE};
    use crate::devices::virtio::VirtioDevice;
    use event_manager::{EventManager, SubscriberOps};
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    /// A backend with a real file descriptor: one end of a datagram pair
    /// (one frame per datagram, like a TAP).
    struct Dgram(UnixDatagram);

    impl Backend for Dgram {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.0.send(frame)
        }
    }

    impl AsRawFd for Dgram {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }

    /// Runs the event loop until nothing is ready (each pass waits 50 ms).
    fn settle(em: &mut EventManager<Arc<Mutex<Net<Dgram>>>>) {
        for _ in 0..20 {
            if em.run_with_timeout(50).unwrap_or(0) == 0 {
                return;
            }
        }
    }

    /// A backend with `left` frames waiting, readable through an eventfd.
    struct Flood {
        left: usize,
        ready: EventFd,
    }

    impl Backend for Flood {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.left -= 1;
            buf[0] = 0;
            Ok(1)
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            Ok(frame.len())
        }
    }

    impl AsRawFd for Flood {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.ready.as_raw_fd()
        }
    }

    /// A backend whose descriptor can't be watched (-1).
    struct Unwatchable;

    impl Backend for Unwatchable {
        fn recv(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            Ok(frame.len())
        }
    }

    impl AsRawFd for Unwatchable {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    /// A TAP the event loop refuses is recorded, naming the call and the
    /// TAP, for the VM to report: not ignored.
    #[test]
    fn a_backend_that_cant_be_watched_is_a_recorded_fault() {
        let net = Net::new(Unwatchable, [2, 0, 0, 0, 0, 1]).expect("net");
        let fault = net.watch_fault.clone();
        let net = Arc::new(Mutex::new(net));
        let mut em = EventManager::<Arc<Mutex<Net<Unwatchable>>>>::new().expect("event manager");
        em.add_subscriber(net.clone());
        let e = fault.take().expect("the failed registration");
        assert_eq!(
            e.to_string(),
            "virtio-net: EventOps::add (epoll_ctl ADD) for the TAP"
        );
        assert!(
            matches!(e.source, event_manager::Error::Epoll(_)),
            "{:?}",
            e.source
        );
        assert!(!net.lock().expect("net").backend_watched);
    }

    /// Before the driver is up, frames from the backend are dropped, at most
    /// MAX_DRAIN per wake-up: a flood is taken in turns.
    #[test]
    fn an_inactive_device_drains_a_flood_in_turns() {
        let ready = EventFd::new(0).expect("eventfd");
        ready.write(1).expect("readable");
        let flood = Flood {
            left: MAX_DRAIN + 44,
            ready,
        };
        let net = Arc::new(Mutex::new(
            Net::new(flood, [2, 0, 0, 0, 0, 1]).expect("net"),
        ));
        let mut em = EventManager::<Arc<Mutex<Net<Flood>>>>::new().expect("event manager");
        em.add_subscriber(net.clone());
        assert_eq!(em.run_with_timeout(50).expect("one pass"), 1);
        assert_eq!(net.lock().expect("net").backend.left, 44);
        em.run_with_timeout(50).expect("another pass");
        assert_eq!(net.lock().expect("net").backend.left, 0);
    }

    /// A frame waits for rx buffers (the backend is unwatched, or it would
    /// spin), the driver resets the device, which drops that frame, and
    /// brings it back up. The backend is watched again: a later frame
    /// reaches the guest with no queue notification to carry it.
    #[test]
    fn the_backend_is_watched_again_after_a_reset_drops_a_waiting_frame() {
        let (ours, peer) = UnixDatagram::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let net = Arc::new(Mutex::new(
            Net::new(Dgram(ours), [2, 0, 0, 0, 0, 1]).expect("net"),
        ));
        let mut em = EventManager::<Arc<Mutex<Net<Dgram>>>>::new().expect("event manager");
        em.add_subscriber(net.clone());

        let rx = TestQueue::new(16);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x2000, 16);
        let irq = rx.interrupt();
        net.lock()
            .expect("net")
            .activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], irq)
            .expect("activate");
        peer.send(b"first").expect("send");
        settle(&mut em);
        {
            let n = net.lock().expect("net");
            assert!(n.pending.is_some(), "no rx buffer: the frame waits");
            assert!(!n.backend_watched, "and the backend is not watched");
        }

        // The driver resets the device (from a vCPU: no event) and sets it
        // up again with fresh rings, posting one rx buffer and notifying.
        let rx = TestQueue::with_mem(rx.mem.clone(), 0x1_0000, 16);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x1_2000, 16);
        {
            let mut n = net.lock().expect("net");
            n.reset();
            n.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], rx.interrupt())
                .expect("activate again");
        }
        rx.add_chain(0, &[(0x8000, 2048, WRITE)]);
        net.lock().expect("net").queue_evts[RX]
            .write(1)
            .expect("notify");
        settle(&mut em);
        assert_eq!(rx.used_idx(), 0, "the frame from before the reset is gone");
        assert!(net.lock().expect("net").backend_watched);

        // A frame arrives, with a buffer for it and no notification.
        rx.add_chain(1, &[(0x9000, 2048, WRITE)]);
        peer.send(b"second").expect("send");
        settle(&mut em);
        assert_eq!(rx.used_idx(), 1);
        assert_eq!(rx.used(0).1, (HDR_LEN + 6) as u32);
        assert_eq!(&rx.read(0x8000 + HDR_LEN as u64, 6), b"second");
    }
}
