//! `lazyctl mount`: mount a lazy image in the foreground until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use vfs::builder::{CacheSettings, LazyMountBuilder};
use vfs::cache::{DEFAULT_CACHE_DIR, DEFAULT_MAX_BYTES};
use vfs::fetch::FetchOptions;
use vfs::fs::{MountOptions, PrefetchMode};
use vfs::registry::{Client, ClientConfig, PlainHttp, ProviderSettings, Reference};
use vfs::Index;

/// How lazyctl reaches registries: the same settings the shim reads from its config file.
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (default: only for loopback registries).
    #[arg(long)]
    plain_http: bool,
    /// containerd's hosts directory: `<DIR>/<registry>/hosts.toml` (or `_default/hosts.toml`)
    /// names mirrors, tried in order before the registry, and TLS settings.
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    hosts_dir: PathBuf,
    /// docker config.json with `auths`, `credHelpers`, `credsStore` (default: docker's usual places).
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// kubelet CredentialProviderConfig file: its plugins are asked for credentials first.
    #[arg(long, value_name = "FILE", requires = "credential_provider_bin_dir")]
    credential_provider_config: Option<PathBuf>,
    /// Directory of the credential provider plugin binaries.
    #[arg(long, value_name = "DIR")]
    credential_provider_bin_dir: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn client_config(&self, deadline: Duration) -> ClientConfig {
        ClientConfig {
            plain_http: if self.plain_http { PlainHttp::Always } else { PlainHttp::Auto },
            hosts_dir: Some(self.hosts_dir.clone()),
            docker_config: self.docker_config.clone(),
            credential_providers: match (&self.credential_provider_config, &self.credential_provider_bin_dir) {
                (Some(config), Some(bin_dir)) => {
                    Some(ProviderSettings { config: config.clone(), bin_dir: bin_dir.clone() })
                }
                _ => None,
            },
            deadline,
            ..ClientConfig::default()
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    registry: RegistryArgs,
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
    /// FUSE request threads (over io_uring: the threads that serve reads beside one per CPU).
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
    /// Neither replay nor write the image's start log in the cache (`<cache>/starts`): the names,
    /// symlinks and directories the last start asked for, replayed into the kernel's caches
    /// right after mounting.
    #[arg(long)]
    no_start_log: bool,
    /// Serve requests through /dev/fuse even where the kernel offers FUSE over io_uring.
    #[arg(long)]
    no_io_uring: bool,
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
    let builder = LazyMountBuilder::new(
        args.registry.client_config(deadline),
        FetchOptions { deadline, ..FetchOptions::default() },
        Some(CacheSettings {
            dir: args.cache_dir.clone(),
            max_bytes: args.cache_max_bytes,
            files: !args.no_file_store && !args.no_passthrough,
            start_logs: !args.no_start_log,
        }),
    )?;
    let index = load_index(&runtime, builder.client(), &args.image)?;
    let opts = MountOptions {
        prefetch: args.prefetch,
        record: args.record,
        threads: args.threads,
        passthrough: !args.no_passthrough,
        io_uring: !args.no_io_uring,
        ..MountOptions::default()
    };
    let mounted = builder
        .mount(index, args.blob_repo.as_deref(), runtime.handle().clone(), &args.mountpoint, opts)
        .with_context(|| format!("mounting {}", args.image))?;
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
fn load_index(runtime: &tokio::runtime::Runtime, client: &Client, image: &str) -> anyhow::Result<Index> {
    let path = Path::new(image);
    if path.is_dir() {
        return vfs::stub::read_index_from_dir(path)?
            .with_context(|| format!("{image} holds no {}: not an unpacked lazy stub image", vfs::index::INDEX_PATH));
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
