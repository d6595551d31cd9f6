//! Turns chunk reads into verified bytes. The contract between the filesystem and the network.
//!
//! [`ChunkSource`] is what [`crate::fs`] reads through. The real implementation,
//! [`RegistryChunkSource`], checks memory and the node cache first. A miss fetches a *span*: the
//! missing chunk plus its neighbours in blob order (sized by [`layout::Readahead`]), as a few
//! parallel range requests, the one holding the missing chunk small and first. Every chunk is
//! verified against its digest before it is served or cached. A chunk has at most one fetch in
//! flight in this process, whoever started it (a read, a span, the prefetcher): everyone else who
//! needs it waits for that fetch. Processes sharing the node cache do the same between them
//! through lock files in the cache ([`node`]). A chunk whose fetch failed fails again at once
//! for a moment ([`FAILURE_MEMO`]), so the kernel's immediate retry of a failed page does not wait
//! for the network twice. Tests of the filesystem use an in-memory fake.
//!
//! Threads: FUSE request threads and the prefetcher call in (blocking). Range requests run as
//! tasks on a tokio runtime reached through a [`Handle`]; decompression, hashing and cache writes
//! run on the runtime's blocking pool, and callers wait for their own chunks only. Nothing here
//! may block forever: every wait is bounded by the fetch deadline.

mod flight;
mod landing;
pub mod layout;
mod node;
mod seldom;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::index::Chunk;
use crate::registry::{Client, Reference, RegistryError};
use crate::stats::Stats;

pub(crate) use flight::FAILURE_MEMO;
use flight::{Claim, Failure, FailureMemo, Flight, Label, Pending};
use landing::Landing;
pub use layout::BlobLayout;
use layout::{byte_range, split, Readahead};
use node::{Held, Lease};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: chunk {chunk_no} ({chunk}): digest mismatch (want {chunk}, got {got})")]
    DigestMismatch { path: String, chunk_no: usize, chunk: Digest, got: Digest },
    #[error("{path}: chunk {chunk_no} ({chunk}): {reason}")]
    Corrupt { path: String, chunk_no: usize, chunk: Digest, reason: String },
    #[error("{path}: chunk {chunk_no} ({chunk}): registry unreachable until the deadline: {reason}")]
    Unavailable { path: String, chunk_no: usize, chunk: Digest, reason: String },
}

/// Which chunk of which file a read is for: errors and logs name the file, and readahead for a
/// reader streaming through it stops at its end.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRef<'a> {
    pub path: &'a str,
    /// Position of the chunk in the file's chunk list.
    pub chunk_no: usize,
    /// `file[chunk_no]`.
    pub chunk: &'a Chunk,
    /// Every chunk of the file.
    pub file: &'a [Chunk],
}

impl<'a> ChunkRef<'a> {
    /// Chunks `range` of the file at `path` whose chunks are `chunks`.
    pub fn of_file(path: &'a str, chunks: &'a [Chunk], range: std::ops::Range<usize>) -> Vec<ChunkRef<'a>> {
        range
            .filter_map(|chunk_no| Some(ChunkRef { path, chunk_no, chunk: chunks.get(chunk_no)?, file: chunks }))
            .collect()
    }

    /// Where the file's chunks in this chunk's blob end. A pass over the file's chunks: only asked
    /// on a miss or when a span ahead starts, never on the hit path.
    fn file_end(&self) -> u64 {
        self.file.iter().filter(|c| c.blob == self.chunk.blob).map(Chunk::end).max().unwrap_or(0)
    }
}

/// A source of verified, uncompressed chunk contents. Called from FUSE request threads (blocking).
pub trait ChunkSource: Send + Sync {
    /// Returns the contents of every requested chunk, in order. Blocks until every chunk is
    /// available or failed.
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>>;

