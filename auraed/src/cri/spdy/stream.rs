//! A stream of a SPDY connection as the caller sees it: its headers, its
//! incoming data (held against the connection's byte budget until read)
//! and a writer.

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::frame::{self, Frame, Headers};

/// A chunk of a stream's data with its share of the connection's budget.
pub(super) type Chunk = (Bytes, OwnedSemaphorePermit);

/// A stream's incoming data.
pub struct Inbound(pub(super) mpsc::UnboundedReceiver<Chunk>);

impl Inbound {
    /// The next chunk the client sent; `None` once it finished the stream
    /// (or reset it, or the connection ended). Reading it gives its bytes
    /// back to the connection's budget.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.0.recv().await.map(|(data, _budget)| data)
    }
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub(super) inbound: Inbound,
    pub(super) writer: StreamWriter,
}

impl Stream {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk the client sent; `None` once it finished the stream
    /// (or reset it, or the connection ended).
    #[cfg(test)]
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.inbound.recv().await
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Splits the stream into its incoming data and its writer.
    pub fn split(self) -> (Inbound, StreamWriter) {
        (self.inbound, self.writer)
    }
}

/// The way to send on one stream. Sends fail only once the connection is
/// gone.
#[derive(Clone)]
pub struct StreamWriter {
    pub(super) id: u32,
    pub(super) out: mpsc::Sender<Frame>,
}

/// The connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub struct Closed;

impl StreamWriter {
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        self.send(data, false).await
    }

    /// Ends this side of the stream.
    pub async fn finish(&self) -> Result<(), Closed> {
        self.send(Bytes::new(), true).await
    }

    /// Writes `data` and ends this side of the stream.
    pub async fn write_last(&self, data: Bytes) -> Result<(), Closed> {
        self.send(data, true).await
    }

    /// Resets the stream (both directions).
    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        self.out
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await
            .map_err(|_| Closed)
    }

    async fn send(&self, data: Bytes, fin: bool) -> Result<(), Closed> {
        // Chunks no larger than a frame may carry.
        let mut rest = data;
        loop {
            let chunk = rest.split_to(rest.len().min(frame::MAX_FRAME));
            let last = rest.is_empty();
            self.out
                .send(Frame::Data {
                    stream_id: self.id,
                    fin: fin && last,
                    data: chunk,
                })
                .await
                .map_err(|_| Closed)?;
            if last {
                return Ok(());
            }
        }
    }
}
