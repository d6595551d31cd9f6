//! Node-wide verified file store: the decompressed bytes of whole regular files, beside the chunk
//! cache (`<cache dir>/files/ab/abcdef...`), so a fully cached file can be served by the kernel
//! directly (FUSE passthrough) instead of chunk by chunk through the FUSE request loop.
//!
//! - Content-addressed: a file's key is a sha256 over its size and its chunk digests
//!   ([`FileStore::key`]), so identical files of different images share one stored file.
//! - Built only from chunks already in the node cache (never fetches), each chunk hashed against its
//!   digest as it is written; written to a temp file in the final directory and renamed into place,
//!   so readers see a whole file or none. Stored files are made read-only (mode 0444).
//! - Counted in the chunk cache's size cap and evicted with it, least recently used first (a
//!   stored file's LRU clock is its atime, set when it is handed out; a chunk's is its mtime).
//!   Eviction unlinks: a reader (or a FUSE passthrough backing file) that already has it open
//!   keeps reading it whole.
//! - Trust: without fs-verity (this kernel's ext4 has none), a stored file's content is hashed
//!   (chunk by chunk, against the index) the first time it is handed out after the node booted; a
//!   file that fails is logged, removed and reported as absent, so the caller serves the file from
//!   verified chunks instead. After that it is trusted while its inode, size and mtime are those
//!   seen at the check: a write through the filesystem changes the mtime, a replacement the inode,
//!   so a stored file changed after its check is hashed again before it is handed out. (Setting an
//!   mtime back takes root, who could equally rewrite this code; fs-verity would close that.)
//!   The checks are shared node-wide through an append-only log, `files/verified-<boot id>` (one
//!   line per check: key, device, inode, size, mtime), so a file hashed by one shim is not hashed
//!   again by the next container's shim; a new boot starts a new log (and removes the old one), so
//!   whatever happened to the disk while the node was down is caught by a fresh hash.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::cache::{create_temp, CacheError, ChunkCache, FILES_DIR};
use crate::digest::{Digest, Hasher};
use crate::index::Chunk;

/// A hand-out refreshes the stored file's atime (its LRU clock) at most this often: an hour is
/// fine grain for an LRU order, and a warm start does not write the metadata of every file it
/// opens when the last start was minutes ago.
const TOUCH_EVERY: Duration = Duration::from_secs(3600);

/// The node's log of checked stored files is started afresh when it grows past this (~18 000
/// lines; every shim holds the lines it has read, ~1.4 MB at most): files are then hashed once
/// more, nothing else is lost.
const VERIFIED_LOG_MAX: u64 = 2 << 20;

/// Where the kernel names this boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Why a file could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Some chunk is not in the node cache (yet): nothing was written.
    #[error("chunk {chunk_no} ({digest}) is not in the node cache")]
    Incomplete { chunk_no: usize, digest: Digest },
    #[error("chunk {chunk_no} ({digest}) in the node cache is corrupt: {reason}")]
    CorruptChunk { chunk_no: usize, digest: Digest, reason: String },
    #[error(transparent)]
    Io(#[from] CacheError),
}

/// What [`FileStore::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    Found(File),
    Absent,
    /// It was there but failed its check; it has been removed.
    Corrupt,
}

/// What identifies a stored file's content as it was when it was hashed: a write changes the
/// mtime, a replacement the inode. (Not the ctime: the LRU clock, the atime, is set explicitly,
/// which changes the ctime too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp { dev: meta.dev(), ino: meta.ino(), size: meta.len(), mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec() }
    }
}

/// Stored files hashed since the node booted, as they were then: by this process, and by the
/// others on the node through the boot's log.
struct Verified {
    stamps: HashMap<Digest, Stamp>,
    /// `<files dir>/verified-<boot id>`, for reading and appending; `None` when the boot id or the
    /// log cannot be had (then checks are this process's alone, which is only slower).
    log: Option<File>,
    /// How far this process has read the log.
    read_to: u64,
}

