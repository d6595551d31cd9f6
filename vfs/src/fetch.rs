//! Turns chunk reads into verified bytes. The contract between the filesystem and the network.
//!
//! [`ChunkSource`] is what [`crate::fs`] reads through. The real implementation,
//! [`RegistryChunkSource`], checks the node cache first, otherwise coalesces adjacent chunks into
//! one range request, verifies every chunk against its digest before serving or caching it, and
//! makes concurrent readers of the same chunk share one fetch. Tests of the filesystem use an
//! in-memory fake.
//!
//! Threads: FUSE request threads call in (blocking). Network I/O runs on a tokio runtime reached
//! through a [`Handle`]; decompression and hashing run on the calling thread, so runtime workers
//! only move bytes. Nothing here may block forever: every wait is bounded by the fetch deadline.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Condvar, Mutex};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::index::{BlobRef, Chunk};
use crate::registry::{Client, Reference, RegistryError};
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: chunk {chunk_no} ({chunk}): digest mismatch (want {chunk}, got {got})")]
    DigestMismatch { path: String, chunk_no: usize, chunk: Digest, got: Digest },
    #[error("{path}: chunk {chunk_no} ({chunk}): {reason}")]
    Corrupt { path: String, chunk_no: usize, chunk: Digest, reason: String },
    #[error("{path}: chunk {chunk_no} ({chunk}): registry unreachable until the deadline: {reason}")]
    Unavailable { path: String, chunk_no: usize, chunk: Digest, reason: String },
}

/// Which chunk of which file a read is for: only used to make errors and logs name the file.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRef<'a> {
    pub path: &'a str,
    /// Position of the chunk in the file's chunk list.
    pub chunk_no: usize,
    pub chunk: &'a Chunk,
}

/// A source of verified, uncompressed chunk contents. Called from FUSE request threads (blocking).
pub trait ChunkSource: Send + Sync {
    /// Returns the contents of every requested chunk, in order. Chunks that are adjacent in the same
    /// blob should be fetched with one request. Blocks until every chunk is available or failed.
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>>;

    /// Brings chunks into the node cache without returning them (prefetch). Must yield to
    /// on-demand reads: implementations bound how much prefetch runs at once.
    fn prefetch(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<(), FetchError>> {
        self.read_chunks(chunks).into_iter().map(|r| r.map(|_| ())).collect()
    }
}

impl<T: ChunkSource + ?Sized> ChunkSource for Arc<T> {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        (**self).read_chunks(chunks)
    }
    fn prefetch(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<(), FetchError>> {
        (**self).prefetch(chunks)
    }
}

/// Reads byte ranges of data blobs by digest. [`RegistryBlobs`] is the real one; tests use fakes.
pub trait BlobReader: Send + Sync {
    /// Reads `range` of `blob`, retrying transient failures for at most `deadline`.
    fn read_range<'a>(&'a self, blob: &'a Digest, range: Range<u64>, deadline: Duration) -> BoxFuture<'a, Result<Bytes, RegistryError>>;
}

/// Range reads from one registry repository.
pub struct RegistryBlobs {
    pub client: Client,
    pub repository: Reference,
}

impl BlobReader for RegistryBlobs {
    fn read_range<'a>(&'a self, blob: &'a Digest, range: Range<u64>, deadline: Duration) -> BoxFuture<'a, Result<Bytes, RegistryError>> {
        Box::pin(self.client.get_blob_range_within(&self.repository, blob, range, deadline))
    }
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Longest a read waits for the network before failing with [`FetchError::Unavailable`]. Keep
    /// it at least the registry client's own deadline, or retries are cut short.
    pub deadline: Duration,
    /// Largest compressed span one coalesced range request may cover.
    pub max_span: u64,
    /// Range requests on-demand reads may have in flight at once.
    pub concurrency: usize,
    /// Range requests the prefetcher may have in flight at once: smaller, so reads are not starved.
    pub prefetch_concurrency: usize,
    /// Bytes of recently read chunks kept in memory. The kernel reads a file in pieces (128 KiB by
    /// default) and each piece asks for its whole chunk: without this, a sequential read of a 1 MiB
    /// chunk re-reads the cache file 8 times (or, with no node cache, fetches it 8 times). 0 disables.
    pub memory_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            deadline: Duration::from_secs(30),
            max_span: 8 << 20,
            concurrency: 8,
            prefetch_concurrency: 2,
            memory_bytes: 32 << 20,
        }
    }
}

