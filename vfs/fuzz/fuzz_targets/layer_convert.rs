//! Fuzzes the converter's layer reader and tree merge: layer tars are untrusted input.
//!
//! The first input byte holds flags: bit 0 fixes the header checksums of the tar (so mutations of
//! names, sizes and types are not all lost to "checksum mismatch"), bit 1 splits the rest into two
//! layers at the position given by the second byte (whiteouts and hardlinks across layers), bit 2
//! gzips the layers. The conversion must not panic; whatever it accepts must be an index that
//! survives its own codec, with every file's chunks present in the data blobs.
#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use vfs::convert::{convert_layers, ConvertOptions, LayerBlob, Limits};
use vfs::digest::Digest;
use vfs::index::{Index, Kind};

/// Rewrites the checksum of every header block the way a tar reader would walk them.
fn fix_checksums(tar: &mut [u8]) {
    let mut pos = 0;
    while pos + 512 <= tar.len() {
        let block = &mut tar[pos..pos + 512];
        if block.iter().all(|&b| b == 0) {
            pos += 512;
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| b as u32).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = std::str::from_utf8(&block[124..136])
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok())
            .unwrap_or(0);
        pos += 512 + (size.min(1 << 30) as usize).next_multiple_of(512);
    }
}

fn layer(dir: &std::path::Path, n: usize, tar: &[u8], gzip: bool) -> LayerBlob {
    let (data, media_type) = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip into memory");
        (gz.finish().expect("gzip into memory"), "application/vnd.oci.image.layer.v1.tar+gzip")
    } else {
        (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar")
    };
    let path = dir.join(format!("layer{n}"));
    std::fs::write(&path, &data).expect("write layer");
    LayerBlob { digest: Digest::of(&data), media_type: media_type.into(), size: data.len() as u64, path }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut tars: Vec<Vec<u8>> = match (flags & 2 != 0, rest.split_first()) {
        (true, Some((&at, rest))) => {
            let at = (rest.len() * at as usize / 256).next_multiple_of(512).min(rest.len());
            vec![rest[..at].to_vec(), rest[at..].to_vec()]
        }
        _ => vec![rest.to_vec()],
    };
    if flags & 1 != 0 {
        tars.iter_mut().for_each(|t| fix_checksums(t));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp dir");
    let layers: Vec<LayerBlob> = tars.iter().enumerate().map(|(n, t)| layer(dir.path(), n, t, flags & 4 != 0)).collect();
    let opts = ConvertOptions {
        chunk_size: 4096,
        source_repo: "127.0.0.1:5000/fuzz/lazy".into(),
        prefetch: vec!["/a".into(), "/etc/passwd".into()],
        reuse: Vec::new(),
        limits: Limits { max_layer_size: 64 << 20 },
    };
    let Ok(conv) = convert_layers(&layers, &opts, &tmp, &|_| {}) else { return };
    let again = Index::decode(&conv.index.encode()).expect("an index the converter made must decode");
    assert_eq!(again, conv.index, "round trip changed the index");
    let blobs: Vec<Vec<u8>> = conv.blobs.iter().map(|b| std::fs::read(&b.path).expect("read data blob")).collect();
    for inode in &conv.index.inodes {
        if let Kind::File { size, chunks } = &inode.kind {
            assert_eq!(chunks.iter().map(|c| c.len as u64).sum::<u64>(), *size, "chunks cover the file");
            for c in chunks {
                let blob = &blobs[c.blob as usize];
                let z = &blob[c.offset as usize..c.end() as usize];
                let plain = zstd::bulk::decompress(z, c.len as usize).expect("chunk decompresses");
                assert_eq!(Digest::of(&plain), c.digest, "chunk digest");
            }
        }
    }
});
