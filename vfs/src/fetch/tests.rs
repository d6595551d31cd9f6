//! Tests of the registry-backed chunk source against an in-memory blob reader.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::index::BlobRef;

/// Blobs in memory; records every range read; can be "down" or slow.
#[derive(Default)]
struct FakeBlobs {
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
    calls: Mutex<Vec<(Digest, Range<u64>)>>,
    deadlines: Mutex<Vec<Duration>>,
    down: AtomicBool,
    hang: AtomicBool,
    delay_ms: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Set: answers arrive in 64 KiB pieces this many ms apart ([`BlobReader::stream_range`]).
    trickle_ms: AtomicUsize,
    /// Bytes of answers handed out so far.
    handed_out: AtomicUsize,
}

impl FakeBlobs {
    /// The whole answer to a range read, after the fake's delay (or failure).
    async fn answer(&self, blob: &Digest, range: Range<u64>, deadline: Duration) -> Result<Bytes, RegistryError> {
        self.calls.lock().push((*blob, range.clone()));
        self.deadlines.lock().push(deadline);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst) as u64;
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(RegistryError::Unreachable {
                registry: "127.0.0.1:1".into(),
                what: format!("blob {blob}"),
                reason: "connection refused".into(),
                deadline: Duration::from_secs(1),
            });
        }
        let blobs = self.blobs.lock();
        let data = blobs.get(blob).expect("test asked for a blob the fake does not have");
        Ok(Bytes::copy_from_slice(&data[range.start as usize..range.end as usize]))
    }
}

impl BlobReader for FakeBlobs {
    fn stream_range<'a>(
        &'a self,
        blob: &'a Digest,
        range: Range<u64>,
        deadline: Duration,
        sink: &'a mut (dyn FnMut(Bytes) + Send),
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let answer = self.answer(blob, range, deadline).await?;
            let trickle = self.trickle_ms.load(Ordering::SeqCst) as u64;
            let piece = if trickle == 0 { answer.len().max(1) } else { 64 << 10 };
            for at in (0..answer.len()).step_by(piece) {
                tokio::time::sleep(Duration::from_millis(trickle)).await;
                let bytes = answer.slice(at..answer.len().min(at + piece));
                self.handed_out.fetch_add(bytes.len(), Ordering::SeqCst);
                sink(bytes);
            }
            Ok(())
        })
    }
}

/// A blob holding `contents` as consecutive zstd chunks, and the chunk table (also used by the
/// real-registry tests).
pub(crate) fn make_blob(contents: &[Vec<u8>]) -> (BlobRef, Vec<u8>, Vec<Chunk>) {
    let mut blob = Vec::new();
    let mut chunks = Vec::new();
    for c in contents {
        let z = zstd::bulk::compress(c, 3).unwrap();
        chunks.push(Chunk {
            blob: 0,
            offset: blob.len() as u64,
            compressed_len: z.len() as u32,
            len: c.len() as u32,
            digest: Digest::of(c),
        });
        blob.extend_from_slice(&z);
    }
    (BlobRef { digest: Digest::of(&blob), size: blob.len() as u64 }, blob, chunks)
}

struct Rig {
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    fake: Arc<FakeBlobs>,
    cache: Arc<ChunkCache>,
    source: Arc<RegistryChunkSource>,
    chunks: Vec<Chunk>,
    contents: Vec<Vec<u8>>,
}

fn rig(contents: Vec<Vec<u8>>, opts: FetchOptions) -> Rig {
    rig_with(contents, opts, |_| {})
}

/// A rig whose index (chunk table and layout) `tamper` changed after the blob was written.
fn rig_with(contents: Vec<Vec<u8>>, opts: FetchOptions, tamper: impl FnOnce(&mut Vec<Chunk>)) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), 0).unwrap());
    let (blob_ref, blob, mut chunks) = make_blob(&contents);
    tamper(&mut chunks);
    let fake = Arc::new(FakeBlobs::default());
    fake.blobs.lock().insert(blob_ref.digest, blob);
    let source = Arc::new(RegistryChunkSource::with_reader(
        BlobLayout::new(vec![blob_ref], chunks.iter().copied()),
        fake.clone(),
        Some(cache.clone()),
        Arc::new(Stats::default()),
        rt.handle().clone(),
        opts,
    ));
    Rig { _rt: rt, _dir: dir, fake, cache, source, chunks, contents }
}

fn refs(chunks: &[Chunk]) -> Vec<ChunkRef<'_>> {
    ChunkRef::of_file("/usr/bin/app", chunks, 0..chunks.len())
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn adjacent_misses_become_one_range_request_and_then_hit_the_cache() {
    let r = rig((0..4).map(|i| pattern(i, 64 << 10)).collect(), FetchOptions::default());
    let out = r.source.read_chunks(&refs(&r.chunks));
    for (got, want) in out.iter().zip(&r.contents) {
        assert_eq!(got.as_ref().unwrap().as_ref(), &want[..]);
    }
    let calls = r.fake.calls.lock().clone();
    assert_eq!(calls.len(), 1, "four adjacent chunks, one request: {calls:?}");
    let last = r.chunks.last().unwrap();
    assert_eq!(calls[0].1, 0..last.end());
    let s = r.source.stats().snapshot();
    assert_eq!((s.requests, s.cache_misses, s.cache_hits), (1, 4, 0));
    assert_eq!(s.bytes_fetched, calls[0].1.end);

    // Served from the node cache now: no new request.
    let again = r.source.read_chunks(&refs(&r.chunks[1..3]));
    assert_eq!(again[0].as_ref().unwrap().as_ref(), &r.contents[1][..]);
    assert_eq!(r.fake.calls.lock().len(), 1);
    assert_eq!(r.source.stats().snapshot().cache_hits, 2);
    assert!(r.cache.contains(&r.chunks[3].digest));
}