/// Why a chunk failed, without the file it was read for (a shared fetch fails for all waiters,
/// each of which names its own file).
#[derive(Debug, Clone)]
enum Failure {
    Mismatch(Digest),
    Corrupt(String),
    Unavailable(String),
}

impl Failure {
    fn for_chunk(&self, c: &ChunkRef<'_>) -> FetchError {
        let (path, chunk_no, chunk) = (c.path.to_string(), c.chunk_no, c.chunk.digest);
        match self {
            Failure::Mismatch(got) => FetchError::DigestMismatch { path, chunk_no, chunk, got: *got },
            Failure::Corrupt(reason) => FetchError::Corrupt { path, chunk_no, chunk, reason: reason.clone() },
            Failure::Unavailable(reason) => FetchError::Unavailable { path, chunk_no, chunk, reason: reason.clone() },
        }
    }
}

/// One in-flight fetch of a chunk that other readers may wait on.
#[derive(Default)]
struct Flight {
    result: Mutex<Option<Result<Bytes, Failure>>>,
    done: Condvar,
}

impl Flight {
    fn wait(&self, timeout: Duration) -> Result<Bytes, Failure> {
        let until = Instant::now() + timeout;
        let mut slot = self.result.lock();
        while slot.is_none() {
            if self.done.wait_until(&mut slot, until).timed_out() && slot.is_none() {
                return Err(Failure::Unavailable(format!("another reader's fetch of this chunk did not finish within {timeout:?}")));
            }
        }
        slot.clone().unwrap_or_else(|| Err(Failure::Unavailable("fetch abandoned".into())))
    }
}

/// The registry-backed chunk source of one mounted image.
pub struct RegistryChunkSource {
    blobs: Vec<BlobRef>,
    reader: Arc<dyn BlobReader>,
    cache: Option<Arc<ChunkCache>>,
    stats: Arc<Stats>,
    handle: Handle,
    opts: FetchOptions,
    inflight: Mutex<HashMap<Digest, Arc<Flight>>>,
    demand: Arc<Semaphore>,
    prefetch_permits: Arc<Semaphore>,
    /// Chunks whose digest mismatch was already logged at error level (once per chunk, not per read).
    logged_bad: Mutex<HashSet<Digest>>,
    recent: Mutex<Recent>,
    /// When a fetch last failed because the registry was unreachable; cleared by the next success.
    /// While set (and recent), fetches only probe for [`OUTAGE_PROBE`] instead of waiting the whole
    /// deadline: the kernel retries a failed read page by page, and each retry must not cost another
    /// full deadline.
    outage_since: Mutex<Option<Instant>>,
}

/// Retry budget of a fetch while the registry is known to be down.
const OUTAGE_PROBE: Duration = Duration::from_secs(1);

/// Verified chunks recently served, first in first out, bounded in bytes.
#[derive(Default)]
struct Recent {
    map: HashMap<Digest, Bytes>,
    order: std::collections::VecDeque<Digest>,
    bytes: u64,
}

impl Recent {
    fn get(&self, d: &Digest) -> Option<Bytes> {
        self.map.get(d).cloned()
    }

    fn insert(&mut self, d: Digest, data: Bytes, cap: u64) {
        if data.len() as u64 > cap / 2 || self.map.contains_key(&d) {
            return;
        }
        self.bytes += data.len() as u64;
        self.map.insert(d, data);
        self.order.push_back(d);
        while self.bytes > cap {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(b) = self.map.remove(&old) {
                self.bytes -= b.len() as u64;
            }
        }
    }
}

/// A chunk this call fetches for everyone (the leader of its flight).
struct Lead<'c, 'a> {
    at: usize,
    c: &'c ChunkRef<'a>,
    flight: Arc<Flight>,
}