    /// Starts fetching the chunks not on the node yet, as a read of them would (with the span
    /// around them), and returns at once: a reader arriving later joins the fetch. For chunks a
    /// reader is about to ask for (the libraries a program being loaded names). Default: nothing.
    fn fetch_soon(&self, _chunks: &[ChunkRef<'_>]) {}

    /// Brings chunks into the node cache without returning them (prefetch), roughly in the given
    /// order, until done or `stop` is set. Must never hold up on-demand reads: implementations
    /// bound how much prefetch runs at once, separately from reads. Returns the error that made
    /// it give up (the registry keeps failing), if any.
    fn prefetch(&self, chunks: &[ChunkRef<'_>], stop: &AtomicBool) -> Result<(), FetchError> {
        let mut failed = 0;
        for batch in chunks.chunks(8) {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match self.read_chunks(batch).into_iter().find_map(Result::err) {
                None => failed = 0,
                Some(e) if failed + 1 >= PREFETCH_MAX_FAILURES => return Err(e),
                Some(e) => {
                    failed += 1;
                    log::warn!("prefetch: {e}");
                }
            }
        }
        Ok(())
    }
}

/// Consecutive failed prefetch requests after which prefetch gives up (the registry is likely
/// unreachable; reads still fetch on demand with their own deadline).
pub const PREFETCH_MAX_FAILURES: u32 = 3;

impl<T: ChunkSource + ?Sized> ChunkSource for Arc<T> {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        (**self).read_chunks(chunks)
    }
    fn fetch_soon(&self, chunks: &[ChunkRef<'_>]) {
        (**self).fetch_soon(chunks)
    }
    fn prefetch(&self, chunks: &[ChunkRef<'_>], stop: &AtomicBool) -> Result<(), FetchError> {
        (**self).prefetch(chunks, stop)
    }
}

/// Reads byte ranges of data blobs by digest. [`RegistryBlobs`] is the real one; tests use fakes.
pub trait BlobReader: Send + Sync {
    /// Reads `range` of `blob`, handing the bytes to `sink` in order as they arrive (each byte
    /// once, also when a cut-off answer is resumed), retrying transient failures for at most
    /// `deadline` without progress.
    fn stream_range<'a>(
        &'a self,
        blob: &'a Digest,
        range: Range<u64>,
        deadline: Duration,
        sink: &'a mut (dyn FnMut(Bytes) + Send),
    ) -> BoxFuture<'a, Result<(), RegistryError>>;
}

/// Range reads from one registry repository.
pub struct RegistryBlobs {
    pub client: Client,
    pub repository: Reference,
}

impl BlobReader for RegistryBlobs {
    fn stream_range<'a>(
        &'a self,
        blob: &'a Digest,
        range: Range<u64>,
        deadline: Duration,
        sink: &'a mut (dyn FnMut(Bytes) + Send),
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let mut body = self.client.stream_blob_range(&self.repository, blob, range, deadline);
            while let Some(bytes) = body.next().await? {
                sink(bytes);
            }
            Ok(())
        })
    }
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Longest a read waits for the network before failing with [`FetchError::Unavailable`]. Keep
    /// it at least the registry client's own deadline, or retries are cut short.
    pub deadline: Duration,
    /// Compressed bytes a miss fetches around the missing chunk when nothing near it was fetched
    /// before. Misses that keep landing in one region double it, up to `readahead_across_files`.
    pub readahead_min: u64,
    /// Largest span while the reader hops between files (see [`Readahead`]).
    pub readahead_across_files: u64,
    /// Largest span, reached by a reader streaming through one large file. 0: fetch only the
    /// chunks a read asks for.
    pub readahead_max: u64,
    /// Largest single range request: a larger span becomes several parallel requests. A reader
    /// streaming through one file takes each span ahead of it as one request.
    pub max_request: u64,
    /// Bytes between two wanted chunks that one request fetches and drops rather than split.
    pub max_gap: u64,
    /// Range requests on-demand reads may have in flight at once (and, separately, half as many
    /// for the spans around them: speculation never takes most of the link).
    pub concurrency: usize,
    /// Range requests the prefetcher may have in flight at once, beside reads.
    pub prefetch_concurrency: usize,
    /// Bytes of recently read chunks kept in memory. The kernel reads a file in pieces (128 KiB by
    /// default) and each piece asks for its whole chunk: without this, a sequential read of a 1 MiB
    /// chunk re-reads the cache file 8 times (or, with no node cache, fetches it 8 times). 0 disables.
    /// Ignored when `memory` is set.
    pub memory_bytes: u64,
    /// One memory of recent chunks shared by every source given it: a process serving many mounts
    /// (a pod shim) bounds it once instead of once per mount, and mounts of one image share its
    /// chunks. None: this source keeps its own, of `memory_bytes`.
    pub memory: Option<Arc<ChunkMemory>>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            deadline: Duration::from_secs(30),
            readahead_min: 256 << 10,
            readahead_across_files: 4 << 20,
            readahead_max: 16 << 20,
            max_request: 4 << 20,
            max_gap: 256 << 10,
            concurrency: 8,
            prefetch_concurrency: 8,
            memory_bytes: 32 << 20,
            memory: None,
        }
    }
}

/// Largest request holding a chunk a reader waits for: it goes first and small, so the reader is
/// not held up by the rest of its span.
const FIRST_REQUEST: u64 = 256 << 10;

/// Compressed bytes of a prefetch list planned at once: within it, chunks are requested in blob
/// order (few, large requests); windows go in list order, so what a start reads first comes first.
const PREFETCH_WINDOW: u64 = 64 << 20;

/// Retry budget of a fetch while the registry is known to be down.
const OUTAGE_PROBE: Duration = Duration::from_secs(1);

/// Which budget a range request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Holds a chunk a reader is waiting for.
    Demand,
    /// Neighbours of a miss nobody asked for yet.
    Readahead,
    Prefetch,
}

/// The registry-backed chunk source of one mounted image.
pub struct RegistryChunkSource {
    inner: Arc<Inner>,
}

struct Inner {
    layout: BlobLayout,
    reader: Arc<dyn BlobReader>,
    cache: Option<Arc<ChunkCache>>,
    stats: Arc<Stats>,
    handle: Handle,
    opts: FetchOptions,
    inflight: Mutex<HashMap<Digest, Arc<Flight>>>,
    demand: Semaphore,
    readahead_permits: Semaphore,
    prefetch_permits: Semaphore,
    readahead: Mutex<Readahead>,
    /// Chunks whose digest mismatch was already logged at error level (once per chunk, not per read).
    logged_bad: Mutex<HashSet<Digest>>,
    /// Chunks that failed moments ago: they fail again at once (see [`FAILURE_MEMO`]).
    failures: FailureMemo,
    recent: Arc<ChunkMemory>,
    /// When a fetch last failed because the registry was unreachable; cleared by the next success.
    /// While set (and recent), fetches only probe for [`OUTAGE_PROBE`] instead of waiting the whole
    /// deadline: the kernel retries a failed read page by page, and each retry must not cost another
    /// full deadline.
    outage_since: Mutex<Option<Instant>>,
    /// This process's open of each blob's lock file in the node cache (node-wide single flight).
    leases: Mutex<HashMap<u32, Arc<Lease>>>,
    /// Whether failing to open a lock file of the node cache was logged (once per mount).
    lock_warned: AtomicBool,
    /// Writes to the node cache failing (a full disk): logged when that starts and ends, at most
    /// once a minute however often a small chunk still fits between failures.
    cache_trouble: Mutex<CacheTrouble>,
}

