//! The vsock device on test guest memory with real Unix sockets, no KVM:
//! packets are written into the tx queue the way a driver would, and read
//! back from rx buffers.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::Vsock;
use crate::devices::virtio::test_utils::{TestQueue, WRITE};
use crate::devices::virtio::VirtioDevice;

pub(super) const CID: u64 = 3;
const GUEST_PORT: u32 = 5000;

pub(super) struct Rig {
    pub(super) rx: TestQueue,
    pub(super) tx: TestQueue,
    pub(super) dev: Vsock,
    dir: tempfile::TempDir,
    /// Next free data address for tx packets and rx buffers.
    next: std::cell::Cell<u64>,
    rx_pos: std::cell::Cell<u16>,
    /// Offered rx buffers by head index.
    rx_bufs: std::collections::HashMap<u16, u64>,
}

impl Rig {
    pub(super) fn new() -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = TestQueue::new(64);
        let tx = TestQueue::with_mem(rx.mem.clone(), 0x2000, 64);
        let ev = TestQueue::with_mem(rx.mem.clone(), 0x4000, 64);
        let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).expect("vsock");
        dev.activate(
            rx.mem.clone(),
            vec![rx.queue(), tx.queue(), ev.queue()],
            rx.interrupt(),
        )
        .expect("activate");
        Rig {
            rx,
            tx,
            dev,
            dir,
            next: std::cell::Cell::new(0x10_0000),
            rx_pos: std::cell::Cell::new(0),
            rx_bufs: Default::default(),
        }
    }

    pub(super) fn alloc(&self, len: u64) -> u64 {
        let at = self.next.get();
        self.next.set(at + len.next_multiple_of(0x1000));
        at
    }

    pub(super) fn header(&self, op: u16, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 64 << 10,
            ..Default::default()
        }
    }

    /// The guest sends a packet; the device processes its tx queue.
    pub(super) fn send(&mut self, h: Header, payload: &[u8]) {
        self.queue_tx(h, payload);
        assert_eq!(self.dev.process_tx(), 1);
    }

    /// The guest puts a packet in its tx ring (without notifying).
    pub(super) fn queue_tx(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let at = self.alloc((HDR_LEN + payload.len()) as u64);
        self.tx.write(at, &h.to_bytes());
        self.tx.write(at + HDR_LEN as u64, payload);
        self.tx
            .add_chain(0, &[(at, (HDR_LEN + payload.len()) as u32, 0)]);
    }

    /// Offers one rx buffer of `room` payload bytes and runs rx; returns
    /// the packet the device put there, if any.
    pub(super) fn receive(&mut self, room: u32) -> Option<(Header, Vec<u8>)> {
        let at = self.alloc(u64::from(room) + HDR_LEN as u64);
        let head = self.rx.add_chain(0, &[(at, room + HDR_LEN as u32, WRITE)]);
        self.rx_bufs.insert(head, at);
        self.dev.process_rx();
        let pos = self.rx_pos.get();
        if self.rx.used_idx() == pos {
            // Unused: the device left the buffer for later.
            return None;
        }
        self.rx_pos.set(pos + 1);
        let (id, len) = self.rx.used(pos);
        // The oldest buffer offered is used first.
        let at = self
            .rx_bufs
            .remove(&(id as u16))
            .expect("an offered buffer");
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&self.rx.read(at, HDR_LEN));
        let h = Header::from_bytes(&hdr);
        assert_eq!(len as usize, HDR_LEN + h.len as usize);
        Some((h, self.rx.read(at + HDR_LEN as u64, h.len as usize)))
    }

    pub(super) fn sock_path(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    /// A host client connects to the device's socket and sends `line`; the
    /// device accepts it and reads what arrived.
    pub(super) fn host_sends(&mut self, line: &[u8]) -> UnixStream {
        let mut host = UnixStream::connect(self.sock_path()).expect("connect");
        host.write_all(line).expect("line");
        self.dev
            .on_host_event(self.dev.muxer.listener.as_raw_fd(), EventSet::IN);
        let fd = *self.dev.muxer.awaiting.keys().next().expect("accepted");
        self.dev.on_host_event(fd, EventSet::IN);
        host
    }
}

