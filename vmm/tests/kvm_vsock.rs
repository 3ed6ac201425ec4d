//! vsock through the real event loop, with a tiny guest on /dev/kvm: the
//! guest connects to a host Unix socket, sends data and receives data.

mod guest;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use guest::{kvm_or_skip, Program, QueueLayout};
use vmm::devices::virtio::mmio::reg;
use vmm::devices::virtio::vsock::packet::*;
use vmm::{Console, ExitReason, Vm, VmConfig, VsockConfig};

const CID: u64 = 3;

fn packet(op: u16, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 1234,
        len: payload.len() as u32,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 4096,
        ..Default::default()
    };
    let mut b = h.to_bytes().to_vec();
    b.extend(payload);
    b
}

#[test]
fn a_guest_connection_reaches_a_host_socket_and_data_goes_both_ways() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");

    let rx = QueueLayout::at(0x30_0000);
    let tx = QueueLayout::at(0x31_0000);
    let ev = QueueLayout::at(0x32_0000);
    let mut p = Program::new();
    p.virtio_bring_up(guest::MMIO, &[rx, tx, ev]);
    p.write32(guest::MMIO + reg::QUEUE_NOTIFY, 1);
    // The RESPONSE, then the host's data.
    p.poll16(rx.used + 2, 2);
    p.exit(7);
    let code = dir.path().join("guest.bin");
    std::fs::write(&code, p.bytes()).expect("code");
    let mut vm = Vm::new(VmConfig {
        kernel: code,
        mem_mib: 64,
        flat_entry: Some(guest::CODE),
        debug_exit: true,
        console: Console::None,
        rng: false,
        vsock: Some(VsockConfig {
            cid: CID,
            uds_path: uds.clone(),
        }),
        ..VmConfig::default()
    })
    .expect("build the VM");
    // tx: a REQUEST to host port 1234, then data on the new connection.
    let request = packet(OP_REQUEST, &[]);
    let data = packet(OP_RW, b"pong");
    vm.write_guest(0x40_0000, &request).expect("request");
    vm.write_guest(0x40_1000, &data).expect("data");
    tx.write_chain(&vm, 0, &[(0x40_0000, request.len() as u32, false)]);
    tx.write_chain(&vm, 1, &[(0x40_1000, data.len() as u32, false)]);
    tx.publish(&vm, &[0, 1]);
    rx.write_chain(&vm, 0, &[(0x50_0000, 4096, true)]);
    rx.write_chain(&vm, 1, &[(0x51_0000, 4096, true)]);
    rx.publish(&vm, &[0, 1]);
    vm.run().expect("run");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut host = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                vm.stop();
                panic!("the guest's connection never reached the host socket: {e}");
            }
        }
    };
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).expect("the guest's data");
    assert_eq!(&got, b"pong");
    host.write_all(b"ping").expect("write");

    let reason = vm.wait(Some(Duration::from_secs(10)));
    if reason.is_none() {
        vm.stop();
    }
    assert_eq!(reason, Some(ExitReason::DebugExit(7)));
    let header = |at: u64| {
        let b = vm.read_guest(at, HDR_LEN).expect("header");
        let mut a = [0u8; HDR_LEN];
        a.copy_from_slice(&b);
        Header::from_bytes(&a)
    };
    let response = header(0x50_0000);
    assert_eq!(
        (response.op, response.src_port, response.dst_port),
        (OP_RESPONSE, 1234, 5000)
    );
    let rw = header(0x51_0000);
    assert_eq!((rw.op, rw.len), (OP_RW, 4));
    assert_eq!(
        vm.read_guest(0x51_0000 + HDR_LEN as u64, 4).expect("data"),
        b"ping"
    );
    drop(vm);
    assert!(!uds.exists(), "the VM's socket file is gone with it");
}
