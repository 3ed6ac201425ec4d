//! Property tests: arbitrary queue contents (descriptor tables, avail
//! rings, request headers) fed to every device. The devices must never
//! panic, and never complete more requests than were offered.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::net::Net;
use super::rng::Rng;
use super::test_utils::{TestQueue, AVAIL_RING, DESC_TABLE, MEM_SIZE};
use super::vsock::Vsock;
use super::VirtioDevice;

const SIZE: u16 = 16;

/// Writes arbitrary bytes where the driver's structures and buffers live.
fn scribble(t: &TestQueue, desc: &[u8], avail: &[u8], data: &[u8], addrs: &[u64]) {
    let _ = t.mem.write_slice(desc, GuestAddress(t.base + DESC_TABLE));
    let _ = t.mem.write_slice(avail, GuestAddress(t.base + AVAIL_RING));
    // Point some descriptors at arbitrary (even out-of-memory) addresses.
    for (i, a) in addrs.iter().enumerate().take(usize::from(SIZE)) {
        let _ = t
            .mem
            .write_obj(*a, GuestAddress(t.base + DESC_TABLE + i as u64 * 16));
    }
    let _ = t.mem.write_slice(data, GuestAddress(0x4000));
}

fn addr_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..(MEM_SIZE as u64 + 0x1000),
        any::<u64>(),
        Just(u64::MAX - 8),
        Just(0x4000u64)
    ]
}

fn used_idx(t: &TestQueue) -> u16 {
    t.used_idx()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn rng_survives_arbitrary_queues(
        desc in proptest::collection::vec(any::<u8>(), 0..256),
        avail in proptest::collection::vec(any::<u8>(), 0..40),
        addrs in proptest::collection::vec(addr_strategy(), 0..16),
    ) {
        let t = TestQueue::new(SIZE);
        scribble(&t, &desc, &avail, &[], &addrs);
        let mut d = Rng::new().expect("rng");
        d.activate(t.mem.clone(), vec![t.queue()], t.interrupt()).expect("activate");
        let served = d.process_queue();
        prop_assert!(served <= usize::from(u16::MAX));
        prop_assert!(used_idx(&t) as usize == served || d.active_needs_reset());
    }

    #[test]
    fn block_survives_arbitrary_queues_and_headers(
        desc in proptest::collection::vec(any::<u8>(), 0..256),
        avail in proptest::collection::vec(any::<u8>(), 0..40),
        data in proptest::collection::vec(any::<u8>(), 0..512),
        addrs in proptest::collection::vec(addr_strategy(), 0..16),
    ) {
        let f = tempfile::NamedTempFile::new().expect("disk");
        std::fs::write(f.path(), vec![0u8; 4096]).expect("disk");
        let t = TestQueue::new(SIZE);
        scribble(&t, &desc, &avail, &data, &addrs);
        let mut d = Block::open(f.path(), false).expect("block");
        d.activate(t.mem.clone(), vec![t.queue()], t.interrupt()).expect("activate");
        d.process_queue();
        prop_assert!(std::fs::metadata(f.path()).expect("disk").len() == 4096, "never writes past the end");
    }

    #[test]
    fn net_survives_arbitrary_queues(
        desc in proptest::collection::vec(any::<u8>(), 0..256),
        avail in proptest::collection::vec(any::<u8>(), 0..40),
        addrs in proptest::collection::vec(addr_strategy(), 0..16),
        frame in proptest::collection::vec(any::<u8>(), 1..2000),
    ) {
        let rx = TestQueue::new(SIZE);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x2000, SIZE);
        scribble(&rx, &desc, &avail, &[], &addrs);
        scribble(&tx, &desc, &avail, &[], &addrs);
        let mut d = Net::new(super::net::tests_support::Sink::with_frame(frame), [2, 0, 0, 0, 0, 1]).expect("net");
        d.activate(rx.mem.clone(), vec![rx.queue(), tx.queue()], rx.interrupt()).expect("activate");
        d.process_tx();
        d.process_rx();
    }

    #[test]
    fn vsock_survives_arbitrary_queues(
        desc in proptest::collection::vec(any::<u8>(), 0..256),
        avail in proptest::collection::vec(any::<u8>(), 0..40),
        data in proptest::collection::vec(any::<u8>(), 0..512),
        addrs in proptest::collection::vec(addr_strategy(), 0..16),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = TestQueue::new(SIZE);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x2000, SIZE);
        let ev = TestQueue::with_mem(rx.mem.clone(), 0x4000, SIZE);
        scribble(&rx, &desc, &avail, &[], &addrs);
        scribble(&tx, &desc, &avail, &data, &addrs);
        let mut d = Vsock::new(3, &dir.path().join("v.sock")).expect("vsock");
        d.activate(rx.mem.clone(), vec![rx.queue(), tx.queue(), ev.queue()], rx.interrupt()).expect("activate");
        d.process_tx();
        d.process_rx();
    }
}
