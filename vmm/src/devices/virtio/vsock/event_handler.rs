//! Event-manager glue: queue notifications, the listening socket, and each
//! host socket. A host socket is watched for input only while the device
//! has not yet seen it readable (once it has, rx buffers or guest credit
//! are what it waits for), and for output only while guest data waits for
//! it; a socket wanted for neither is not watched at all, so that a hung-up
//! socket can't make the loop spin.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::connection::{Sent, State};
use super::device::{Vsock, EVENT, RX, TX};
use super::packet::OP_CREDIT_UPDATE;
use crate::devices::event_loop::WatchOp;

const DEVICE: &str = "virtio-vsock";

impl Vsock {
    /// A tick of the deadline timer. What the guest already sent goes
    /// first: after a stalled loop, its answer to a host connection may sit
    /// unread in the tx ring while that connection's deadline has passed.
    pub fn on_timer(&mut self, now: std::time::Instant) {
        self.process_tx();
        self.muxer.expire(now);
    }

    /// Readiness of a host-side descriptor (the listener, a socket waiting
    /// for its CONNECT line, or a connection's socket).
    pub fn on_host_event(&mut self, fd: RawFd, set: EventSet) {
        if fd == self.muxer.listener.as_raw_fd() {
            self.muxer.accept();
            return;
        }
        if self.muxer.awaiting.contains_key(&fd) {
            let ready = self
                .active
                .as_ref()
                .is_some_and(|a| !a.interrupt.needs_reset());
            self.muxer.read_connect_line(fd, ready);
            return;
        }
        let Some(key) = self.muxer.fd_keys.get(&fd).copied() else {
            return;
        };
        let Some(conn) = self.muxer.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            conn.readable = true;
        }
        if set.contains(EventSet::OUT) && !conn.pending.is_empty() {
            if conn.flush() == Sent::Reset {
                self.muxer.reset(key);
            } else if conn.pending.is_empty() && conn.reset_when_flushed {
                // The guest closed; its last data is out now.
                self.muxer.reset(key);
            } else if conn.credit_update_due() {
                self.muxer.push_control(key, OP_CREDIT_UPDATE, 0);
            }
        }
    }

    /// What each host socket should be watched for now.
    fn wanted(&self) -> HashMap<RawFd, EventSet> {
        let mut want: HashMap<RawFd, EventSet> = self
            .muxer
            .awaiting
            .keys()
            .map(|fd| (*fd, EventSet::IN))
            .collect();
        for c in self.muxer.conns.values() {
            let mut set = EventSet::empty();
            if !c.readable && (c.reads_host() || c.state == State::LocalInit) {
                set |= EventSet::IN;
            }
            if !c.pending.is_empty() {
                set |= EventSet::OUT;
            }
            if !set.is_empty() {
                want.insert(c.stream.as_raw_fd(), set);
            }
        }
        want
    }

    /// Brings the event loop's watches in line with [`Vsock::wanted`], and
    /// closes the sockets the muxer let go of (after unwatching them).
    ///
    /// A failed change is recorded, and the VM stops with it: a socket
    /// that can't be watched would never be served, and one that can't be
    /// unwatched stays in event-manager's table, where its descriptor,
    /// once reused, could not be watched again.
    fn sync_watches(&mut self, ops: &mut EventOps) {
        let fault = self.watch_fault.clone();
        for s in std::mem::take(&mut self.muxer.released) {
            if let Some(set) = self.watched.remove(&s.as_raw_fd()) {
                let events = Events::new(&s, set);
                fault.apply(
                    ops,
                    WatchOp::Remove,
                    events,
                    DEVICE,
                    "a released host socket",
                );
            }
            // A descriptor is free again: accepting may work.
            self.muxer.accept_paused = false;
        }
        let listener = Events::new(&self.muxer.listener, EventSet::IN);
        let what = "the listening socket";
        if self.muxer.accept_paused && self.listening {
            self.listening = !fault.apply(ops, WatchOp::Remove, listener, DEVICE, what);
        } else if !self.muxer.accept_paused && !self.listening {
            self.listening = fault.apply(ops, WatchOp::Add, listener, DEVICE, what);
        }
        self.arm_timer(self.muxer.has_deadlines());
        let want = self.wanted();
        let stale: Vec<(RawFd, EventSet)> = self
            .watched
            .iter()
            .filter(|(fd, _)| !want.contains_key(fd))
            .map(|(fd, set)| (*fd, *set))
            .collect();
        let what = "a host socket";
        for (fd, set) in stale {
            fault.apply(ops, WatchOp::Remove, Events::new_raw(fd, set), DEVICE, what);
            self.watched.remove(&fd);
        }
        for (fd, set) in want {
            let op = match self.watched.get(&fd) {
                Some(old) if *old == set => continue,
                Some(_) => WatchOp::Modify,
                None => WatchOp::Add,
            };
            if fault.apply(ops, op, Events::new_raw(fd, set), DEVICE, what) {
                self.watched.insert(fd, set);
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        // Failures are recorded for the VM to report (see
        // `devices::event_loop`).
        let fault = self.watch_fault.clone();
        let queues = [
            (RX, "the rx queue's eventfd"),
            (TX, "the tx queue's eventfd"),
            (EVENT, "the event queue's eventfd"),
        ];
        for (q, what) in queues {
            let events = Events::new(&self.queue_evts[q], EventSet::IN);
            fault.apply(ops, WatchOp::Add, events, DEVICE, what);
        }
        let listener = Events::new(&self.muxer.listener, EventSet::IN);
        self.listening = fault.apply(ops, WatchOp::Add, listener, DEVICE, "the listening socket");
        let timer = Events::new_raw(self.timer.as_fd().as_raw_fd(), EventSet::IN);
        fault.apply(ops, WatchOp::Add, timer, DEVICE, "the deadline timer");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        // The reads below only clear a notification or a tick; a failed
        // one (EAGAIN: nothing pending, the timer non-blocking) changes
        // nothing, the device is served anyway.
        if fd == self.queue_evts[TX].as_raw_fd() {
            let _ = self.queue_evts[TX].read();
            self.process_tx();
        } else if fd == self.queue_evts[RX].as_raw_fd() {
            let _ = self.queue_evts[RX].read();
        } else if fd == self.queue_evts[EVENT].as_raw_fd() {
            let _ = self.queue_evts[EVENT].read();
        } else if fd == self.timer.as_fd().as_raw_fd() {
            let _ = self.timer.wait();
            self.on_timer(std::time::Instant::now());
        } else {
            self.on_host_event(fd, events.event_set());
        }
        self.process_rx();
        if self.tx_throttled {
            // Control packets went out: take the guest's packets again.
            self.process_tx();
            self.process_rx();
        }
        self.sync_watches(ops);
    }
}
