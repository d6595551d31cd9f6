//! Test fixtures: a small index holding every kind of entry, and an in-memory [`ChunkSource`] that
//! records what it was asked for and can be told to fail.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::digest::Digest;
use crate::fetch::{ChunkRef, ChunkSource, FetchError, PREFETCH_MAX_FAILURES};
use crate::index::{BlobRef, Chunk, DirEntry, Index, Inode, Kind, Xattr};

pub const CHUNK: u32 = 16;
/// 40 bytes: three chunks (16 + 16 + 8).
pub const DATA: &[u8] = b"0123456789abcdefGHIJKLMNOPQRSTUVwxyz!?#$";
pub const SH: &[u8] = b"#!/bin/sh\necho hi\n";
/// A valid `vfs_cap_data` (revision 2, effective, permitted = cap_net_bind_service): the kernel
/// validates security.capability values it reads.
pub const CAP_NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const MTIME: i64 = 1_700_000_000;
pub const MTIME_NSEC: u32 = 123_456_789;

#[derive(Default)]
pub struct FakeSource {
    chunks: HashMap<Digest, Bytes>,
    pub failing: Mutex<HashSet<Digest>>,
    /// Every read_chunks call: (path, chunk numbers).
    pub calls: Mutex<Vec<(String, Vec<usize>)>>,
    /// Every batch a prefetch call fetched: (path, chunk number) per chunk.
    pub prefetch_calls: Mutex<Vec<Vec<(String, usize)>>>,
    /// Chunks whose reads block until removed from the set (see [`FakeSource::release`]).
    pub held: Mutex<HashSet<Digest>>,
    released: Condvar,
    /// Added to every call: a slow network.
    pub delay: Mutex<Duration>,
    /// Every fetch_soon call: (path, chunk numbers).
    pub soon_calls: Mutex<Vec<(String, Vec<usize>)>>,
}

impl FakeSource {
    pub fn total_calls(&self) -> usize {
        self.calls.lock().len() + self.prefetch_calls.lock().len()
    }

    /// Lets held reads of `digest` continue.
    pub fn release(&self, digest: &Digest) {
        self.held.lock().remove(digest);
        self.released.notify_all();
    }

    fn get(&self, r: &ChunkRef<'_>) -> Result<Bytes, FetchError> {
        let mut held = self.held.lock();
        while held.contains(&r.chunk.digest) {
            self.released.wait(&mut held);
        }
        drop(held);
        if self.failing.lock().contains(&r.chunk.digest) {
            return Err(FetchError::Unavailable {
                path: r.path.to_string(),
                chunk_no: r.chunk_no,
                chunk: r.chunk.digest,
                reason: "fake outage".to_string(),
            });
        }
        Ok(self.chunks.get(&r.chunk.digest).cloned().expect("fake source knows every chunk of the fixture"))
    }
}

