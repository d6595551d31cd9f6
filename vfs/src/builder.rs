//! The one way to turn an index, registry settings (hosts.toml, credentials, timeouts), cache
//! settings and fetch options into a mounted lazy filesystem. The shim and `lazyctl mount` (and
//! `lazyctl optimize`) both go through [`LazyMountBuilder`], so they resolve mirrors, find
//! credentials, size the registry client for the fetcher and count into one [`Stats`] the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::cache::{CacheError, ChunkCache};
use crate::fetch::{BlobLayout, FetchOptions, RegistryChunkSource};
use crate::filestore::FileStore;
use crate::fs::{FsError, MountOptions, Mounted};
use crate::registry::{Client, ClientConfig, Reference, ReferenceError, RegistryError};
use crate::stats::Stats;
use crate::Index;

/// The node-wide chunk cache a mount reads through.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Size cap in bytes (least recently used chunks are evicted beyond it).
    pub max_bytes: u64,
    /// Keep whole verified files beside the chunks ([`crate::filestore`]) so fully cached files
    /// can be opened with FUSE passthrough.
    pub files: bool,
    /// Keep each image's start log under `<dir>/starts` and replay it at the next mount
    /// ([`crate::fs::startlog`]).
    pub start_logs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("data blob repository {repository:?}: {source}")]
    Repository { repository: String, source: ReferenceError },
    #[error(transparent)]
    Mount(#[from] FsError),
}

/// Holds the registry client (sized for the fetcher, reporting into the mount's counters), the
/// counters and the cache of one mount until [`LazyMountBuilder::mount`].
pub struct LazyMountBuilder {
    client: Client,
    stats: Arc<Stats>,
    fetch: FetchOptions,
    cache: Option<Arc<ChunkCache>>,
    file_store: Option<Arc<FileStore>>,
    start_logs: Option<PathBuf>,
}

impl LazyMountBuilder {
    /// The client's concurrency bound is set from `fetch` (every request the fetcher may have in
    /// flight); its deadline is the caller's (keep it at most the fetch deadline).
    pub fn new(
        registry: ClientConfig,
        fetch: FetchOptions,
        cache: Option<CacheSettings>,
    ) -> Result<LazyMountBuilder, BuildError> {
        let stats = Arc::new(Stats::default());
        let registry = ClientConfig { max_concurrency: RegistryChunkSource::max_requests(&fetch), ..registry };
        let client = Client::with_stats(registry, stats.clone())?;
        let start_logs = cache.as_ref().filter(|c| c.start_logs).map(|c| c.dir.join("starts"));
        let (cache, file_store) = match cache {
            Some(c) => {
                let cache = Arc::new(ChunkCache::open(&c.dir, c.max_bytes)?);
                // The file store only makes warm reads faster: without it, files are served from chunks.
                let files = c.files.then(|| FileStore::open(cache.clone())).and_then(|r| {
                    r.map_err(|e| log::warn!("file store in {}: {e}; serving files from chunks only", c.dir.display()))
                        .ok()
                });
                (Some(cache), files.map(Arc::new))
            }
            None => (None, None),
        };
        Ok(LazyMountBuilder { client, stats, fetch, cache, file_store, start_logs })
    }

    /// The registry client: also what fetches the index of an image reference before mounting.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The chunk source over `index`'s data blobs, in `blob_repo` (default: the repository the
    /// index records). `handle` must belong to a multi-thread runtime.
    pub fn chunk_source(
        &self,
        index: &Index,
        blob_repo: Option<&str>,
        handle: Handle,
    ) -> Result<RegistryChunkSource, BuildError> {
        let repo = blob_repo.unwrap_or(&index.source);
        let repository: Reference =
            repo.parse().map_err(|source| BuildError::Repository { repository: repo.to_string(), source })?;
        // Resolve hosts.toml now: a broken file fails the mount, not every read.
        self.client.endpoints(&repository)?;
        Ok(RegistryChunkSource::new(
            BlobLayout::of(index),
            repository,
            self.client.clone(),
            self.cache.clone(),
            self.stats.clone(),
            handle,
            self.fetch.clone(),
        ))
    }

    /// Mounts `index` at `mountpoint`, with the cache's file store (if any) in place of
    /// `opts.file_store`, and the image's start log in the cache (if kept) unless `opts` names
    /// one. Blocks for the FUSE handshake.
    pub fn mount(
        self,
        index: Index,
        blob_repo: Option<&str>,
        handle: Handle,
        mountpoint: &Path,
        opts: MountOptions,
    ) -> Result<Mounted, BuildError> {
        let start_log =
            opts.start_log.or_else(|| Some(self.start_logs.as_ref()?.join(crate::fs::startlog::log_name(&index))));
        let opts = MountOptions { file_store: self.file_store.clone(), start_log, ..opts };
        let source = self.chunk_source(&index, blob_repo, handle)?;
        Ok(crate::fs::mount(Arc::new(index), Arc::new(source), self.stats, mountpoint, opts)?)
    }
}