#[test]
fn the_guest_connects_to_a_host_socket_and_data_flows_both_ways() {
    let mut r = Rig::new();
    let listener =
        UnixListener::bind(format!("{}_1234", r.sock_path().display())).expect("listener");
    r.send(r.header(OP_REQUEST, 1234), &[]);
    let (mut host, _) = listener.accept().expect("the host side is connected");
    let (h, _) = r.receive(4096).expect("a response");
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_RESPONSE, HOST_CID, CID, 1234, GUEST_PORT)
    );

    r.send(r.header(OP_RW, 1234), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello");

    host.write_all(b"world").expect("write");
    let fd = r
        .dev
        .muxer
        .conns
        .values()
        .next()
        .expect("conn")
        .stream
        .as_raw_fd();
    r.dev.on_host_event(fd, EventSet::IN);
    let (h, data) = r.receive(4096).expect("data");
    assert_eq!((h.op, h.len), (OP_RW, 5));
    assert_eq!(data, b"world");

    // The host closes: the guest hears the host sends nothing more, and its
    // reset ends the connection.
    drop(host);
    r.dev.on_host_event(fd, EventSet::IN);
    let (h, _) = r.receive(4096).expect("shutdown");
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    r.send(r.header(OP_RST, 1234), &[]);
    assert!(r.dev.muxer.conns.is_empty());
}

#[test]
fn the_host_connects_to_a_guest_port() {
    let mut r = Rig::new();
    let mut host = r.host_sends(b"CONNECT 52\n");
    let (h, _) = r.receive(4096).expect("a request");
    assert_eq!((h.op, h.dst_port, h.dst_cid), (OP_REQUEST, 52, CID));
    assert!(h.src_port >= 1 << 30);

    let mut resp = r.header(OP_RESPONSE, h.src_port);
    resp.src_port = 52;
    r.send(resp, &[]);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).expect("OK line");
    assert_eq!(
        std::str::from_utf8(&line).expect("utf8"),
        format!("OK {}\n", h.src_port)
    );
}

#[test]
fn a_bad_connect_line_closes_the_host_socket() {
    let mut r = Rig::new();
    let mut host = r.host_sends(b"HELLO\n");
    assert!(r.dev.muxer.awaiting.is_empty());
    r.dev.muxer.released.clear();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("eof"), 0);
    assert!(r.receive(4096).is_none(), "the guest heard of nothing");
}

#[test]
fn a_port_nobody_listens_on_and_unknown_connections_get_resets() {
    let mut r = Rig::new();
    r.send(r.header(OP_REQUEST, 9), &[]);
    let (h, _) = r.receive(4096).expect("reset");
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 9, GUEST_PORT));
    r.send(r.header(OP_RW, 9), b"data");
    assert_eq!(r.receive(4096).expect("reset").0.op, OP_RST);
    // A reset for nothing is not answered.
    r.send(r.header(OP_RST, 9), &[]);
    assert!(r.receive(4096).is_none());
}

#[test]
fn packets_with_wrong_addresses_or_bad_lengths_are_dropped() {
    let mut r = Rig::new();
    let mut h = r.header(OP_REQUEST, 1);
    h.src_cid = 7;
    r.send(h, &[]);
    let mut h = r.header(OP_REQUEST, 1);
    h.dst_cid = 9;
    r.send(h, &[]);
    // A length beyond the chain.
    let mut h = r.header(OP_RW, 1);
    h.len = 1000;
    let at = r.alloc(64);
    r.tx.write(at, &h.to_bytes());
    r.tx.add_chain(0, &[(at, HDR_LEN as u32 + 4, 0)]);
    assert_eq!(r.dev.process_tx(), 1);
    // Shorter than a header.
    r.tx.add_chain(0, &[(at, 10, 0)]);
    assert_eq!(r.dev.process_tx(), 1);
    assert!(r.receive(4096).is_none());
    assert_eq!(
        r.dev
            .metrics
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[test]
fn host_data_waits_for_the_guest_credit() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 77);
    // The guest shrinks its receive buffer to 4 bytes.
    let mut update = r.header(OP_CREDIT_UPDATE, 77);
    update.buf_alloc = 4;
    r.send(update, &[]);
    host.write_all(b"abcdefgh").expect("write");
    r.dev.on_host_event(fd, EventSet::IN);
    let (_, data) = r.receive(4096).expect("data");
    assert_eq!(data, b"abcd", "only as much as the guest has room for");
    assert!(r.receive(4096).is_none(), "no credit left");
    let mut update = r.header(OP_CREDIT_UPDATE, 77);
    update.buf_alloc = 4;
    update.fwd_cnt = 4;
    r.send(update, &[]);
    assert_eq!(r.receive(4096).expect("the rest").1, b"efgh");
}

