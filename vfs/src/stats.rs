//! Counters of one mount. Shared by the filesystem (bytes served) and the chunk source (fetches,
//! cache hits); read by `lazyctl stats` through the [`STATS_IOCTL`] of the mount root.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Largest [`Snapshot`] JSON the stats ioctl returns (the most an ioctl number can encode).
pub const STATS_MAX: usize = (1 << 14) - 1;

/// The ioctl on the mount root (a directory opened read-only) that copies [`Snapshot`] as JSON
/// into a [`STATS_MAX`]-byte buffer and returns its length: `_IOR('L', 1, [u8; STATS_MAX])`.
/// An ioctl rather than an xattr, so that the filesystem can tell the kernel it has no xattrs at
/// all when the image has none (see `LazyFs::getxattr`).
pub const STATS_IOCTL: u32 = (2 << 30) | ((STATS_MAX as u32) << 16) | ((b'L' as u32) << 8) | 1;

#[derive(Debug, Default)]
pub struct Stats {
    /// Sum of all regular file sizes in the image.
    pub image_bytes: AtomicU64,
    /// Bytes returned to read(2) callers.
    pub bytes_served: AtomicU64,
    /// Compressed bytes received from the registry.
    pub bytes_fetched: AtomicU64,
    /// HTTP range requests sent to the registry.
    pub requests: AtomicU64,
    /// Chunk reads answered by the node cache or an in-flight fetch of the same chunk.
    pub cache_hits: AtomicU64,
    /// Chunk reads that had to go to the registry.
    pub cache_misses: AtomicU64,
    /// Chunks whose digest did not match.
    pub verify_failures: AtomicU64,
    /// Chunks fetched by the prefetcher.
    pub prefetched_chunks: AtomicU64,
    /// Chunks fetched because they sit next to a miss in their blob (the span around a miss),
    /// before anyone read them.
    pub readahead_chunks: AtomicU64,
    /// Chunks another process sharing the node cache was fetching when this one needed them: it
    /// waited for that fetch and read the chunk from the cache instead of fetching it again.
    pub node_waits: AtomicU64,
    /// Opens answered with FUSE passthrough to a stored file (the kernel reads it directly).
    pub passthrough_opens: AtomicU64,
    /// Whole files this mount wrote into the verified file store.
    pub files_stored: AtomicU64,
    /// Stored files that failed their content check and were removed (served from chunks instead).
    pub stored_file_failures: AtomicU64,
    /// Name lookups the kernel asked for (its caches had no answer).
    pub lookups: AtomicU64,
    /// Entries (lookups, symlinks, directories) the replay of the image's start log performed,
    /// set once it is over ([`crate::fs::startlog`]).
    pub start_log_replayed: AtomicU64,
    /// Requests answered through FUSE over io_uring (the kernel's per-CPU queues) rather than
    /// /dev/fuse.
    pub uring_requests: AtomicU64,
    /// Per registry host (mirror or server): HTTP requests, bytes received, failed attempts.
    pub hosts: parking_lot::Mutex<BTreeMap<String, HostSnapshot>>,
}

/// What one registry host did for a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostSnapshot {
    pub requests: u64,
    pub bytes: u64,
    /// Attempts that failed (connection error, timeout, 5xx), each followed by a failover or retry.
    pub failures: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub image_bytes: u64,
    pub bytes_served: u64,
    pub bytes_fetched: u64,
    pub requests: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub verify_failures: u64,
    pub prefetched_chunks: u64,
    #[serde(default)]
    pub readahead_chunks: u64,
    #[serde(default)]
    pub node_waits: u64,
    #[serde(default)]
    pub passthrough_opens: u64,
    #[serde(default)]
    pub files_stored: u64,
    #[serde(default)]
    pub stored_file_failures: u64,
    #[serde(default)]
    pub lookups: u64,
    #[serde(default)]
    pub start_log_replayed: u64,
    #[serde(default)]
    pub uring_requests: u64,
    /// Which registry host served what (`host:port` -> counters).
    #[serde(default)]
    pub hosts: BTreeMap<String, HostSnapshot>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn add_host(&self, host: &str, requests: u64, bytes: u64, failures: u64) {
        let mut hosts = self.hosts.lock();
        let h = hosts.entry(host.to_string()).or_default();
        h.requests += requests;
        h.bytes += bytes;
        h.failures += failures;
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            image_bytes: self.image_bytes.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            requests: self.requests.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            cache_misses: self.cache_misses.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            prefetched_chunks: self.prefetched_chunks.load(Relaxed),
            readahead_chunks: self.readahead_chunks.load(Relaxed),
            node_waits: self.node_waits.load(Relaxed),
            passthrough_opens: self.passthrough_opens.load(Relaxed),
            files_stored: self.files_stored.load(Relaxed),
            stored_file_failures: self.stored_file_failures.load(Relaxed),
            lookups: self.lookups.load(Relaxed),
            start_log_replayed: self.start_log_replayed.load(Relaxed),
            uring_requests: self.uring_requests.load(Relaxed),
            hosts: self.hosts.lock().clone(),
        }
    }
}
