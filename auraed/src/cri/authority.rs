//! The CRI socket's HTTP/2 front. Go gRPC clients of the `crictl`/`critest`
//! generation dial a Unix socket with its path as the `:authority`, which
//! h2 (under tonic) refuses as malformed, resetting every stream with
//! PROTOCOL_ERROR (hyperium/h2#487). The kubelet sends `localhost` since
//! Kubernetes 1.26; older clients still matter to a node.
//!
//! This module sits between the socket and tonic. Client-to-server bytes go
//! through a [`Rewriter`]: every frame passes byte for byte except header
//! blocks (HEADERS and their CONTINUATIONs), which are HPACK-decoded with a
//! decoder that follows the client's encoder, given `localhost` for an
//! `:authority` that is not a URI authority, and encoded again with an
//! encoder that h2's decoder follows. Server-to-client bytes are copied.
//! Malformed input ends the connection, as h2 itself would.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size h2 accepts unless it says otherwise (it doesn't).
const MAX_FRAME: usize = 16_384;
/// The most one header block may hold here, encoded.
const MAX_BLOCK: usize = 64 << 10;
/// The most one header block may hold decoded (names, values and 32 bytes
/// per header, as HTTP/2 counts a header list), so that references to a
/// large table entry can't expand a small block without bound.
const MAX_HEADER_LIST: usize = 64 << 10;
/// The dynamic table size h2 advertises (its default); a client that asks
/// for more is refused.
const TABLE_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("not an HTTP/2 connection preface")]
    Preface,
    #[error("a malformed {0} frame")]
    Frame(&'static str),
    #[error("a header block of more than {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("a frame of stream {0} inside the header block of another")]
    Interleaved(u32),
    #[error("an undecodable header block: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
    #[error("a header list of more than {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge,
}

struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The client-to-server half of one connection.
pub struct Rewriter {
    preface_seen: usize,
    buf: Vec<u8>,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            preface_seen: 0,
            buf: Vec::new(),
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

/// Whether h2 takes `value` as an authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
}