#[test]
fn request_cap_splits_requests_and_readahead_off_fetches_only_what_is_read() {
    let opts = FetchOptions { max_request: 1, ..FetchOptions::default() };
    let r = rig((0..3).map(|i| pattern(i, 1000)).collect(), opts);
    r.source.read_chunks(&refs(&r.chunks));
    assert_eq!(r.fake.calls.lock().len(), 3, "each chunk alone exceeds the request cap");

    let opts = FetchOptions { readahead_max: 0, max_gap: 0, ..FetchOptions::default() };
    let r = rig((0..3).map(|i| pattern(i, 1000)).collect(), opts);
    let picked = [r.chunks[0], r.chunks[2]];
    let out = r.source.read_chunks(&refs(&picked));
    assert_eq!(out[1].as_ref().unwrap().as_ref(), &r.contents[2][..]);
    assert_eq!(r.fake.calls.lock().len(), 2, "chunks 0 and 2 are not adjacent and the gap is not bridged");
    assert!(!r.cache.contains(&r.chunks[1].digest), "no span: chunk 1 was not fetched");
}

/// Incompressible content: compressed chunks as large as the chunks themselves.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[test]
fn a_miss_fetches_its_neighbours_verified_and_cached_so_their_reads_send_nothing() {
    let r = rig((0..10).map(|i| pattern(i, 50_000)).collect(), FetchOptions::default());
    let out = r.source.read_chunks(&refs(&r.chunks[4..5]));
    assert_eq!(out[0].as_ref().unwrap().as_ref(), &r.contents[4][..]);
    // The reader returns when its own chunk is in; the span may still be landing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !r.chunks.iter().all(|c| r.cache.contains(&c.digest)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let calls = r.fake.calls.lock().len();
    for (i, c) in r.chunks.iter().enumerate() {
        assert_eq!(
            r.source.read_chunks(&refs(std::slice::from_ref(c)))[0].as_ref().unwrap().as_ref(),
            &r.contents[i][..]
        );
    }
    assert_eq!(r.fake.calls.lock().len(), calls, "every neighbour was already on the node");
    let s = r.source.stats().snapshot();
    assert_eq!((s.cache_misses, s.readahead_chunks), (1, 9));
}

