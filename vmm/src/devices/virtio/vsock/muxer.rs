//! The host side of the vsock device: guest ports meet Unix sockets, in the
//! scheme Firecracker made common.
//!
//! - Host to guest: a host process connects to the device's socket
//!   (`uds_path`) and writes `CONNECT <port>\n`; the guest's listener on
//!   `<port>` gets the connection, and the host process reads
//!   `OK <host port>\n` before the stream itself.
//! - Guest to host: a guest connection to the host (CID 2) on `<port>` is
//!   passed to the Unix socket `<uds_path>_<port>`, if something listens
//!   there; otherwise the guest gets a reset.
//!
//! Guest packets are untrusted: a packet from another CID or to anything
//! but the host is dropped, one for no known connection is answered with a
//! reset, and a guest that sends beyond the credit it was given is reset.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::connection::{Connection, Sent, State, BUF_ALLOC};
use super::metrics::VsockMetrics;
use super::packet::*;

/// (host port, guest port).
pub type Key = (u32, u32);

/// Connections at once; more are refused.
pub const MAX_CONNECTIONS: usize = 256;
/// Host connections accepted per wake-up of the listener.
const MAX_ACCEPTS: usize = 64;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Header-only packets waiting for rx buffers; beyond this the device stops
/// taking guest packets (which would add more) until the guest takes some.
pub const MAX_CONTROL: usize = 512;
/// How long a guest has to answer a host connection, and a host client to
/// send its CONNECT line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closed guest socket's pending data may take to reach the
/// host (Linux gives up on a close after 8 s too).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);

