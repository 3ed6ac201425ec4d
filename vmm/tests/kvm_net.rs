//! Tier 3: a frame each way between a test guest's virtio-net and a real
//! TAP device that the test creates (and removes). Frames use a local
//! experimental EtherType and never leave the TAP.

mod guest;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use guest::{kvm_or_skip, Program, QueueLayout};
use vmm::devices::virtio::mmio::reg;
use vmm::devices::virtio::net::{guest_mac, host_salt};
use vmm::{Console, ExitReason, Vm, VmConfig};

const ETHERTYPE: u16 = 0x88b5;

/// A TAP interface that exists for the test's lifetime.
struct TestTap(String);

impl TestTap {
    fn create() -> Option<TestTap> {
        let name = format!("aurvt{}", std::process::id() % 100_000);
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ok(&["tuntap", "add", "dev", &name, "mode", "tap"]) {
            return None;
        }
        let tap = TestTap(name.clone());
        // No IPv6 chatter (router solicitations) on the test link.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ok(&["link", "set", &name, "up"]).then_some(tap)
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// A raw packet socket on the TAP's host side.
fn packet_socket(ifname: &str) -> OwnedFd {
    let name = CString::new(ifname).expect("name");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind reads `addr` of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f.resize(f.len().max(60), 0);
    f
}

#[test]
fn a_frame_goes_each_way_through_a_real_tap() {
    if !kvm_or_skip() {
        return;
    }
    let Some(tap) = TestTap::create() else {
        guest::skip("creating a TAP device needs root and iproute2");
        return;
    };
    let sock = packet_socket(&tap.0);
    let rx = QueueLayout::at(0x30_0000);
    let tx = QueueLayout::at(0x31_0000);
    let mut p = Program::new();
    p.virtio_bring_up(guest::MMIO, &[rx, tx]);
    p.write32(guest::MMIO + reg::QUEUE_NOTIFY, 1);
    p.poll16(tx.used + 2, 1);
    p.poll16(rx.used + 2, 1);
    p.exit(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("guest.bin");
    std::fs::write(&code, p.bytes()).expect("code");
    let mut vm = Vm::new(VmConfig {
        kernel: code,
        mem_mib: 64,
        flat_entry: Some(guest::CODE),
        debug_exit: true,
        console: Console::None,
        rng: false,
        taps: vec![tap.0.clone()],
        ..VmConfig::default()
    })
    .expect("build the VM");
    let outbound = frame([0xff; 6], guest_mac(&tap.0, &host_salt()), b"from-guest");
    let mut tx_bytes = vec![0u8; 12];
    tx_bytes.extend(&outbound);
    vm.write_guest(0x40_0000, &tx_bytes).expect("tx frame");
    tx.write_chain(&vm, 0, &[(0x40_0000, tx_bytes.len() as u32, false)]);
    tx.publish(&vm, &[0]);
    rx.write_chain(&vm, 0, &[(0x50_0000, 2048, true)]);
    rx.publish(&vm, &[0]);
    vm.run().expect("run");

    // The guest's frame shows up on the TAP...
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    let mut seen = None;
    while Instant::now() < deadline && seen.is_none() {
        // SAFETY: recv into a stack buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
            seen = Some(buf[..n as usize].to_vec());
        }
    }
    assert_eq!(
        seen.as_deref(),
        Some(&outbound[..]),
        "the guest's frame reached the TAP"
    );
    // ...and a frame sent on the TAP reaches the guest.
    let inbound = frame(
        guest_mac(&tap.0, &host_salt()),
        [0x02, 0, 0, 0, 0, 9],
        b"to-guest",
    );
    // SAFETY: send from a buffer of the given length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
    assert_eq!(sent, inbound.len() as isize);
    let reason = vm.wait(Some(Duration::from_secs(10)));
    if reason.is_none() {
        vm.stop();
    }
    assert_eq!(reason, Some(ExitReason::DebugExit(6)));
    assert_eq!(rx.used_elem(&vm, 0).1 as usize, 12 + inbound.len());
    assert_eq!(
        vm.read_guest(0x50_0000 + 12, inbound.len()).expect("rx"),
        inbound
    );
}
