//! Netlink work inside another network namespace.
//!
//! A netlink socket acts on the namespace it was opened in, and `setns`
//! moves only the calling thread. So the work runs on a dedicated std
//! thread that joins the target namespace, opens its own connection on a
//! current-thread tokio runtime, and ends with the work: no tokio worker
//! thread ever changes namespace.

use std::future::Future;
use std::os::fd::{BorrowedFd, OwnedFd};

use rtnetlink::Handle;

use super::{Conn, NetError};

/// Runs `work` with a netlink handle opened inside the network namespace
/// `netns` (a `/proc/<pid>/ns/net` fd or a pidfd), on a thread of its own.
/// The caller awaits the result without blocking its runtime.
pub(super) async fn run_in<T, F, Fut>(netns: OwnedFd, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>> + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("auraed-netns".into())
        .spawn(move || {
            let _ = tx.send(enter_and_run(netns, work));
        })
        .map_err(|source| NetError::Netns {
            op: "spawning a thread",
            source,
        })?;
    // The sender is dropped without a value only if the thread panicked.
    rx.await.map_err(|_| NetError::NetnsThreadPanicked)?
}

fn enter_and_run<T, F, Fut>(netns: OwnedFd, work: F) -> Result<T, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        NetError::Netns {
            op: "setns",
            source: e.into(),
        }
    })?;
    drop(netns);
    with_handle_here(work)
}

/// Runs `work` with a netlink handle of the calling thread's network
/// namespace, on a current-thread runtime of its own (the thread is one
/// that moved to another namespace, and no tokio worker).
pub(super) fn with_handle_here<T, F, Fut>(work: F) -> Result<T, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetError::Netns {
            op: "starting a tokio runtime",
            source,
        })?;
    rt.block_on(async {
        let conn = Conn::open()?;
        work(conn.handle.clone()).await
    })
}

/// A network namespace file (nsfs) for `netns`, which may be a pidfd: the
/// kernel takes a pidfd in `setns(2)` but not in `IFLA_NET_NS_FD`. A
/// short-lived thread joins the namespace and opens
/// `/proc/thread-self/ns/net`; an fd that is neither fails here, before
/// anything is created.
pub(super) async fn ns_file(netns: BorrowedFd<'_>) -> Result<OwnedFd, NetError> {
    on_a_thread_in(netns, || {
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|source| NetError::Netns {
                op: "opening /proc/thread-self/ns/net",
                source,
            })
    })
    .await
}

/// See [`super::connect_in`]: a short-lived thread joins the namespace and
/// connects; the connected socket belongs to that namespace for good.
pub(super) async fn connect_in(
    netns: BorrowedFd<'_>,
    port: u16,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream, NetError> {
    on_a_thread_in(netns, move || {
        let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&v4, timeout)
            .or_else(|e4| std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4))
            .map_err(|source| NetError::ConnectIn { port, source })
    })
    .await
}

/// Runs blocking `work` on a short-lived thread that joined the network
/// namespace `netns` (a pidfd or an nsfs file) first; the caller awaits it
/// without blocking its runtime.
async fn on_a_thread_in<T, F>(netns: BorrowedFd<'_>, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let fd = netns
        .try_clone_to_owned()
        .map_err(|source| NetError::Netns {
            op: "duplicating the namespace fd",
            source,
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("auraed-netns".into())
        .spawn(move || {
            let r = nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Netns {
                    op: "setns",
                    source: e.into(),
                })
                .and_then(|()| work());
            let _ = tx.send(r);
        })
        .map_err(|source| NetError::Netns {
            op: "spawning a thread",
            source,
        })?;
    // The sender is dropped without a value only if the thread panicked.
    rx.await.map_err(|_| NetError::NetnsThreadPanicked)?
}
