//! `lazyctl convert`: OCI image (registry or `oci:DIR[:TAG]`) -> lazy image pushed to DST.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use vfs::convert::push::PushSummary;
use vfs::convert::{self, ConvertOptions, Platform, Progress, SourceImage, SourceRef};
use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};

/// What `convert` and `optimize` both take: how to reach the registries, how to chunk, which
/// platform and how large a layer may be.
#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    /// Talk plain HTTP to the registries (default: only for loopback registries).
    #[arg(long)]
    pub plain_http: bool,
    /// Uncompressed chunk size: a power of two from 4K to 64M (suffixes K and M allowed).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u32,
    /// Platform to convert from a multi-platform image (default: this host's), e.g. linux/arm64/v8.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<Platform>,
    /// Largest uncompressed layer to read, in GiB: a bigger one is refused as a likely
    /// decompression bomb.
    #[arg(long, value_name = "GIB", default_value_t = convert::DEFAULT_MAX_LAYER_SIZE >> 30)]
    max_layer_size: u64,
}

impl ConvertArgs {
    /// The platform asked for, or this host's.
    pub fn platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }

    pub fn limits(&self) -> convert::Limits {
        convert::Limits { max_layer_size: self.max_layer_size.saturating_mul(1 << 30) }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: ConvertArgs,
    /// Files to prefetch first, one absolute path per line (what `lazyctl mount --record` writes).
    #[arg(long, value_name = "FILE")]
    prefetch_list: Option<PathBuf>,
    /// Source image: a registry reference, or an OCI layout as oci:DIR[:TAG].
    src: SourceRef,
    /// Destination registry reference for the lazy image (data blobs go to the same repository).
    dst: Reference,
}

pub(crate) fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mul) = match s.trim_end_matches(['i', 'B']).char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1u64 << 20),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected e.g. 1048576, 512K or 4M"))?;
    let bytes =
        n.checked_mul(mul).filter(|b| *b <= u32::MAX as u64).ok_or_else(|| format!("size {s:?} is too large"))?;
    let bytes = bytes as u32;
    convert::check_chunk_size(bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let runtime = network_runtime()?;
    let client = registry_client(args.common.plain_http)?;
    let platform = args.common.platform();
    let prefetch = match &args.prefetch_list {
        Some(p) => convert::read_prefetch_list(p)?,
        None => Vec::new(),
    };
    let tmp = tempfile::Builder::new().prefix("lazyctl-convert-").tempdir().context("creating a temp dir")?;
    let source = fetch_source(&runtime, &client, &args.src, &platform, tmp.path())?;
    let reuse = runtime.block_on(convert::reuse::earlier_indexes(&client, &args.dst));
    let opts = ConvertOptions {
        chunk_size: args.common.chunk_size,
        source_repo: format!("{}/{}", args.dst.registry, args.dst.repository),
        prefetch,
        reuse,
        limits: args.common.limits(),
    };
    let convert_started = Instant::now();
    let converted = convert_with_progress(&source, &opts, tmp.path())?;
    let convert_secs = convert_started.elapsed().as_secs_f64();
    let (pushed, stub) = publish(&runtime, &client, &args.dst, &source, &converted)?;
    let total_secs = started.elapsed().as_secs_f64();

    println!("converted {} -> {} ({})", args.src, args.dst, pushed.index_digest);
    print_figures(&converted.summary, &pushed, args.common.chunk_size, stub.layer.len());
    let s = &converted.summary;
    println!(
        "  time {total_secs:.2} s (convert {convert_secs:.2} s: {:.1} MB/s)  overall {:.1} MB/s",
        mb(s.bytes) / convert_secs.max(1e-9),
        mb(s.bytes) / total_secs.max(1e-9)
    );
    Ok(())
}

/// The tokio runtime for registry I/O (conversion itself runs on plain threads).
pub(crate) fn network_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lazy-net")
        .enable_all()
        .build()
        .context("starting the network runtime")
}

pub(crate) fn registry_client(plain_http: bool) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        plain_http: if plain_http { PlainHttp::Always } else { PlainHttp::Auto },
        ..ClientConfig::default()
    })?)
}