impl Verified {
    /// The log of `boot` (an id that changes when the node reboots) in `dir`.
    fn open(dir: &Path, boot: Option<&str>) -> Verified {
        let mut v = Verified { stamps: HashMap::new(), log: None, read_to: 0 };
        let Some(boot) = boot else { return v };
        let name = format!("verified-{boot}");
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let other = e.file_name();
                let other = other.to_string_lossy();
                if other.starts_with("verified-") && *other != name {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let path = dir.join(&name);
        match File::options().read(true).append(true).create(true).mode(0o600).open(&path) {
            Ok(log) => {
                if log.metadata().is_ok_and(|m| m.len() > VERIFIED_LOG_MAX) {
                    let _ = log.set_len(0);
                }
                v.log = Some(log);
                v.catch_up();
            }
            Err(e) => log::debug!("file store: no shared log of checked files ({}: {e})", path.display()),
        }
        v
    }

    /// Whether `key` was hashed as it is now (`stamp`), here or, as the log says, elsewhere.
    fn trusts(&mut self, key: &Digest, stamp: Stamp) -> bool {
        if self.stamps.get(key) == Some(&stamp) {
            return true;
        }
        self.catch_up();
        self.stamps.get(key) == Some(&stamp)
    }

    /// Notes that `key` hashed good as it is now (`stamp`), here and in the log.
    fn record(&mut self, key: Digest, stamp: Stamp) {
        self.stamps.insert(key, stamp);
        if let Some(log) = &self.log {
            let Stamp { dev, ino, size, mtime, mtime_nsec } = stamp;
            let line = format!("{key} {dev} {ino} {size} {mtime} {mtime_nsec}\n");
            // One write of a short line to a file opened O_APPEND: appended whole, never interleaved
            // with another process's line.
            let _ = (&*log).write(line.as_bytes());
        }
    }

    fn forget(&mut self, key: &Digest) {
        self.stamps.remove(key);
    }

    /// Reads the lines appended to the log since last time (whole lines only).
    fn catch_up(&mut self) {
        let Some(log) = &self.log else { return };
        let Ok(len) = log.metadata().map(|m| m.len()) else { return };
        if len < self.read_to {
            self.read_to = 0; // started afresh by another process
        }
        let mut buf = vec![0u8; (len - self.read_to) as usize];
        let Ok(n) = log.read_at(&mut buf, self.read_to) else { return };
        buf.truncate(n);
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return };
        for line in buf[..end].split(|&b| b == b'\n') {
            if let Some((key, stamp)) = parse_log_line(line) {
                self.stamps.insert(key, stamp);
            }
        }
        self.read_to += end as u64 + 1;
    }
}

fn parse_log_line(line: &[u8]) -> Option<(Digest, Stamp)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut f = line.split(' ');
    let key = f.next()?.parse().ok()?;
    let stamp = Stamp {
        dev: f.next()?.parse().ok()?,
        ino: f.next()?.parse().ok()?,
        size: f.next()?.parse().ok()?,
        mtime: f.next()?.parse().ok()?,
        mtime_nsec: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some((key, stamp))
}

