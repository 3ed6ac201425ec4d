//! A SPDY/3.1 server connection over an upgraded HTTP/1.1 connection: the
//! client opens streams (odd IDs), each accepted at once with a SYN_REPLY,
//! and handed to the caller with its headers, its incoming data and a
//! writer. One task reads frames, one writes them; the header compression
//! contexts live in each.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, Deflater, Frame, Headers, Inflater, SpdyError};

/// The most streams open at once on one connection.
const MAX_STREAMS: usize = 256;
/// Chunks of a stream's incoming data held before the reader waits.
const INBOUND_CHUNKS: usize = 16;

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    inbound: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
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
    pub fn split(self) -> (mpsc::Receiver<Bytes>, StreamWriter) {
        (self.inbound, self.writer)
    }
}

/// The way to send on one stream. Sends fail only once the connection is
/// gone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
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

/// A running connection. Dropping it stops reading; the writer ends (with
/// a GOAWAY) once every [`StreamWriter`] is gone too.
pub struct Connection {
    /// Streams as the client opens them; ends with the connection.
    pub incoming: mpsc::Receiver<Stream>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Starts serving SPDY on `io` (the client speaks first).
pub fn start<IO>(io: IO, what: String) -> Connection
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
    let (in_tx, incoming) = mpsc::channel(16);
    let writer_what = what.clone();
    tokio::spawn(async move {
        if let Err(e) = write_frames(wr, out_rx).await {
            tracing::debug!("{writer_what}: {}", crate::error::chain(&e));
        }
    });
    let reader = tokio::spawn(async move {
        if let Err(e) = read_frames(rd, out_tx, in_tx).await {
            tracing::debug!("{what}: {}", crate::error::chain(&e));
        }
    });
    Connection { incoming, reader }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("a frame from the client")]
    Frame(#[from] SpdyError),
    #[error("reading from the client")]
    Read(#[source] std::io::Error),
    #[error("writing to the client")]
    Write(#[source] std::io::Error),
}

async fn write_frames<W: AsyncWrite>(
    wr: W,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<(), ConnError> {
    tokio::pin!(wr);
    let mut deflater = Deflater::default();
    let mut buf = BytesMut::new();
    let mut last_good = 0;
    while let Some(f) = frames.recv().await {
        if let Frame::SynReply { stream_id, .. } = f {
            last_good = stream_id;
        }
        frame::encode(&f, &mut deflater, &mut buf)?;
        // Whatever else is queued goes in the same write.
        while buf.len() < 64 << 10 {
            match frames.try_recv() {
                Ok(f) => frame::encode(&f, &mut deflater, &mut buf)?,
                Err(_) => break,
            }
        }
        wr.write_all(&buf).await.map_err(ConnError::Write)?;
        buf.clear();
    }
    frame::encode(
        &Frame::GoAway {
            last_good,
            status: 0,
        },
        &mut deflater,
        &mut buf,
    )?;
    wr.write_all(&buf).await.map_err(ConnError::Write)?;
    wr.shutdown().await.map_err(ConnError::Write)
}

async fn read_frames<R: AsyncRead>(
    rd: R,
    out: mpsc::Sender<Frame>,
    incoming: mpsc::Sender<Stream>,
) -> Result<(), ConnError> {
    tokio::pin!(rd);
    let mut inflater = Inflater::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0;
    loop {
        let Some((a, b, payload)) = frame::split_frame(&mut buf)? else {
            if rd.read_buf(&mut buf).await.map_err(ConnError::Read)? == 0 {
                return Ok(());
            }
            continue;
        };
        let refuse = |stream_id, status| Frame::RstStream { stream_id, status };
        match frame::decode(a, b, payload, &mut inflater)? {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= last_id {
                    let _ = out.send(refuse(stream_id, frame::PROTOCOL_ERROR)).await;
                    continue;
                }
                last_id = stream_id;
                if open.len() >= MAX_STREAMS {
                    let _ = out.send(refuse(stream_id, frame::REFUSED_STREAM)).await;
                    continue;
                }
                let (tx, inbound) = mpsc::channel(INBOUND_CHUNKS);
                if !fin {
                    open.insert(stream_id, tx);
                }
                let reply = Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Vec::new(),
                };
                if out.send(reply).await.is_err() {
                    return Ok(());
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    inbound,
                    writer: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                    },
                };
                if incoming.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(tx) = open.get(&stream_id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        // Nobody reads it any more: drop what comes.
                        open.remove(&stream_id);
                    }
                }
                if fin {
                    open.remove(&stream_id);
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    open.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::Ping { id } => {
                if out.send(Frame::Ping { id }).await.is_err() {
                    return Ok(());
                }
            }
            Frame::GoAway { .. } => return Ok(()),
            Frame::SynReply { .. } | Frame::Ignored { .. } => {}
        }
    }
}