impl Rewriter {
    /// Takes bytes from the client; appends what goes on to the server.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FrontError> {
        let mut input = input;
        if self.preface_seen < PREFACE.len() {
            let n = input.len().min(PREFACE.len() - self.preface_seen);
            if input[..n] != PREFACE[self.preface_seen..self.preface_seen + n] {
                return Err(FrontError::Preface);
            }
            out.extend_from_slice(&input[..n]);
            self.preface_seen += n;
            input = &input[n..];
        }
        self.buf.extend_from_slice(input);
        let mut at = 0;
        while self.buf.len() - at >= 9 {
            let head = &self.buf[at..at + 9];
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            if self.buf.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let frame = at..at + 9 + len;
            at += 9 + len;
            let payload = self.buf[frame.start + 9..frame.end].to_vec();
            match kind {
                HEADERS => self.headers(stream, flags, &payload, out)?,
                CONTINUATION => self.continuation(stream, flags, &payload, out)?,
                _ => {
                    if self.pending.is_some() {
                        return Err(FrontError::Interleaved(stream));
                    }
                    out.extend_from_slice(&self.buf[frame]);
                }
            }
        }
        self.buf.drain(..at);
        if self.buf.len() > MAX_BLOCK + 9 {
            return Err(FrontError::BlockTooLarge);
        }
        Ok(())
    }

    fn headers(
        &mut self,
        stream: u32,
        flags: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrontError> {
        if self.pending.is_some() {
            return Err(FrontError::Interleaved(stream));
        }
        let mut body = payload;
        if flags & PADDED != 0 {
            let (&pad, rest) = body.split_first().ok_or(FrontError::Frame("HEADERS"))?;
            let keep = rest
                .len()
                .checked_sub(pad as usize)
                .ok_or(FrontError::Frame("HEADERS"))?;
            body = &rest[..keep];
        }
        let priority = if flags & PRIORITY != 0 {
            let p: [u8; 5] = body
                .get(..5)
                .and_then(|p| p.try_into().ok())
                .ok_or(FrontError::Frame("HEADERS"))?;
            body = &body[5..];
            Some(p)
        } else {
            None
        };
        self.pending = Some(Pending {
            stream,
            flags,
            priority,
            block: body.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish(out)?;
        }
        Ok(())
    }

    fn continuation(
        &mut self,
        stream: u32,
        flags: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrontError> {
        let pending = self
            .pending
            .as_mut()
            .filter(|p| p.stream == stream)
            .ok_or(FrontError::Frame("CONTINUATION"))?;
        if pending.block.len() + payload.len() > MAX_BLOCK {
            return Err(FrontError::BlockTooLarge);
        }
        pending.block.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Re-encodes a whole header block, with a usable authority.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FrontError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        // Collected only up to the cap: past it nothing more is copied.
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&p.block, |n, v| {
                size = size.saturating_add(n.len() + v.len() + 32);
                if size <= MAX_HEADER_LIST {
                    headers.push((n.into_owned(), v.into_owned()));
                }
            })
            .map_err(FrontError::Hpack)?;
        if size > MAX_HEADER_LIST {
            return Err(FrontError::HeaderListTooLarge);
        }
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                *value = b"localhost".to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let prio: &[u8] = p.priority.as_ref().map(|p| &p[..]).unwrap_or(&[]);
        let first_room = MAX_FRAME - prio.len();
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = p.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        push_frame(out, HEADERS, flags, p.stream, &[prio, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            push_frame(out, CONTINUATION, flags, p.stream, &[chunk]);
            rest = tail;
        }
        Ok(())
    }
}

/// tonic's end of a fronted connection.
pub struct Fronted(DuplexStream);

impl tonic::transport::server::Connected for Fronted {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Fronted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Fronted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Puts the front between an accepted client and tonic: returns tonic's end,
/// and runs the copying until either side closes.
pub fn front(client: tokio::net::UnixStream) -> Fronted {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    tokio::spawn(async move {
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = tokio::io::split(ours);
        let upstream = async move {
            let mut rewriter = Rewriter::default();
            let mut buf = vec![0u8; 16 << 10];
            let mut out = Vec::new();
            loop {
                let n = match client_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                out.clear();
                if let Err(e) = rewriter.feed(&buf[..n], &mut out) {
                    tracing::debug!("CRI connection: {e}");
                    break;
                }
                if server_wr.write_all(&out).await.is_err() {
                    break;
                }
            }
            let _ = server_wr.shutdown().await;
        };
        let downstream = async move {
            let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        };
        tokio::join!(upstream, downstream);
    });
    Fronted(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `bytes` (after the preface): (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        assert!(bytes.is_empty());
        out
    }

    fn client_block(enc: &mut loona_hpack::Encoder<'static>, authority: &[u8]) -> Vec<u8> {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ])
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_the_rest_passes() {
        let mut client = loona_hpack::Encoder::new();
        let block = client_block(&mut client, b"/run/aurae/cri.sock");
        let mut input = PREFACE.to_vec();
        // SETTINGS, then HEADERS (padded, with priority) split over a
        // CONTINUATION, then DATA.
        push_frame(&mut input, 0x4, 0, 0, &[&[]]);
        let (a, b) = block.split_at(7);
        push_frame(
            &mut input,
            HEADERS,
            PADDED | PRIORITY,
            1,
            &[&[3], &[0, 0, 0, 0, 16], a, &[0; 3]],
        );
        push_frame(&mut input, CONTINUATION, END_HEADERS, 1, &[b]);
        push_frame(&mut input, 0x0, END_STREAM, 1, &[b"\0\0\0\0\x02hi"]);
        // The same again on stream 3: the dynamic tables must stay in step.
        let block = client_block(&mut client, b"/run/aurae/cri.sock");
        push_frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 3, &[&block]);

        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert!(out.starts_with(PREFACE));
        let got = frames(&out[PREFACE.len()..]);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!((got[0].0, got[0].3.len()), (0x4, 0));
        let mut server = loona_hpack::Decoder::new();
        let (kind, flags, stream, payload) = &got[1];
        assert_eq!(
            (*kind, *flags, *stream),
            (HEADERS, PRIORITY | END_HEADERS, 1)
        );
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
        let headers = server.decode(&payload[5..]).unwrap();
        let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(authority.1, b"localhost");
        assert_eq!(headers.len(), 5);
        assert_eq!(got[2], (0x0, END_STREAM, 1, b"\0\0\0\0\x02hi".to_vec()));
        let headers = server.decode(&got[3].3).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert_eq!(got[3].1, END_HEADERS | END_STREAM);
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let block = client_block(&mut client, b"localhost:1234");
        let mut input = PREFACE.to_vec();
        push_frame(&mut input, HEADERS, END_HEADERS, 1, &[&block]);
        let mut out = Vec::new();
        Rewriter::default().feed(&input, &mut out).unwrap();
        let got = frames(&out[PREFACE.len()..]);
        let headers = loona_hpack::Decoder::new().decode(&got[0].3).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost:1234".to_vec())));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(matches!(
            Rewriter::default().feed(b"GET / HTTP/1.1\r\n", &mut Vec::new()),
            Err(FrontError::Preface)
        ));
        // Random frames after a good preface: errors or pass-through, never a
        // panic (a small deterministic fuzz).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut input = PREFACE.to_vec();
            let len = (next() % 64) as usize;
            let kind = [HEADERS, CONTINUATION, 0x0][(next() % 3) as usize];
            let flags = (next() & 0xff) as u8;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            push_frame(&mut input, kind, flags, 1, &[&payload]);
            let mut r = Rewriter::default();
            let _ = r.feed(&input, &mut Vec::new());
            // A length beyond what was sent just waits for more.
            let _ = r.feed(&payload, &mut Vec::new());
        }
        // A block that never ends is bounded.
        let mut r = Rewriter::default();
        let mut input = PREFACE.to_vec();
        push_frame(&mut input, HEADERS, 0, 1, &[&[0x82]]);
        r.feed(&input, &mut Vec::new()).unwrap();
        let chunk = vec![0x82u8; MAX_FRAME];
        let mut failed = false;
        for _ in 0..(MAX_BLOCK / MAX_FRAME + 2) {
            let mut f = Vec::new();
            push_frame(&mut f, CONTINUATION, 0, 1, &[&chunk]);
            if r.feed(&f, &mut Vec::new()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        // A small block that expands past the header-list cap is refused.
        let mut client = loona_hpack::Encoder::new();
        let big = vec![b'v'; 3000];
        let mut block = client.encode([(&b"x-big"[..], &big[..])]);
        // Each further reference to the (now indexed) entry is one byte.
        for _ in 0..40 {
            block.extend(client.encode([(&b"x-big"[..], &big[..])]));
        }
        let mut input = PREFACE.to_vec();
        push_frame(&mut input, HEADERS, END_HEADERS, 1, &[&block]);
        assert!(matches!(
            Rewriter::default().feed(&input, &mut Vec::new()),
            Err(FrontError::HeaderListTooLarge)
        ));
    }
}