pub struct FileStore {
    cache: Arc<ChunkCache>,
    dir: PathBuf,
    verified: Mutex<Verified>,
    /// Stored files this process hashed before handing them out.
    checks: AtomicU64,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl FileStore {
    /// The store under `cache`'s directory, sharing its size cap.
    pub fn open(cache: Arc<ChunkCache>) -> Result<FileStore, CacheError> {
        let boot = fs::read_to_string(BOOT_ID).ok();
        FileStore::open_in_boot(cache, boot.as_deref().map(str::trim))
    }

    /// [`FileStore::open`] as if the node's boot id were `boot` (`None`: no shared log).
    fn open_in_boot(cache: Arc<ChunkCache>, boot: Option<&str>) -> Result<FileStore, CacheError> {
        let dir = cache.dir().join(FILES_DIR);
        fs::create_dir_all(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?;
        let verified = Mutex::new(Verified::open(&dir, boot));
        Ok(FileStore { cache, dir, verified, checks: AtomicU64::new(0) })
    }

    /// How many stored files this process has hashed before handing them out (the rest were
    /// trusted from an earlier check on this node since it booted).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// The content address of a file made of `chunks` (in order), `size` bytes long.
    pub fn key(size: u64, chunks: &[Chunk]) -> Digest {
        let mut h = Hasher::new();
        h.update(b"lazy-file-v1\0");
        h.update(&size.to_le_bytes());
        for c in chunks {
            h.update(&c.digest.0);
        }
        h.finish()
    }

    pub fn path_of(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, key: &Digest) -> bool {
        self.path_of(key).exists()
    }

    /// The stored file, opened read-only, if present and intact. `label` names the file in logs.
    /// The first call per key in this process hashes the whole file against `chunks`; a file that
    /// fails is removed (logged at error level) and reported as [`Lookup::Corrupt`].
    pub fn lookup(&self, key: &Digest, size: u64, chunks: &[Chunk], label: &str) -> Lookup {
        match self.open_verified(key, size, chunks, label) {
            Ok(Some(f)) => Lookup::Found(f),
            Ok(None) => Lookup::Absent,
            Err(()) => Lookup::Corrupt,
        }
    }

    /// [`FileStore::lookup`] without the distinction between absent and corrupt.
    fn open_verified(&self, key: &Digest, size: u64, chunks: &[Chunk], label: &str) -> Result<Option<File>, ()> {
        let path = self.path_of(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                log::warn!("file store {}: {e}; serving {label} from chunks", path.display());
                return Ok(None);
            }
        };
        let Ok(meta) = file.metadata() else { return Ok(None) };
        if meta.len() != size {
            log::error!(
                "file store {}: {label} is {} bytes on disk, the index says {size}; removing it and serving from chunks",
                path.display(),
                meta.len()
            );
            self.discard(&path);
            return Err(());
        }
        if !self.verified.lock().trusts(key, Stamp::of(&meta)) {
            self.checks.fetch_add(1, Ordering::Relaxed);
            if let Err(reason) = check_content(&file, chunks) {
                log::error!(
                    "file store {}: {label} is corrupt on disk ({reason}); removing it and serving from verified chunks",
                    path.display()
                );
                self.verified.lock().forget(key);
                self.discard(&path);
                return Err(());
            }
            self.verified.lock().record(*key, Stamp::of(&meta));
        }
        let stale = meta.accessed().ok().and_then(|a| a.elapsed().ok()).is_none_or(|age| age > TOUCH_EVERY);
        if stale {
            // The LRU clock (the owner may set it on a read-only descriptor). Failure only makes
            // this file look older than it is.
            let _ = file.set_times(fs::FileTimes::new().set_accessed(SystemTime::now()));
        }
        Ok(Some(file))
    }

    /// Writes the file made of `chunks` from the node cache into the store, unless present.
    /// Never fetches: fails with [`StoreError::Incomplete`] if any chunk is missing. Returns the
    /// bytes written (0 if it was already stored).
    pub fn store(&self, key: &Digest, size: u64, chunks: &[Chunk]) -> Result<u64, StoreError> {
        let path = self.path_of(key);
        if path.exists() {
            return Ok(0);
        }
        // Cheap completeness check first: a partly cached file costs a few stats, not a copy.
        for (chunk_no, c) in chunks.iter().enumerate() {
            if !self.cache.contains(&c.digest) {
                return Err(StoreError::Incomplete { chunk_no, digest: c.digest });
            }
        }
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io(CacheError::Io { path, source })
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (tmp, mut out) = create_temp(&dir, &key.hex()).map_err(io(&dir))?;
        let result = (|| -> Result<(), StoreError> {
            let mut written = 0u64;
            for (chunk_no, c) in chunks.iter().enumerate() {
                let data = match fs::read(self.cache.path_of(&c.digest)) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::Incomplete { chunk_no, digest: c.digest })
                    }
                    Err(e) => return Err(io(&self.cache.path_of(&c.digest))(e)),
                };
                if data.len() != c.len as usize {
                    let reason = format!("{} bytes, the index says {}", data.len(), c.len);
                    return Err(StoreError::CorruptChunk { chunk_no, digest: c.digest, reason });
                }
                let got = Digest::of(&data);
                if got != c.digest {
                    return Err(StoreError::CorruptChunk {
                        chunk_no,
                        digest: c.digest,
                        reason: format!("hashes to {got}"),
                    });
                }
                out.write_all(&data).map_err(io(&tmp))?;
                written += data.len() as u64;
            }
            if written != size {
                let reason = format!("chunks add up to {written} bytes, the file has {size}");
                return Err(StoreError::CorruptChunk { chunk_no: chunks.len(), digest: *key, reason });
            }
            out.set_permissions(fs::Permissions::from_mode(0o444)).map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // We hashed every chunk while writing this file, and no one else writes it (its temp file
        // was ours alone): this process trusts it, as it is now, if
        // it is still the one at `path` (another process may have renamed its copy over it; that
        // one is hashed when first handed out).
        if let (Ok(ours), Ok(there)) = (out.metadata(), fs::metadata(&path)) {
            if Stamp::of(&ours) == Stamp::of(&there) {
                self.verified.lock().record(*key, Stamp::of(&ours));
            }
        }
        self.cache.account(size);
        Ok(size)
    }