/// The source image's config and layers as local files (downloaded into `tmp` from a registry).
pub(crate) fn fetch_source(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    src: &SourceRef,
    platform: &Platform,
    tmp: &std::path::Path,
) -> anyhow::Result<SourceImage> {
    let source = match src {
        SourceRef::Layout { dir, tag } => convert::source::open_layout(dir, tag.as_deref(), platform)?,
        SourceRef::Registry(r) => {
            log::info!("pulling {r} ({platform})");
            runtime.block_on(convert::source::fetch_registry(client, r, platform, tmp))?
        }
    };
    let layer_bytes: u64 = source.layers.iter().map(|l| l.size).sum();
    log::info!(
        "converting {src} ({}, {} layers, {:.1} MB compressed)",
        source.platform,
        source.layers.len(),
        mb(layer_bytes)
    );
    Ok(source)
}

/// [`convert::convert_layers`] with a progress bar on a terminal.
pub(crate) fn convert_with_progress(
    source: &SourceImage,
    opts: &ConvertOptions,
    tmp: &std::path::Path,
) -> anyhow::Result<convert::Converted> {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let on_progress = |p: Progress| match p {
        Progress::Start { layers, compressed } => {
            bar.set_style(
                ProgressStyle::with_template("{spinner} {bytes} chunked ({bytes_per_sec}) {msg}").expect("template"),
            );
            bar.set_message(format!("reading {layers} layers ({:.1} MB)", mb(compressed)));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        Progress::Advance(n) => bar.inc(n),
        Progress::Assembling => bar.set_message("writing data blobs"),
    };
    let converted = convert::convert_layers(&source.layers, opts, tmp, &on_progress);
    bar.finish_and_clear();
    Ok(converted?)
}

/// Pushes a conversion (data blobs, stub image) and tags it as `dst`.
pub(crate) fn publish(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    dst: &Reference,
    source: &SourceImage,
    converted: &convert::Converted,
) -> anyhow::Result<(PushSummary, vfs::stub::StubImage)> {
    let stub = vfs::stub::build(&source.config, &source.platform, &converted.index);
    let pushed = runtime
        .block_on(convert::push::push(client, dst, &converted.blobs, &reused_blobs(converted), &stub))
        .with_context(|| format!("pushing the lazy image to {dst}"))?;
    Ok((pushed, stub))
}

/// Blobs the index references that this conversion did not write (earlier images' blobs).
pub(crate) fn reused_blobs(converted: &convert::Converted) -> Vec<vfs::index::BlobRef> {
    let new_blobs: std::collections::HashSet<_> = converted.blobs.iter().map(|b| b.digest).collect();
    converted.index.blobs.iter().filter(|b| !new_blobs.contains(&b.digest)).copied().collect()
}

/// The summary lines after the first one.
pub(crate) fn print_figures(s: &convert::Summary, pushed: &PushSummary, chunk_size: u32, index_bytes: usize) {
    println!(
        "  files {}  dirs {}  symlinks {}  other {}  bytes {:.1} MB",
        s.files,
        s.dirs,
        s.symlinks,
        s.other,
        mb(s.bytes)
    );
    println!(
        "  chunks {} ({} unique, chunk size {chunk_size})  dedup ratio {:.2}  stored {:.1} MB -> {:.1} MB zstd",
        s.chunks,
        s.unique_chunks,
        s.dedup_ratio(),
        mb(s.stored_bytes),
        mb(s.compressed_bytes)
    );
    println!(
        "  blobs {} ({} pushed, {} already present, {:.1} MB uploaded; {:.1} MB reused from {} blobs of earlier images)  index {index_bytes} bytes  prefetch {}",
        s.blobs,
        pushed.blobs_pushed,
        pushed.blobs_present,
        mb(pushed.bytes_pushed),
        mb(s.reused_bytes),
        s.reused_blobs,
        s.prefetch
    );
    if s.hot_files > 0 {
        println!(
            "  hot blob (blob 0): {} files, {:.1} MB -> {:.1} MB zstd, contiguous in prefetch order",
            s.hot_files,
            mb(s.hot_bytes),
            mb(s.hot_blob_bytes)
        );
    }
}