/// The log of a node cache that stops taking writes: one warning when writes start failing, one
/// line when they work again, and no more than one of each per [`CacheTrouble::QUIET`].
#[derive(Default)]
struct CacheTrouble {
    failing: bool,
    warned_at: Option<Instant>,
    /// Whether the recovery after the last warning was logged.
    recovery_logged: bool,
}

impl CacheTrouble {
    const QUIET: Duration = Duration::from_secs(60);

    fn note(&mut self, put: Result<(), crate::cache::CacheError>, cache: &ChunkCache) {
        match put {
            Err(e) => {
                self.failing = true;
                if self.warned_at.is_none_or(|t| t.elapsed() >= Self::QUIET) {
                    self.warned_at = Some(Instant::now());
                    self.recovery_logged = false;
                    log::warn!("{e}; reads go on from the registry, uncached, until the cache takes writes again");
                } else {
                    log::debug!("{e}");
                }
            }
            Ok(()) if self.failing => {
                self.failing = false;
                if !self.recovery_logged {
                    self.recovery_logged = true;
                    log::info!("chunk cache {}: takes writes again", cache.dir().display());
                }
            }
            Ok(()) => {}
        }
    }
}

/// Verified chunks recently served, first in first out, bounded in bytes: what the kernel's
/// pieces of one chunk read (see [`FetchOptions::memory_bytes`]). May be shared by many sources
/// ([`FetchOptions::memory`]); its content is verified and addressed by digest, so sharing never
/// serves one image's bytes for another's chunk.
pub struct ChunkMemory {
    cap: u64,
    recent: Mutex<Recent>,
}

impl std::fmt::Debug for ChunkMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkMemory").field("cap", &self.cap).field("bytes", &self.recent.lock().bytes).finish()
    }
}

impl ChunkMemory {
    /// At most `cap` bytes of chunks (0: remembers nothing).
    pub fn new(cap: u64) -> ChunkMemory {
        ChunkMemory { cap, recent: Mutex::new(Recent::default()) }
    }

    fn get(&self, d: &Digest) -> Option<Bytes> {
        self.recent.lock().get(d)
    }

    fn contains(&self, d: &Digest) -> bool {
        self.recent.lock().map.contains_key(d)
    }

    fn insert(&self, d: Digest, data: Bytes) {
        if self.cap > 0 {
            self.recent.lock().insert(d, data, self.cap);
        }
    }
}

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

impl RegistryChunkSource {
    /// `layout` is where the index's chunks sit ([`BlobLayout::of`]); `repository` is where the
    /// blobs live (the index's `source`, or an override such as a mirror). `cache` may be `None`
    /// (no node cache: then a miss fetches only what was asked for).
    ///
    /// `handle` must belong to a MULTI-THREAD runtime: fetches run as tasks on it while the
    /// calling thread blocks.
    pub fn new(
        layout: BlobLayout,
        repository: Reference,
        client: Client,
        cache: Option<Arc<ChunkCache>>,
        stats: Arc<Stats>,
        handle: Handle,
        opts: FetchOptions,
    ) -> Self {
        let reader = Arc::new(RegistryBlobs { client, repository: repository.repository_only() });
        Self::with_reader(layout, reader, cache, stats, handle, opts)
    }

    /// Same, over any blob reader (tests, alternative transports).
    pub fn with_reader(
        layout: BlobLayout,
        reader: Arc<dyn BlobReader>,
        cache: Option<Arc<ChunkCache>>,
        stats: Arc<Stats>,
        handle: Handle,
        opts: FetchOptions,
    ) -> Self {
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            log::warn!(
                "lazy chunk source on a current-thread tokio runtime: reads may stall; use a multi-thread runtime"
            );
        }
        let readahead = if cache.is_some() { opts.readahead_max } else { 0 };
        let recent = opts.memory.clone().unwrap_or_else(|| Arc::new(ChunkMemory::new(opts.memory_bytes)));
        RegistryChunkSource {
            inner: Arc::new(Inner {
                layout,
                reader,
                cache,
                stats,
                handle,
                demand: Semaphore::new(opts.concurrency.max(1)),
                readahead_permits: Semaphore::new((opts.concurrency / 2).max(1)),
                prefetch_permits: Semaphore::new(opts.prefetch_concurrency.max(1)),
                readahead: Mutex::new(Readahead::new(opts.readahead_min, opts.readahead_across_files, readahead)),
                opts,
                inflight: Mutex::new(HashMap::new()),
                logged_bad: Mutex::new(HashSet::new()),
                failures: FailureMemo::default(),
                recent,
                outage_since: Mutex::new(None),
                leases: Mutex::new(HashMap::new()),
                lock_warned: AtomicBool::new(false),
                cache_trouble: Mutex::new(CacheTrouble::default()),
            }),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Range requests a registry client under this source should allow at once.
    pub fn max_requests(opts: &FetchOptions) -> usize {
        2 * opts.concurrency.max(1) + opts.prefetch_concurrency.max(1)
    }
}

impl Inner {
    /// A chunk from memory or the node cache.
    fn cached(&self, c: &Chunk) -> Option<Bytes> {
        if let Some(b) = self.recent.get(&c.digest) {
            return Some(b);
        }
        let b = self.cache.as_ref()?.get_sized(&c.digest, c.len as u64)?;
        self.remember(&c.digest, &b);
        Some(b)
    }

