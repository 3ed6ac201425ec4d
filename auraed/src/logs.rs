//! Captured output of a workload: a ring buffer bounded in bytes, plus a
//! broadcast to any number of followers.
//!
//! Subscribing takes the history snapshot and the live receiver under one
//! lock, so a follower sees every retained line exactly once, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// Lines longer than this are split.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines queued per follower before it counts as lagging.
const FOLLOWER_QUEUE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug)]
pub struct LogLine {
    pub seq: u64,
    pub stream: Stream,
    pub time: SystemTime,
    pub data: Vec<u8>,
    /// It had no newline (cut at [`MAX_LINE`], or the output's end).
    pub partial: bool,
}

struct Inner {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    next_seq: u64,
    tx: Option<broadcast::Sender<Arc<LogLine>>>,
}

pub struct LogBuffer {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

/// What a new reader gets: the retained history, and (unless the workload
/// has finished) a live receiver for what follows.
pub struct Subscription {
    pub history: Vec<Arc<LogLine>>,
    /// Sequence number of the oldest line still retained; lines before it
    /// were evicted.
    pub first_seq: u64,
    pub live: Option<broadcast::Receiver<Arc<LogLine>>>,
}

impl LogBuffer {
    pub fn new(max_bytes: usize) -> Self {
        let (tx, _) = broadcast::channel(FOLLOWER_QUEUE);
        Self {
            max_bytes,
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
                tx: Some(tx),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A whole line, without its newline.
    pub fn push(&self, stream: Stream, data: Vec<u8>) {
        self.push_line(stream, data, false)
    }

    /// Bytes that didn't end with a newline.
    pub fn push_partial(&self, stream: Stream, data: Vec<u8>) {
        self.push_line(stream, data, true)
    }

    fn push_line(&self, stream: Stream, data: Vec<u8>, partial: bool) {
        let mut inner = self.lock();
        let line = Arc::new(LogLine {
            seq: inner.next_seq,
            stream,
            time: SystemTime::now(),
            data,
            partial,
        });
        inner.next_seq += 1;
        inner.bytes += line.data.len();
        inner.lines.push_back(line.clone());
        while inner.bytes > self.max_bytes {
            match inner.lines.pop_front() {
                Some(old) => inner.bytes -= old.data.len(),
                None => break,
            }
        }
        if let Some(tx) = &inner.tx {
            let _ = tx.send(line);
        }
    }

    /// Marks the output complete: followers end after the last line.
    pub fn close(&self) {
        self.lock().tx = None;
    }

    pub fn subscribe(&self, follow: bool) -> Subscription {
        let inner = self.lock();
        let first_seq = inner.lines.front().map(|l| l.seq).unwrap_or(inner.next_seq);
        Subscription {
            history: inner.lines.iter().cloned().collect(),
            first_seq,
            live: if follow {
                inner.tx.as_ref().map(|tx| tx.subscribe())
            } else {
                None
            },
        }
    }
}

/// When what a process wrote of a line without its newline goes into
/// the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// At its end of output (or when the line is too long).
    AtEnd,
    /// After each read: an interactive process (a terminal, or one with
    /// stdin) shows its prompt at once.
    EachRead,
}

/// Reads `reader` into `buffer` line by line until EOF.
pub async fn capture<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    buffer: Arc<LogBuffer>,
    partial: Partial,
) {
    let mut lines = crate::log_files::Lines::new(stream, buffer);
    let mut chunk = vec![0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                lines.feed(&chunk[..n]);
                if partial == Partial::EachRead {
                    lines.flush();
                }
            }
        }
    }
    lines.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_lines_beyond_the_byte_bound() {
        let buf = LogBuffer::new(10);
        for i in 0..5u8 {
            buf.push(Stream::Stdout, vec![b'a' + i; 4]);
        }
        let sub = buf.subscribe(false);
        let seqs: Vec<u64> = sub.history.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(sub.first_seq, 3);
        assert!(sub.live.is_none());
    }

    #[tokio::test]
    async fn followers_get_history_then_live_lines_then_end() {
        let buf = Arc::new(LogBuffer::new(1024));
        buf.push(Stream::Stdout, b"one".to_vec());
        let mut sub = buf.subscribe(true);
        buf.push(Stream::Stderr, b"two".to_vec());
        buf.close();
        assert_eq!(sub.history.len(), 1);
        let live = sub.live.as_mut().expect("live receiver");
        let next = live.recv().await.expect("second line");
        assert_eq!(next.data, b"two");
        assert_eq!(next.stream, Stream::Stderr);
        assert!(live.recv().await.is_err(), "closed buffer ends followers");
        assert!(buf.subscribe(true).live.is_none());
    }

    #[tokio::test]
    async fn capture_splits_lines_and_keeps_a_partial_tail() {
        let buf = Arc::new(LogBuffer::new(1 << 20));
        let mut input = b"a\nbb\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 3]);
        capture(&input[..], Stream::Stdout, buf.clone(), Partial::AtEnd).await;
        let lines: Vec<usize> = buf
            .subscribe(false)
            .history
            .iter()
            .map(|l| l.data.len())
            .collect();
        assert_eq!(lines, vec![1, 2, MAX_LINE, 3]);
        // A line cut at the maximum, and the tail without a newline, are
        // partial.
        let partial: Vec<bool> = buf
            .subscribe(false)
            .history
            .iter()
            .map(|l| l.partial)
            .collect();
        assert_eq!(partial, vec![false, false, true, true]);
    }
}
