//! The connection against a client made of the same frame codec, over an
//! in-memory pipe.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{decode, encode, split_frame, Deflater, Frame, Inflater};

struct Client {
    io: DuplexStream,
    deflater: Deflater,
    inflater: Inflater,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, f: Frame) {
        let mut wire = BytesMut::new();
        encode(&f, &mut self.deflater, &mut wire).expect("encode");
        self.io.write_all(&wire).await.expect("write");
    }

    /// The next frame from the server; `None` at its end.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((a, b, p)) = split_frame(&mut self.buf).expect("split") {
                return Some(decode(a, b, p, &mut self.inflater).expect("decode"));
            }
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.io.read_buf(&mut self.buf),
            )
            .await
            .expect("the server answers within 5 s")
            .expect("read");
            if read == 0 {
                return None;
            }
        }
    }
}

fn syn(stream_id: u32, kind: &str) -> Frame {
    Frame::SynStream {
        stream_id,
        fin: false,
        unidirectional: false,
        headers: vec![("streamType".into(), kind.into())],
    }
}

fn connect() -> (Client, super::Connection) {
    let (client, server) = tokio::io::duplex(4 << 20);
    let conn = super::start(server, "test connection".into());
    (
        Client {
            io: client,
            deflater: Deflater::default(),
            inflater: Inflater::default(),
            buf: BytesMut::new(),
        },
        conn,
    )
}

#[tokio::test]
async fn streams_are_accepted_and_carry_data_both_ways_then_the_server_says_goaway() {
    let (mut client, mut conn) = connect();
    client.send(syn(1, "stdin")).await;
    assert_eq!(
        client.next().await,
        Some(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new()
        })
    );
    let mut stream = conn.incoming.recv().await.expect("a stream");
    assert_eq!(stream.id, 1);
    assert_eq!(stream.header("streamtype"), Some("stdin"));

    client
        .send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"hello"),
        })
        .await;
    client
        .send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b" world"),
        })
        .await;
    assert_eq!(stream.recv().await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(stream.recv().await.as_deref(), Some(&b" world"[..]));
    assert_eq!(stream.recv().await, None, "FIN ends the incoming side");

    client.send(Frame::Ping { id: 7 }).await;
    assert_eq!(client.next().await, Some(Frame::Ping { id: 7 }));

    let w = stream.writer();
    w.write_last(Bytes::from_static(b"bye"))
        .await
        .expect("write");
    assert_eq!(
        client.next().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"bye")
        })
    );
    drop((w, stream, conn));
    assert_eq!(
        client.next().await,
        Some(Frame::GoAway {
            last_good: 1,
            status: 0
        })
    );
    assert_eq!(client.next().await, None);
}

#[tokio::test]
async fn even_or_reused_stream_ids_are_reset_and_a_reset_ends_a_stream() {
    let (mut client, mut conn) = connect();
    client.send(syn(2, "data")).await;
    assert_eq!(
        client.next().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: super::PROTOCOL_ERROR
        })
    );
    client.send(syn(5, "data")).await;
    assert!(matches!(
        client.next().await,
        Some(Frame::SynReply { stream_id: 5, .. })
    ));
    client.send(syn(3, "data")).await;
    assert_eq!(
        client.next().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: super::PROTOCOL_ERROR
        })
    );
    let mut stream = conn.incoming.recv().await.expect("stream 5");
    assert_eq!(stream.id, 5);
    client
        .send(Frame::RstStream {
            stream_id: 5,
            status: 5,
        })
        .await;
    assert_eq!(stream.recv().await, None);
}

#[tokio::test]
async fn garbage_from_the_client_ends_the_connection() {
    let (mut client, mut conn) = connect();
    client
        .io
        .write_all(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0])
        .await
        .expect("write");
    assert!(conn.incoming.recv().await.is_none());
    drop(conn);
    assert!(matches!(client.next().await, Some(Frame::GoAway { .. })));
}

#[tokio::test]
async fn a_client_that_goes_while_its_unread_data_fills_the_budget_is_still_seen_going() {
    let (mut client, mut conn) = connect();
    client.send(syn(1, "stdin")).await;
    assert!(matches!(client.next().await, Some(Frame::SynReply { .. })));
    let _stream = conn.incoming.recv().await.expect("a stream");
    // More than the budget (but within the read-ahead past it), never read
    // by the server's side.
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let Client {
        mut io,
        mut deflater,
        ..
    } = client;
    let writer = tokio::spawn(async move {
        for _ in 0..9 {
            let mut wire = BytesMut::new();
            let f = Frame::Data {
                stream_id: 1,
                fin: false,
                data: chunk.clone(),
            };
            encode(&f, &mut deflater, &mut wire).expect("encode");
            if io.write_all(&wire).await.is_err() {
                return;
            }
        }
        // The client goes.
        drop(io);
    });
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn.incoming.recv())
        .await
        .expect("the client's end is seen in time");
    assert!(ended.is_none());
    writer.await.expect("writer");
}
