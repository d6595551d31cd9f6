//! Background prefetch: after mounting, bring the index's prioritized files (in order) and, in mode
//! `all`, every other file into the node cache, so a container's later reads are local.
//!
//! It goes through [`ChunkSource::prefetch`], which bounds how much prefetch runs at once so
//! on-demand reads are never starved; on top of that only a few workers run here, each asking for a
//! small batch of chunks at a time, so a stop request (unmount) is noticed within one batch.
//! A source that keeps failing (registry down) makes the prefetcher give up rather than spin: the
//! on-demand path has its own deadline and retries.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fetch::ChunkRef;
use crate::index::Kind;

use super::core::{paths_in_order, LazyFs};

/// Chunks asked for per call: small enough that a stop is noticed quickly, large enough to coalesce.
const BATCH: usize = 8;
/// Consecutive failed batches after which a worker stops (the registry is likely unreachable).
const MAX_FAILED_BATCHES: u32 = 3;

/// What to fetch in the background after mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefetchMode {
    /// Nothing: every byte is fetched when read.
    None,
    /// The index's prefetch list (files a recorded start read first), in order.
    #[default]
    Prioritized,
    /// The prefetch list first, then every other regular file.
    All,
}

impl FromStr for PrefetchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PrefetchMode::None),
            "prioritized" => Ok(PrefetchMode::Prioritized),
            "all" => Ok(PrefetchMode::All),
            other => Err(format!("unknown prefetch mode {other:?}: expected none, prioritized or all")),
        }
    }
}

impl std::fmt::Display for PrefetchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchMode::None => "none",
            PrefetchMode::Prioritized => "prioritized",
            PrefetchMode::All => "all",
        })
    }
}

/// Index inodes of the regular files to prefetch, in order, each once.
pub fn plan(fs: &LazyFs, mode: PrefetchMode) -> Vec<u32> {
    let index = fs.index();
    let is_file = |ino: u32| matches!(index.inode(ino), Some(i) if matches!(&i.kind, Kind::File { size, .. } if *size > 0));
    let mut seen = vec![false; index.inodes.len()];
    let mut order = Vec::new();
    if mode == PrefetchMode::None {
        return order;
    }
    for &ino in &index.prefetch {
        if is_file(ino) && !std::mem::replace(&mut seen[ino as usize], true) {
            order.push(ino);
        }
    }
    if mode == PrefetchMode::All {
        for (_, ino) in paths_in_order(index) {
            if is_file(ino) && !std::mem::replace(&mut seen[ino as usize], true) {
                order.push(ino);
            }
        }
    }
    order
}

/// Running prefetch workers; [`Prefetcher::stop`] ends them.
pub struct Prefetcher {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts `workers` threads over [`plan`]; `None` if there is nothing to fetch.
    pub fn start(fs: Arc<LazyFs>, mode: PrefetchMode, workers: usize) -> Option<Prefetcher> {
        let order = Arc::new(plan(&fs, mode));
        if order.is_empty() {
            return None;
        }
        log::info!("prefetch ({mode}): {} files", order.len());
        let stop = Arc::new(AtomicBool::new(false));
        let cursor = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let threads = (0..workers.max(1))
            .filter_map(|n| {
                let (fs, order, stop, cursor) = (fs.clone(), order.clone(), stop.clone(), cursor.clone());
                std::thread::Builder::new()
                    .name(format!("lazy-prefetch-{n}"))
                    .spawn(move || {
                        worker(&fs, &order, &cursor, &stop);
                        if cursor.load(Ordering::Relaxed) >= order.len() && !stop.load(Ordering::Relaxed) {
                            log::debug!("prefetch worker {n} done after {:?}", started.elapsed());
                        }
                    })
                    .map_err(|err| log::warn!("cannot start prefetch thread: {err}; continuing without it"))
                    .ok()
            })
            .collect();
        Some(Prefetcher { stop, threads })
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Asks the workers to stop and waits up to `wait` for them (a batch in flight may be waiting on
    /// the network); workers still busy after that are left to finish on their own.
    pub fn stop(self, wait: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + wait;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("prefetch thread still waiting on a fetch at unmount; leaving it to finish");
            }
        }
    }
}

fn worker(fs: &LazyFs, order: &[u32], cursor: &AtomicUsize, stop: &AtomicBool) {
    let mut failed_batches = 0;
    loop {
        let i = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(&ino) = order.get(i) else { return };
        let Some(Kind::File { chunks, .. }) = fs.index().inode(ino).map(|i| &i.kind) else { continue };
        let path = fs.path(ino);
        for (b, batch) in chunks.chunks(BATCH).enumerate() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let refs: Vec<ChunkRef<'_>> = batch
                .iter()
                .enumerate()
                .map(|(k, chunk)| ChunkRef { path, chunk_no: b * BATCH + k, chunk })
                .collect();
            // The source counts Stats::prefetched_chunks: only it knows which chunks it had to fetch.
            let results = fs.source().prefetch(&refs);
            match results.into_iter().find_map(Result::err) {
                None => failed_batches = 0,
                Some(err) => {
                    failed_batches += 1;
                    if failed_batches >= MAX_FAILED_BATCHES {
                        log::warn!("prefetch stopped after {failed_batches} failed batches: {err}; reads still fetch on demand");
                        return;
                    }
                    log::warn!("prefetch: {err}");
                }
            }
        }
    }
}