    fn discard(&self, path: &Path) {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(path).is_ok() {
            self.cache.account_removed(len);
        }
    }
}

/// Hashes `file` chunk by chunk against `chunks`, with positional reads: the descriptor checked
/// is the one handed out, at offset 0.
fn check_content(file: &File, chunks: &[Chunk]) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut at = 0u64;
    for (n, c) in chunks.iter().enumerate() {
        buf.resize(c.len as usize, 0);
        file.read_exact_at(&mut buf, at).map_err(|e| format!("reading chunk {n}: {e}"))?;
        let got = Digest::of(&buf);
        if got != c.digest {
            return Err(format!("chunk {n} hashes to {got}, expected {}", c.digest));
        }
        at += c.len as u64;
    }
    let mut rest = [0u8; 1];
    match file.read_at(&mut rest, at) {
        Ok(0) => Ok(()),
        Ok(_) => Err("longer than its chunks".into()),
        Err(e) => Err(format!("reading past the last chunk: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn chunks_of(cache: &ChunkCache, data: &[u8], chunk: usize, put: bool) -> Vec<Chunk> {
        data.chunks(chunk)
            .map(|c| {
                let d = Digest::of(c);
                if put {
                    cache.put(&d, c).unwrap();
                }
                Chunk { blob: 0, offset: 0, compressed_len: 0, len: c.len() as u32, digest: d }
            })
            .collect()
    }

    #[test]
    fn stores_a_fully_cached_file_and_refuses_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let store = FileStore::open(cache.clone()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut chunks = chunks_of(&cache, &data, 4096, true);
        let key = FileStore::key(data.len() as u64, &chunks);
        assert_eq!(store.store(&key, data.len() as u64, &chunks).unwrap(), data.len() as u64);
        assert_eq!(store.store(&key, data.len() as u64, &chunks).unwrap(), 0, "already stored");
        assert_eq!(cache.size(), 2 * data.len() as u64, "chunks and the stored file are both counted");
        let mut f = store.open_verified(&key, data.len() as u64, &chunks, "f").unwrap().unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(fs::metadata(store.path_of(&key)).unwrap().permissions().mode() & 0o777, 0o444);

        // A file with one chunk not cached is not stored, and nothing is left behind.
        let other: Vec<u8> = (0..9000u32).map(|i| (i / 100) as u8).collect();
        let mut partial = chunks_of(&cache, &other[..4096], 4096, true);
        partial.extend(chunks_of(&cache, &other[4096..], 4096, false));
        let k2 = FileStore::key(9000, &partial);
        assert!(matches!(store.store(&k2, 9000, &partial), Err(StoreError::Incomplete { chunk_no: 1, .. })));
        assert!(!store.contains(&k2));
        let leftovers = fs::read_dir(store.path_of(&k2).parent().unwrap()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "no temp file left behind");

        // Different chunking gives a different key.
        chunks.pop();
        assert_ne!(FileStore::key(data.len() as u64, &chunks), key);
    }

    /// Every lazy mount of a pod shim has its own store on the one node cache, in one process:
    /// storers of the same file at the same moment must never share a temp file (they did: the
    /// names were numbered per store, so two stores' first files had the same name, one writer
    /// truncated the other's, and the result was renamed into place and trusted as written).
    #[test]
    fn stores_of_one_process_writing_the_same_file_at_once_never_hand_out_a_mix() {
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
            let chunks = chunks_of(&cache, &data, 64 << 10, true);
            let key = FileStore::key(data.len() as u64, &chunks);
            let stores: Vec<FileStore> = (0..4).map(|_| FileStore::open(cache.clone()).unwrap()).collect();
            let start = std::sync::Barrier::new(stores.len());
            std::thread::scope(|s| {
                for store in &stores {
                    let (start, chunks, size, data) = (&start, &chunks, data.len() as u64, &data);
                    s.spawn(move || {
                        start.wait();
                        // Losing the race to another store is fine; handing out a mixed or
                        // unfinished file right after storing it is not.
                        let _ = store.store(&key, size, chunks);
                        if let Lookup::Found(mut f) = store.lookup(&key, size, chunks, "f") {
                            let mut got = Vec::new();
                            f.read_to_end(&mut got).unwrap();
                            assert!(
                                got == *data,
                                "round {round}: a store handed out a file other than what was stored"
                            );
                        }
                    });
                }
            });
            for (i, store) in stores.iter().enumerate() {
                let Lookup::Found(mut f) = store.lookup(&key, data.len() as u64, &chunks, "f") else {
                    continue;
                };
                let mut got = Vec::new();
                f.read_to_end(&mut got).unwrap();
                assert!(got == data, "round {round}: store {i} handed out a file that is not what was stored");
            }
            let temps: Vec<_> = fs::read_dir(store_dir(&stores[0], &key))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
                .collect();
            assert!(temps.is_empty(), "round {round}: temp files left: {temps:?}");
        }
    }

    fn store_dir(store: &FileStore, key: &Digest) -> PathBuf {
        store.path_of(key).parent().unwrap().to_path_buf()
    }

    #[test]
    fn a_corrupt_stored_file_is_never_handed_out_in_a_new_process() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let data = vec![5u8; 20_000];
        let (key, chunks) = {
            let store = FileStore::open(cache.clone()).unwrap();
            let chunks = chunks_of(&cache, &data, 8192, true);
            let key = FileStore::key(data.len() as u64, &chunks);
            store.store(&key, data.len() as u64, &chunks).unwrap();
            (key, chunks)
        };
        // Flip a byte on disk.
        let path = FileStore::open(cache.clone()).unwrap().path_of(&key);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        File::options().write(true).open(&path).unwrap().write_all_at(&[6], 12_345).unwrap();
        // A new store (as in another process) hashes before handing it out.
        let store = FileStore::open(cache.clone()).unwrap();
        assert!(matches!(store.lookup(&key, data.len() as u64, &chunks, "f"), Lookup::Corrupt));
        assert!(!path.exists(), "the corrupt file is removed");
        // Rebuilt from the chunks, it is good again.
        store.store(&key, data.len() as u64, &chunks).unwrap();
        assert!(matches!(store.lookup(&key, data.len() as u64, &chunks, "f"), Lookup::Found(_)));
    }

    #[test]
    fn a_file_checked_by_one_process_is_trusted_by_the_next_until_the_node_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
        let chunks = chunks_of(&cache, &data, 8192, true);
        let key = FileStore::key(data.len() as u64, &chunks);
        let size = data.len() as u64;
        let found = |store: &FileStore| matches!(store.lookup(&key, size, &chunks, "f"), Lookup::Found(_));

        // Stored by one process (it hashed every chunk as it wrote them): trusted there.
        let writer = FileStore::open_in_boot(cache.clone(), Some("boot-a")).unwrap();
        let early = FileStore::open_in_boot(cache.clone(), Some("boot-a")).unwrap();
        writer.store(&key, size, &chunks).unwrap();
        assert!(found(&writer));
        assert_eq!(writer.checks(), 0);
        // The next shim on the node, same boot: trusted from the log, not hashed again; opened
        // before the writer stored the file, it catches up with the log when it needs to.
        let next = FileStore::open_in_boot(cache.clone(), Some("boot-a")).unwrap();
        assert!(found(&next) && found(&early));
        assert_eq!((next.checks(), early.checks()), (0, 0));
        // A hand-out long after the last one moves the file's LRU clock (its atime) and nothing
        // the check depends on: the next process still trusts it.
        let path = writer.path_of(&key);
        let long_ago = SystemTime::now() - 2 * TOUCH_EVERY;
        File::open(&path).unwrap().set_times(fs::FileTimes::new().set_accessed(long_ago)).unwrap();
        assert!(found(&next));
        let used = fs::metadata(&path).unwrap().accessed().unwrap().elapsed().unwrap();
        assert!(used < Duration::from_secs(60), "the hand-out refreshed the LRU clock: {used:?} ago");
        let later = FileStore::open_in_boot(cache.clone(), Some("boot-a")).unwrap();
        assert!(found(&later));
        assert_eq!(later.checks(), 0);
        // After a reboot: hashed once, then trusted; the old boot's log is gone.
        let rebooted = FileStore::open_in_boot(cache.clone(), Some("boot-b")).unwrap();
        let Lookup::Found(mut checked) = rebooted.lookup(&key, size, &chunks, "f") else { panic!("not found") };
        let mut got = Vec::new();
        checked.read_to_end(&mut got).unwrap();
        assert!(got == data, "the descriptor that was hashed is handed out reading from its start");
        assert!(found(&rebooted));
        assert_eq!(rebooted.checks(), 1);
        let logs: Vec<String> = fs::read_dir(dir.path().join(FILES_DIR))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("verified-"))
            .collect();
        assert_eq!(logs, ["verified-boot-b"]);
        // Without a boot id, every process hashes for itself.
        let alone = FileStore::open_in_boot(cache.clone(), None).unwrap();
        assert!(found(&alone));
        assert_eq!(alone.checks(), 1);

        // Changed on disk after those checks: the next process hashes it, finds it corrupt and
        // removes it, however many checks the log holds.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        File::options().write(true).open(&path).unwrap().write_all_at(&[9], 20_000).unwrap();
        let after = FileStore::open_in_boot(cache.clone(), Some("boot-b")).unwrap();
        assert!(matches!(after.lookup(&key, size, &chunks, "f"), Lookup::Corrupt));
        assert!(!path.exists(), "the corrupt file is removed");
    }

    #[test]
    fn a_torn_or_foreign_line_in_the_log_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let data = vec![3u8; 10_000];
        let chunks = chunks_of(&cache, &data, 4096, true);
        let key = FileStore::key(data.len() as u64, &chunks);
        FileStore::open_in_boot(cache.clone(), Some("b")).unwrap().store(&key, 10_000, &chunks).unwrap();
        let log = dir.path().join(FILES_DIR).join("verified-b");
        let mut text = fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        // Garbage before the good line, and a half-written line after it.
        text = format!("not a line\n{key} 1 2\n{text}{key} 5 6 7");
        fs::write(&log, text).unwrap();
        let store = FileStore::open_in_boot(cache.clone(), Some("b")).unwrap();
        assert!(matches!(store.lookup(&key, 10_000, &chunks, "f"), Lookup::Found(_)));
        assert_eq!(store.checks(), 0, "the good line is read");
    }

    #[test]
    fn a_stored_file_changed_after_its_check_in_this_process_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let data = vec![7u8; 20_000];
        let store = FileStore::open(cache.clone()).unwrap();
        let chunks = chunks_of(&cache, &data, 8192, true);
        let key = FileStore::key(data.len() as u64, &chunks);
        store.store(&key, data.len() as u64, &chunks).unwrap();
        assert!(matches!(store.lookup(&key, data.len() as u64, &chunks, "f"), Lookup::Found(_)));
        // Changed on disk after this process checked and handed it out: never handed out again.
        let path = store.path_of(&key);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        File::options().write(true).open(&path).unwrap().write_all_at(&[8], 100).unwrap();
        assert!(matches!(store.lookup(&key, data.len() as u64, &chunks, "f"), Lookup::Corrupt));
        assert!(!path.exists(), "the corrupt file is removed");
    }

    #[test]
    fn a_corrupt_chunk_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
        let store = FileStore::open(cache.clone()).unwrap();
        let data = vec![9u8; 5000];
        let chunks = chunks_of(&cache, &data, 5000, true);
        fs::write(cache.path_of(&chunks[0].digest), vec![8u8; 5000]).unwrap();
        let key = FileStore::key(5000, &chunks);
        assert!(matches!(store.store(&key, 5000, &chunks), Err(StoreError::CorruptChunk { .. })));
        assert!(!store.contains(&key));
    }

    #[test]
    fn stored_files_are_evicted_with_chunks_and_open_readers_keep_reading() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(dir.path(), 30_000).unwrap().with_min_age(Duration::ZERO));
        let store = FileStore::open(cache.clone()).unwrap();
        let data: Vec<u8> = (0..12_000u32).map(|i| (i % 253) as u8).collect();
        let chunks = chunks_of(&cache, &data, 6000, true);
        let key = FileStore::key(data.len() as u64, &chunks);
        store.store(&key, data.len() as u64, &chunks).unwrap(); // 24 000 bytes: under the cap
        let mut reader = store.open_verified(&key, data.len() as u64, &chunks, "f").unwrap().unwrap();
        // Age everything (the stored file most), then add new chunks over the cap: the oldest go,
        // the stored file first.
        let long_ago = SystemTime::now() - Duration::from_secs(1000);
        let stored = File::open(store.path_of(&key)).unwrap();
        stored.set_times(fs::FileTimes::new().set_accessed(long_ago - Duration::from_secs(1))).unwrap();
        for p in [cache.path_of(&chunks[0].digest), cache.path_of(&chunks[1].digest)] {
            File::options().write(true).open(&p).unwrap().set_modified(long_ago).unwrap();
        }
        chunks_of(&cache, &vec![1u8; 10_000], 10_000, true);
        assert!(!store.contains(&key), "the least recently used stored file is evicted");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, data, "an open reader of an evicted stored file reads it whole");
    }
}
