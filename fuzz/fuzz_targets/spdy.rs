//! The CRI streaming server's SPDY/3.1 frame decoder: any bytes from a
//! client, split anywhere, must decode or fail cleanly, never panic, and a
//! header block may not inflate without bound.
#![no_main]

use bytes::BytesMut;
use cri::streaming::spdy::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input is split in two reads.
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = usize::from(split) % (rest.len() + 1);
    let mut dec = Decoder::default();
    let mut buf = BytesMut::from(&rest[..cut]);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
    buf.extend_from_slice(&rest[cut..]);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
});