#[test]
fn rx_data_is_cut_to_the_buffer_it_goes_into() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 78);
    host.write_all(&[7u8; 100]).expect("write");
    r.dev.on_host_event(fd, EventSet::IN);
    assert_eq!(r.receive(60).expect("part").1.len(), 60);
    assert_eq!(r.receive(60).expect("rest").1.len(), 40);
}

#[test]
fn the_config_space_holds_the_guest_cid_and_reset_drops_connections() {
    let mut r = Rig::new();
    let mut cid = [0u8; 8];
    r.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let listener = UnixListener::bind(format!("{}_79", r.sock_path().display())).expect("listener");
    r.send(r.header(OP_REQUEST, 79), &[]);
    let (mut host, _) = listener.accept().expect("accept");
    r.dev.reset();
    assert!(r.dev.muxer.conns.is_empty());
    r.dev.muxer.released.clear();
    let mut buf = [0u8; 1];
    assert_eq!(
        host.read(&mut buf).expect("eof"),
        0,
        "the host socket is closed"
    );
}

/// A connection from the guest to a host listener on `port`; returns the
/// host's end, with the device's response consumed.
fn connected(r: &mut Rig, port: u32) -> (UnixStream, std::os::fd::RawFd) {
    let listener =
        UnixListener::bind(format!("{}_{port}", r.sock_path().display())).expect("listener");
    r.send(r.header(OP_REQUEST, port), &[]);
    let (host, _) = listener.accept().expect("accept");
    assert_eq!(r.receive(4096).expect("response").0.op, OP_RESPONSE);
    let fd = r
        .dev
        .muxer
        .conns
        .get(&(port, GUEST_PORT))
        .expect("conn")
        .stream
        .as_raw_fd();
    (host, fd)
}

#[test]
fn rx_buffers_too_small_for_a_packet_are_used_empty_without_stalling() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 80);
    host.write_all(b"data").expect("write");
    r.dev.on_host_event(fd, EventSet::IN);
    // Exactly a header's room: no data fits; the device must not spin.
    let at = r.alloc(64);
    r.rx.add_chain(0, &[(at, HDR_LEN as u32, WRITE)]);
    r.dev.process_rx();
    assert_eq!(r.rx.used(r.rx_pos.get()).1, 0);
    r.rx_pos.set(r.rx_pos.get() + 1);
    assert_eq!(r.receive(4096).expect("then the data").1, b"data");
}

#[test]
fn data_the_guest_sent_before_closing_reaches_the_host_first() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 81);
    // A tiny socket buffer, so that most of the data waits in the device.
    let stream = &r
        .dev
        .muxer
        .conns
        .get(&(81, GUEST_PORT))
        .expect("conn")
        .stream;
    nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &4096).expect("sndbuf");
    let data = vec![0x42u8; 60 << 10];
    r.send(r.header(OP_RW, 81), &data);
    let mut close = r.header(OP_SHUTDOWN, 81);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(close, &[]);
    assert!(!r.dev.muxer.conns.is_empty(), "kept until its data is out");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    while got.len() < data.len() {
        let n = host.read(&mut buf).expect("read");
        assert!(n > 0, "the host socket closed early");
        got.extend_from_slice(&buf[..n]);
        r.dev.on_host_event(fd, EventSet::OUT);
    }
    assert_eq!(got, data);
    assert!(r.dev.muxer.conns.is_empty(), "then reset");
    assert_eq!(r.receive(4096).expect("the reset").0.op, OP_RST);
}

