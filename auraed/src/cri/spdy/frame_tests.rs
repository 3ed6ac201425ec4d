use super::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Encodes `frames` with one compressor, then splits and decodes them
/// with one decompressor, as the two ends of a connection do.
fn round_trip(frames: &[Frame]) -> Vec<Frame> {
    let mut deflater = Deflater::default();
    let mut wire = BytesMut::new();
    for f in frames {
        encode(f, &mut deflater, &mut wire).expect("encode");
    }
    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    while let Some((a, b, p)) = split_frame(&mut wire).expect("split") {
        out.push(decode(a, b, p, &mut inflater).expect("decode"));
    }
    assert!(wire.is_empty(), "{} bytes left over", wire.len());
    out
}

#[test]
fn every_frame_survives_encoding_and_decoding_with_shared_header_contexts() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
        },
        Frame::SynStream {
            stream_id: 3,
            fin: true,
            unidirectional: true,
            headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new(),
        },
        Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: h(&[("x", "a\0b")]),
        },
        Frame::Data {
            stream_id: 3,
            fin: true,
            data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        },
        Frame::Data {
            stream_id: 5,
            fin: false,
            data: Bytes::new(),
        },
        Frame::RstStream {
            stream_id: 7,
            status: REFUSED_STREAM,
        },
        Frame::Ping { id: 9 },
        Frame::GoAway {
            last_good: 7,
            status: 0,
        },
    ];
    assert_eq!(round_trip(&frames), frames);
}

#[test]
fn a_frame_arrives_in_pieces() {
    let mut deflater = Deflater::default();
    let mut whole = BytesMut::new();
    let frame = Frame::SynStream {
        stream_id: 1,
        fin: false,
        unidirectional: false,
        headers: h(&[("streamtype", "stdout")]),
    };
    encode(&frame, &mut deflater, &mut whole).expect("encode");
    let mut buf = BytesMut::new();
    let mut inflater = Inflater::default();
    for (i, byte) in whole.iter().enumerate() {
        buf.put_u8(*byte);
        match split_frame(&mut buf).expect("split") {
            Some((a, b, p)) => {
                assert_eq!(i, whole.len() - 1, "split before the last byte");
                assert_eq!(decode(a, b, p, &mut inflater).expect("decode"), frame);
            }
            None => assert!(i < whole.len() - 1),
        }
    }
}

#[test]
fn limits_and_malformed_frames_are_errors() {
    // A frame longer than the limit, refused from its header alone.
    let mut big = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
    assert!(matches!(split_frame(&mut big), Err(SpdyError::TooLarge(_))));

    // Another version.
    let mut inflater = Inflater::default();
    let v2 = 0x8000_0000 | (2 << 16) | 6;
    assert!(matches!(
        decode(v2, 4, Bytes::from_static(&[0, 0, 0, 1]), &mut inflater),
        Err(SpdyError::Version(2))
    ));
    // A RST_STREAM without its status.
    let rst = 0x8000_0000 | (3 << 16) | 3;
    assert!(matches!(
        decode(rst, 4, Bytes::from_static(&[0, 0, 0, 1]), &mut inflater),
        Err(SpdyError::Short { .. })
    ));
    // A header block that is not zlib.
    let syn = 0x8000_0000 | (3 << 16) | 1;
    let mut p = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(b"not zlib at all");
    assert!(decode(
        syn,
        p.len() as u32,
        Bytes::from(p),
        &mut Inflater::default()
    )
    .is_err());
}

#[test]
fn a_header_block_that_inflates_past_the_limit_is_refused() {
    let mut deflater = Deflater::default();
    let mut wire = BytesMut::new();
    let frame = Frame::SynStream {
        stream_id: 1,
        fin: false,
        unidirectional: false,
        headers: h(&[("big", &"a".repeat(MAX_HEADERS))]),
    };
    encode(&frame, &mut deflater, &mut wire).expect("encode");
    assert!(wire.len() < 4096, "it compresses well: {}", wire.len());
    let (a, b, p) = split_frame(&mut wire).expect("split").expect("whole");
    let Err(err) = decode(a, b, p, &mut Inflater::default()) else {
        panic!("a header block over the limit was accepted");
    };
    assert!(err.to_string().contains("64 KiB"), "{err}");
}

#[test]
fn header_blocks_with_bad_counts_or_lengths_are_errors() {
    assert!(parse_block(&[]).is_err());
    assert!(parse_block(&1000u32.to_be_bytes()).is_err());
    let mut b = 1u32.to_be_bytes().to_vec();
    b.extend_from_slice(&100u32.to_be_bytes());
    b.extend_from_slice(b"short");
    assert!(parse_block(&b).is_err());
    let mut empty_name = 1u32.to_be_bytes().to_vec();
    empty_name.extend_from_slice(&0u32.to_be_bytes());
    empty_name.extend_from_slice(&0u32.to_be_bytes());
    assert!(parse_block(&empty_name).is_err());
}

/// Random and mutated input never panics the decoder: every outcome is a
/// frame or an error.
#[test]
fn fuzzed_input_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut valid = BytesMut::new();
    let mut deflater = Deflater::default();
    encode(
        &Frame::SynStream {
            stream_id: 1,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "data"), ("port", "8080")]),
        },
        &mut deflater,
        &mut valid,
    )
    .expect("encode");
    for round in 0..20_000 {
        let mut input = if round % 2 == 0 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mostly control frames of our version, to reach the decoders.
            if v.len() >= 8 && round % 4 == 0 {
                v[0] = 0x80;
                v[1] = 3;
                v[3] = (next() % 10) as u8;
                v[5] = 0;
                v[6] = 0;
                v[7] = (len - 8) as u8;
            }
            v
        } else {
            let mut v = valid.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
            }
            v
        };
        let mut buf = BytesMut::from(&input[..]);
        let mut inflater = Inflater::default();
        while let Ok(Some((a, b, p))) = split_frame(&mut buf) {
            let _ = decode(a, b, p, &mut inflater);
        }
        input.clear();
    }
}
