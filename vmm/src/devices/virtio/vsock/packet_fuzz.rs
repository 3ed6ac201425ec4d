//! Arbitrary well-formed packets from the guest (any op, ports, flags,
//! credit and length), with host sockets to connect to: this reaches the
//! connection logic, which arbitrary queue bytes (`fuzz_tests.rs`) rarely
//! get past the address checks to.

use std::os::unix::net::UnixListener;

use proptest::prelude::*;

use super::muxer::{MAX_CONNECTIONS, MAX_CONTROL};
use super::packet::*;
use super::tests::{Rig, CID};

/// Host ports the guest may connect to (listened on), plus one nobody
/// listens on.
const HOST_PORTS: u32 = 3;

fn packet() -> impl Strategy<Value = (Header, usize)> {
    (
        0u16..9,
        0u32..4,
        0u32..=HOST_PORTS,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop_oneof![Just(TYPE_STREAM), any::<u16>()],
        0usize..200,
    )
        .prop_map(|(op, src, dst, flags, buf_alloc, fwd_cnt, kind, len)| {
            let h = Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: 5000 + src,
                dst_port: 1000 + dst,
                kind,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
                ..Default::default()
            };
            (h, len)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_guest_packets_keep_the_device_within_its_bounds(
        packets in proptest::collection::vec(packet(), 1..32),
    ) {
        let mut r = Rig::new();
        let listeners: Vec<UnixListener> = (0..HOST_PORTS)
            .map(|p| {
                let path = format!("{}_{}", r.sock_path().display(), 1000 + p);
                let l = UnixListener::bind(path).expect("listen");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let mut accepted = Vec::new();
        for (mut h, len) in packets {
            h.len = len as u32;
            let at = r.alloc((HDR_LEN + len) as u64);
            r.tx.write(at, &h.to_bytes());
            r.tx.write(at + HDR_LEN as u64, &vec![7u8; len]);
            r.tx.add_chain(0, &[(at, (HDR_LEN + len) as u32, 0)]);
            // While control packets pile up, tx waits: 0 or 1 chains.
            prop_assert!(r.dev.process_tx() <= 1);
            for l in &listeners {
                while let Ok((s, _)) = l.accept() {
                    accepted.push(s);
                }
            }
            // The host hangs up on every other connection.
            if accepted.len() % 2 == 1 {
                accepted.pop();
            }
            let _ = r.receive(128);
            let m = &r.dev.muxer;
            prop_assert!(m.conns.len() + m.awaiting.len() <= MAX_CONNECTIONS);
            prop_assert!(m.control.len() <= MAX_CONTROL);
            let in_range = m.conns.keys().all(|(host, guest)| {
                (1000..=1000 + HOST_PORTS).contains(host) && (5000..5004).contains(guest)
            });
            prop_assert!(in_range, "a connection with ports the guest never used");
        }
        // A device reset drops every connection.
        crate::devices::virtio::VirtioDevice::reset(&mut r.dev);
        prop_assert!(r.dev.muxer.conns.is_empty());
    }
}
