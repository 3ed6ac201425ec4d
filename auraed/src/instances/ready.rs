//! Waiting for a new instance: its auraed serving, then healthy.

use std::time::Duration;

use super::console_tail;
use crate::error::ApiError;
use crate::executables::Executable;

/// Waits until the instance's auraed says it serves on TCP, then until it
/// answers health, within `timeout`. Fails early if `init` (its auraed, or
/// the VMM whose output is the guest's console: `process` says which)
/// exits; the error carries the console's tail.
pub(super) async fn wait_ready(
    init: &Executable,
    channel: &tonic::transport::Channel,
    timeout: Duration,
    name: &str,
    process: &str,
) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Not serving in time is a deadline; a guest that stopped before (a
    // configuration its guest-init refused, say) is not one to wait out.
    let late = |why: String| {
        ApiError::DeadlineExceeded(format!(
            "instance {name}: {why}; its console ends with:\n{}",
            console_tail(init, 20)
        ))
    };
    let failed = |why: String| {
        ApiError::FailedPrecondition(format!(
            "instance {name}: {why}; its console ends with:\n{}",
            console_tail(init, 20)
        ))
    };
    // The line the auraed library prints once its TCP listener is bound.
    let serving = |data: &[u8]| String::from_utf8_lossy(data).contains("serving on tcp:");
    let mut sub = init.logs.subscribe(true);
    let mut seen = sub.history.iter().any(|l| serving(&l.data));
    while !seen {
        let Some(live) = sub.live.as_mut() else {
            return Err(failed(format!("its {process} exited before serving")));
        };
        match tokio::time::timeout_at(deadline, live.recv()).await {
            Err(_) => return Err(late(format!("not serving within {timeout:?}"))),
            Ok(Ok(line)) => seen = serving(&line.data),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                return Err(failed(format!("its {process} exited before serving")))
            }
        }
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut last = String::new();
    // Bounded in count and time: the listener is bound already.
    for _ in 0..50 {
        let check = health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout_at(deadline, check).await {
            Err(_) => break,
            Ok(Ok(r)) if r.get_ref().status == 1 => return Ok(()),
            Ok(Ok(r)) => last = format!("health answered {}", r.get_ref().status),
            Ok(Err(status)) => last = format!("health failed: {}", status.message()),
        }
        if init.exit_info().is_some() {
            return Err(failed(format!("its {process} exited")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(late(format!(
        "no healthy answer within {timeout:?} ({last})"
    )))
}
