//! Background prefetch: after mounting, bring the index's prioritized files (in order) and, in mode
//! `all`, every other file into the node cache, so a container's later reads are local.
//!
//! One thread hands the whole prioritized set to [`ChunkSource::prefetch`] at once (the source
//! turns it into a few large range requests, several in flight, on its own budget beside on-demand
//! reads), then, in mode `all`, the rest. A stop request (unmount) is noticed between requests. A
//! source that keeps failing (registry down) makes the prefetcher give up rather than spin: the
//! on-demand path has its own deadline and retries.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fetch::ChunkRef;
use crate::index::{Index, Kind};

use super::core::{paths_in_order, LazyFs};

/// What to fetch in the background after mounting. Spelled `none`, `prioritized`, `all` on the
/// command line ([`FromStr`]) and in the shim's config (serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefetchMode {
    /// Nothing: every byte is fetched when read.
    None,
    /// The index's prefetch list (files a recorded start read first), in order; on-demand reads
    /// go first.
    #[default]
    Prioritized,
    /// The prefetch list first, then every other regular file: the whole image ends up on the node.
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
    let is_file =
        |ino: u32| matches!(index.inode(ino), Some(i) if matches!(&i.kind, Kind::File { size, .. } if *size > 0));
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

/// The running prefetch thread; [`Prefetcher::stop`] ends it.
pub struct Prefetcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Prefetcher {
    /// Starts the prefetch thread over [`plan`]; `None` if there is nothing to fetch.
    pub fn start(fs: Arc<LazyFs>, mode: PrefetchMode) -> Option<Prefetcher> {
        let prioritized = plan(&fs, mode.min(PrefetchMode::Prioritized));
        let all = plan(&fs, mode);
        if all.is_empty() {
            return None;
        }
        let rest = all[prioritized.len()..].to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lazy-prefetch".into())
            .spawn(move || {
                let started = Instant::now();
                for (what, files) in [("prioritized", prioritized), ("remaining", rest)] {
                    if files.is_empty() || flag.load(Ordering::Relaxed) {
                        continue;
                    }
                    let refs = chunk_refs(&fs, &files);
                    log::info!("prefetch: {} {what} files, {} chunks", files.len(), refs.len());
                    if let Err(err) = fs.source().prefetch(&refs, &flag) {
                        log::warn!("prefetch stopped: {err}; reads still fetch on demand");
                        return;
                    }
                    if !flag.load(Ordering::Relaxed) {
                        log::info!("prefetch: {what} files done after {:?}", started.elapsed());
                        // Whole files now in the node cache: store them for passthrough opens.
                        for &ino in &files {
                            fs.want_stored(Index::fuse_ino(ino));
                        }
                    }
                }
            })
            .map_err(|err| log::warn!("cannot start the prefetch thread: {err}; continuing without it"))
            .ok()?;
        Some(Prefetcher { stop, thread })
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the thread to stop and waits up to `wait` for it (requests in flight may be waiting
    /// on the network); a thread still busy after that is left to finish on its own.
    pub fn stop(self, wait: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + wait;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            log::warn!("prefetch still waiting on a fetch at unmount; leaving it to finish");
        }
    }
}

/// Every chunk of `files`, file by file, in order.
fn chunk_refs<'a>(fs: &'a LazyFs, files: &[u32]) -> Vec<ChunkRef<'a>> {
    let mut refs = Vec::new();
    for &ino in files {
        if let Some(Kind::File { chunks, .. }) = fs.index().inode(ino).map(|i| &i.kind) {
            let path = fs.path(ino);
            refs.extend(ChunkRef::of_file(path, chunks, 0..chunks.len()));
        }
    }
    refs
}
