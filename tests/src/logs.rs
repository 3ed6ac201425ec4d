//! A workload's log stream, read the way tests need it: what it printed so
//! far, or followed until a marker shows (bounded in time).

use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Lines `id` printed so far, each followed by a newline.
pub async fn text(c: &mut RuntimeClient<Channel>, id: &str) -> String {
    read(c, id, false, None, Duration::from_secs(30)).await.0
}

/// Follows `id`'s output until a line contains `marker`, for `timeout` at
/// most; what was read, and whether the marker came.
pub async fn until(
    c: &mut RuntimeClient<Channel>,
    id: &str,
    marker: &str,
    timeout: Duration,
) -> (String, bool) {
    read(c, id, true, Some(marker), timeout).await
}

async fn read(
    c: &mut RuntimeClient<Channel>,
    id: &str,
    follow: bool,
    marker: Option<&str>,
    timeout: Duration,
) -> (String, bool) {
    let mut logs = c
        .logs(pb::LogsRequest {
            id: id.into(),
            follow,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("logs of {id}: {}", e.message()))
        .into_inner();
    let mut text = String::new();
    let reading = async {
        while let Some(Ok(line)) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&line.line));
            text.push('\n');
            if marker.is_some_and(|m| text.contains(m)) {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(false);
    (text, found)
}