#[test]
fn a_host_half_close_still_lets_the_guest_send() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 82);
    host.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    r.dev.on_host_event(fd, EventSet::IN);
    let (h, _) = r.receive(4096).expect("shutdown");
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    r.send(r.header(OP_RW, 82), b"reply");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).expect("the reply");
    assert_eq!(&got, b"reply");
}

#[test]
fn guest_packets_wait_while_control_packets_pile_up() {
    let mut r = Rig::new();
    let filler = r.header(OP_RST, 1);
    while !r.dev.muxer.control_full() {
        r.dev.muxer.control.push_back(filler);
    }
    r.dev.muxer.control.pop_back();
    // Each goes to no connection and would add a reset.
    for _ in 0..3 {
        let at = r.alloc(64);
        r.tx.write(at, &r.header(OP_RW, 9).to_bytes());
        r.tx.add_chain(0, &[(at, HDR_LEN as u32, 0)]);
    }
    assert_eq!(r.dev.process_tx(), 1, "one, then the queue is full");
    assert!(r.dev.tx_throttled);
    assert_eq!(r.dev.muxer.control.len(), super::muxer::MAX_CONTROL);
}

#[test]
fn a_guest_that_never_answers_a_host_connection_is_given_up_on() {
    let mut r = Rig::new();
    let mut host = r.host_sends(b"CONNECT 53\n");
    assert_eq!(r.receive(4096).expect("request").0.op, OP_REQUEST);
    assert!(r.dev.muxer.has_deadlines());
    r.dev
        .muxer
        .expire(std::time::Instant::now() + std::time::Duration::from_secs(3));
    assert!(r.dev.muxer.conns.is_empty());
    assert_eq!(r.receive(4096).expect("reset").0.op, OP_RST);
    r.dev.muxer.released.clear();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("eof"), 0);
}

#[test]
fn a_host_client_that_never_sends_its_connect_line_is_dropped() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(r.sock_path()).expect("connect");
    r.dev
        .on_host_event(r.dev.muxer.listener.as_raw_fd(), EventSet::IN);
    assert_eq!(r.dev.muxer.awaiting.len(), 1);
    r.dev
        .muxer
        .expire(std::time::Instant::now() + std::time::Duration::from_secs(3));
    assert!(r.dev.muxer.awaiting.is_empty());
    r.dev.muxer.released.clear();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("eof"), 0);
}

#[test]
fn a_close_whose_data_never_drains_is_reset_after_its_timeout() {
    let mut r = Rig::new();
    let (_host, _fd) = connected(&mut r, 83);
    let stream = &r
        .dev
        .muxer
        .conns
        .get(&(83, GUEST_PORT))
        .expect("conn")
        .stream;
    nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &4096).expect("sndbuf");
    // Nobody reads the host end.
    r.send(r.header(OP_RW, 83), &vec![1u8; 60 << 10]);
    let mut close = r.header(OP_SHUTDOWN, 83);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(close, &[]);
    assert_eq!(r.dev.muxer.conns.len(), 1);
    let now = std::time::Instant::now();
    r.dev.muxer.expire(now + std::time::Duration::from_secs(5));
    assert_eq!(r.dev.muxer.conns.len(), 1, "still draining at 5 s");
    r.dev.muxer.expire(now + std::time::Duration::from_secs(9));
    assert!(r.dev.muxer.conns.is_empty(), "given up at 8 s");
    assert_eq!(r.receive(4096).expect("the reset").0.op, OP_RST);
}

#[test]
fn a_guest_that_receives_no_more_is_sent_no_more() {
    let mut r = Rig::new();
    let (mut host, fd) = connected(&mut r, 84);
    let mut shut = r.header(OP_SHUTDOWN, 84);
    shut.flags = SHUTDOWN_RCV;
    r.send(shut, &[]);
    host.write_all(b"unwanted").expect("write");
    r.dev.on_host_event(fd, EventSet::IN);
    assert!(r.receive(4096).is_none());
    // It may still send.
    r.send(r.header(OP_RW, 84), b"still");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"still");
}

