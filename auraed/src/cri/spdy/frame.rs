//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 with the 3.1 changes):
//! an 8-byte header, then the payload. Control frames carry a version and
//! a type; data frames a stream ID. Header blocks are zlib-compressed with
//! one context per direction for the whole connection (see [`Inflater`]
//! and [`Deflater`]), so frames are decoded and encoded in order.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::dictionary;

/// The protocol version this server speaks.
pub const VERSION: u16 = 3;
/// The largest frame payload accepted (SPDY allows 16 MiB; clients send
/// what one write gives them, 32 KiB from Go's io.Copy).
pub const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block accepted.
pub const MAX_HEADERS: usize = 64 << 10;
/// The most name/value pairs in one header block.
const MAX_PAIRS: usize = 256;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes this server sends.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("a control frame of SPDY version {0} (this server speaks {VERSION})")]
    Version(u16),
    #[error("a {kind} frame of {len} bytes is too short")]
    Short { kind: &'static str, len: usize },
    #[error("a header block: {0}")]
    HeaderBlock(&'static str),
    #[error("decompressing a header block")]
    Inflate(#[source] flate2::DecompressError),
    #[error("compressing a header block")]
    Deflate(#[source] flate2::CompressError),
}

/// A header block's name/value pairs (names in lower case, as SPDY sends
/// them; several values of one name joined by NUL).
pub type Headers = Vec<(String, String)>;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and control frames of unknown types, which
    /// SPDY receivers ignore. (Flow control is not enforced: Go's
    /// spdystream, which kubelet clients use, neither sends nor honours
    /// window updates.)
    Ignored {
        kind: u16,
    },
}

/// Splits the next whole frame off `buf`: its 8-byte header and payload.
/// `None` until one has arrived.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<(u32, u32, Bytes)>, SpdyError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::TooLarge(len));
    }
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(None);
    }
    let mut head = buf.split_to(8);
    let first = head.get_u32();
    let second = head.get_u32();
    Ok(Some((first, second, buf.split_to(len).freeze())))
}

/// Decodes a frame split off by [`split_frame`].
pub fn decode(
    first: u32,
    second: u32,
    mut p: Bytes,
    inflater: &mut Inflater,
) -> Result<Frame, SpdyError> {
    let flags = (second >> 24) as u8;
    let fin = flags & FLAG_FIN != 0;
    if first & 0x8000_0000 == 0 {
        return Ok(Frame::Data {
            stream_id: first & 0x7fff_ffff,
            fin,
            data: p,
        });
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let kind = (first & 0xffff) as u16;
    let need = |name: &'static str, n: usize, p: &Bytes| {
        if p.len() < n {
            Err(SpdyError::Short {
                kind: name,
                len: p.len(),
            })
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        SYN_STREAM => {
            // Stream ID, associated stream ID, priority and slot.
            need("SYN_STREAM", 10, &p)?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            p.advance(6);
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                headers: inflater.headers(&p)?,
            }
        }
        SYN_REPLY | HEADERS => {
            need("SYN_REPLY", 4, &p)?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let headers = inflater.headers(&p)?;
            if kind == SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }
        }
        RST_STREAM => {
            need("RST_STREAM", 8, &p)?;
            Frame::RstStream {
                stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        PING => {
            need("PING", 4, &p)?;
            Frame::Ping { id: p.get_u32() }
        }
        GOAWAY => {
            need("GOAWAY", 8, &p)?;
            Frame::GoAway {
                last_good: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        kind => Frame::Ignored { kind },
    })
}

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, deflater: &mut Deflater, out: &mut BytesMut) -> Result<(), SpdyError> {
    let flag = |b: bool, f: u8| if b { f } else { 0 };
    let mut control = |kind: u16, flags: u8, payload: &[u8]| {
        out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
        out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
        out.put_slice(payload);
    };
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            headers,
        } => {
            let mut p = Vec::new();
            p.extend_from_slice(&stream_id.to_be_bytes());
            p.extend_from_slice(&[0; 6]);
            p.extend_from_slice(&deflater.headers(headers)?);
            control(
                SYN_STREAM,
                flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL),
                &p,
            );
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        }
        | Frame::Headers {
            stream_id,
            fin,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            let mut p = stream_id.to_be_bytes().to_vec();
            p.extend_from_slice(&deflater.headers(headers)?);
            control(kind, flag(*fin, FLAG_FIN), &p);
        }
        Frame::RstStream { stream_id, status } => {
            let mut p = stream_id.to_be_bytes().to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &p);
        }
        Frame::Ping { id } => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            let mut p = last_good.to_be_bytes().to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &p);
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32((u32::from(flag(*fin, FLAG_FIN)) << 24) | data.len() as u32);
            out.put_slice(data);
        }
        Frame::Ignored { .. } => {}
    }
    Ok(())
}

