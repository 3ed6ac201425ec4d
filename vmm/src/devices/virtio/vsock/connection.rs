//! One stream connection between a guest port and a host Unix socket, with
//! virtio-vsock's credit-based flow control in both directions.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// The receive buffer the host side advertises to the guest: the guest may
/// have at most this many bytes in flight that the host has not yet
/// written to the Unix socket.
pub const BUF_ALLOC: u32 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    LocalInit,
    Established,
}

/// What a write of guest data to the host socket came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// All written or buffered.
    Ok,
    /// The guest sent more than the credit it was given, or the socket
    /// failed: the connection must be reset.
    Reset,
}

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    /// The host-side port (the guest's peer port).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// Guest bytes written to the host socket (our `fwd_cnt`).
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_told: u32,
    /// Guest bytes waiting for the host socket to take them.
    pub pending: Vec<u8>,
    /// The guest's receive buffer and what it has consumed of it.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest (our `rx_cnt`, the guest's `tx_cnt` of us).
    pub rx_cnt: u32,
    /// The host socket has data (or EOF) to read.
    pub readable: bool,
    /// The guest will send nothing more: shut the socket's write side once
    /// `pending` is flushed.
    pub peer_done_sending: bool,
    /// The guest will receive nothing more: stop reading the host socket.
    pub peer_done_receiving: bool,
    /// The host socket reached end of stream (the guest was told).
    pub host_eof: bool,
    /// The guest closed with data still pending: reset once it is flushed.
    pub reset_when_flushed: bool,
    /// When an unfinished handshake or close gives up.
    pub deadline: Option<std::time::Instant>,
    /// When the device last sent this connection's data to the guest (in
    /// its own delivery count).
    pub served_at: u64,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            pending: Vec::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            readable: false,
            peer_done_sending: false,
            peer_done_receiving: false,
            host_eof: false,
            reset_when_flushed: false,
            deadline: None,
            served_at: 0,
        }
    }

    /// Whether the host socket is still worth reading (for the guest).
    pub fn reads_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_done_receiving
    }

    /// Host data can go to the guest now.
    pub fn ready_for_guest(&self) -> bool {
        self.readable && self.reads_host() && self.peer_credit() > 0
    }

    /// Takes the guest's view of its receive buffer from any packet.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Writes guest data to the host socket, buffering what it can't take
    /// yet (within the credit the guest was given).
    pub fn send(&mut self, data: &[u8]) -> Sent {
        let buffered = u32::try_from(self.pending.len() + data.len()).unwrap_or(u32::MAX);
        if buffered > BUF_ALLOC {
            return Sent::Reset;
        }
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(data);
            return self.flush();
        }
        match write_some(&mut self.stream, data) {
            Ok(n) => {
                self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                self.pending.extend_from_slice(&data[n..]);
                Sent::Ok
            }
            Err(_) => Sent::Reset,
        }
    }

    /// Writes what is pending; shuts the write side once the guest is done
    /// and nothing is left.
    pub fn flush(&mut self) -> Sent {
        match write_some(&mut self.stream, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
                self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
            }
            Err(_) => return Sent::Reset,
        }
        if self.pending.is_empty() && self.peer_done_sending {
            // Tells the host peer no more is coming; a peer that is gone
            // already (ENOTCONN) needs no telling.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Sent::Ok
    }

    /// Whether the guest should hear of our `fwd_cnt`: once half the
    /// buffer was consumed since it last did.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= BUF_ALLOC / 2
    }

    /// Reads at most `max` bytes from the host socket into `buf`.
    /// `Ok(None)`: nothing there now; `Ok(Some(0))`: end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes as much of `data` as the (non-blocking) socket takes.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        (Connection::new(a, State::Established, 1024, 5000), b)
    }

    #[test]
    fn credit_is_what_the_guest_advertised_minus_what_is_in_flight() {
        let (mut c, _other) = pair();
        c.update_peer_credit(100, 0);
        assert_eq!(c.peer_credit(), 100);
        c.rx_cnt = 60;
        assert_eq!(c.peer_credit(), 40);
        c.update_peer_credit(100, 50);
        assert_eq!(c.peer_credit(), 90);
        // Counters wrap.
        c.rx_cnt = 10;
        c.update_peer_credit(100, u32::MAX - 9);
        assert_eq!(c.peer_credit(), 80);
    }

    #[test]
    fn guest_data_reaches_the_socket_and_counts_as_forwarded() {
        let (mut c, mut other) = pair();
        assert_eq!(c.send(b"hello"), Sent::Ok);
        assert_eq!(c.fwd_cnt, 5);
        let mut got = [0u8; 5];
        other.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn a_guest_that_overruns_its_credit_is_reset() {
        let (mut c, _other) = pair();
        // Nobody reads the other end: the socket buffer fills, then the
        // connection's own buffer, then the guest is over its credit.
        let chunk = vec![0u8; 64 << 10];
        let mut reset = false;
        for _ in 0..64 {
            if c.send(&chunk) == Sent::Reset {
                reset = true;
                break;
            }
        }
        assert!(reset);
        assert!(c.pending.len() as u32 <= BUF_ALLOC);
    }

    #[test]
    fn end_of_stream_and_nothing_yet_are_told_apart() {
        let (mut c, other) = pair();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).expect("read"), None);
        drop(other);
        assert_eq!(c.read(&mut buf).expect("read"), Some(0));
    }
}
