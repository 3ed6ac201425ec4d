//! The vsock device around its driver's lifecycle, and its timer after a
//! stalled event loop (the rig of [`super::tests`]).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::tests::{Rig, CID};
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::VirtioDevice;

/// A host client that connects while the guest's driver is down (before it
/// first comes up, after a reset, or while the device needs one) is refused
/// at once, and nothing is queued for the guest; once the driver is up,
/// host clients get through.
#[test]
fn host_connections_are_refused_while_the_driver_is_down() {
    let mut r = Rig::new();
    r.dev.reset();
    let mut host = r.host_sends(b"CONNECT 52\n");
    host.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let queued = (r.dev.muxer.conns.len(), r.dev.muxer.control.len());
    r.dev.muxer.released.clear();
    assert_eq!(queued, (0, 0), "nothing for the guest");
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("eof"), 0, "refused");

    let ev = TestQueue::with_mem(r.rx.mem.clone(), 0x4000, 64);
    r.dev
        .activate(
            r.rx.mem.clone(),
            vec![r.rx.queue(), r.tx.queue(), ev.queue()],
            r.rx.interrupt(),
        )
        .expect("activate again");
    let _host = r.host_sends(b"CONNECT 52\n");
    let (h, _) = r.receive(4096).expect("a request");
    assert_eq!((h.op, h.dst_port, h.dst_cid), (OP_REQUEST, 52, CID));

    // A device that needs a reset (a broken ring) is down too.
    r.dev
        .active
        .as_ref()
        .expect("active")
        .interrupt
        .set_needs_reset();
    let mut host = r.host_sends(b"CONNECT 52\n");
    host.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert!(r.dev.muxer.control.is_empty(), "nothing for the guest");
    r.dev.muxer.released.clear();
    assert_eq!(host.read(&mut buf).expect("eof"), 0, "refused");
}

/// The loop stalled past a host connection's deadline, and the guest's
/// answer waits unread in the tx ring when the timer fires: the answer is
/// taken first, and the connection stands.
#[test]
fn a_timer_tick_reads_the_guests_answer_before_expiring_its_question() {
    let mut r = Rig::new();
    let mut host = r.host_sends(b"CONNECT 53\n");
    host.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let (req, _) = r.receive(4096).expect("a request");
    let mut resp = r.header(OP_RESPONSE, req.src_port);
    resp.src_port = 53;
    r.queue_tx(resp, &[]);
    r.dev.on_timer(Instant::now() + Duration::from_secs(3));
    let mut line = [0u8; 3];
    host.read_exact(&mut line).expect("OK line");
    assert_eq!(&line, b"OK ");
    assert_eq!(r.dev.muxer.conns.len(), 1, "the connection stands");
}

/// A flood of host connections is accepted in turns: one wake-up of the
/// listener takes at most 64, and the rest wait for the next.
#[test]
fn a_flood_of_host_connections_is_accepted_in_turns() {
    let mut r = Rig::new();
    let clients: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(r.sock_path()).expect("connect"))
        .collect();
    let listener = r.dev.muxer.listener.as_raw_fd();
    r.dev.on_host_event(listener, EventSet::IN);
    assert_eq!(r.dev.muxer.awaiting.len(), 64);
    r.dev.on_host_event(listener, EventSet::IN);
    assert_eq!(r.dev.muxer.awaiting.len(), 100);
    drop(clients);
}