#[test]
fn a_miss_fetches_the_rest_of_its_file_at_once_and_little_beyond_it() {
    // An 8-chunk file of 100 kB incompressible chunks (a library a program maps), then 32 chunks
    // of other files. One page fault at its start brings in the whole file, not one chunk per fault.
    let r = rig((0..40).map(|i| noise(i, 100_000)).collect(), FetchOptions::default());
    let file = &r.chunks[..8];
    let read = ChunkRef::of_file("/usr/lib/libbig.so", file, 0..1);
    assert_eq!(r.source.read_chunks(&read)[0].as_ref().unwrap().as_ref(), &r.contents[0][..]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file.iter().all(|c| r.cache.contains(&c.digest)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(file.iter().all(|c| r.cache.contains(&c.digest)), "the whole file came with its first miss");
    std::thread::sleep(Duration::from_millis(100));
    let beyond = (8..40).filter(|&i| r.cache.contains(&r.chunks[i].digest)).count();
    assert_eq!(beyond, 0, "the first window (256 KiB) lies inside the file; nothing past its end was fetched");
}

#[test]
fn the_rest_of_a_file_fetched_with_its_first_miss_is_read_from_memory_not_the_cache_again() {
    // A 6-chunk file, other files, a 1-chunk file at chunk 12, other files; 100 kB incompressible
    // chunks.
    let r = rig((0..20).map(|i| noise(i, 100_000)).collect(), FetchOptions::default());
    let wait_cached = |chunks: &[Chunk]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !chunks.iter().all(|c| r.cache.contains(&c.digest)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(chunks.iter().all(|c| r.cache.contains(&c.digest)));
    };
    let forget =
        |chunks: &[Chunk]| chunks.iter().for_each(|c| std::fs::remove_file(r.cache.path_of(&c.digest)).unwrap());
    let calls = || r.fake.calls.lock().len();

    // The big file's first miss brings the rest of it along, kept in memory as well as on disk: a
    // stream through it reads them from memory (no second read and hash of each cache file).
    // With the cache files gone, nothing is fetched again.
    let file = &r.chunks[..6];
    r.source.read_chunks(&ChunkRef::of_file("/usr/lib/big.so", file, 0..1))[0].as_ref().unwrap();
    wait_cached(file);
    let before = calls();
    forget(&file[1..]);
    for n in 1..file.len() {
        let read = ChunkRef::of_file("/usr/lib/big.so", file, n..n + 1);
        assert_eq!(r.source.read_chunks(&read)[0].as_ref().unwrap().as_ref(), &r.contents[n][..]);
    }
    assert_eq!(calls(), before, "the rest of the file was served from memory");

    // Speculation across files is not kept in memory (it would push out what readers read): the
    // neighbours the small file's miss brought along are read from the node cache (here, with
    // their cache files gone, fetched again).
    r.source.read_chunks(&ChunkRef::of_file("/etc/small.conf", &r.chunks[12..13], 0..1))[0].as_ref().unwrap();
    let neighbours = &r.chunks[13..15];
    wait_cached(neighbours);
    forget(neighbours);
    let before = calls();
    let read = ChunkRef::of_file("/etc/next.conf", &neighbours[..1], 0..1);
    assert_eq!(r.source.read_chunks(&read)[0].as_ref().unwrap().as_ref(), &r.contents[13][..]);
    assert!(calls() > before, "a speculative neighbour is not held in memory");
}

#[test]
fn a_reader_streaming_through_a_file_reads_ahead_to_its_end_and_no_further() {
    // A 6-chunk file of 100 kB incompressible chunks, then 34 chunks of other files.
    let r = rig((0..40).map(|i| noise(i, 100_000)).collect(), FetchOptions::default());
    let file = &r.chunks[..6];
    for n in 0..file.len() {
        let read = ChunkRef::of_file("/usr/lib/big.so", file, n..n + 1);
        assert_eq!(r.source.read_chunks(&read)[0].as_ref().unwrap().as_ref(), &r.contents[n][..]);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(file.iter().all(|c| r.cache.contains(&c.digest)));
    let beyond: Vec<usize> = (6..40).filter(|&i| r.cache.contains(&r.chunks[i].digest)).collect();
    let first_window = FetchOptions::default().readahead_min as usize / 100_000;
    assert!(
        beyond.iter().all(|&i| i < first_window),
        "only the first miss's window reaches past the file; reading ahead of the stream stopped at its end: {beyond:?}"
    );
}

#[test]
fn a_reader_streaming_through_a_file_gets_each_span_ahead_of_it_as_one_request() {
    // A 4 MB file of 100 kB incompressible chunks; requests of at most 256 KiB otherwise.
    let opts = FetchOptions { max_request: 256 << 10, readahead_max: 2 << 20, ..FetchOptions::default() };
    let r = rig((0..40).map(|i| noise(i, 100_000)).collect(), opts);
    for n in 0..r.chunks.len() {
        let read = ChunkRef::of_file("/data/big.bin", &r.chunks, n..n + 1);
        assert_eq!(r.source.read_chunks(&read)[0].as_ref().unwrap().as_ref(), &r.contents[n][..]);
    }
    let calls = r.fake.calls.lock().clone();
    let largest = calls.iter().map(|(_, r)| r.end - r.start).max().unwrap_or(0);
    assert!(largest > 1 << 20, "a span ahead of the reader went as one request: {calls:?}");
    let fetched: u64 = calls.iter().map(|(_, r)| r.end - r.start).sum();
    let total: u64 = r.chunks.iter().map(|c| c.compressed_len as u64).sum();
    assert_eq!(fetched, total, "each byte once");
}

#[test]
fn the_chunk_a_reader_waits_for_comes_in_a_small_first_request() {
    // 40 chunks of 100 kB incompressible data: a first window of 1 MiB holds ~10 of them.
    let window = 1 << 20;
    let r = rig(
        (0..40).map(|i| noise(i, 100_000)).collect(),
        FetchOptions { readahead_min: window, ..FetchOptions::default() },
    );
    r.fake.delay_ms.store(50, Ordering::SeqCst);
    let want = &r.chunks[20];
    assert_eq!(
        r.source.read_chunks(&refs(std::slice::from_ref(want)))[0].as_ref().unwrap().as_ref(),
        &r.contents[20][..]
    );
    std::thread::sleep(Duration::from_millis(300));
    let calls = r.fake.calls.lock().clone();
    // The span's requests start together (on the runtime's workers, in no fixed order): the one
    // holding the chunk read is small, so the reader does not wait for the rest of the span.
    let (_, first) = calls.iter().find(|(_, r)| r.contains(&want.offset)).expect("a request holds the chunk read");
    assert!(
        first.end - first.start <= FIRST_REQUEST + 100_100,
        "the request holding the chunk read is small: {first:?}"
    );
    let fetched: u64 = calls.iter().map(|(_, r)| r.end - r.start).sum();
    assert!(
        calls.len() >= 2 && (window - 150_000..=window + 100_000).contains(&fetched),
        "a span of about {window} bytes: {calls:?}"
    );
    // The rest of the span is not cut into first-request sizes: the part before the chunk read
    // and the part after it go as one request each (a registry counts requests, not bytes).
    assert!(calls.len() <= 3, "before, the chunk read, after: {calls:?}");
    assert!(
        r.chunks[18..20].iter().all(|c| r.cache.contains(&c.digest)),
        "a quarter of the window lies before the miss"
    );
}

#[test]
fn misses_that_keep_landing_in_one_region_grow_the_span() {
    let r = rig((0..200).map(|i| noise(i, 100_000)).collect(), FetchOptions::default());
    let mut spans = Vec::new();
    let mut at = 0;
    while at < r.chunks.len() && spans.len() < 4 {
        let before = r.source.stats().snapshot().bytes_fetched;
        r.source.read_chunks(&refs(&r.chunks[at..at + 1]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.source.inner.inflight.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        spans.push(r.source.stats().snapshot().bytes_fetched - before);
        at = r.chunks.iter().position(|c| !r.cache.contains(&c.digest)).unwrap_or(r.chunks.len());
    }
    for w in spans.windows(2) {
        // The window doubles; a quarter of it lies behind the miss, already fetched: x1.5 at least.
        assert!(w[1] * 10 >= w[0] * 14, "each sequential miss fetches more: {spans:?}");
    }
}

#[test]
fn a_bad_neighbour_is_never_cached_and_does_not_fail_the_read() {
    let r = rig((0..4).map(|i| noise(i, 20_000)).collect(), FetchOptions::default());
    {
        let mut blobs = r.fake.blobs.lock();
        let blob = blobs.values_mut().next().unwrap();
        blob[r.chunks[2].offset as usize + 100] ^= 0x01;
    }
    assert_eq!(r.source.read_chunks(&refs(&r.chunks[..1]))[0].as_ref().unwrap().as_ref(), &r.contents[0][..]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(r.cache.contains(&r.chunks[3].digest));
    assert!(!r.cache.contains(&r.chunks[2].digest), "the corrupt neighbour was not cached");
    let again = r.source.read_chunks(&refs(&r.chunks[2..3]));
    assert!(
        matches!(&again[0], Err(FetchError::DigestMismatch { path, .. } | FetchError::Corrupt { path, .. }) if path == "/usr/bin/app"),
        "{:?}",
        again[0]
    );
}

#[test]
fn prefetch_sends_few_large_requests_several_at_once() {
    let opts = FetchOptions { max_request: 1 << 20, prefetch_concurrency: 4, ..FetchOptions::default() };
    let r = rig((0..80).map(|i| noise(i, 100_000)).collect(), opts);
    r.fake.delay_ms.store(100, Ordering::SeqCst);
    let stop = AtomicBool::new(false);
    r.source.prefetch(&refs(&r.chunks), &stop).unwrap();
    assert!(r.chunks.iter().all(|c| r.cache.contains(&c.digest)));
    let calls = r.fake.calls.lock().len();
    assert!((8..=9).contains(&calls), "8 MB in 1 MiB requests: {calls}");
    assert_eq!(r.fake.max_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(r.source.stats().snapshot().prefetched_chunks, 80);
    // Nothing left to do: a second pass sends nothing.
    r.source.prefetch(&refs(&r.chunks), &stop).unwrap();
    assert_eq!(r.fake.calls.lock().len(), calls);
}

#[test]
fn a_read_of_a_chunk_the_prefetcher_is_fetching_waits_for_it() {
    let opts = FetchOptions { prefetch_concurrency: 1, ..FetchOptions::default() };
    let r = rig((0..4).map(|i| noise(i, 10_000)).collect(), opts);
    r.fake.delay_ms.store(300, Ordering::SeqCst);
    let prefetcher = {
        let (source, chunks) = (r.source.clone(), r.chunks.clone());
        std::thread::spawn(move || source.prefetch(&refs(&chunks), &AtomicBool::new(false)))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.source.read_chunks(&refs(&r.chunks[2..3]))[0].as_ref().unwrap().as_ref(), &r.contents[2][..]);
    prefetcher.join().unwrap().unwrap();
    assert_eq!(r.fake.calls.lock().len(), 1, "the read joined the prefetch request");
}

#[test]
fn prefetch_stops_when_asked() {
    let opts = FetchOptions { max_request: 1, prefetch_concurrency: 1, ..FetchOptions::default() };
    let r = rig((0..20).map(|i| pattern(i, 1000)).collect(), opts);
    r.fake.delay_ms.store(50, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (source, chunks, stop) = (r.source.clone(), r.chunks.clone(), stop.clone());
        std::thread::spawn(move || source.prefetch(&refs(&chunks), &stop))
    };
    std::thread::sleep(Duration::from_millis(120));
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap().unwrap();
    let calls = r.fake.calls.lock().len();
    assert!(calls < 6, "stopped after a few requests, not all 20: {calls}");
}

#[test]
fn prefetch_gives_up_when_the_registry_keeps_failing() {
    let opts = FetchOptions {
        max_request: 1,
        prefetch_concurrency: 1,
        deadline: Duration::from_millis(200),
        ..FetchOptions::default()
    };
    let r = rig((0..20).map(|i| pattern(i, 1000)).collect(), opts);
    r.fake.down.store(true, Ordering::SeqCst);
    let err = r.source.prefetch(&refs(&r.chunks), &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(err, FetchError::Unavailable { .. }), "{err}");
    assert_eq!(r.fake.calls.lock().len(), PREFETCH_MAX_FAILURES as usize);
}

#[test]
fn wrong_content_is_a_digest_mismatch_never_cached_and_other_chunks_still_read() {
    // The index claims chunk 0 holds different bytes than the blob does (a tampered blob).
    let claimed = pattern(9, 5000);
    let r = rig_with(vec![pattern(1, 5000), pattern(2, 5000)], FetchOptions::default(), |c| {
        c[0].digest = Digest::of(&claimed)
    });
    let out = r.source.read_chunks(&refs(&r.chunks));
    match &out[0] {
        Err(FetchError::DigestMismatch { path, chunk_no: 0, chunk, got }) => {
            assert_eq!(path, "/usr/bin/app");
            assert_eq!(*chunk, Digest::of(&claimed));
            assert_eq!(*got, Digest::of(&r.contents[0]));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(out[1].as_ref().unwrap().as_ref(), &r.contents[1][..]);
    assert!(!r.cache.contains(&r.chunks[0].digest), "a bad chunk is never cached");
    assert_eq!(r.source.stats().snapshot().verify_failures, 1);
    // Reading it again (after the moment a failed chunk fails at once) fetches again: nothing bad
    // was remembered as good. It fails again.
    std::thread::sleep(FAILURE_MEMO);
    assert!(matches!(r.source.read_chunks(&refs(&r.chunks[..1]))[0], Err(FetchError::DigestMismatch { .. })));
    assert_eq!(r.fake.calls.lock().len(), 2);
}

#[test]
fn flipped_byte_in_blob_fails_the_read_and_caches_nothing() {
    let r = rig(vec![vec![b'a'; 4000], pattern(3, 4000)], FetchOptions::default());
    {
        let mut blobs = r.fake.blobs.lock();
        let blob = blobs.values_mut().next().unwrap();
        blob[r.chunks[1].offset as usize + (r.chunks[1].compressed_len as usize) / 2] ^= 0x01;
    }
    let out = r.source.read_chunks(&refs(&r.chunks));
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(FetchError::DigestMismatch { .. }) | Err(FetchError::Corrupt { .. })), "{:?}", out[1]);
    assert!(!r.cache.contains(&r.chunks[1].digest));
}

#[test]
fn decompression_is_bounded_by_the_chunk_length() {
    // Hostile index/blob pair: the frame inflates far beyond the claimed length.
    let r = rig_with(vec![vec![0u8; 1 << 20]], FetchOptions::default(), |c| c[0].len = 1000);
    let out = r.source.read_chunks(&refs(&r.chunks));
    assert!(matches!(&out[0], Err(FetchError::Corrupt { reason, .. }) if reason.contains("1000")), "{:?}", out[0]);
}

#[test]
fn concurrent_readers_of_a_cold_chunk_share_one_fetch() {
    let r = rig(vec![pattern(5, 100_000), pattern(6, 100_000)], FetchOptions::default());
    r.fake.delay_ms.store(200, Ordering::SeqCst);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (source, chunks) = (r.source.clone(), r.chunks.clone());
            std::thread::spawn(move || {
                source.read_chunks(&refs(&chunks)).into_iter().map(|x| x.unwrap().to_vec()).collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), r.contents);
    }
    assert_eq!(r.fake.calls.lock().len(), 1, "8 readers, one fetch");
    let s = r.source.stats().snapshot();
    assert_eq!((s.cache_misses, s.cache_hits), (2, 14));
}

#[test]
fn identical_chunks_in_one_read_are_fetched_once() {
    let r = rig(vec![vec![0u8; 4096]], FetchOptions::default());
    let same = [r.chunks[0], r.chunks[0], r.chunks[0]];
    let out = r.source.read_chunks(&refs(&same));
    assert!(out.iter().all(|x| x.as_ref().unwrap().len() == 4096));
    assert_eq!(r.fake.calls.lock().len(), 1);
}

#[test]
fn outage_fails_within_the_deadline_and_recovers() {
    let opts = FetchOptions { deadline: Duration::from_millis(500), ..FetchOptions::default() };
    let r = rig(vec![pattern(7, 3000)], opts);
    r.fake.down.store(true, Ordering::SeqCst);
    assert!(
        matches!(&r.source.read_chunks(&refs(&r.chunks))[0], Err(FetchError::Unavailable { reason, .. }) if reason.contains("connection refused"))
    );

    r.fake.down.store(false, Ordering::SeqCst);
    r.fake.hang.store(true, Ordering::SeqCst);
    std::thread::sleep(FAILURE_MEMO);
    let t = Instant::now();
    let out = r.source.read_chunks(&refs(&r.chunks));
    assert!(matches!(&out[0], Err(FetchError::Unavailable { .. })), "{:?}", out[0]);
    assert!(t.elapsed() < Duration::from_secs(2), "a hung registry must not hang the read: {:?}", t.elapsed());
    assert!(!r.cache.contains(&r.chunks[0].digest));

    r.fake.hang.store(false, Ordering::SeqCst);
    std::thread::sleep(FAILURE_MEMO);
    assert_eq!(r.source.read_chunks(&refs(&r.chunks))[0].as_ref().unwrap().as_ref(), &r.contents[0][..]);
}

#[test]
fn a_chunk_that_failed_moments_ago_fails_again_at_once_then_is_fetched_again() {
    let opts = FetchOptions { deadline: Duration::from_secs(10), readahead_max: 0, ..FetchOptions::default() };
    let r = rig(vec![pattern(3, 3000), pattern(4, 3000)], opts);
    r.fake.down.store(true, Ordering::SeqCst);
    assert!(r.source.read_chunks(&refs(&r.chunks[..1]))[0].is_err());
    let calls = r.fake.calls.lock().len();
    // The kernel retries a failed readahead page right away: one read(2) must not wait for the
    // network twice. The retry gets the same error, naming its own file, without a request.
    r.fake.down.store(false, Ordering::SeqCst);
    let retry: Vec<ChunkRef<'_>> = vec![ChunkRef::of_file("/usr/lib/other", &r.chunks, 0..1)[0], refs(&r.chunks)[1]];
    let again = r.source.read_chunks(&retry);
    assert!(
        matches!(&again[0], Err(FetchError::Unavailable { path, reason, .. })
            if path == "/usr/lib/other" && reason.contains("connection refused")),
        "{:?}",
        again[0]
    );
    assert_eq!(again[1].as_ref().unwrap().as_ref(), &r.contents[1][..], "other chunks of the read are fetched");
    assert_eq!(r.fake.calls.lock().len(), calls + 1, "refetched a chunk that failed moments ago");
    // Moments later it is fetched again.
    std::thread::sleep(FAILURE_MEMO + Duration::from_millis(20));
    assert_eq!(r.source.read_chunks(&refs(&r.chunks[..1]))[0].as_ref().unwrap().as_ref(), &r.contents[0][..]);
}

#[test]
fn prefetch_is_bounded_separately_and_does_not_starve_reads() {
    let opts = FetchOptions { prefetch_concurrency: 1, max_request: 1, readahead_max: 0, ..FetchOptions::default() };
    let r = rig((0..5).map(|i| pattern(i, 2000)).collect(), opts);
    r.fake.delay_ms.store(100, Ordering::SeqCst);
    let prefetcher = {
        let (source, chunks) = (r.source.clone(), r.chunks.clone());
        std::thread::spawn(move || source.prefetch(&refs(&chunks[..4]), &AtomicBool::new(false)))
    };
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let out = r.source.read_chunks(&refs(&r.chunks[4..]));
    assert_eq!(out[0].as_ref().unwrap().as_ref(), &r.contents[4][..]);
    assert!(t.elapsed() < Duration::from_millis(300), "read waited for the prefetcher: {:?}", t.elapsed());
    prefetcher.join().unwrap().unwrap();
    assert!(r.chunks.iter().all(|c| r.cache.contains(&c.digest)));
    assert_eq!(r.fake.max_in_flight.load(Ordering::SeqCst), 2, "one prefetch + one read at a time");
    assert_eq!(r.source.stats().snapshot().prefetched_chunks, 4);
}

#[test]
fn a_chunk_is_served_when_its_bytes_land_not_when_its_whole_request_has() {
    // One 2 MB prefetch request arriving in 64 KiB pieces 20 ms apart (about 0.6 s in all).
    let r = rig((0..20).map(|i| noise(i, 100_000)).collect(), FetchOptions::default());
    r.fake.trickle_ms.store(20, Ordering::SeqCst);
    let prefetcher = {
        let (source, chunks) = (r.source.clone(), r.chunks.clone());
        std::thread::spawn(move || source.prefetch(&refs(&chunks), &AtomicBool::new(false)))
    };
    while r.fake.calls.lock().is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The read joins the prefetch's flight for chunk 1 and gets it once its bytes are in.
    assert_eq!(r.source.read_chunks(&refs(&r.chunks[1..2]))[0].as_ref().unwrap().as_ref(), &r.contents[1][..]);
    let handed_out = r.fake.handed_out.load(Ordering::SeqCst);
    prefetcher.join().unwrap().unwrap();
    let total: u64 = r.chunks.iter().map(|c| c.compressed_len as u64).sum();
    assert_eq!(r.fake.calls.lock().len(), 1, "one request");
    assert!((handed_out as u64) < total / 2, "chunk 1 was served after {handed_out} of {total} bytes");
    assert!(r.chunks.iter().all(|c| r.cache.contains(&c.digest)), "then every chunk of the request landed");
    assert_eq!(r.source.stats().snapshot().prefetched_chunks, 20);
}

#[test]
fn hostile_offsets_and_blob_numbers_are_corrupt_not_panics() {
    let r = rig_with(vec![pattern(1, 1000), pattern(2, 1000)], FetchOptions::default(), |c| {
        c[0].offset = u64::MAX - 1;
        c[1].blob = 7;
    });
    let out = r.source.read_chunks(&refs(&r.chunks));
    assert!(matches!(&out[0], Err(FetchError::Corrupt { reason, .. }) if reason.contains("only")), "{:?}", out[0]);
    assert!(matches!(&out[1], Err(FetchError::Corrupt { reason, .. }) if reason.contains("blob #7")), "{:?}", out[1]);
    assert!(r.fake.calls.lock().is_empty(), "nothing is requested for impossible chunks");
}

#[test]
fn repeated_reads_of_a_chunk_are_served_from_memory_even_without_a_node_cache() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let contents: Vec<Vec<u8>> = (0..3).map(|i| pattern(i, 100_000)).collect();
    let (blob_ref, blob, chunks) = make_blob(&contents);
    let layout = BlobLayout::new(vec![blob_ref], chunks.iter().copied());
    let fake = Arc::new(FakeBlobs::default());
    fake.blobs.lock().insert(blob_ref.digest, blob);
    // Room for two 100 kB chunks only.
    let opts = FetchOptions { memory_bytes: 250_000, ..FetchOptions::default() };
    let source = RegistryChunkSource::with_reader(
        layout.clone(),
        fake.clone(),
        None,
        Arc::new(Stats::default()),
        rt.handle().clone(),
        opts,
    );
    // The kernel reads a chunk in 128 KiB pieces: eight calls for the same chunk.
    for _ in 0..8 {
        assert_eq!(source.read_chunks(&refs(&chunks[..1]))[0].as_ref().unwrap().as_ref(), &contents[0][..]);
    }
    assert_eq!(fake.calls.lock().len(), 1, "one fetch for eight reads of one chunk");
    for c in 1..3 {
        source.read_chunks(&refs(&chunks[c..c + 1]));
    }
    assert_eq!(fake.calls.lock().len(), 3);
    source.read_chunks(&refs(&chunks[..1]));
    assert_eq!(fake.calls.lock().len(), 4, "the memory budget is bounded: the oldest chunk was dropped");
    let off = RegistryChunkSource::with_reader(
        layout,
        fake.clone(),
        None,
        Arc::new(Stats::default()),
        rt.handle().clone(),
        FetchOptions { memory_bytes: 0, ..FetchOptions::default() },
    );
    off.read_chunks(&refs(&chunks[..1]));
    off.read_chunks(&refs(&chunks[..1]));
    assert_eq!(fake.calls.lock().len(), 6, "memory_bytes 0 disables it");
}

#[test]
fn after_an_outage_is_seen_fetches_only_probe_until_the_registry_answers() {
    let opts = FetchOptions { deadline: Duration::from_secs(10), readahead_max: 0, ..FetchOptions::default() };
    let r = rig(vec![pattern(1, 3000), pattern(2, 3000)], opts);
    r.fake.down.store(true, Ordering::SeqCst);
    assert!(r.source.read_chunks(&refs(&r.chunks[..1]))[0].is_err());
    // A read of the chunk once it is no longer failed at once (below) only probes.
    std::thread::sleep(FAILURE_MEMO);
    let again = r.source.read_chunks(&refs(&r.chunks[..1]));
    assert!(
        matches!(&again[0], Err(FetchError::Unavailable { reason, .. }) if reason.contains("probed briefly")),
        "{:?}",
        again[0]
    );
    r.fake.down.store(false, Ordering::SeqCst);
    std::thread::sleep(FAILURE_MEMO);
    assert!(r.source.read_chunks(&refs(&r.chunks[..1]))[0].is_ok(), "a probe finds the registry back");
    assert!(r.source.read_chunks(&refs(&r.chunks[1..]))[0].is_ok());
    let d = r.fake.deadlines.lock().clone();
    assert_eq!(d, [Duration::from_secs(10), OUTAGE_PROBE, OUTAGE_PROBE, Duration::from_secs(10)]);
}

/// Another process on the same node: its own chunk source, cache handle and fake registry (with
/// the same blob), sharing the rig's cache directory.
fn neighbour(r: &Rig, opts: FetchOptions) -> (Arc<FakeBlobs>, Arc<RegistryChunkSource>) {
    let fake = Arc::new(FakeBlobs::default());
    *fake.blobs.lock() = r.fake.blobs.lock().clone();
    let cache = Arc::new(ChunkCache::open(r.cache.dir(), 0).unwrap());
    let blob = r.source.inner.layout.blobs().to_vec();
    let source = Arc::new(RegistryChunkSource::with_reader(
        BlobLayout::new(blob, r.chunks.iter().copied()),
        fake.clone(),
        Some(cache),
        Arc::new(Stats::default()),
        r._rt.handle().clone(),
        opts,
    ));
    (fake, source)
}

fn fetched(fake: &FakeBlobs) -> u64 {
    fake.calls.lock().iter().map(|(_, r)| r.end - r.start).sum()
}

#[test]
fn processes_sharing_a_node_cache_fetch_each_chunk_once_between_them() {
    let contents: Vec<Vec<u8>> = (0..24).map(|i| noise(i, 40_000)).collect();
    let r = rig(contents, FetchOptions::default());
    let others: Vec<_> = (0..3).map(|_| neighbour(&r, FetchOptions::default())).collect();
    for fake in std::iter::once(&r.fake).chain(others.iter().map(|(f, _)| f)) {
        fake.delay_ms.store(150, Ordering::SeqCst);
    }
    let sources: Vec<Arc<RegistryChunkSource>> =
        std::iter::once(r.source.clone()).chain(others.iter().map(|(_, s)| s.clone())).collect();
    // Each "process" reads every chunk, starting at a different one, with a few threads.
    let threads: Vec<_> = sources
        .iter()
        .enumerate()
        .flat_map(|(p, source)| {
            let chunks = r.chunks.clone();
            (0..3).map(move |t| {
                let (source, mut order) = (source.clone(), chunks.clone());
                let n = order.len();
                order.rotate_left((p * 7 + t * 3) % n);
                std::thread::spawn(move || {
                    let out: Vec<Vec<u8>> =
                        source.read_chunks(&refs(&order)).into_iter().map(|x| x.unwrap().to_vec()).collect();
                    (order, out)
                })
            })
        })
        .collect();
    for t in threads {
        let (order, out) = t.join().unwrap();
        for (chunk, got) in order.iter().zip(out) {
            assert_eq!(Digest::of(&got), chunk.digest, "wrong bytes");
        }
    }
    let blob_len = r.chunks.last().map(|c| c.end()).unwrap();
    let total: u64 = fetched(&r.fake) + others.iter().map(|(f, _)| fetched(f)).sum::<u64>();
    assert_eq!(total, blob_len, "4 processes fetched {total} bytes of a {blob_len}-byte blob: some chunk twice");
    let waits: u64 = sources.iter().map(|s| s.stats().snapshot().node_waits).sum();
    assert!(waits > 0, "nobody waited for a neighbour's fetch");
}

#[test]
fn a_request_that_waited_for_its_slot_reads_what_a_neighbour_fetched_meanwhile_from_the_cache() {
    // One request slot, taken for 600 ms by a read of chunk 0; a read of chunk 1 claims it and
    // waits for the slot. Meanwhile another process on the node fetches chunk 1 and caches it.
    let opts = FetchOptions { concurrency: 1, readahead_max: 0, ..FetchOptions::default() };
    let r = rig(vec![noise(1, 50_000), noise(2, 50_000)], opts.clone());
    r.fake.delay_ms.store(600, Ordering::SeqCst);
    let (other_fake, other) = neighbour(&r, opts);
    let read = |n: usize| {
        let (source, chunks) = (r.source.clone(), r.chunks.clone());
        std::thread::spawn(move || source.read_chunks(&refs(&chunks[n..n + 1])).remove(0).map(|b| b.to_vec()))
    };
    let first = read(0);
    std::thread::sleep(Duration::from_millis(50));
    let second = read(1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(other.read_chunks(&refs(&r.chunks[1..2]))[0].as_ref().unwrap().as_ref(), &r.contents[1][..]);
    assert_eq!(first.join().unwrap().unwrap(), r.contents[0]);
    assert_eq!(second.join().unwrap().unwrap(), r.contents[1]);
    let calls = r.fake.calls.lock().clone();
    assert!(
        calls.iter().all(|(_, range)| range.start != r.chunks[1].offset),
        "chunk 1 was fetched again after the neighbour cached it: {calls:?}"
    );
    assert_eq!(other_fake.calls.lock().len(), 1);
    assert_eq!(r.source.stats().snapshot().node_waits, 1, "read from the node cache");
}

#[test]
fn a_chunk_whose_owner_on_the_node_dies_uncached_is_fetched_by_the_waiter() {
    let r = rig(vec![pattern(1, 5000), pattern(2, 5000)], FetchOptions { readahead_max: 0, ..FetchOptions::default() });
    let digest = r.source.inner.layout.blobs()[0].digest;
    // The "other process": holds the first chunk's lock, never caches it, then dies.
    let owner = Lease::open(&r.cache.lock_path(&digest)).unwrap();
    assert!(owner.try_lock(&r.chunks[0]));
    let started = Instant::now();
    let dies = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(owner);
    });
    let out = r.source.read_chunks(&refs(&r.chunks));
    dies.join().unwrap();
    assert_eq!(out[0].as_ref().unwrap().as_ref(), &r.contents[0][..]);
    assert_eq!(out[1].as_ref().unwrap().as_ref(), &r.contents[1][..]);
    assert!(started.elapsed() >= Duration::from_millis(300), "read the locked chunk before its owner let go");
    let calls = r.fake.calls.lock().clone();
    assert!(calls.iter().any(|(_, range)| range.start == 0), "the waiter never fetched the chunk itself: {calls:?}");
    assert_eq!(r.source.stats().snapshot().node_waits, 0);
}

#[test]
fn an_owner_on_the_node_that_never_finishes_fails_the_read_at_the_deadline() {
    let opts = FetchOptions { deadline: Duration::from_millis(600), readahead_max: 0, ..FetchOptions::default() };
    let r = rig(vec![pattern(1, 5000)], opts);
    let digest = r.source.inner.layout.blobs()[0].digest;
    let owner = Lease::open(&r.cache.lock_path(&digest)).unwrap();
    assert!(owner.try_lock(&r.chunks[0]));
    let started = Instant::now();
    let out = r.source.read_chunks(&refs(&r.chunks));
    assert!(
        matches!(&out[0], Err(FetchError::Unavailable { reason, .. }) if reason.contains("another process on this node")),
        "{:?}",
        out[0]
    );
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    assert!(r.fake.calls.lock().is_empty(), "fetched a chunk another process held");
    drop(owner);
    std::thread::sleep(FAILURE_MEMO);
    assert!(r.source.read_chunks(&refs(&r.chunks))[0].is_ok(), "reads once the owner is gone");
}
