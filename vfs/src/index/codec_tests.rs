//! Unit tests of the index codec: round trip, and one test per malformed-input rule.

use super::*;

fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

fn meta(kind: Kind) -> Inode {
    Inode { kind, mode: 0o755, uid: 0, gid: 0, mtime: 1_700_000_000, mtime_nsec: 123_456_789, xattrs: vec![] }
}

fn entry(name: &str, ino: u32) -> DirEntry {
    DirEntry { name: name.as_bytes().to_vec(), ino }
}

/// / { bin/ { sh -> busybox, busybox (2 chunks, hardlinked as /bin/ls) }, dev/null, fifo, empty }
pub(crate) fn sample() -> Index {
    let chunk = |blob, offset, len, n| Chunk { blob, offset, compressed_len: 10, len, digest: digest(n) };
    let mut busybox = meta(Kind::File { size: 4096 + 100, chunks: vec![chunk(0, 0, 4096, 1), chunk(1, 5, 100, 2)] });
    busybox.xattrs = vec![
        Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2] },
        Xattr { name: b"user.empty".to_vec(), value: vec![] },
    ];
    busybox.mtime = -5;
    let inodes = vec![
        meta(Kind::Dir { entries: vec![entry("bin", 1), entry("empty", 6), entry("fifo", 5), entry("null", 4)] }),
        meta(Kind::Dir { entries: vec![entry("busybox", 2), entry("ls", 2), entry("sh", 3)] }),
        busybox,
        meta(Kind::Symlink { target: b"busybox".to_vec() }),
        meta(Kind::CharDevice { major: 1, minor: 3 }),
        meta(Kind::Fifo),
        meta(Kind::File { size: 0, chunks: vec![] }),
    ];
    let blobs = vec![BlobRef { digest: digest(10), size: 10 }, BlobRef { digest: digest(11), size: 15 }];
    Index::new(4096, "127.0.0.1:5000/test/app".into(), blobs, inodes, vec![2])
}

fn err_of(index: &Index) -> String {
    match Index::decode(&index.encode()) {
        Ok(_) => panic!("decode accepted a malformed index"),
        Err(e) => e.to_string(),
    }
}

fn assert_rejects(index: &Index, needle: &str) {
    let msg = err_of(index);
    assert!(msg.contains(needle), "error {msg:?} should mention {needle:?}");
    assert!(msg.starts_with("lazy index"), "{msg:?}");
}

fn dir_entries(index: &mut Index, ino: usize) -> &mut Vec<DirEntry> {
    match &mut index.inodes[ino].kind {
        Kind::Dir { entries } => entries,
        _ => panic!("not a dir"),
    }
}

fn file_chunks(index: &mut Index, ino: usize) -> (&mut u64, &mut Vec<Chunk>) {
    match &mut index.inodes[ino].kind {
        Kind::File { size, chunks } => (size, chunks),
        _ => panic!("not a file"),
    }
}

#[test]
fn round_trips_and_derives_links() {
    let index = sample();
    let bytes = index.encode();
    assert_eq!(&bytes[..8], INDEX_MAGIC);
    let back = Index::decode(&bytes).unwrap();
    assert_eq!(back, index);
    assert_eq!(back.nlink(2), 2, "busybox is hardlinked as ls");
    assert_eq!(back.nlink(ROOT), 3);
    assert_eq!(back.parent(1), ROOT);
    assert_eq!(back.resolve(b"/bin/ls"), Some(2));
    assert_eq!(back.encode(), bytes, "encoding is deterministic");
}

#[test]
fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert!(Index::decode(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let _ = Index::decode(&b);
        }
    }
}

#[test]
fn rejects_bad_header() {
    assert!(matches!(Index::decode(b"NOTLAZY\0\x01\0\0\0"), Err(IndexError::BadMagic)));
    let mut b = sample().encode();
    b[8] = 2;
    assert!(matches!(Index::decode(&b), Err(IndexError::UnsupportedVersion { found: 2 })));
    let mut b = sample().encode();
    b[19] = 0x7f; // absurd declared body length
    assert!(err_of_bytes(&b).contains("exceeds the limit"));
    let mut b = sample().encode();
    b[12] ^= 1; // body length off by one
    assert!(Index::decode(&b).is_err());
}

fn err_of_bytes(b: &[u8]) -> String {
    Index::decode(b).unwrap_err().to_string()
}

