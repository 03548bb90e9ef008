use super::*;

fn hdrs(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
}

fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
    let mut enc = Encoder::default();
    let mut buf = BytesMut::new();
    for f in frames {
        enc.encode(f, &mut buf);
    }
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty());
    out
}

#[test]
fn the_dictionary_is_spdy3s() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert!(DICTIONARY.starts_with(b"\0\0\0\x07options"));
}

#[test]
fn frames_survive_a_roundtrip_with_one_zlib_stream_per_direction() {
    let frames = vec![
        Frame::SynStream { id: 1, flags: 0, headers: hdrs(&[("streamtype", "error")]) },
        Frame::SynStream { id: 3, flags: FLAG_FIN, headers: hdrs(&[("streamtype", "stdout"), ("port", "80")]) },
        Frame::SynReply { id: 1, flags: 0, headers: Vec::new() },
        Frame::Headers { id: 3, flags: 0, headers: hdrs(&[("x", "y")]) },
        Frame::Data { id: 3, flags: 0, data: Bytes::from_static(b"hello") },
        Frame::Data { id: 3, flags: FLAG_FIN, data: Bytes::new() },
        Frame::RstStream { id: 5, status: RST_CANCEL },
        Frame::Ping { id: 7 },
        Frame::GoAway { last_id: 3, status: 0 },
    ];
    assert_eq!(roundtrip(&frames), frames);
}

#[test]
fn several_values_of_a_name_are_nul_separated() {
    let mut raw = Vec::new();
    raw.put_u32(1);
    raw.put_u32(4);
    raw.put_slice(b"Port");
    raw.put_u32(6);
    raw.put_slice(b"80\x00443");
    assert_eq!(parse_block(&raw).unwrap(), hdrs(&[("port", "80"), ("port", "443")]));
}

#[test]
fn a_partial_frame_waits_for_more_bytes() {
    let mut enc = Encoder::default();
    let mut whole = BytesMut::new();
    enc.encode(&Frame::SynStream { id: 1, flags: 0, headers: hdrs(&[("streamtype", "data")]) }, &mut whole);
    enc.encode(&Frame::Data { id: 1, flags: 0, data: Bytes::from_static(b"abc") }, &mut whole);
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in whole.iter() {
        buf.put_u8(*b);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[1], Frame::Data { id: 1, flags: 0, data: Bytes::from_static(b"abc") });
}

#[test]
fn a_wrong_version_or_short_control_frame_is_an_error() {
    let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
    assert_eq!(Decoder::default().decode(&mut buf), Err(FrameError::Version(2)));
    let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0][..]);
    assert_eq!(Decoder::default().decode(&mut buf), Err(FrameError::Malformed("RST_STREAM")));
    let mut buf = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1][..]);
    assert_eq!(Decoder::default().decode(&mut buf), Err(FrameError::Malformed("SYN_STREAM")));
}

#[test]
fn a_header_bomb_is_refused() {
    // 4 MiB of zeros compresses to a few KiB.
    let mut c = Compress::new(Compression::best(), true);
    c.set_dictionary(DICTIONARY).unwrap();
    let raw = vec![0u8; 4 << 20];
    let mut z = Vec::with_capacity(1 << 20);
    c.compress_vec(&raw, &mut z, FlushCompress::Sync).unwrap();
    let mut buf = BytesMut::new();
    buf.put_u16(0x8003);
    buf.put_u16(SYN_STREAM);
    buf.put_u32(u32::try_from(z.len() + 10).unwrap());
    buf.put_u32(1);
    buf.put_u32(0);
    buf.put_u16(0);
    buf.put_slice(&z);
    assert!(matches!(Decoder::default().decode(&mut buf), Err(FrameError::HeaderBlock(_))));
}

#[test]
fn random_bytes_never_panic() {
    // A deterministic stream of junk, some of it shaped like frames.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let len = usize::try_from(next() % 64).unwrap();
        let mut bytes: Vec<u8> = (0..len).map(|_| u8::try_from(next() & 0xff).unwrap()).collect();
        if round % 2 == 0 && bytes.len() >= 8 {
            bytes[0] = 0x80;
            bytes[1] = 3;
            bytes[2] = 0;
            bytes[3] = u8::try_from(next() % 10).unwrap();
            bytes[5] = 0;
            bytes[6] = 0;
            bytes[7] = u8::try_from(len - 8).unwrap();
        }
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut enc = Encoder::default();
    let mut valid = BytesMut::new();
    for id in [1u32, 3, 5] {
        let headers = hdrs(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]);
        enc.encode(&Frame::SynStream { id, flags: 0, headers }, &mut valid);
        enc.encode(&Frame::Data { id, flags: FLAG_FIN, data: Bytes::from_static(b"payload") }, &mut valid);
    }
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5000 {
        let mut bytes = valid.to_vec();
        for _ in 0..1 + next() % 4 {
            let at = usize::try_from(next()).unwrap() % bytes.len();
            bytes[at] ^= u8::try_from(next() & 0xff).unwrap() | 1;
        }
        let cut = usize::try_from(next()).unwrap() % (bytes.len() + 1);
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&bytes[..cut]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }
}

/// Frames made by C zlib (Python's, as Go's compress/zlib writes them:
/// the dictionary's id in the header, sync flushes) decode.
#[test]
fn frames_compressed_by_c_zlib_decode() {
    let hex: String = [
        "80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff",
        "800300010000001700000003000000000000c22e555c02cc2e00000000ffff8003000100000019000000050000000000",
        "00c22a054ce729f9a52500000000ffff000000030100000568656c6c6f80030006000000040000000180030003000000",
        "080000000500000005",
    ]
    .concat();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut dec = Decoder::default();
    let mut frames = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        frames.push(f);
    }
    assert_eq!(frames[0], Frame::SynStream { id: 1, flags: 0, headers: hdrs(&[("streamtype", "error")]) });
    assert_eq!(frames[2], Frame::SynStream { id: 5, flags: 0, headers: hdrs(&[("streamtype", "stdout")]) });
    assert_eq!(frames[3], Frame::Data { id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"hello") });
    assert_eq!(frames[4], Frame::Ping { id: 1 });
    assert_eq!(frames[5], Frame::RstStream { id: 5, status: RST_CANCEL });
}