    /// Whether a chunk is on the node (not read: whoever reads it later verifies it).
    fn on_node(&self, c: &Chunk) -> bool {
        self.recent.contains(&c.digest) || self.cache.as_ref().is_some_and(|cache| cache.contains(&c.digest))
    }

    fn remember(&self, d: &Digest, data: &Bytes) {
        self.recent.insert(*d, data.clone());
    }

    /// Claims the fetch of `chunk` unless one is in flight already (then returns `None`).
    /// `keep`: see [`Claim`].
    fn claim(
        &self,
        inflight: &mut HashMap<Digest, Arc<Flight>>,
        chunk: Chunk,
        label: Option<Label>,
        keep: bool,
    ) -> Option<Claim> {
        if inflight.contains_key(&chunk.digest) {
            return None;
        }
        let flight = Arc::new(Flight::default());
        inflight.insert(chunk.digest, flight.clone());
        Some(Claim { chunk, flight, label, keep })
    }

    /// Claims the chunks of `window` around `anchor` that are not on the node, not in flight and
    /// not in `skip` (which gains them). A reader at a file's first chunk is hopping between files:
    /// `streaming` false leaves out the chunks of files a start seldom reads ([`seldom`]). Chunks
    /// that start before `keep_until` (the end of the reader's file) are kept in memory on landing.
    fn claim_window(
        &self,
        anchor: &Chunk,
        (from, to): (u64, u64),
        streaming: bool,
        keep_until: u64,
        skip: &mut HashSet<Digest>,
    ) -> Vec<Claim> {
        // Checking the node costs a stat per chunk: done outside the in-flight lock.
        let candidates: Vec<Chunk> = self
            .layout
            .neighbours(anchor, from, to, !streaming)
            .filter(|n| !skip.contains(&n.digest) && !self.on_node(n))
            .copied()
            .collect();
        let mut inflight = self.inflight.lock();
        candidates
            .into_iter()
            .filter(|n| skip.insert(n.digest))
            .filter_map(|n| self.claim(&mut inflight, n, None, n.offset < keep_until))
            .collect()
    }

    /// Starts the range requests that fetch `claims`, none larger than `max_request` (unless a
    /// single chunk is).
    fn launch(self: &Arc<Self>, mut claims: Vec<Claim>, max_request: u64) {
        claims.sort_by_key(|c| (c.chunk.blob, c.chunk.offset));
        // Lock files opened here, not by whichever request task starts first, so the requests
        // start in the order they are spawned (the demanded ones first).
        let mut blobs: Vec<u32> = claims.iter().map(|c| c.chunk.blob).collect();
        blobs.dedup();
        for blob in blobs {
            self.lease(blob);
        }
        for request in self.requests(claims, max_request) {
            let inner = self.clone();
            self.handle.spawn(async move { inner.run(request).await });
        }
    }

    fn complete(&self, claim: &Claim, result: Result<Bytes, Failure>) {
        // Out of the map first: a waiter that wakes up and reads again must start a new fetch,
        // not join this finished one (and get its failure again).
        {
            let mut inflight = self.inflight.lock();
            if inflight.get(&claim.chunk.digest).is_some_and(|f| Arc::ptr_eq(f, &claim.flight)) {
                inflight.remove(&claim.chunk.digest);
            }
        }
        claim.flight.complete(result);
    }

    fn read(self: &Arc<Self>, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        let mut out: Vec<Option<Result<Bytes, FetchError>>> = (0..chunks.len()).map(|_| None).collect();
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|&i| match self.cached(chunks[i].chunk) {
                Some(b) => {
                    Stats::add(&self.stats.cache_hits, 1);
                    out[i] = Some(Ok(b));
                    false
                }
                None => match self.failures.recent(&chunks[i].chunk.digest) {
                    Some(why) => {
                        log::debug!(
                            "{}: chunk {} failed less than {FAILURE_MEMO:?} ago: failing it again without a fetch",
                            chunks[i].path,
                            chunks[i].chunk_no
                        );
                        out[i] = Some(Err(why.for_chunk(&chunks[i])));
                        false
                    }
                    None => true,
                },
            })
            .collect();
        let last = chunks.len().wrapping_sub(1);
        if !chunks.is_empty() && !missing.contains(&last) {
            self.read_ahead(&chunks[last]);
        }
        if !missing.is_empty() {
            let waits = self.fetch_missing(chunks, &missing);
            if let Some((i, ..)) = waits.iter().find(|(i, _, own)| *i == last && !own) {
                // Joined a fetch in flight: a span is landing here; keep ahead of the reader.
                self.read_ahead(&chunks[*i]);
            }
            let wait = || {
                for (i, flight, own) in waits {
                    let r = flight.wait(self.opts.deadline + Duration::from_secs(5));
                    match &r {
                        Ok(data) if !own => {
                            Stats::add(&self.stats.cache_hits, 1);
                            // Read now: kept like any chunk read (speculation across files is not).
                            self.remember(&chunks[i].chunk.digest, data);
                        }
                        Ok(_) => {}
                        Err(why) => self.failures.note(chunks[i].chunk.digest, why),
                    }
                    out[i] = Some(r.map_err(|f| f.for_chunk(&chunks[i])));
                }
            };
            if Handle::try_current().is_ok() {
                // Called from inside a runtime (tests, async callers): only legal on a multi-thread runtime.
                tokio::task::block_in_place(wait)
            } else {
                wait()
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(unreachable_result)).collect()
    }

