//! Blocking work (process creation, which waits for the child to exec, and
//! file system setup) on the critical path of a request.

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::error::ApiError;

/// Runs `f`, which blocks, from async code. On a multi-threaded runtime the
/// request's own thread runs it in place (`block_in_place`; the runtime
/// moves its other tasks to another thread), which saves handing the work
/// to a pool thread and waiting to be woken when it is done: on a lightly
/// loaded host each such wake-up costs more than the syscalls themselves.
/// Elsewhere it goes to the blocking pool.
pub async fn run<F, R>(what: &str, f: F) -> Result<R, ApiError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => Ok(tokio::task::block_in_place(f)),
        _ => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::Internal(format!("{what}: {e}"))),
    }
}
