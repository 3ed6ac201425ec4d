//! Container logs in the CRI format the kubelet reads: one
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>` line per line of
//! output, in the file the container's config names, reopened on
//! `ReopenContainerLog`.

use std::path::PathBuf;

use aurae_proto::runtime as pb;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;

/// A request to reopen the log file, answered once it is open.
pub type Reopen = mpsc::Sender<oneshot::Sender<std::io::Result<()>>>;

/// An entry's time, in nanoseconds since the epoch.
fn nanos_of(entry: &pb::LogEntry) -> i128 {
    entry
        .time
        .as_ref()
        .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
        .unwrap_or(0)
}

/// The time of the last line of the log file at `path` (nanoseconds since
/// the epoch), if it has one: a follower taken up again after a restart
/// writes only what came after it.
pub fn last_time(path: &std::path::Path) -> Option<i128> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // A line is at most a log buffer's line (16 KiB) and its prefix.
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.trim_end_matches('\n').rsplit('\n').next()?;
    let stamp = line.split(' ').next()?;
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// One entry as a CRI log line.
pub fn format_line(entry: &pb::LogEntry) -> Vec<u8> {
    let stream = match pb::LogStream::try_from(entry.stream) {
        Ok(pb::LogStream::Stderr) => "stderr",
        _ => "stdout",
    };
    let nanos = nanos_of(entry);
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    // A partial line is "P"; the kubelet joins it to what follows.
    let tag = if entry.partial { 'P' } else { 'F' };
    let mut out = format!("{time} {stream} {tag} ").into_bytes();
    out.extend_from_slice(&entry.line);
    out.push(b'\n');
    out
}

/// Opens (creating it and its folder) the log file at `path`, to append.
pub async fn open(path: &PathBuf) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// Follows `executable_id`'s output in the instance into `file` (opened
/// from `path`, which the container was started with) until it ends (the
/// process exited), but the entries of `after` or earlier (see
/// [`last_time`]). Returns the reopen handle at once; the returned future
/// does the following.
pub fn follow(
    channel: tonic::transport::Channel,
    executable_id: String,
    path: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    after: Option<i128>,
) -> (Reopen, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<std::io::Result<()>>>(4);
    let task = async move {
        let mut client = pb::runtime_client::RuntimeClient::new(channel);
        let stream = client
            .logs(pb::LogsRequest {
                id: executable_id.clone(),
                follow: true,
                wait_for_start: true,
                new_only: false,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::warn!("logs of {executable_id}: {}", e.message());
                return;
            }
        };
        let mut file = file;
        loop {
            tokio::select! {
                entry = stream.next() => match entry {
                    Some(Ok(entry)) if after.is_some_and(|t| nanos_of(&entry) <= t) => {}
                    Some(Ok(entry)) => {
                        if let Some(f) = file.as_mut() {
                            if let Err(e) = f.write_all(&format_line(&entry)).await {
                                tracing::warn!("writing the log of {executable_id}: {e}");
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("logs of {executable_id}: {}", e.message());
                        break;
                    }
                    None => break,
                },
                Some(ack) = rx.recv() => {
                    let reopened = match &path {
                        Some(p) => open(p).await.map(|f| file = Some(f)),
                        None => Ok(()),
                    };
                    let _ = ack.send(reopened);
                }
            }
        }
        if let Some(mut f) = file {
            if let Err(e) = f.flush().await {
                tracing::warn!("flushing the log of {executable_id}: {e}");
            }
        }
    };
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_time_is_read_back_to_the_nanosecond() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        assert_eq!(last_time(&path), None, "no file");
        std::fs::write(&path, "").expect("write");
        assert_eq!(last_time(&path), None, "an empty file");
        let entry = |s: i64, n: i32| pb::LogEntry {
            time: Some(prost_types::Timestamp {
                seconds: s,
                nanos: n,
            }),
            line: b"x y z".to_vec(),
            ..Default::default()
        };
        let mut text = format_line(&entry(1_700_000_000, 5));
        text.extend(format_line(&entry(1_700_000_001, 123_456_789)));
        std::fs::write(&path, text).expect("write");
        assert_eq!(last_time(&path), Some(1_700_000_001_123_456_789));
    }

    #[test]
    fn a_line_is_written_as_the_kubelet_reads_it() {
        let line = format_line(&pb::LogEntry {
            seq: 1,
            stream: pb::LogStream::Stderr as i32,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            line: b"hello world".to_vec(),
            dropped_before: 0,
            partial: false,
        });
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2023-11-14T22:13:20.123456789Z stderr F hello world\n"
        );
        // A line without its newline is tagged P.
        let cut = format_line(&pb::LogEntry {
            partial: true,
            line: b"no newline".to_vec(),
            ..Default::default()
        });
        assert!(
            String::from_utf8(cut)
                .unwrap()
                .ends_with(" stdout P no newline\n"),
            "a partial line is tagged P"
        );
    }
}
