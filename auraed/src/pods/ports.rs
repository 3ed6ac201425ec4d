//! A pod's host ports: auraed listens on each and relays every connection
//! to the pod's port at its instance's address. A userspace relay, not a
//! DNAT rule: nothing is left in the host's firewall if auraed dies, and
//! the relay goes with the pod.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;

/// Connections relayed at once per host port; more wait in the listen
/// backlog until one ends.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections relayed at once over every pod's ports (each costs auraed
/// two file descriptors), so that outside clients can't use up auraed's.
pub const MAX_CONNECTIONS_IN_ALL: usize = 1024;

/// The budget all relays share.
fn all_relays() -> Arc<tokio::sync::Semaphore> {
    static ALL: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_IN_ALL)))
        .clone()
}

/// How long connecting to the pod may take before the client's connection
/// is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes host port `port` on every address (IPv6 and IPv4): refused with
/// ALREADY_EXISTS, naming `field`, if something else holds it.
pub fn bind(field: &str, port: u16) -> Result<std::net::TcpListener, ApiError> {
    match std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ApiError::AlreadyExists(
            format!("{field}: port {port} is already taken on this host"),
        )),
        Err(e) => Err(ApiError::io(
            format!("{field}: listening on port {port}"),
            e,
        )),
    }
}

/// A host port relayed to a pod. Dropping it closes the port and ends
/// every relayed connection.
pub struct Forward {
    pub host_port: u16,
    pub to: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Closes the port and ends its relays; once this returns, the port is
    /// free.
    pub async fn close(mut self) {
        self.task.abort();
        // The task (and its listener) is dropped once it has ended.
        let _cancelled = (&mut self.task).await;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays what `listener` accepts to `to`.
pub fn start(listener: std::net::TcpListener, to: SocketAddr) -> Result<Forward, ApiError> {
    let host_port = listener
        .local_addr()
        .map_err(|e| ApiError::io("reading a pod's host port", e))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(|e| ApiError::io("setting a pod's host port non-blocking", e))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| ApiError::io("registering a pod's host port", e))?;
    let task = tokio::spawn(relay_all(listener, to));
    Ok(Forward {
        host_port,
        to,
        task,
    })
}

/// Accepts and relays, at most [`MAX_CONNECTIONS`] at once. The relays
/// live in a set this task owns, so aborting it ends them all.
async fn relay_all(listener: tokio::net::TcpListener, to: SocketAddr) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let everyone = all_relays();
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok(shared) = everyone.clone().acquire_owned().await else {
            return;
        };
        let client = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished relays while waiting.
            Some(_) = relays.join_next(), if !relays.is_empty() => continue,
        };
        match client {
            Ok((client, _)) => {
                relays.spawn(async move {
                    relay(client, to).await;
                    drop((slot, shared));
                });
            }
            Err(e) => {
                tracing::warn!("pod port relay to {to}: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn relay(mut client: tokio::net::TcpStream, to: SocketAddr) {
    let pod = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await
    {
        Ok(Ok(pod)) => pod,
        Ok(Err(e)) => {
            tracing::debug!("pod port relay: connecting to {to}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("pod port relay: {to} did not answer within {CONNECT_TIMEOUT:?}");
            return;
        }
    };
    let mut pod = pod;
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut pod).await {
        tracing::debug!("pod port relay to {to}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_a_dropped_forward_closes_the_port() {
        let upstream = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let to = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let listener = bind("ports[0].host_port", 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let forward = start(listener, to).unwrap();
        // IPv4 reaches the dual-stack port too.
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"HELLO");

        // Taken while the forward holds it.
        let err = bind("ports[1].host_port", port).unwrap_err();
        assert!(
            matches!(err, ApiError::AlreadyExists(ref m)
            if m.starts_with("ports[1].host_port: port ")),
            "{err}"
        );
        forward.close().await;
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
    }
}
