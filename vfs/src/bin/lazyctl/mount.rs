//! `lazyctl mount`: mount a lazy image in the foreground until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use vfs::cache::{ChunkCache, DEFAULT_CACHE_DIR, DEFAULT_MAX_BYTES};
use vfs::fetch::{BlobLayout, FetchOptions, RegistryChunkSource};
use vfs::filestore::FileStore;
use vfs::fs::{MountOptions, PrefetchMode};
use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};
use vfs::stats::Stats;
use vfs::Index;

#[derive(clap::Args)]
pub struct Args {
    /// Talk plain HTTP to the registry (default: only for loopback registries).
    #[arg(long)]
    plain_http: bool,
    /// Node-wide chunk cache, shared with other mounts and the shim.
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Cache size cap in bytes (least recently used chunks are evicted beyond it).
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    cache_max_bytes: u64,
    /// Background fetching after mounting: none, prioritized (the image's prefetch list) or all.
    #[arg(long, default_value_t = PrefetchMode::Prioritized)]
    prefetch: PrefetchMode,
    /// Write the absolute path of each file as it is first read (input of `convert --prefetch-list`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Seconds a read may wait for an unreachable registry before failing with EIO.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    deadline: u64,
    /// FUSE request threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Serve every read through the FUSE request loop: no FUSE passthrough to stored files and no
    /// file store (what a kernel without passthrough gets).
    #[arg(long)]
    no_passthrough: bool,
    /// No file store: fully cached files are not written as whole files beside the chunks (and
    /// nothing is passed through).
    #[arg(long)]
    no_file_store: bool,
    /// Repository holding the data blobs (default: the one recorded in the index), e.g. a mirror.
    #[arg(long, value_name = "REPOSITORY")]
    blob_repo: Option<String>,
    /// Lazy (stub) image reference, or a local index file or unpacked stub directory (tests).
    image: String,
    /// Existing empty directory to mount on.
    mountpoint: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Block the stop signals before any thread exists, so every thread inherits the mask and the
    // signals wait for sigtimedwait below instead of killing the process with the mount in place.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block().context("blocking SIGINT/SIGTERM")?;

    let deadline = Duration::from_secs(args.deadline.max(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lazy-net")
        .enable_all()
        .build()
        .context("starting the network runtime")?;
    let client_config = ClientConfig {
        plain_http: if args.plain_http { PlainHttp::Always } else { PlainHttp::Auto },
        deadline,
        ..ClientConfig::default()
    };
    let client = Client::new(client_config.clone())?;

    let index = load_index(&runtime, &client, &args.image)?;
    let blob_repo = args.blob_repo.as_deref().unwrap_or(&index.source);
    let repository: Reference =
        blob_repo.parse().with_context(|| format!("data blob repository {blob_repo:?} of {}", args.image))?;
    let cache = Arc::new(ChunkCache::open(&args.cache_dir, args.cache_max_bytes)?);
    let file_store = if args.no_file_store { None } else { Some(Arc::new(FileStore::open(cache.clone())?)) };
    let stats = Arc::new(Stats::default());
    let source = chunk_source(&index, repository, client_config, cache, stats.clone(), &runtime)?;
    let opts = MountOptions {
        prefetch: args.prefetch,
        record: args.record,
        threads: args.threads,
        file_store,
        passthrough: !args.no_passthrough,
        ..MountOptions::default()
    };
    let mounted = vfs::fs::mount(Arc::new(index), Arc::new(source), stats, &args.mountpoint, opts)?;
    println!("mounted {} at {}", args.image, mounted.mountpoint().display());
    std::io::Write::flush(&mut std::io::stdout())?;

    loop {
        if let Some(sig) = wait_signal(&stop, Duration::from_millis(500))? {
            log::info!("{sig}: unmounting {}", mounted.mountpoint().display());
            break;
        }
        if !mounted.is_alive() {
            log::warn!("{} was unmounted from outside; exiting", mounted.mountpoint().display());
            break;
        }
    }
    let snapshot = mounted.stats().snapshot();
    mounted.unmount()?;
    log::info!(
        "served {} bytes; fetched {} bytes in {} requests; cache hits {}, misses {}",
        snapshot.bytes_served,
        snapshot.bytes_fetched,
        snapshot.requests,
        snapshot.cache_hits,
        snapshot.cache_misses
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A registry reference, or for tests and offline use a local index file or stub directory.
/// The chunk source a lazyctl mount reads through: its own registry client (with `config`'s
/// settings), sized for every request the fetcher may have in flight, and the node cache.
pub(crate) fn chunk_source(
    index: &Index,
    repository: Reference,
    config: ClientConfig,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RegistryChunkSource> {
    let fetch = FetchOptions { deadline: config.deadline, ..FetchOptions::default() };
    let client = Client::new(ClientConfig { max_concurrency: RegistryChunkSource::max_requests(&fetch), ..config })?;
    Ok(RegistryChunkSource::new(BlobLayout::of(index), repository, client, Some(cache), stats, runtime.handle().clone(), fetch))
}

fn load_index(runtime: &tokio::runtime::Runtime, client: &Client, image: &str) -> anyhow::Result<Index> {
    let path = Path::new(image);
    if path.is_dir() {
        return vfs::stub::read_index_from_dir(path)?.with_context(|| {
            format!("{image} holds no {}: not an unpacked lazy stub image", vfs::index::INDEX_PATH)
        });
    }
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading index {image}"))?;
        return Index::decode(&bytes).with_context(|| format!("index file {image}"));
    }
    if image.starts_with('/') || image.starts_with('.') {
        bail!("{image}: no such index file or directory");
    }
    let reference: Reference = image.parse()?;
    Ok(runtime.block_on(vfs::stub::fetch_index(client, &reference))?)
}

/// Waits up to `timeout` for one of the blocked signals in `set`.
fn wait_signal(set: &SigSet, timeout: Duration) -> anyhow::Result<Option<Signal>> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: `set` is a valid sigset_t, `ts` a valid timespec; a NULL siginfo pointer is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if n < 0 {
        return match nix::errno::Errno::last() {
            nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR => Ok(None),
            e => Err(e).context("waiting for signals"),
        };
    }
    Ok(Signal::try_from(n).ok())
}