/// Wraps a raw body in a valid header, for tests of the varint layer.
fn with_body(body: &[u8]) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&zstd::bulk::compress(body, 1).unwrap());
    out
}

#[test]
fn rejects_hostile_counts_and_varints_without_allocating() {
    // chunk size 4096, empty source, then a blob count of 2^60.
    let mut w = Writer(Vec::new());
    w.uint(4096);
    w.bytes(b"");
    w.uint(1 << 60);
    assert!(err_of_bytes(&with_body(&w.0)).contains("blob count"));
    let mut w = Writer(Vec::new());
    w.uint(4096);
    w.bytes(b"");
    w.uint(0);
    w.uint(MAX_INODES - 1); // within the limit, but the input is far too short
    assert!(err_of_bytes(&with_body(&w.0)).contains("truncated while reading inode count"));
    let overlong = [0xffu8; 11];
    assert!(err_of_bytes(&with_body(&overlong)).contains("varint"));
    let mut w = Writer(Vec::new());
    w.uint(4096);
    w.bytes(b"");
    w.uint(0);
    w.uint(0);
    w.uint(0);
    assert!(err_of_bytes(&with_body(&w.0)).contains("zero inodes"));
}

#[test]
fn rejects_trailing_bytes() {
    let mut index = sample();
    index.prefetch.clear();
    let mut bytes = index.encode();
    // Rebuild with one extra byte in the body.
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let mut body = zstd::bulk::decompress(&bytes[20..], body_len).unwrap();
    body.push(0);
    bytes = with_body(&body);
    assert!(err_of_bytes(&bytes).contains("unexpected bytes"));
}

#[test]
fn rejects_bad_names() {
    for (name, why) in
        [("", "empty"), (".", "'.' or '..'"), ("..", "'.' or '..'"), ("a/b", "contains '/'"), ("a\0b", "contains NUL")]
    {
        let mut index = sample();
        dir_entries(&mut index, 1)[0].name = name.as_bytes().to_vec();
        dir_entries(&mut index, 1).sort_by(|a, b| a.name.cmp(&b.name));
        assert_rejects(&index, why);
    }
    let mut index = sample();
    dir_entries(&mut index, 1)[2].name = vec![b'z'; 256];
    assert_rejects(&index, "limit of 255");
    // 255 bytes is fine.
    let mut index = sample();
    dir_entries(&mut index, 1)[2].name = vec![b'z'; 255];
    Index::decode(&index.encode()).unwrap();
}

#[test]
fn rejects_unsorted_or_duplicate_entries_and_xattrs() {
    let mut index = sample();
    dir_entries(&mut index, 1).swap(0, 2);
    assert_rejects(&index, "inode 1: entry \"ls\" is not sorted after \"sh\"");
    let mut index = sample();
    dir_entries(&mut index, 1)[1].name = b"busybox".to_vec();
    assert_rejects(&index, "duplicate or unsorted");
    let mut index = sample();
    index.inodes[2].xattrs.reverse();
    assert_rejects(&index, "inode 2: xattr \"security.capability\" is not sorted");
    let mut index = sample();
    index.inodes[2].xattrs[1].value = vec![0; MAX_XATTR_VALUE_LEN + 1];
    assert_rejects(&index, "xattr value: length 65537 exceeds");
}

#[test]
fn rejects_absurd_sizes() {
    let mut index = sample();
    index.inodes[3].kind = Kind::Symlink { target: vec![b'a'; MAX_SYMLINK_LEN + 1] };
    assert_rejects(&index, "inode 3: symlink target: length 4097 exceeds");
    let mut index = sample();
    *file_chunks(&mut index, 6).0 = MAX_FILE_SIZE + 1;
    assert_rejects(&index, "inode 6: file size");
    let mut index = sample();
    index.chunk_size = MAX_CHUNK_SIZE * 2;
    assert_rejects(&index, "chunk size");
    let mut index = sample();
    index.inodes[5].mode = 0o170777;
    assert_rejects(&index, "inode 5: mode");
    let mut index = sample();
    index.inodes[5].mtime_nsec = 1_000_000_000;
    assert_rejects(&index, "nanoseconds");
}