/// The receiving direction's header decompressor.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl Inflater {
    /// Decompresses and parses one header block.
    fn headers(&mut self, input: &[u8]) -> Result<Headers, SpdyError> {
        parse_block(&self.inflate(input)?)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(1024);
        let mut used = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_HEADERS {
                    return Err(SpdyError::HeaderBlock("over 64 KiB decompressed"));
                }
                out.reserve(4096);
            }
            let (in0, out0) = (self.0.total_in(), out.len());
            let r = self
                .0
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync);
            // The zlib header counts as read even when it asks for the
            // dictionary.
            used += (self.0.total_in() - in0) as usize;
            match r {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::HeaderBlock("the zlib stream ended"))
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(SpdyError::Inflate)?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Inflate(e)),
            }
            if out.len() > MAX_HEADERS {
                return Err(SpdyError::HeaderBlock("over 64 KiB decompressed"));
            }
            if used == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if self.0.total_in() == in0 && out.len() == out0 {
                return Err(SpdyError::HeaderBlock("truncated"));
            }
        }
    }
}

/// The sending direction's header compressor.
pub struct Deflater {
    z: Compress,
    primed: bool,
}

impl Default for Deflater {
    fn default() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
            primed: false,
        }
    }
}

impl Deflater {
    /// Serialises and compresses one header block (a sync flush ends it).
    fn headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        if !self.primed {
            self.z
                .set_dictionary(dictionary())
                .map_err(SpdyError::Deflate)?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut used = 0;
        loop {
            let in0 = self.z.total_in();
            self.z
                .compress_vec(&block[used..], &mut out, FlushCompress::Sync)
                .map_err(SpdyError::Deflate)?;
            used += (self.z.total_in() - in0) as usize;
            if used == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(256);
        }
    }
}

/// Parses a decompressed header block: a count, then each name and value
/// with its 32-bit length.
fn parse_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
        if b.len() < 4 {
            return Err(SpdyError::HeaderBlock("a length is cut short"));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() - 4 < n {
            return Err(SpdyError::HeaderBlock("a name or value is cut short"));
        }
        let s = b[4..4 + n].to_vec();
        *b = &b[4 + n..];
        Ok(s)
    };
    let count = u32::from_be_bytes(
        take_4(&mut b).ok_or(SpdyError::HeaderBlock("the pair count is missing"))?,
    ) as usize;
    if count > MAX_PAIRS {
        return Err(SpdyError::HeaderBlock("more than 256 pairs"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        if name.is_empty() {
            return Err(SpdyError::HeaderBlock("an empty name"));
        }
        let text = |v: Vec<u8>| {
            String::from_utf8(v).map_err(|_| SpdyError::HeaderBlock("a name or value is not UTF-8"))
        };
        headers.push((text(name)?.to_ascii_lowercase(), text(value)?));
    }
    Ok(headers)
}

fn take_4(b: &mut &[u8]) -> Option<[u8; 4]> {
    let four = b.get(..4)?.try_into().ok()?;
    *b = &b[4..];
    Some(four)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
