//! Property tests of the virtio-mmio transport: arbitrary sequences of guest
//! register accesses (any offset, any width, any value), with the device
//! served between them, over guest memory full of arbitrary bytes. The
//! transport must never panic, its identity registers never change, its
//! status only ever holds bits the protocol defines, a write of 0 always
//! resets, and a device is only ever active after DRIVER_OK.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::block::Block;
use super::mmio::*;
use super::rng::Rng;
use super::test_utils::{TestQueue, MEM_SIZE};
use super::VirtioDevice;
use crate::bus::BusDevice;

#[derive(Debug, Clone)]
enum Access {
    Read {
        offset: u64,
        width: usize,
    },
    Write {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The device serves its queues (as the event loop would).
    Serve,
    /// A driver's whole set-up of queue 0, rings at the given addresses,
    /// up to DRIVER_OK (random accesses alone rarely get that far).
    BringUp {
        size: u32,
        rings: [u32; 3],
    },
}

/// Offsets: mostly the defined registers, some anywhere in the window
/// (config space included), some just past it.
fn offset() -> impl Strategy<Value = u64> {
    let regs = [
        reg::MAGIC,
        reg::DEVICE_FEATURES,
        reg::DEVICE_FEATURES_SEL,
        reg::DRIVER_FEATURES,
        reg::DRIVER_FEATURES_SEL,
        reg::QUEUE_SEL,
        reg::QUEUE_NUM_MAX,
        reg::QUEUE_NUM,
        reg::QUEUE_READY,
        reg::QUEUE_NOTIFY,
        reg::INTERRUPT_STATUS,
        reg::INTERRUPT_ACK,
        reg::STATUS,
        reg::QUEUE_DESC_LOW,
        reg::QUEUE_DESC_HIGH,
        reg::QUEUE_AVAIL_LOW,
        reg::QUEUE_AVAIL_HIGH,
        reg::QUEUE_USED_LOW,
        reg::QUEUE_USED_HIGH,
        reg::CONFIG_GENERATION,
        reg::CONFIG,
    ];
    prop_oneof![
        6 => proptest::sample::select(regs.to_vec()),
        2 => 0u64..MMIO_LEN,
        1 => MMIO_LEN - 8..MMIO_LEN + 8,
    ]
}

/// Values: the status steps a driver takes, small numbers (queue indices
/// and sizes, feature pages), addresses inside and outside guest memory,
/// and anything.
fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        proptest::sample::select(vec![0u32, 1, 3, 0xb, 0xf, 0x40, 0x80, 0xff]),
        0u32..300,
        0u32..(MEM_SIZE as u32 + 0x1000),
        any::<u32>(),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    let width = proptest::sample::select(vec![1usize, 2, 4, 8]);
    prop_oneof![
        3 => (offset(), width.clone()).prop_map(|(offset, width)| Access::Read { offset, width }),
        6 => (offset(), width, value()).prop_map(|(offset, width, v)| Access::Write {
            offset,
            bytes: u64::from(v).to_le_bytes()[..width].to_vec(),
        }),
        1 => Just(Access::Serve),
        1 => (value(), [value(), value(), value()])
            .prop_map(|(size, rings)| Access::BringUp { size, rings }),
    ]
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn bring_up(t: &mut MmioTransport, size: u32, rings: [u32; 3]) {
    write32(t, reg::STATUS, STATUS_ACKNOWLEDGE);
    write32(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write32(t, reg::DRIVER_FEATURES_SEL, 1);
    write32(t, reg::DRIVER_FEATURES, 1);
    write32(
        t,
        reg::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    write32(t, reg::QUEUE_SEL, 0);
    write32(t, reg::QUEUE_NUM, size);
    write32(t, reg::QUEUE_DESC_LOW, rings[0]);
    write32(t, reg::QUEUE_AVAIL_LOW, rings[1]);
    write32(t, reg::QUEUE_USED_LOW, rings[2]);
    write32(t, reg::QUEUE_READY, 1);
    write32(t, reg::STATUS, 0xf);
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

const STATUS_BITS: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_FEATURES_OK
    | STATUS_DRIVER_OK
    | STATUS_NEEDS_RESET
    | STATUS_FAILED;

/// Runs `accesses` against a transport for `device`, checking the
/// invariants after each one; `serve` stands for the event loop.
fn drive<D: VirtioDevice + 'static>(
    device: Arc<Mutex<D>>,
    device_id: u32,
    mem_bytes: &[u8],
    accesses: &[Access],
    serve: impl Fn(&mut D),
) -> Result<(), TestCaseError> {
    let tq = TestQueue::new(16);
    let _ = tq.mem.write_slice(mem_bytes, GuestAddress(0));
    let mut t = MmioTransport::new(
        device.clone(),
        tq.mem.clone(),
        EventFd::new(0).expect("eventfd"),
    )
    .expect("transport");
    for a in accesses {
        match a {
            Access::Read { offset, width } => {
                let mut d = vec![0u8; *width];
                t.read(*offset, &mut d);
            }
            Access::Write { offset, bytes } => t.write(*offset, bytes),
            Access::Serve => serve(&mut device.lock().expect("device")),
            Access::BringUp { size, rings } => bring_up(&mut t, *size, *rings),
        }
        prop_assert_eq!(read32(&mut t, reg::MAGIC), MAGIC);
        prop_assert_eq!(read32(&mut t, reg::VERSION), VERSION);
        prop_assert_eq!(read32(&mut t, reg::DEVICE_ID), device_id);
        let status = read32(&mut t, reg::STATUS);
        prop_assert_eq!(status & !STATUS_BITS, 0, "status {:#x}", status);
        if device.lock().expect("device").is_activated() {
            prop_assert_ne!(status & STATUS_DRIVER_OK, 0, "active without DRIVER_OK");
        }
    }
    t.write(reg::STATUS, &0u32.to_le_bytes());
    prop_assert_eq!(read32(&mut t, reg::STATUS), 0);
    prop_assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
    prop_assert!(!device.lock().expect("device").is_activated());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn the_transport_survives_arbitrary_register_accesses_to_rng(
        mem in proptest::collection::vec(any::<u8>(), 0..0x3000),
        accesses in proptest::collection::vec(access(), 0..64),
    ) {
        let rng = Arc::new(Mutex::new(Rng::new().expect("rng")));
        drive(rng, super::TYPE_RNG, &mem, &accesses, |d| {
            d.process_queue();
        })?;
    }

    #[test]
    fn the_transport_survives_arbitrary_register_accesses_to_block(
        mem in proptest::collection::vec(any::<u8>(), 0..0x3000),
        accesses in proptest::collection::vec(access(), 0..64),
    ) {
        let f = tempfile::NamedTempFile::new().expect("disk");
        std::fs::write(f.path(), vec![0u8; 4096]).expect("disk");
        let blk = Arc::new(Mutex::new(Block::open(f.path(), false).expect("block")));
        drive(blk, super::TYPE_BLOCK, &mem, &accesses, |d| {
            d.process_queue();
        })?;
        prop_assert_eq!(std::fs::metadata(f.path()).expect("disk").len(), 4096);
    }
}