impl RegistryChunkSource {
    /// `blobs` is the index's blob table; `repository` is where the blobs live (the index's
    /// `source`, or an override such as a mirror). `cache` may be `None` (no node cache).
    ///
    /// `handle` must belong to a MULTI-THREAD runtime: reads call `handle.block_on` from FUSE
    /// threads, and a current-thread runtime's handle cannot drive I/O from another thread.
    pub fn new(
        blobs: Vec<BlobRef>,
        repository: Reference,
        client: Client,
        cache: Option<Arc<ChunkCache>>,
        stats: Arc<Stats>,
        handle: Handle,
        opts: FetchOptions,
    ) -> Self {
        let reader = Arc::new(RegistryBlobs { client, repository: repository.repository_only() });
        Self::with_reader(blobs, reader, cache, stats, handle, opts)
    }

    /// Same, over any blob reader (tests, alternative transports).
    pub fn with_reader(
        blobs: Vec<BlobRef>,
        reader: Arc<dyn BlobReader>,
        cache: Option<Arc<ChunkCache>>,
        stats: Arc<Stats>,
        handle: Handle,
        opts: FetchOptions,
    ) -> Self {
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            log::warn!("lazy chunk source on a current-thread tokio runtime: reads may stall; use a multi-thread runtime");
        }
        RegistryChunkSource {
            blobs,
            reader,
            cache,
            stats,
            handle,
            demand: Arc::new(Semaphore::new(opts.concurrency.max(1))),
            prefetch_permits: Arc::new(Semaphore::new(opts.prefetch_concurrency.max(1))),
            opts,
            inflight: Mutex::new(HashMap::new()),
            logged_bad: Mutex::new(HashSet::new()),
            recent: Mutex::new(Recent::default()),
            outage_since: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    fn cached(&self, c: &Chunk, prefetch: bool) -> Option<Bytes> {
        if prefetch {
            // The prefetcher only needs to know the chunk is on the node; a later read verifies it.
            return self.cache.as_ref()?.contains(&c.digest).then(Bytes::new);
        }
        if let Some(b) = self.recent.lock().get(&c.digest) {
            return Some(b);
        }
        let b = self.cache.as_ref()?.get_sized(&c.digest, c.len as u64)?;
        self.remember(&c.digest, &b);
        Some(b)
    }

    fn remember(&self, d: &Digest, data: &Bytes) {
        if self.opts.memory_bytes > 0 {
            self.recent.lock().insert(*d, data.clone(), self.opts.memory_bytes);
        }
    }

    fn read(&self, chunks: &[ChunkRef<'_>], prefetch: bool) -> Vec<Result<Bytes, FetchError>> {
        let mut out: Vec<Option<Result<Bytes, FetchError>>> = (0..chunks.len()).map(|_| None).collect();
        let mut missing = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            match self.cached(c.chunk, prefetch) {
                Some(b) => {
                    Stats::add(&self.stats.cache_hits, 1);
                    out[i] = Some(Ok(b));
                }
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return out.into_iter().map(|r| r.unwrap_or_else(unreachable_result)).collect();
        }

        // Claim each missing chunk: lead its fetch, or wait for the reader already fetching it.
        let mut leads: Vec<Lead<'_, '_>> = Vec::new();
        let mut waits: Vec<(usize, Arc<Flight>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for &i in &missing {
                let digest = chunks[i].chunk.digest;
                match inflight.get(&digest) {
                    Some(f) => {
                        log::trace!("{}: chunk {}: joining the fetch in flight", chunks[i].path, chunks[i].chunk_no);
                        waits.push((i, f.clone()))
                    }
                    None => {
                        let f = Arc::new(Flight::default());
                        inflight.insert(digest, f.clone());
                        leads.push(Lead { at: i, c: &chunks[i], flight: f });
                    }
                }
            }
        }
        let mut guard = LeadGuard { source: self, leads };
        // A fetch that finished between our cache check and our claim left the chunk in the cache.
        guard.leads.retain(|l| match self.cached(l.c.chunk, prefetch) {
            Some(b) => {
                self.complete(&l.c.chunk.digest, &l.flight, Ok(b.clone()));
                Stats::add(&self.stats.cache_hits, 1);
                out[l.at] = Some(Ok(b));
                false
            }
            None => true,
        });

        if !guard.leads.is_empty() {
            Stats::add(&self.stats.cache_misses, guard.leads.len() as u64);
            if prefetch {
                Stats::add(&self.stats.prefetched_chunks, guard.leads.len() as u64);
            }
            let groups = coalesce(&guard.leads, self.opts.max_span);
            let raw = self.fetch_groups(&guard.leads, &groups, prefetch);
            for (group, data) in groups.iter().zip(raw) {
                for &li in group {
                    let l = &guard.leads[li];
                    let result = match &data {
                        Ok((start, bytes)) => self.decode(l.c, *start, bytes, prefetch),
                        Err(f) => Err(f.clone()),
                    };
                    self.complete(&l.c.chunk.digest, &l.flight, result.clone());
                    out[l.at] = Some(result.map(|b| if prefetch { Bytes::new() } else { b }).map_err(|f| f.for_chunk(l.c)));
                }
            }
        }
        drop(guard);

        for (i, flight) in waits {
            let r = flight.wait(self.opts.deadline + Duration::from_secs(5));
            if r.is_ok() {
                Stats::add(&self.stats.cache_hits, 1);
            }
            out[i] = Some(r.map_err(|f| f.for_chunk(&chunks[i])));
        }
        out.into_iter().map(|r| r.unwrap_or_else(unreachable_result)).collect()
    }

    /// Fetches the compressed bytes of each group (one range request each), concurrently, on the
    /// runtime. Returns, per group, the blob offset the bytes start at and the bytes.
    fn fetch_groups(&self, leads: &[Lead<'_, '_>], groups: &[Vec<usize>], prefetch: bool) -> Vec<Result<(u64, Bytes), Failure>> {
        let futures = groups.iter().map(|g| {
            let first = leads[g[0]].c.chunk;
            let last = leads[g[g.len() - 1]].c.chunk;
            let range = first.offset..last.offset.saturating_add(last.compressed_len as u64);
            self.fetch_range(first.blob, range, prefetch)
        });
        let all = futures::future::join_all(futures);
        if Handle::try_current().is_ok() {
            // Called from inside a runtime (tests, async callers): only legal on a multi-thread runtime.
            tokio::task::block_in_place(|| self.handle.block_on(all))
        } else {
            self.handle.block_on(all)
        }
    }

    async fn fetch_range(&self, blob: u32, range: Range<u64>, prefetch: bool) -> Result<(u64, Bytes), Failure> {
        let Some(b) = self.blobs.get(blob as usize) else {
            return Err(Failure::Corrupt(format!("index names data blob #{blob}, but has only {} blobs", self.blobs.len())));
        };
        if range.end > b.size {
            return Err(Failure::Corrupt(format!(
                "index places the chunk at bytes {}..{} of blob {}, which is only {} bytes",
                range.start, range.end, b.digest, b.size
            )));
        }
        let outage = self.outage_since.lock().is_some_and(|t| t.elapsed() < self.opts.deadline);
        let deadline = if outage { self.opts.deadline.min(OUTAGE_PROBE) } else { self.opts.deadline };
        let sem = if prefetch { &self.prefetch_permits } else { &self.demand };
        let work = async {
            let _permit = sem.acquire().await.map_err(|_| Failure::Unavailable("chunk source shut down".into()))?;
            Stats::add(&self.stats.requests, 1);
            let bytes = match self.reader.read_range(&b.digest, range.clone(), deadline).await {
                Ok(b) => {
                    *self.outage_since.lock() = None;
                    b
                }
                Err(e) if e.is_unavailable() => {
                    *self.outage_since.lock() = Some(Instant::now());
                    let note = if outage { " (registry known to be down: probed briefly)" } else { "" };
                    return Err(Failure::Unavailable(format!("{e}{note}")));
                }
                Err(e) => return Err(Failure::Corrupt(e.to_string())),
            };
            Stats::add(&self.stats.bytes_fetched, bytes.len() as u64);
            if bytes.len() as u64 != range.end - range.start {
                return Err(Failure::Corrupt(format!(
                    "blob {} bytes {}..{}: got {} bytes",
                    b.digest,
                    range.start,
                    range.end,
                    bytes.len()
                )));
            }
            Ok((range.start, bytes))
        };
        // The reader bounds its retries by `deadline`; this bounds everything else (permits, a
        // reader that ignores its deadline) with some slack.
        match tokio::time::timeout(deadline + Duration::from_millis(500), work).await {
            Ok(r) => r,
            Err(_) => {
                *self.outage_since.lock() = Some(Instant::now());
                Err(Failure::Unavailable(format!("blob {}: no answer within the {deadline:?} fetch deadline", b.digest)))
            }
        }
    }

    /// Decompresses one chunk out of a fetched span (bounded by its length: the input is
    /// untrusted), verifies it and caches it.
    fn decode(&self, c: &ChunkRef<'_>, start: u64, span: &Bytes, prefetch: bool) -> Result<Bytes, Failure> {
        let chunk = c.chunk;
        let from = (chunk.offset - start) as usize;
        let compressed = &span[from..from + chunk.compressed_len as usize];
        let data = zstd::bulk::decompress(compressed, chunk.len as usize)
            .map_err(|e| Failure::Corrupt(format!("zstd data does not decompress to at most {} bytes: {e}", chunk.len)))?;
        if data.len() != chunk.len as usize {
            return Err(Failure::Corrupt(format!("decompressed to {} bytes, index says {}", data.len(), chunk.len)));
        }
        let got = Digest::of(&data);
        if got != chunk.digest {
            Stats::add(&self.stats.verify_failures, 1);
            if self.logged_bad.lock().insert(chunk.digest) {
                log::error!(
                    "{}: chunk {}: digest mismatch (want {}, got {}); the read fails with EIO and the chunk is not cached",
                    c.path,
                    c.chunk_no,
                    chunk.digest,
                    got
                );
            } else {
                log::debug!("{}: chunk {}: digest mismatch again", c.path, c.chunk_no);
            }
            return Err(Failure::Mismatch(got));
        }
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(&chunk.digest, &data) {
                log::warn!("{e}");
            }
        }
        let data = Bytes::from(data);
        if !prefetch {
            self.remember(&chunk.digest, &data);
        }
        Ok(data)
    }

    fn complete(&self, digest: &Digest, flight: &Arc<Flight>, result: Result<Bytes, Failure>) {
        {
            let mut slot = flight.result.lock();
            if slot.is_some() {
                return;
            }
            *slot = Some(result);
        }
        let mut inflight = self.inflight.lock();
        if inflight.get(digest).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            inflight.remove(digest);
        }
        drop(inflight);
        flight.done.notify_all();
    }
}