    /// Starts the fetches for `missing` chunks (and the spans around them) and returns what to wait
    /// for: (position in `chunks`, flight, whether this call started it).
    fn fetch_missing(self: &Arc<Self>, chunks: &[ChunkRef<'_>], missing: &[usize]) -> Vec<(usize, Arc<Flight>, bool)> {
        let mut waits = Vec::new();
        let mut own: Vec<Claim> = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for &i in missing {
                let c = &chunks[i];
                if let Some(f) = inflight.get(&c.chunk.digest) {
                    log::trace!("{}: chunk {}: joining the fetch in flight", c.path, c.chunk_no);
                    waits.push((i, f.clone(), false));
                    continue;
                }
                // Not in flight (checked above, under the same lock): the claim is ours.
                let label = Label { path: c.path.to_string(), chunk_no: c.chunk_no, file_end: c.file_end() };
                if let Some(claim) = self.claim(&mut inflight, *c.chunk, Some(label), true) {
                    waits.push((i, claim.flight.clone(), true));
                    own.push(claim);
                }
            }
        }
        // A fetch that finished between the cache check and the claim left the chunk on the node.
        own.retain(|claim| match self.cached(&claim.chunk) {
            Some(b) => {
                self.complete(claim, Ok(b));
                false
            }
            None => true,
        });
        if own.is_empty() {
            return waits;
        }
        Stats::add(&self.stats.cache_misses, own.len() as u64);
        // A miss past a file's first chunk is a stream through it: its span is the rest of the file.
        let streaming = own.iter().all(|c| c.label.as_ref().is_some_and(|l| l.chunk_no > 0));
        let all = self.with_neighbours(own);
        self.launch(all, self.request_cap(streaming));
        waits
    }

    /// A read near the end of a span fetched before starts the next span now, so a sequential
    /// reader finds its chunks landed or in flight instead of missing once per span.
    fn read_ahead(self: &Arc<Self>, read: &ChunkRef<'_>) {
        let chunk = read.chunk;
        if self.in_outage() {
            return;
        }
        let window = {
            let mut ra = self.readahead.lock();
            if ra.is_idle() {
                return;
            }
            ra.ahead(chunk.blob, chunk.offset, read.chunk_no > 0)
        };
        let Some((from, to)) = window else { return };
        // A stream through one file reads no further than its end.
        let to = if read.chunk_no > 0 { to.min(read.file_end()) } else { to };
        if to <= from {
            return;
        }
        let streaming = read.chunk_no > 0;
        let keep_until = if streaming { to } else { 0 };
        let claims = self.claim_window(chunk, (from, to), streaming, keep_until, &mut HashSet::new());
        self.launch(claims, self.request_cap(streaming));
    }

    /// The largest range request for a span. A stream through one file takes each span (at most
    /// `readahead_max`) as one request: chunks are decoded as the answer arrives, so a large
    /// request costs the reader no latency, and the registry pays per request (docker-registry
    /// allocates a 4 MiB buffer for each).
    fn request_cap(&self, streaming: bool) -> u64 {
        if streaming {
            self.opts.max_request.max(self.opts.readahead_max)
        } else {
            self.opts.max_request
        }
    }

    /// Whether a fetch failed recently because the registry was unreachable (see `outage_since`).
    fn in_outage(&self) -> bool {
        self.outage_since.lock().is_some_and(|t| t.elapsed() < self.opts.deadline)
    }

    /// Adds to the claimed misses the not-yet-fetched chunks around them (one span per miss, per
    /// [`Readahead`]) and claims those too. Not while the registry seems down: a probe carries
    /// only what a reader waits for, so it is quick on a slow link and speculation does not
    /// compete with it.
    fn with_neighbours(&self, mut claims: Vec<Claim>) -> Vec<Claim> {
        if self.in_outage() {
            return claims;
        }
        // (anchor, from, to, streaming, keep_until)
        let mut windows: Vec<(Chunk, u64, u64, bool, u64)> = Vec::new();
        {
            let mut ra = self.readahead.lock();
            for c in &claims {
                let covered = windows
                    .iter()
                    .any(|(w, from, to, ..)| w.blob == c.chunk.blob && (*from..*to).contains(&c.chunk.offset));
                if !covered {
                    let (from, mut to) = ra.window(c.chunk.blob, c.chunk.offset);
                    if to <= from {
                        continue; // spans are off
                    }
                    let streaming = c.label.as_ref().is_some_and(|l| l.chunk_no > 0);
                    let mut keep_until = 0;
                    if let Some(l) = &c.label {
                        // A program that opens a file, or maps a library, reads most of it: the
                        // rest of the file comes along (up to the largest span), in parallel,
                        // instead of one round trip per page fault. A miss in the middle of a file
                        // is a stream through it, which reads no further than its end.
                        let rest_of_file = l.file_end.min(c.chunk.offset.saturating_add(self.opts.readahead_max));
                        to = if streaming { rest_of_file } else { to.max(rest_of_file) };
                        keep_until = rest_of_file;
                    }
                    if to > from {
                        windows.push((c.chunk, from, to, streaming, keep_until));
                    }
                }
            }
        }
        let mut wanted: HashSet<Digest> = claims.iter().map(|c| c.chunk.digest).collect();
        for (anchor, from, to, streaming, keep_until) in windows {
            let more = self.claim_window(&anchor, (from, to), streaming, keep_until, &mut wanted);
            claims.extend(more);
        }
        claims
    }