pub struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    pub listener: UnixListener,
    pub conns: HashMap<Key, Connection>,
    /// Accepted host sockets still waiting for their CONNECT line, with
    /// what they sent so far and when they give up.
    pub awaiting: HashMap<RawFd, (UnixStream, Vec<u8>, Instant)>,
    /// accept failed for want of resources (no descriptors): the listener
    /// is not watched until a socket is closed.
    pub accept_paused: bool,
    pub fd_keys: HashMap<RawFd, Key>,
    /// Header-only packets for the guest, in order.
    pub control: VecDeque<Header>,
    next_port: u32,
    /// Sockets let go of since the event loop last looked: it stops
    /// watching them before they are closed.
    pub released: Vec<UnixStream>,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    /// Listens on `uds_path`, which must not exist yet.
    pub fn new(cid: u64, uds_path: &Path, metrics: Arc<VsockMetrics>) -> std::io::Result<Self> {
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            awaiting: HashMap::new(),
            accept_paused: false,
            fd_keys: HashMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            released: Vec::new(),
            metrics,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn metrics(&self) -> &VsockMetrics {
        &self.metrics
    }

    /// Whether the guest must wait for rx buffers to be taken before the
    /// device reads more of its packets.
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL
    }

    /// A header-only packet from the host side of `key`.
    fn header(&self, key: Key, op: u16, flags: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Queues a header-only packet from the host side of `key`.
    pub fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.header(key, op, flags);
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_told = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    /// Drops a connection and tells the guest with a reset.
    pub fn reset(&mut self, key: Key) {
        self.push_control(key, OP_RST, 0);
        self.remove(key);
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
            self.fd_keys.remove(&c.stream.as_raw_fd());
            self.released.push(c.stream);
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        self.fd_keys.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
    }

    /// A packet the guest sent (its payload already read).
    pub fn handle_guest(&mut self, h: Header, payload: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.kind != TYPE_STREAM {
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            self.remove(key);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                OP_REQUEST => self.connect_to_host(key, h),
                OP_RST => {}
                _ => self.push_control(key, OP_RST, 0),
            }
            return;
        };
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match (h.op, conn.state) {
            (OP_RESPONSE, State::LocalInit) => {
                conn.state = State::Established;
                conn.deadline = None;
                let line = format!("OK {}\n", key.0);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                }
            }
            (OP_RW, State::Established) => {
                self.metrics
                    .tx_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                if conn.peer_done_sending || conn.send(payload) == Sent::Reset {
                    self.reset(key);
                } else if conn.credit_update_due() {
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.push_control(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, State::Established) => {
                if h.flags & SHUTDOWN_RCV != 0 {
                    conn.peer_done_receiving = true;
                }
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_done_sending = true;
                    if conn.flush() == Sent::Reset {
                        self.reset(key);
                        return;
                    }
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    // The guest closed. Acknowledge with a reset, once what
                    // it sent has reached the host.
                    if conn.pending.is_empty() {
                        self.reset(key);
                    } else {
                        conn.reset_when_flushed = true;
                        conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    }
                }
            }
            (OP_RST, _) => {
                self.metrics.guest_resets.fetch_add(1, Ordering::Relaxed);
                self.remove(key);
            }
            // A second REQUEST, a RESPONSE out of turn, data or a shutdown
            // before the handshake ended.
            _ => self.reset(key),
        }
    }

    /// The guest connects to the host: pass it to `<uds_path>_<port>`.
    fn connect_to_host(&mut self, key: Key, h: Header) {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = (self.conns.len() + self.awaiting.len() < MAX_CONNECTIONS)
            .then(|| connect_nonblocking(&path))
            .and_then(Result::ok);
        let Some(stream) = stream else {
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
            self.push_control(key, OP_RST, 0);
            return;
        };
        let mut conn = Connection::new(stream, State::Established, key.0, key.1);
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        self.insert(conn);
        self.push_control(key, OP_RESPONSE, 0);
    }

    /// Accepts the host connections waiting on the listener, at most
    /// [`MAX_ACCEPTS`] per call: the listener stays readable, so a flood
    /// is taken in turns with the other devices.
    pub fn accept(&mut self) {
        for _ in 0..MAX_ACCEPTS {
            let fd = match socket::accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(fd) => fd,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(Errno::EAGAIN) => return,
                // Out of descriptors or memory: the listener stays readable,
                // so stop watching it until a socket is closed.
                Err(_) => {
                    self.accept_paused = true;
                    return;
                }
            };
            // SAFETY: accept4 just returned this descriptor; nothing else
            // owns it.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            if self.conns.len() + self.awaiting.len() >= MAX_CONNECTIONS {
                self.metrics.resets.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.awaiting
                .insert(fd, (stream, Vec::new(), Instant::now() + CONNECT_TIMEOUT));
        }
    }

    /// Reads a waiting host socket's CONNECT line; once it is complete,
    /// asks the guest to accept the connection.
    /// `guest_ready`: whether the guest's driver is up and working (the
    /// device is active and needs no reset); until it is, host connections
    /// are refused rather than queued for it.
    pub fn read_connect_line(&mut self, fd: RawFd, guest_ready: bool) {
        let Some((stream, line, _)) = self.awaiting.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(line),
                Ok(1) if line.len() < MAX_LINE => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // End of stream, an overlong line, an error.
                _ => break None,
            }
        };
        let Some((stream, _, _)) = self.awaiting.remove(&fd) else {
            return;
        };
        // A bad line, a guest whose driver is not up, or one that has not
        // taken the packets already waiting for it: refused.
        let Some(port) = port.filter(|_| guest_ready && !self.control_full()) else {
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
            self.released.push(stream);
            return;
        };
        let local = self.next_free_port(port);
        let mut conn = Connection::new(stream, State::LocalInit, local, port);
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.insert(conn);
        self.push_control((local, port), OP_REQUEST, 0);
    }

    fn next_free_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    /// The host socket of `key` reached end of stream: the guest hears
    /// that the host will send nothing more (it may still receive, for a
    /// host that only shut its write side). A read error resets instead.
    pub fn host_closed(&mut self, key: Key, failed: bool) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.readable = false;
        if failed || c.state == State::LocalInit {
            self.reset(key);
            return;
        }
        c.host_eof = true;
        self.push_control(key, OP_SHUTDOWN, SHUTDOWN_SEND);
    }

    /// Gives up on handshakes and closes that passed their deadline, and
    /// lets a paused listener try accepting again.
    pub fn expire(&mut self, now: Instant) {
        // Descriptors may have been freed elsewhere in the process, not
        // only by closing one of ours: retry on every tick.
        self.accept_paused = false;
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.reset(key);
        }
        let late: Vec<RawFd> = self
            .awaiting
            .iter()
            .filter(|(_, (_, _, d))| *d <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some((s, _, _)) = self.awaiting.remove(&fd) {
                self.released.push(s);
            }
        }
    }

    /// Whether anything has a deadline, or accepting is paused (the
    /// device's timer runs only then).
    pub fn has_deadlines(&self) -> bool {
        self.accept_paused
            || !self.awaiting.is_empty()
            || self.conns.values().any(|c| c.deadline.is_some())
    }

    /// Drops every connection (device reset).
    pub fn clear(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        let waiting: Vec<RawFd> = self.awaiting.keys().copied().collect();
        for fd in waiting {
            if let Some((s, _, _)) = self.awaiting.remove(&fd) {
                self.released.push(s);
            }
        }
        self.control.clear();
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port: u32 = text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()?;
    // -1 is VMADDR_PORT_ANY, not a port.
    (port != u32::MAX).then_some(port)
}

/// A non-blocking connect: a listener whose backlog is full refuses at
/// once instead of stalling the device loop.
fn connect_nonblocking(path: &std::ffi::OsStr) -> std::io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(Path::new(path))?)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967295"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
