//! Fuzzes the lazy index decoder, which reads indexes out of images (untrusted input).
//!
//! The first input byte picks the mode. Even: the rest is a whole encoded index (header + zstd
//! body), as read from an image. Odd: the rest is a raw, UNCOMPRESSED body, wrapped here in a valid
//! header and zstd frame, so mutations reach the body parser and the tree checks instead of dying
//! in zstd. Either way the decoder must not panic, and whatever it accepts must survive a round
//! trip: decode(encode(index)) == index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfs::index::{Index, INDEX_MAGIC, INDEX_VERSION};

fn wrap_body(body: &[u8]) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&zstd::bulk::compress(body, 1).expect("compress into memory"));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let result = if mode & 1 == 0 { Index::decode(rest) } else { Index::decode(&wrap_body(rest)) };
    if let Ok(index) = result {
        let again = Index::decode(&index.encode()).expect("an accepted index must re-decode after encoding");
        assert_eq!(again, index, "round trip changed the index");
    }
});