    /// Groups claims (sorted by blob and offset) into range requests. Requests holding a chunk a
    /// reader waits for are cut small ([`FIRST_REQUEST`]) and come first; the rest of their group
    /// goes as one request per stretch between them.
    fn requests(&self, claims: Vec<Claim>, max_request: u64) -> Vec<(Class, Vec<Claim>)> {
        let chunks: Vec<Chunk> = claims.iter().map(|c| c.chunk).collect();
        let read: Vec<bool> = claims.iter().map(|c| c.label.is_some()).collect();
        let demanded = |r: &Range<usize>| read[r.clone()].contains(&true);
        let mut slots: Vec<Option<Claim>> = claims.into_iter().map(Some).collect();
        let mut take = |r: Range<usize>| -> Vec<Claim> { r.filter_map(|i| slots[i].take()).collect() };
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for group in split(&chunks, self.opts.max_gap, max_request) {
            if !demanded(&group) {
                rest.push((Class::Readahead, take(group)));
                continue;
            }
            // The pieces holding what a reader waits for go alone and small; each run of pieces
            // between them goes as one request (the group is within max_request already).
            let mut run: Option<Range<usize>> = None;
            for sub in split(&chunks[group.clone()], self.opts.max_gap, FIRST_REQUEST) {
                let sub = group.start + sub.start..group.start + sub.end;
                if demanded(&sub) {
                    if let Some(r) = run.take() {
                        rest.push((Class::Readahead, take(r)));
                    }
                    first.push((Class::Demand, take(sub)));
                } else {
                    run = Some(run.map_or(sub.clone(), |r| r.start..sub.end));
                }
            }
            if let Some(r) = run {
                rest.push((Class::Readahead, take(r)));
            }
        }
        first.extend(rest);
        first
    }

    /// Fetches one range request's chunks and completes their flights (also when dropped). Chunks
    /// another process on the node is fetching already are waited for instead ([`node`]).
    async fn run(self: Arc<Self>, (class, claims): (Class, Vec<Claim>)) {
        let mut pending = Pending::new(self.clone(), claims);
        let Some(blob) = pending.claims().first().map(|c| c.chunk.blob) else { return };
        let _permit = match self.permit(class).await {
            Ok(permit) => permit,
            Err(f) => return pending.fail(f),
        };
        // Locked only once the request may start: a queued request must not hold up other processes.
        let held = self.lease(blob).map(|lease| {
            let theirs = pending.split_off(|c| !lease.try_lock(&c.chunk));
            if !theirs.is_empty() {
                self.handle.spawn(self.clone().wait_for_node(theirs, class));
            }
            // A request may wait long for its slot: another process may have fetched some of its
            // chunks meanwhile (and unlocked them). Those are read from the cache, not fetched again.
            self.take_landed(&mut pending, &lease).finish();
            Held::new(lease, pending.claims().iter().map(|c| c.chunk).collect())
        });
        if pending.is_empty() {
            return;
        }
        self.fetch(pending, class).await;
        // Unlocks the chunks, now in the cache (or failed): waiters elsewhere take over.
        drop(held);
    }

