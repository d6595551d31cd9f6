//! `lazyctl inspect`: summarise a lazy image's index (from a registry, a local index file, or an
//! unpacked stub directory).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use vfs::index::Kind;
use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};
use vfs::Index;

#[derive(clap::Args)]
pub struct Args {
    /// Talk plain HTTP to the registry (default: only for loopback registries).
    #[arg(long)]
    plain_http: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Lazy image reference, a local index file (e.g. `.lazy/index`), or an unpacked stub directory.
    image: String,
}

#[derive(serde::Serialize)]
struct Summary {
    source: String,
    chunk_size: u32,
    inodes: usize,
    files: u64,
    dirs: u64,
    symlinks: u64,
    other: u64,
    hardlinked_files: u64,
    image_bytes: u64,
    chunks: u64,
    unique_chunks: usize,
    blobs: usize,
    blob_bytes: u64,
    prefetch: usize,
    prefetch_bytes: u64,
    /// The prefetch list's files, in order (each by its first path).
    prefetch_paths: Vec<String>,
    /// Runs of back-to-back chunks the list's chunks form, taken in list order (a chunk seen
    /// before is skipped): 1 means one contiguous range, fetchable in a few large requests.
    prefetch_runs: usize,
    /// Whether those chunks are one run starting at offset 0 of a blob (what optimize writes).
    prefetch_at_front: bool,
}

/// Runs of the prefetch list's chunks, in list order: (blob, first offset, bytes).
fn prefetch_runs(index: &Index) -> Vec<(u32, u64, u64)> {
    let mut runs: Vec<(u32, u64, u64)> = Vec::new();
    let mut seen = HashSet::new();
    for &ino in &index.prefetch {
        let Some(Kind::File { chunks, .. }) = index.inode(ino).map(|i| &i.kind) else { continue };
        for c in chunks.iter().filter(|c| seen.insert(c.digest)) {
            match runs.last_mut() {
                Some((blob, start, len)) if *blob == c.blob && *start + *len == c.offset => {
                    *len += c.compressed_len as u64
                }
                _ => runs.push((c.blob, c.offset, c.compressed_len as u64)),
            }
        }
    }
    runs
}

fn summarize(index: &Index) -> Summary {
    let mut s = Summary {
        source: index.source.clone(),
        chunk_size: index.chunk_size,
        inodes: index.inodes.len(),
        files: 0,
        dirs: 0,
        symlinks: 0,
        other: 0,
        hardlinked_files: 0,
        image_bytes: index.image_bytes(),
        chunks: 0,
        unique_chunks: 0,
        blobs: index.blobs.len(),
        blob_bytes: index.blobs.iter().map(|b| b.size).sum(),
        prefetch: index.prefetch.len(),
        prefetch_bytes: index.prefetch.iter().filter_map(|&i| index.inode(i)).map(|i| i.size()).sum(),
        prefetch_paths: Vec::new(),
        prefetch_runs: 0,
        prefetch_at_front: false,
    };
    if !index.prefetch.is_empty() {
        let mut first_path = std::collections::HashMap::new();
        for (path, ino) in index.walk() {
            first_path.entry(ino).or_insert(path);
        }
        s.prefetch_paths = index
            .prefetch
            .iter()
            .map(|ino| first_path.get(ino).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default())
            .collect();
        let runs = prefetch_runs(index);
        s.prefetch_runs = runs.len();
        s.prefetch_at_front = runs.len() == 1 && runs[0].1 == 0;
    }
    let mut unique = HashSet::new();
    for (ino, inode) in index.inodes.iter().enumerate() {
        match &inode.kind {
            Kind::Dir { .. } => s.dirs += 1,
            Kind::File { chunks, .. } => {
                s.files += 1;
                s.chunks += chunks.len() as u64;
                unique.extend(chunks.iter().map(|c| c.digest));
                if index.nlink(ino as u32) > 1 {
                    s.hardlinked_files += 1;
                }
            }
            Kind::Symlink { .. } => s.symlinks += 1,
            _ => s.other += 1,
        }
    }
    s.unique_chunks = unique.len();
    s
}

fn load(args: &Args) -> anyhow::Result<Index> {
    let path = Path::new(&args.image);
    if path.is_dir() {
        return vfs::stub::read_index_from_dir(path)?.with_context(|| {
            format!("{}: no {} here: not an unpacked lazy stub image", args.image, vfs::index::INDEX_PATH)
        });
    }
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", args.image))?;
        return Index::decode(&bytes).with_context(|| format!("index file {}", args.image));
    }
    let reference: Reference = args.image.parse()?;
    let client = Client::new(ClientConfig {
        plain_http: if args.plain_http { PlainHttp::Always } else { PlainHttp::Auto },
        ..ClientConfig::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    Ok(runtime.block_on(vfs::stub::fetch_index(&client, &reference))?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let index = load(&args)?;
    let s = summarize(&index);
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&s)?;
        out.push('\n');
    } else {
        writeln!(out, "source        {}", s.source)?;
        writeln!(out, "chunk size    {}", s.chunk_size)?;
        writeln!(out, "files         {} ({} hardlinked)", s.files, s.hardlinked_files)?;
        writeln!(out, "dirs          {}", s.dirs)?;
        writeln!(out, "symlinks      {}", s.symlinks)?;
        writeln!(out, "other         {}", s.other)?;
        writeln!(out, "image bytes   {}", s.image_bytes)?;
        writeln!(out, "chunks        {} ({} unique)", s.chunks, s.unique_chunks)?;
        writeln!(out, "blobs         {} ({} bytes)", s.blobs, s.blob_bytes)?;
        writeln!(out, "prefetch      {} files ({} bytes)", s.prefetch, s.prefetch_bytes)?;
        if s.prefetch > 0 {
            let layout = if s.prefetch_at_front {
                "contiguous at the front of a blob".to_string()
            } else {
                format!("{} separate ranges", s.prefetch_runs)
            };
            writeln!(out, "  layout      {layout}")?;
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