/// Makes sure every flight this call leads is completed, even if the call unwinds, so no waiter hangs.
struct LeadGuard<'s, 'c, 'a> {
    source: &'s RegistryChunkSource,
    leads: Vec<Lead<'c, 'a>>,
}

impl Drop for LeadGuard<'_, '_, '_> {
    fn drop(&mut self) {
        for l in &self.leads {
            self.source.complete(&l.c.chunk.digest, &l.flight, Err(Failure::Unavailable("fetch abandoned".into())));
        }
    }
}

fn unreachable_result() -> Result<Bytes, FetchError> {
    // Every slot is filled above; this keeps a logic error from becoming a panic in a FUSE thread.
    Err(FetchError::Corrupt { path: String::new(), chunk_no: 0, chunk: Digest([0; 32]), reason: "internal error: chunk not resolved".into() })
}

/// Groups leads into range requests: chunks of the same blob that are exactly adjacent, each group's
/// span at most `max_span` (a single larger chunk still gets its own group). Returns indices into `leads`.
fn coalesce(leads: &[Lead<'_, '_>], max_span: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..leads.len()).collect();
    order.sort_by_key(|&i| (leads[i].c.chunk.blob, leads[i].c.chunk.offset));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut span: Option<(u32, u64, u64)> = None; // blob, start, end
    for i in order {
        let c = leads[i].c.chunk;
        let end = c.offset.saturating_add(c.compressed_len as u64);
        match span {
            Some((blob, start, prev_end)) if blob == c.blob && c.offset == prev_end && end - start <= max_span => {
                groups.last_mut().expect("a span implies a group").push(i);
                span = Some((blob, start, end));
            }
            _ => {
                groups.push(vec![i]);
                span = Some((c.blob, c.offset, end));
            }
        }
    }
    groups
}

impl ChunkSource for RegistryChunkSource {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        self.read(chunks, false)
    }

    fn prefetch(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<(), FetchError>> {
        self.read(chunks, true).into_iter().map(|r| r.map(|_| ())).collect()
    }
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