    /// The request budget of `class` (prefetch takes its own before claiming: `prefetch_request`).
    async fn permit(&self, class: Class) -> Result<Option<SemaphorePermit<'_>>, Failure> {
        let sem = match class {
            Class::Demand => &self.demand,
            Class::Readahead => &self.readahead_permits,
            Class::Prefetch => return Ok(None),
        };
        match tokio::time::timeout(self.opts.deadline, sem.acquire()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(_)) => Err(Failure::Unavailable("chunk source shut down".into())),
            Err(_) => Err(Failure::Unavailable(format!(
                "no request slot became free within the {:?} fetch deadline",
                self.opts.deadline
            ))),
        }
    }

    /// This process's open of the node cache's lock file for `blob`, if there is a node cache.
    fn lease(&self, blob: u32) -> Option<Arc<Lease>> {
        if let Some(lease) = self.leases.lock().get(&blob) {
            return Some(lease.clone());
        }
        let path = self.cache.as_ref()?.lock_path(&self.layout.blob(blob)?.digest);
        match Lease::open(&path) {
            Ok(lease) => Some(self.leases.lock().entry(blob).or_insert_with(|| Arc::new(lease)).clone()),
            Err(e) => {
                if !self.lock_warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "node cache lock file {}: {e}; fetching without coordinating with other processes on this node (they may fetch the same chunks)",
                        path.display()
                    );
                }
                None
            }
        }
    }

    /// Fetches `pending`'s chunks (one blob, in offset order) in as few range requests as their
    /// gaps allow, at once, then decodes, verifies and caches them.
    async fn fetch(self: &Arc<Self>, mut pending: Pending, class: Class) {
        let chunks: Vec<Chunk> = pending.claims().iter().map(|c| c.chunk).collect();
        let parts: Vec<Pending> =
            split(&chunks, self.opts.max_gap, u64::MAX).into_iter().map(|g| pending.take_front(g.len())).collect();
        futures::future::join_all(parts.into_iter().map(|part| self.fetch_one(part, class))).await;
    }

    async fn fetch_one(self: &Arc<Self>, pending: Pending, class: Class) {
        let chunks: Vec<Chunk> = pending.claims().iter().map(|c| c.chunk).collect();
        let range = byte_range(&chunks);
        let mut landing = Landing::new(self.clone(), class, pending, range.clone());
        let answer = self.fetch_range(chunks[0].blob, range, &mut |bytes| landing.land(bytes)).await;
        landing.finish(answer).await;
    }

    /// Waits for chunks whose locks another process on the node holds: each lands in the node
    /// cache (then it is read from there, verified like any hit), or its owner fails or dies
    /// without caching it, and this process takes the lock and fetches it. Bounded by the deadline.
    async fn wait_for_node(self: Arc<Self>, mut waiting: Pending, class: Class) {
        let Some(blob) = waiting.claims().first().map(|c| c.chunk.blob) else { return };
        let Some(lease) = self.lease(blob) else { return self.fetch(waiting, class).await };
        let until = Instant::now() + self.opts.deadline;
        let mut tick = Duration::from_millis(2);
        loop {
            let mut free = waiting.split_off(|c| lease.try_lock(&c.chunk));
            self.take_landed(&mut free, &lease).finish();
            if !free.is_empty() {
                log::debug!("{} chunks of blob #{blob}: their fetch elsewhere on the node ended without caching them; fetching them here", free.claims().len());
                let _held = Held::new(lease.clone(), free.claims().iter().map(|c| c.chunk).collect());
                match self.permit(class).await {
                    Ok(_permit) => self.fetch(free, class).await,
                    Err(f) => free.fail(f),
                }
            }
            if waiting.is_empty() {
                return;
            }
            if Instant::now() >= until {
                return waiting.fail(Failure::Unavailable(format!(
                    "another process on this node held the fetch of this chunk (lock file {}) past the {:?} fetch deadline",
                    lease.path().display(),
                    self.opts.deadline
                )));
            }
            tokio::time::sleep(tick).await;
            tick = (tick * 2).min(Duration::from_millis(20));
        }
    }

    /// Takes the claims (their chunks locked by this process) whose chunk is in the node cache:
    /// another process fetched it. Completes them from there (verified like any hit) and unlocks them.
    fn take_landed(&self, claims: &mut Pending, lease: &Lease) -> Pending {
        claims.split_off(|c| match self.cache.as_ref().and_then(|k| k.get_sized(&c.chunk.digest, c.chunk.len as u64)) {
            Some(data) => {
                lease.unlock(&c.chunk);
                Stats::add(&self.stats.node_waits, 1);
                if c.keep {
                    self.remember(&c.chunk.digest, &data);
                }
                self.complete(c, Ok(data));
                true
            }
            None => false,
        })
    }

    fn decode_all(&self, pending: Pending, class: Class, start: u64, span: &Bytes) {
        for claim in pending.claims() {
            let result = self.decode(claim, start, span);
            if result.is_ok() {
                match class {
                    Class::Prefetch => Stats::add(&self.stats.prefetched_chunks, 1),
                    _ if claim.label.is_none() => Stats::add(&self.stats.readahead_chunks, 1),
                    _ => {}
                }
            }
            self.complete(claim, result);
        }
    }

    /// Reads `range` of data blob `blob`, handing its bytes to `sink` as they arrive.
    async fn fetch_range(
        &self,
        blob: u32,
        range: Range<u64>,
        sink: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), Failure> {
        let Some(b) = self.layout.blob(blob) else {
            return Err(Failure::Corrupt(format!(
                "index names data blob #{blob}, but has only {} blobs",
                self.layout.blobs().len()
            )));
        };
        if range.end > b.size || range.start > range.end {
            return Err(Failure::Corrupt(format!(
                "index places the chunk at bytes {}..{} of blob {}, which is only {} bytes",
                range.start, range.end, b.digest, b.size
            )));
        }
        let outage = self.in_outage();
        let deadline = if outage { self.opts.deadline.min(OUTAGE_PROBE) } else { self.opts.deadline };
        let work = async {
            Stats::add(&self.stats.requests, 1);
            let mut received = 0u64;
            let mut count = |bytes: Bytes| {
                received += bytes.len() as u64;
                Stats::add(&self.stats.bytes_fetched, bytes.len() as u64);
                sink(bytes);
            };
            match self.reader.stream_range(&b.digest, range.clone(), deadline, &mut count).await {
                Ok(()) => {
                    *self.outage_since.lock() = None;
                }
                Err(e) if e.is_unavailable() => {
                    *self.outage_since.lock() = Some(Instant::now());
                    let note = if outage { " (registry known to be down: probed briefly)" } else { "" };
                    return Err(Failure::Unavailable(format!("{e}{note}")));
                }
                Err(e) => return Err(Failure::Corrupt(e.to_string())),
            }
            if received != range.end - range.start {
                return Err(Failure::Corrupt(format!(
                    "blob {} bytes {}..{}: got {received} bytes",
                    b.digest, range.start, range.end
                )));
            }
            Ok(())
        };
        // The reader bounds its retries by `deadline`; this bounds a reader that ignores it.
        match tokio::time::timeout(deadline + Duration::from_millis(500), work).await {
            Ok(r) => r,
            Err(_) => {
                *self.outage_since.lock() = Some(Instant::now());
                Err(Failure::Unavailable(format!(
                    "blob {}: no answer within the {deadline:?} fetch deadline",
                    b.digest
                )))
            }
        }
    }

    /// Decompresses one chunk out of a fetched span (bounded by its length: the input is
    /// untrusted), verifies it and caches it.
    fn decode(&self, claim: &Claim, start: u64, span: &Bytes) -> Result<Bytes, Failure> {
        let chunk = &claim.chunk;
        let from = (chunk.offset - start) as usize;
        let compressed = &span[from..from + chunk.compressed_len as usize];
        let data = decompress(compressed, chunk.len as usize).map_err(|e| {
            Failure::Corrupt(format!("zstd data does not decompress to at most {} bytes: {e}", chunk.len))
        })?;
        if data.len() != chunk.len as usize {
            return Err(Failure::Corrupt(format!("decompressed to {} bytes, index says {}", data.len(), chunk.len)));
        }
        let got = Digest::of(&data);
        if got != chunk.digest {
            Stats::add(&self.stats.verify_failures, 1);
            let what = match &claim.label {
                Some(l) => format!("{}: chunk {}", l.path, l.chunk_no),
                None => format!("chunk {} at byte {} of blob #{}", chunk.digest, chunk.offset, chunk.blob),
            };
            if self.logged_bad.lock().insert(chunk.digest) {
                log::error!(
                    "{what}: digest mismatch (want {}, got {got}); reads of it fail with EIO and it is not cached",
                    chunk.digest
                );
            } else {
                log::debug!("{what}: digest mismatch again");
            }
            return Err(Failure::Mismatch(got));
        }
        if let Some(cache) = &self.cache {
            let put = cache.put(&chunk.digest, &data);
            self.cache_trouble.lock().note(put, cache);
        }
        let data = Bytes::from(data);
        if claim.keep {
            self.remember(&chunk.digest, &data);
        }
        Ok(data)
    }

    /// Prefetch: the chunks, deduplicated, in windows of [`PREFETCH_WINDOW`] in list order, each
    /// window as blob-ordered range requests, `prefetch_concurrency` at a time. A request claims its
    /// chunks only when it starts, so a read never waits behind queued prefetch.
    fn prefetch(self: &Arc<Self>, chunks: &[ChunkRef<'_>], stop: &AtomicBool) -> Result<(), FetchError> {
        let mut seen = HashSet::new();
        let mut requests: Vec<Vec<(Chunk, usize)>> = Vec::new();
        let mut window: Vec<(Chunk, usize)> = Vec::new();
        let mut window_bytes = 0u64;
        let flush = |window: &mut Vec<(Chunk, usize)>, requests: &mut Vec<Vec<(Chunk, usize)>>| {
            window.sort_by_key(|(c, _)| (c.blob, c.offset));
            let plain: Vec<Chunk> = window.iter().map(|(c, _)| *c).collect();
            for r in split(&plain, self.opts.max_gap, self.opts.max_request) {
                requests.push(window[r].to_vec());
            }
            window.clear();
        };
        for (i, c) in chunks.iter().enumerate() {
            if !seen.insert(c.chunk.digest) {
                continue;
            }
            window.push((*c.chunk, i));
            window_bytes += c.chunk.compressed_len as u64;
            if window_bytes >= PREFETCH_WINDOW {
                flush(&mut window, &mut requests);
                window_bytes = 0;
            }
        }
        flush(&mut window, &mut requests);

        let failures = std::sync::atomic::AtomicU32::new(0);
        let gave_up: Mutex<Option<FetchError>> = Mutex::new(None);
        let all = futures::stream::iter(requests)
            .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed) && gave_up.lock().is_none()))
            .map(|request| async {
                let first = chunks[request[0].1];
                match self.clone().prefetch_request(request).await {
                    Ok(()) => failures.store(0, Ordering::Relaxed),
                    Err(f) => {
                        let err = f.for_chunk(&first);
                        if failures.fetch_add(1, Ordering::Relaxed) + 1 >= PREFETCH_MAX_FAILURES {
                            gave_up.lock().get_or_insert(err);
                        } else {
                            log::warn!("prefetch: {err}");
                        }
                    }
                }
            })
            .buffer_unordered(self.opts.prefetch_concurrency.max(1))
            .collect::<Vec<()>>();
        if Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.handle.block_on(all));
        } else {
            self.handle.block_on(all);
        }
        gave_up.into_inner().map_or(Ok(()), Err)
    }

    async fn prefetch_request(self: Arc<Self>, request: Vec<(Chunk, usize)>) -> Result<(), Failure> {
        let permit =
            self.prefetch_permits.acquire().await.map_err(|_| Failure::Unavailable("chunk source shut down".into()))?;
        let candidates: Vec<Chunk> = request.iter().map(|(c, _)| *c).filter(|c| !self.on_node(c)).collect();
        let claims: Vec<Claim> = {
            let mut inflight = self.inflight.lock();
            candidates.into_iter().filter_map(|c| self.claim(&mut inflight, c, None, false)).collect()
        };
        if claims.is_empty() {
            return Ok(());
        }
        let flights: Vec<Arc<Flight>> = claims.iter().map(|c| c.flight.clone()).collect();
        self.clone().run((Class::Prefetch, claims)).await;
        drop(permit);
        // Only the first failure matters for giving up; a digest mismatch is logged by decode.
        for f in flights {
            if let Some(Err(failure)) = f.peek() {
                return Err(failure);
            }
        }
        Ok(())
    }
}