#[test]
fn rejects_bad_chunks() {
    let mut index = sample();
    file_chunks(&mut index, 2).1[1].blob = 7;
    assert_rejects(&index, "inode 2: chunk 1: names blob 7, but there are only 2");
    let mut index = sample();
    file_chunks(&mut index, 2).1[1].offset = 6;
    assert_rejects(&index, "inode 2: chunk 1: bytes 6+10 lie outside blob");
    let mut index = sample();
    file_chunks(&mut index, 2).1[1].offset = u64::MAX;
    assert_rejects(&index, "lie outside blob");
    let mut index = sample();
    *file_chunks(&mut index, 2).0 = 4096 + 99;
    assert_rejects(&index, "chunk lengths sum to 4196, file size is 4195");
    let mut index = sample();
    *file_chunks(&mut index, 2).0 = 3 * 4096;
    assert_rejects(&index, "2 chunks for 12288 bytes");
    let mut index = sample();
    file_chunks(&mut index, 2).1[0].len = 4000;
    assert_rejects(&index, "inode 2: chunk 0: length 4000 is invalid");
}

#[test]
fn rejects_bad_tree_shapes() {
    // Entry pointing past the end.
    let mut index = sample();
    dir_entries(&mut index, 0)[1].ino = 99;
    assert_rejects(&index, "inode 0: entry \"empty\" names inode 99, but there are only 7");
    // Root linked from a subdirectory.
    let mut index = sample();
    dir_entries(&mut index, 1).push(entry("up", 0));
    assert_rejects(&index, "links the root directory");
    // Directory linked twice.
    let mut index = sample();
    dir_entries(&mut index, 0).push(entry("zbin", 1));
    assert_rejects(&index, "links directory inode 1 a second time");
    // Orphan inode.
    let mut index = sample();
    dir_entries(&mut index, 0).remove(1);
    assert_rejects(&index, "inode 6: not reachable from the root");
    // A directory cycle detached from the root: 7 -> 8 -> 7.
    let mut index = sample();
    index.inodes.push(meta(Kind::Dir { entries: vec![entry("b", 8)] }));
    index.inodes.push(meta(Kind::Dir { entries: vec![entry("a", 7)] }));
    assert_rejects(&index, "inode 7: not reachable from the root");
    // Root that is not a directory.
    let mut index = sample();
    index.inodes.swap(0, 5);
    assert_rejects(&index, "inode 0 (the root) is not a directory");
}

#[test]
fn rejects_bad_prefetch() {
    let mut index = sample();
    index.prefetch = vec![1];
    assert_rejects(&index, "prefetch entry 0: inode 1 is not a regular file");
    let mut index = sample();
    index.prefetch = vec![2, 2];
    assert_rejects(&index, "prefetch entry 1: inode 2 is listed twice");
    let mut index = sample();
    index.prefetch = vec![70];
    assert_rejects(&index, "inode 70 does not exist");
}

#[test]
fn deep_trees_do_not_overflow_the_stack() {
    let depth = 200_000u32;
    let mut inodes: Vec<Inode> = (0..depth).map(|i| meta(Kind::Dir { entries: vec![entry("d", i + 1)] })).collect();
    inodes.push(meta(Kind::Fifo));
    let index = Index::new(4096, String::new(), vec![], inodes, vec![]);
    let back = Index::decode(&index.encode()).unwrap();
    assert_eq!(back.inodes.len(), depth as usize + 1);
}

/// Writes the fuzz seed corpus (vfs/fuzz/seeds/index_decode) when LAZY_FUZZ_SEEDS is set to a dir:
/// `LAZY_FUZZ_SEEDS=$PWD/vfs/fuzz/seeds/index_decode cargo test -p lazy-vfs --lib fuzz_seeds`.
#[test]
fn fuzz_seeds() {
    let Some(dir) = std::env::var_os("LAZY_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut small = sample();
    small.prefetch.clear();
    for (name, index) in [("sample", sample()), ("no-prefetch", small)] {
        let encoded = index.encode();
        let body_len = u64::from_le_bytes(encoded[12..20].try_into().unwrap()) as usize;
        let body = zstd::bulk::decompress(&encoded[20..], body_len).unwrap();
        let mut whole = vec![0u8];
        whole.extend_from_slice(&encoded);
        let mut raw = vec![1u8];
        raw.extend_from_slice(&body);
        std::fs::write(dir.join(format!("{name}-encoded")), whole).unwrap();
        std::fs::write(dir.join(format!("{name}-body")), raw).unwrap();
    }
}