impl ChunkSource for FakeSource {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        std::thread::sleep(*self.delay.lock());
        self.calls.lock().push((chunks[0].path.to_string(), chunks.iter().map(|c| c.chunk_no).collect()));
        chunks.iter().map(|c| self.get(c)).collect()
    }

    fn fetch_soon(&self, chunks: &[ChunkRef<'_>]) {
        self.soon_calls.lock().push((chunks[0].path.to_string(), chunks.iter().map(|c| c.chunk_no).collect()));
    }

    /// One chunk per batch, each after the delay; gives up after three failed batches in a row.
    fn prefetch(&self, chunks: &[ChunkRef<'_>], stop: &AtomicBool) -> Result<(), FetchError> {
        let mut failed = 0;
        for c in chunks {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(*self.delay.lock());
            self.prefetch_calls.lock().push(vec![(c.path.to_string(), c.chunk_no)]);
            match self.get(c) {
                Ok(_) => failed = 0,
                Err(e) if failed + 1 >= PREFETCH_MAX_FAILURES => return Err(e),
                Err(_) => failed += 1,
            }
        }
        Ok(())
    }
}

fn meta(kind: Kind, mode: u32) -> Inode {
    Inode { kind, mode, uid: 0, gid: 0, mtime: MTIME, mtime_nsec: MTIME_NSEC, xattrs: Vec::new() }
}

fn file(data: &[u8], src: &mut FakeSource) -> Kind {
    file_chunked(data, CHUNK, src)
}

fn file_chunked(data: &[u8], chunk_size: u32, src: &mut FakeSource) -> Kind {
    let chunks = data
        .chunks(chunk_size as usize)
        .enumerate()
        .map(|(i, piece)| {
            let digest = Digest::of(piece);
            src.chunks.insert(digest, Bytes::copy_from_slice(piece));
            Chunk {
                blob: 0,
                offset: i as u64 * chunk_size as u64,
                compressed_len: piece.len() as u32,
                len: piece.len() as u32,
                digest,
            }
        })
        .collect();
    Kind::File { size: data.len() as u64, chunks }
}

fn dir(mut entries: Vec<(&str, u32)>) -> Kind {
    entries.sort();
    Kind::Dir { entries: entries.into_iter().map(|(n, ino)| DirEntry { name: n.as_bytes().to_vec(), ino }).collect() }
}

/// The fixture tree (index positions in brackets):
/// ```text
/// / [0]  bin/ [1]  bin/sh [2]  data [3] (xattrs, hardlinked as hard)  empty [4]  link -> data [5]
/// abs -> /bin/sh [6]  dev/ [7]  dev/null [8] (c 1,3)  dev/sda [9] (b 8,0)  fifo [10]  sock [11]
/// secret [12] (0600, uid 1000)
/// ```
/// The prefetch list is [secret, bin/sh].
pub fn fixture() -> (Arc<Index>, Arc<FakeSource>) {
    let mut src = FakeSource::default();
    let mut data = meta(file(DATA, &mut src), 0o644);
    data.xattrs = vec![
        Xattr { name: b"security.capability".to_vec(), value: CAP_NET_BIND_SERVICE.to_vec() },
        Xattr { name: b"user.color".to_vec(), value: b"blue".to_vec() },
    ];
    let mut secret = meta(file(b"top secret", &mut src), 0o600);
    secret.uid = 1000;
    secret.gid = 1000;
    let inodes = vec![
        meta(
            dir(vec![
                ("bin", 1),
                ("data", 3),
                ("hard", 3),
                ("empty", 4),
                ("link", 5),
                ("abs", 6),
                ("dev", 7),
                ("fifo", 10),
                ("sock", 11),
                ("secret", 12),
            ]),
            0o755,
        ),
        meta(dir(vec![("sh", 2)]), 0o755),
        meta(file(SH, &mut src), 0o4755),
        data,
        meta(file(b"", &mut src), 0o644),
        meta(Kind::Symlink { target: b"data".to_vec() }, 0o777),
        meta(Kind::Symlink { target: b"/bin/sh".to_vec() }, 0o777),
        meta(dir(vec![("null", 8), ("sda", 9)]), 0o755),
        meta(Kind::CharDevice { major: 1, minor: 3 }, 0o666),
        meta(Kind::BlockDevice { major: 8, minor: 0 }, 0o660),
        meta(Kind::Fifo, 0o644),
        meta(Kind::Socket, 0o755),
        secret,
    ];
    let blobs = vec![BlobRef { digest: Digest::of(b"blob"), size: 4096 }];
    let index = Index::new(CHUNK, "127.0.0.1:5000/test".to_string(), blobs, inodes, vec![12, 2]);
    (Arc::new(index), Arc::new(src))
}

/// An index whose root holds one file, `big`, with `data` cut into `chunk_size` chunks.
pub fn single_file(data: &[u8], chunk_size: u32) -> (Arc<Index>, Arc<FakeSource>) {
    let mut src = FakeSource::default();
    let inodes = vec![meta(dir(vec![("big", 1)]), 0o755), meta(file_chunked(data, chunk_size, &mut src), 0o644)];
    let blobs = vec![BlobRef { digest: Digest::of(b"blob"), size: data.len() as u64 }];
    (Arc::new(Index::new(chunk_size, "127.0.0.1:5000/test".to_string(), blobs, inodes, Vec::new())), Arc::new(src))
}

/// A program and the libraries it loads, laid out as on Debian (`/lib` -> `usr/lib`, the loader
/// reached through `/lib64`): `/usr/bin/app` is `program` (an ELF file); every library it names
/// is a small non-ELF file in `/usr/lib/<multiarch dir>`; its interpreter is a symlink chain
/// ending there too. Returns the index, the source and the library paths the program names
/// (interpreter first), as resolved in the image.
pub fn program_tree(
    program: &[u8],
    interp: &str,
    libdir: &str,
    needed: &[String],
) -> (Arc<Index>, Arc<FakeSource>, Vec<String>) {
    let mut src = FakeSource::default();
    // Inodes: 0 /, 1 /usr, 2 /usr/bin, 3 /usr/bin/app, 4 /usr/lib, 5 /usr/lib/<triplet>,
    // 6 /lib -> usr/lib, 7 /lib64, 8 /lib64/<interp name> -> <libdir>/<interp name>, then files.
    let interp_name = interp.rsplit('/').next().unwrap_or(interp).to_string();
    let triplet = libdir.rsplit('/').next().unwrap_or(libdir).to_string();
    let mut lib_entries: Vec<(String, u32)> = Vec::new();
    let mut files = Vec::new();
    let mut names: Vec<String> = vec![interp_name.clone()];
    names.extend(needed.iter().filter(|n| **n != interp_name).cloned());
    for (i, name) in names.iter().enumerate() {
        lib_entries.push((name.clone(), 9 + i as u32));
        files.push(meta(file_chunked(format!("not an ELF file: {name}").as_bytes(), 1 << 16, &mut src), 0o755));
    }
    let lib_entries: Vec<(&str, u32)> = lib_entries.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    let mut inodes = vec![
        meta(dir(vec![("usr", 1), ("lib", 6), ("lib64", 7)]), 0o755),
        meta(dir(vec![("bin", 2), ("lib", 4)]), 0o755),
        meta(dir(vec![("app", 3)]), 0o755),
        meta(file_chunked(program, 1 << 16, &mut src), 0o755),
        meta(dir(vec![(triplet.as_str(), 5)]), 0o755),
        meta(dir(lib_entries), 0o755),
        meta(Kind::Symlink { target: b"usr/lib".to_vec() }, 0o777),
        meta(dir(vec![(interp_name.as_str(), 8)]), 0o755),
        meta(Kind::Symlink { target: format!("/lib/{triplet}/{interp_name}").into_bytes() }, 0o777),
    ];
    inodes.extend(files);
    let blobs = vec![BlobRef { digest: Digest::of(b"blob"), size: program.len() as u64 }];
    let index = Index::new(1 << 16, "127.0.0.1:5000/test".to_string(), blobs, inodes, Vec::new());
    let paths = names.iter().map(|n| format!("/usr/lib/{triplet}/{n}")).collect();
    (Arc::new(index), Arc::new(src), paths)
}