/// Decompresses one zstd frame of at most `capacity` bytes with this thread's decompression
/// context (making one per chunk was measurable on a fast link).
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        context.decompress(data, capacity)
    })
}

fn unreachable_result() -> Result<Bytes, FetchError> {
    // Every slot is filled above; this keeps a logic error from becoming a panic in a FUSE thread.
    Err(FetchError::Corrupt {
        path: String::new(),
        chunk_no: 0,
        chunk: Digest([0; 32]),
        reason: "internal error: chunk not resolved".into(),
    })
}

impl ChunkSource for RegistryChunkSource {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        self.inner.read(chunks)
    }

    fn fetch_soon(&self, chunks: &[ChunkRef<'_>]) {
        let inner = &self.inner;
        if inner.in_outage() {
            return;
        }
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|&i| {
                let c = chunks[i].chunk;
                !inner.on_node(c) && inner.failures.recent(&c.digest).is_none()
            })
            .collect();
        if !missing.is_empty() {
            // Nobody waits: the flights complete into the cache (and memory) on their own.
            drop(inner.fetch_missing(chunks, &missing));
        }
    }
    fn prefetch(&self, chunks: &[ChunkRef<'_>], stop: &AtomicBool) -> Result<(), FetchError> {
        self.inner.prefetch(chunks, stop)
    }
}

#[cfg(test)]
pub(crate) mod tests;
