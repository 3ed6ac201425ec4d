//! TLS handshakes have a deadline and a bound: a client that connects and
//! stalls is dropped, and stalled clients beyond the bound wait in the
//! kernel's backlog instead of holding auraed's file descriptors.

use std::time::{Duration, Instant};

use aurae_proto::runtime as pb;
use aurae_tests::{Daemon, DaemonOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A client's end of a stalled connection, Unix or TCP.
trait Conn: tokio::io::AsyncRead + Unpin + Send {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}
impl Conn for UnixStream {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        UnixStream::try_read(self, buf)
    }
}
impl Conn for TcpStream {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
}

/// The start of a ClientHello: a TLS record header announcing 512 bytes,
/// and a handshake header, with the rest never sent.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

async fn stalled(d: &Daemon, partial_hello: bool) -> UnixStream {
    let mut s = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&d.socket))
        .await
        .expect("connect in time")
        .expect("connect");
    if partial_hello {
        s.write_all(PARTIAL_CLIENT_HELLO).await.expect("write");
    }
    s
}

/// The number of file descriptors auraed has open.
fn fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("auraed's /proc/<pid>/fd")
        .count()
}

/// Waits (at most `within`) until auraed has at least `n` descriptors open.
async fn wait_for_fds(d: &Daemon, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let now = fds(d);
        if now >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// auraed's descriptor count once it has stayed the same for 250 ms (the
/// readiness check's connection closes a moment after the daemon is up),
/// or after 5 s.
async fn settled_fds(d: &Daemon) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut same) = (fds(d), 0);
    while same < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = fds(d);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

async fn list_works(d: &Daemon, within: Duration) {
    tokio::time::timeout(within, async {
        d.client().await.list(pb::ListRequest {}).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {within:?}; log:\n{}", d.log_text()))
    .expect("list");
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_at_the_deadline_while_others_are_served() {
    let deadline = Duration::from_secs(3);
    let d = Daemon::start_with(DaemonOptions {
        handshake_timeout_ms: Some(deadline.as_millis() as u64),
        tcp: true,
        ..Default::default()
    })
    .await;
    let opened = Instant::now();
    let mut conns = Vec::new();
    for i in 0..8 {
        conns.push(Box::new(stalled(&d, i % 2 == 1).await) as Box<dyn Conn>);
    }
    // TCP has the same acceptor.
    let tcp = d.tcp.clone().expect("tcp");
    for partial_hello in [false, true] {
        let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&tcp))
            .await
            .expect("connect in time")
            .expect("connect");
        if partial_hello {
            s.write_all(PARTIAL_CLIENT_HELLO).await.expect("write");
        }
        conns.push(Box::new(s));
    }
    // A real client is served while they stall.
    list_works(&d, Duration::from_secs(2)).await;
    assert!(
        opened.elapsed() < deadline,
        "the real client took until the stalled ones' deadline"
    );
    let mut buf = [0u8; 64];
    for c in &conns {
        match c.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a stalled connection was dropped before the deadline: {other:?}"),
        }
    }
    // Each is dropped at the deadline: EOF (or a reset), not sooner, and
    // within a few seconds' slack after.
    let slack = Duration::from_secs(3);
    for mut c in conns {
        let left = (deadline + slack).saturating_sub(opened.elapsed());
        let read = tokio::time::timeout(left, c.read(&mut buf))
            .await
            .expect("a stalled connection was still open past the deadline and slack");
        match read {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected EOF from a dropped handshake, got {other:?}"),
        }
        assert!(
            opened.elapsed() >= deadline - Duration::from_millis(500),
            "dropped after {:?}, before the {deadline:?} deadline",
            opened.elapsed()
        );
    }
    list_works(&d, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connections_beyond_the_handshake_bound_wait_unaccepted() {
    let bound = 4;
    let d = Daemon::start_with(DaemonOptions {
        // Long enough that nothing times out during the test.
        handshake_timeout_ms: Some(60_000),
        max_handshakes: Some(bound),
        ..Default::default()
    })
    .await;
    let base = settled_fds(&d).await;
    let mut conns = Vec::new();
    for _ in 0..bound {
        conns.push(stalled(&d, false).await);
    }
    let held = wait_for_fds(&d, base + bound, Duration::from_secs(5)).await;
    assert!(
        held >= base + bound,
        "auraed did not accept the first {bound} connections: {base} fds before, {held} after"
    );
    // With every place taken, a real client is not served (it waits
    // unaccepted too).
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        d.client().await.list(pb::ListRequest {}).await
    })
    .await;
    assert!(
        waited.is_err(),
        "a client was served with {bound} handshakes stalled: {waited:?}"
    );
    for i in 0..50 {
        conns.push(stalled(&d, i % 2 == 1).await);
    }
    // Without the bound, auraed accepts these at once; give it the time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = fds(&d);
    eprintln!("auraed fds: {base} before, {held} with {bound} stalled, {after} with 54 stalled");
    let slack = 4;
    assert!(
        after <= base + bound + slack,
        "auraed holds {after} fds with 54 stalled connections open ({base} before; bound {bound})"
    );
    // Once they are gone, the queued ones are accepted, read EOF and are
    // dropped, and a real client is served again.
    drop(conns);
    list_works(&d, Duration::from_secs(10)).await;
    let settled = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = fds(&d);
            if now <= base + slack || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        settled <= base + slack,
        "auraed still holds {settled} fds ({base} before)"
    );
}
