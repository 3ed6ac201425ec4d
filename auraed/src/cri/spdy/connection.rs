//! A SPDY/3.1 server connection over an upgraded HTTP/1.1 connection: the
//! client opens streams (odd IDs), each accepted at once with a SYN_REPLY,
//! and handed to the caller with its headers, its incoming data and a
//! writer. One task reads frames, one writes them; the header compression
//! contexts live in each. What the client sends is held until read up to a
//! byte budget per connection; while it is spent the reader reads ahead (up
//! to a bound) to watch for the client's end, so a session whose process
//! reads nothing still sees its client go (unless the client filled the
//! read-ahead too: then its end is seen once the budget frees).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::frame::{self, Deflater, Frame, Inflater, SpdyError};
use super::stream::{Chunk, Inbound, Stream, StreamWriter};

/// The most streams open at once on one connection.
const MAX_STREAMS: usize = 256;
/// The most bytes the client may have sent that the caller has not read
/// yet, each chunk counted with [`CHUNK_COST`] more for its keeping.
const BUDGET: usize = 8 << 20;
const CHUNK_COST: usize = 64;
/// The most bytes read ahead (to see the client's end) while the budget is
/// spent.
const READ_AHEAD: usize = 2 << 20;
/// How long a closing connection reads on for the client's end.
const DRAIN: Duration = Duration::from_secs(5);

/// A running connection. Dropping it stops serving the client's frames;
/// the writer ends (with a GOAWAY) once every [`StreamWriter`] is gone too,
/// and the reader then reads on (discarding) until the client closes, for
/// a few seconds at most: a socket closed with unread bytes would be reset,
/// and the client could lose what it has not read yet.
pub struct Connection {
    /// Streams as the client opens them; ends with the connection.
    pub incoming: mpsc::Receiver<Stream>,
    closing: Option<oneshot::Sender<()>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(tx) = self.closing.take() {
            let _ = tx.send(());
        }
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
    let (closing, closed) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = read_frames(rd, out_tx, in_tx, closed).await {
            tracing::debug!("{what}: {}", crate::error::chain(&e));
        }
    });
    Connection {
        incoming,
        closing: Some(closing),
    }
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

async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    out: mpsc::Sender<Frame>,
    incoming: mpsc::Sender<Stream>,
    closing: oneshot::Receiver<()>,
) -> Result<(), ConnError> {
    let mut buf = BytesMut::with_capacity(64 << 10);
    tokio::select! {
        served = serve_frames(&mut rd, &mut buf, out, incoming) => return served,
        _ = closing => {}
    }
    // Our side closes: the frames' senders are gone with `serve_frames`,
    // so the writer flushes, says GOAWAY and shuts its half down.
    let _ = tokio::time::timeout(DRAIN, async {
        let mut sink = vec![0u8; 16 << 10];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

/// Reads more of the client's bytes into `buf`; false at its end.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Result<bool, ConnError> {
    Ok(rd.read_buf(buf).await.map_err(ConnError::Read)? > 0)
}

async fn serve_frames<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    out: mpsc::Sender<Frame>,
    incoming: mpsc::Sender<Stream>,
) -> Result<(), ConnError> {
    let mut inflater = Inflater::default();
    let budget = Arc::new(Semaphore::new(BUDGET));
    let mut open: HashMap<u32, mpsc::UnboundedSender<Chunk>> = HashMap::new();
    let mut last_id = 0;
    loop {
        let Some((a, b, payload)) = frame::split_frame(buf)? else {
            if !fill(rd, buf).await? {
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
                let (tx, inbound) = mpsc::unbounded_channel();
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
                    inbound: Inbound(inbound),
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
                if !data.is_empty() && open.contains_key(&stream_id) {
                    // Held against the budget; while it is spent, the
                    // client's end is still noticed.
                    let cost = (data.len() + CHUNK_COST).min(BUDGET) as u32;
                    let permit = loop {
                        tokio::select! {
                            p = budget.clone().acquire_many_owned(cost) => match p {
                                Ok(p) => break p,
                                Err(_) => return Ok(()),
                            },
                            more = fill(rd, buf), if buf.len() < READ_AHEAD => {
                                if !more? {
                                    return Ok(());
                                }
                            }
                        }
                    };
                    let gone = open
                        .get(&stream_id)
                        .is_some_and(|tx| tx.send((data, permit)).is_err());
                    if gone {
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