#[test]
fn a_device_reset_wakes_the_loop_that_closes_the_host_sockets() {
    let mut r = Rig::new();
    let (_host, _fd) = connected(&mut r, 85);
    assert!(
        r.dev.queue_evts[super::device::EVENT].read().is_err(),
        "quiet before"
    );
    r.dev.reset();
    assert_eq!(r.dev.muxer.released.len(), 1, "handed to the loop to close");
    assert_eq!(
        r.dev.queue_evts[super::device::EVENT]
            .read()
            .expect("woken"),
        1
    );
}

#[test]
fn the_deadline_timer_runs_only_while_something_waits_and_never_blocks() {
    use std::os::fd::AsFd;
    let mut r = Rig::new();
    r.dev.arm_timer(true);
    assert!(r.dev.timer_armed);
    r.dev.arm_timer(false);
    assert!(!r.dev.timer_armed);
    // Read after disarming (a tick seen in the same epoll batch): it must
    // return at once, not wait for a tick that will never come.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let read = nix::unistd::read(r.dev.timer.as_fd(), &mut buf);
    assert_eq!(read, Err(nix::errno::Errno::EAGAIN));
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
}

#[test]
fn ready_connections_are_served_in_turn() {
    let mut r = Rig::new();
    let (mut a, fa) = connected(&mut r, 86);
    let (mut b, fb) = connected(&mut r, 87);
    a.write_all(&[b'a'; 64]).expect("write");
    b.write_all(&[b'b'; 64]).expect("write");
    r.dev.on_host_event(fa, EventSet::IN);
    r.dev.on_host_event(fb, EventSet::IN);
    let ports: Vec<u32> = (0..4)
        .map(|_| r.receive(8).expect("data").0.src_port)
        .collect();
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[2] != ports[3],
        "{ports:?}"
    );
}

#[test]
fn host_connections_are_refused_while_control_packets_pile_up() {
    let mut r = Rig::new();
    let filler = r.header(OP_RST, 1);
    while !r.dev.muxer.control_full() {
        r.dev.muxer.control.push_back(filler);
    }
    let mut host = r.host_sends(b"CONNECT 54\n");
    assert!(r.dev.muxer.conns.is_empty() && r.dev.muxer.awaiting.is_empty());
    r.dev.muxer.released.clear();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("eof"), 0);
}

/// The lowest descriptor number not in use: the next one the process gets.
fn lowest_free_fd() -> u64 {
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    (0..libc::c_int::MAX)
        .find(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } == -1)
        .map_or(0, |fd| fd as u64)
}

/// Out of descriptors, the device stops watching its listener (which stays
/// readable, and would spin the event loop) and tries again on its timer.
/// The descriptor limit is process-wide, so the test runs itself in a
/// child process where nothing else runs.
#[test]
fn accept_pauses_when_out_of_descriptors_and_retries_on_the_timer() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const CHILD: &str = "AURAE_VSOCK_FD_LIMIT_CHILD";
    const NAME: &str = "devices::virtio::vsock::tests::accept_pauses_when_out_of_descriptors_and_retries_on_the_timer";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", NAME, "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("the test in a child process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let mut r = Rig::new();
    let _host = UnixStream::connect(r.sock_path()).expect("connect");
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free_fd(), hard).expect("setrlimit");
    r.dev
        .on_host_event(r.dev.muxer.listener.as_raw_fd(), EventSet::IN);
    let paused = r.dev.muxer.accept_paused;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore the limit");
    assert!(paused, "accept failed with EMFILE and paused");
    assert!(r.dev.muxer.awaiting.is_empty());
    assert!(r.dev.muxer.has_deadlines(), "the timer runs while paused");
    r.dev.muxer.expire(std::time::Instant::now());
    assert!(!r.dev.muxer.accept_paused, "a tick lifts the pause");
    r.dev
        .on_host_event(r.dev.muxer.listener.as_raw_fd(), EventSet::IN);
    assert_eq!(
        r.dev.muxer.awaiting.len(),
        1,
        "the waiting client is accepted"
    );
}
