//! Converts an OCI image into a lazy image: the merged tree of all layers becomes an [`Index`], file
//! contents become zstd chunks in one data blob per source layer (plus, with a prefetch list, a
//! "hot" blob 0 holding the listed files contiguously in list order), and a stub image carries
//! the index.
//!
//! - [`source`]: where the image comes from (registry or OCI layout) and platform selection.
//! - [`layers`]: tar streams (gzip/zstd/plain) merged into one tree (metadata only).
//! - [`chunker`]: file contents into deduplicated, compressed chunks.
//! - [`blobs`]: data blob temp files.
//! - [`push`]: data blobs, stub image and the image index into the destination repository.
//! - [`reuse`]: chunks of earlier lazy images in the destination repository (dedup across images).
//!
//! The core ([`convert_layers`]) is synchronous and works on local files only, so it is testable
//! without a registry; callers run it on a blocking thread.

pub mod blobs;
pub mod chunker;
pub mod layers;
pub mod push;
pub mod reuse;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::platform::Platform;
pub use blobs::BlobFile;
pub use layers::{LayerBlob, Limits, DEFAULT_MAX_LAYER_SIZE};
pub use source::{SourceImage, SourceRef};

use crate::digest::Digest;
use crate::index::{BlobRef, DirEntry, Index, Inode, Kind, Xattr};
use layers::{NodeId, NodeKind, Tree, ROOT_NODE};

/// Default uncompressed chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    // The I/O error is part of the message (not a `source`), so `{:#}` chains do not print it twice.
    #[error("{}: {what}: {error}", path.display())]
    Io { path: PathBuf, what: String, error: std::io::Error },
    #[error("layer {layer}: {reason}")]
    Layer { layer: Digest, reason: String },
    #[error("zstd compression failed: {0}")]
    Compress(String),
    #[error("source image {image}: {reason}")]
    Source { image: String, reason: String },
    #[error("chunk size {0} is invalid: use a power of two between 4096 and 67108864 (64 MiB)")]
    ChunkSize(u32),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Stub(#[from] crate::stub::StubError),
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub chunk_size: u32,
    /// Repository that will hold the data blobs (`registry/repo`, no tag): becomes `Index::source`.
    pub source_repo: String,
    /// Absolute paths to prefetch first, in order (what `lazyctl mount --record` writes).
    pub prefetch: Vec<String>,
    /// Indexes of earlier lazy images whose data blobs are in the destination repository: their
    /// chunks are referenced instead of stored again (dedup across images of one repository).
    pub reuse: Vec<Index>,
    /// What one layer may make the converter read: layers are untrusted input.
    pub limits: Limits,
}

/// What a conversion produced: the index, the data blobs (temp files) and its figures.
#[derive(Debug)]
pub struct Converted {
    pub index: Index,
    pub blobs: Vec<BlobFile>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub other: u64,
    /// Bytes of regular files, each hardlinked file once.
    pub bytes: u64,
    /// Chunk references over all files.
    pub chunks: u64,
    /// Chunks actually stored (after deduplication).
    pub unique_chunks: u64,
    pub stored_bytes: u64,
    pub compressed_bytes: u64,
    pub blobs: u64,
    /// Bytes of chunks found in earlier images of the destination repository, and their blobs.
    pub reused_bytes: u64,
    pub reused_blobs: u64,
    pub prefetch: u64,
    /// Files of the prefetch list laid out in the hot blob (blob 0), their bytes, and the hot
    /// blob's compressed size (0: no hot blob).
    pub hot_files: u64,
    pub hot_bytes: u64,
    pub hot_blob_bytes: u64,
}

impl Summary {
    /// Logical bytes per stored byte (uncompressed): 1.0 means no duplicate chunks.
    pub fn dedup_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// Progress of a conversion, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Reading and chunking starts: `layers` layers, `compressed` bytes of them.
    Start { layers: usize, compressed: u64 },
    /// `n` more bytes of file content chunked.
    Advance(u64),
    /// Every layer is read; the data blobs are being written.
    Assembling,
}

pub fn check_chunk_size(chunk_size: u32) -> Result<(), ConvertError> {
    use crate::index::codec::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ConvertError::ChunkSize(chunk_size));
    }
    Ok(())
}

/// Converts local layer blobs (bottom first) into an index and data blobs written under `tmp`.
/// Each layer is decompressed once; up to two layers are read at the same time.
pub fn convert_layers(
    layers: &[LayerBlob],
    opts: &ConvertOptions,
    tmp: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Converted, ConvertError> {
    check_chunk_size(opts.chunk_size)?;
    let started = std::time::Instant::now();
    progress(Progress::Start { layers: layers.len(), compressed: layers.iter().map(|l| l.size).sum() });
    let mut tree = Tree::new();
    let mut staged = Vec::with_capacity(layers.len());
    for (n, (layer, scanned)) in
        layers.iter().zip(stage_layers(layers, opts.chunk_size, opts.limits, tmp, progress)).enumerate()
    {
        let (parsed, files) = scanned?;
        tree.apply_layer(n, layer, parsed)?;
        staged.push(files);
    }
    log::debug!("read and staged {} layers in {:.2?}", layers.len(), started.elapsed());
    progress(Progress::Assembling);
    let numbering = number_inodes(&tree);

    // The prefetch list's files go first, into the hot blob, in list order.
    let hot = hot_nodes(&tree, &opts.prefetch);
    let mut assembler = chunker::Assembler::new();
    for earlier in &opts.reuse {
        assembler.reuse(earlier);
    }
    let mut file_chunks: HashMap<NodeId, Vec<crate::index::Chunk>> = HashMap::new();
    if !hot.is_empty() {
        let files: Vec<chunker::StagedFile<'_>> = hot
            .iter()
            .map(|&node| match tree.nodes[node].kind {
                NodeKind::File { layer, ordinal, .. } => (&layers[layer], &staged[layer], ordinal),
                _ => unreachable!("hot_nodes returns regular files only"),
            })
            .collect();
        for (&node, chunks) in hot.iter().zip(assembler.add_hot(&files, tmp)?) {
            file_chunks.insert(node, chunks);
        }
    }
    // The other files, per layer in inode order: each directory's files together (tar order
    // usually is, but nothing guarantees it), so a fetch span around one file catches its siblings.
    let mut wanted: Vec<Vec<(u64, NodeId)>> = vec![Vec::new(); layers.len()];
    for &node in &numbering.order {
        if let NodeKind::File { layer, ordinal, .. } = tree.nodes[node].kind {
            if !file_chunks.contains_key(&node) {
                wanted[layer].push((ordinal, node));
            }
        }
    }
    for ((layer, staged), wanted) in layers.iter().zip(&staged).zip(&wanted) {
        let ordinals: Vec<u64> = wanted.iter().map(|&(ordinal, _)| ordinal).collect();
        let mut placed = assembler.add_layer(layer, staged, &ordinals, tmp)?;
        for &(ordinal, node) in wanted {
            file_chunks.insert(node, placed.remove(&ordinal).expect("add_layer places every ordinal"));
        }
    }
    drop(staged);
    log::debug!("assembled {} data blobs after {:.2?}", assembler.blobs.len(), started.elapsed());

    let mut summary = Summary {
        chunks: assembler.chunks_total,
        unique_chunks: assembler.unique_chunks(),
        stored_bytes: assembler.bytes_stored,
        compressed_bytes: assembler.bytes_compressed,
        blobs: assembler.blobs.len() as u64,
        reused_bytes: assembler.bytes_reused,
        reused_blobs: (assembler.refs.len() - assembler.blobs.len()) as u64,
        hot_files: assembler.hot_files,
        hot_bytes: assembler.hot_bytes,
        hot_blob_bytes: assembler.hot_blob_bytes,
        ..Summary::default()
    };
    let mut inodes = Vec::with_capacity(numbering.order.len());
    for &node in &numbering.order {
        let n = &tree.nodes[node];
        let kind = match &n.kind {
            NodeKind::Dir(entries) => {
                summary.dirs += 1;
                Kind::Dir {
                    entries: entries
                        .iter()
                        .map(|(name, child)| DirEntry { name: name.clone(), ino: numbering.ino[*child] })
                        .collect(),
                }
            }
            NodeKind::File { size, .. } => {
                summary.files += 1;
                summary.bytes += size;
                Kind::File { size: *size, chunks: file_chunks.remove(&node).unwrap_or_default() }
            }
            NodeKind::Symlink(t) => {
                summary.symlinks += 1;
                Kind::Symlink { target: t.clone() }
            }
            other => {
                summary.other += 1;
                match other {
                    NodeKind::Char(a, b) => Kind::CharDevice { major: *a, minor: *b },
                    NodeKind::Block(a, b) => Kind::BlockDevice { major: *a, minor: *b },
                    _ => Kind::Fifo,
                }
            }
        };
        let m = &n.meta;
        inodes.push(Inode {
            kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            xattrs: m.xattrs.iter().map(|(k, v)| Xattr { name: k.clone(), value: v.clone() }).collect(),
        });
    }
    let blob_refs: Vec<BlobRef> = assembler.refs.iter().map(|r| r.expect("every new blob was finished")).collect();
    let mut index = Index::new(opts.chunk_size, opts.source_repo.clone(), blob_refs, inodes, Vec::new());
    index.prefetch = resolve_prefetch(&index, &opts.prefetch);
    summary.prefetch = index.prefetch.len() as u64;
    Ok(Converted { index, blobs: assembler.blobs, summary })
}

/// Stages every layer, two at a time (each layer is one decompression stream, the natural unit of
/// parallelism next to the per-batch compression threads). Results come back in layer order.
fn stage_layers(
    layers: &[LayerBlob],
    chunk_size: u32,
    limits: Limits,
    tmp: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Vec<Result<(layers::ParsedLayer, chunker::StagedLayer), ConvertError>> {
    type Staged = Result<(layers::ParsedLayer, chunker::StagedLayer), ConvertError>;
    let workers = 2.min(layers.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let advance = |n: u64| progress(Progress::Advance(n));
    let done: Vec<Vec<(usize, Staged)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(layer) = layers.get(i) else { break };
                        out.push((i, chunker::stage_layer(i, layer, chunk_size, limits, tmp, &advance)));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("layer staging thread panicked")).collect()
    });
    let mut results: Vec<Option<Staged>> = (0..layers.len()).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results.into_iter().map(|r| r.expect("every layer was staged")).collect()
}

struct Numbering {
    /// Node of each inode number.
    order: Vec<NodeId>,
    /// Inode number of each node (u32::MAX: unreachable).
    ino: Vec<u32>,
}

/// Numbers the reachable nodes: root 0, then depth-first with each directory's children together.
/// Unreachable nodes (replaced, whited out) are dropped here, so their content is never stored.
fn number_inodes(tree: &Tree) -> Numbering {
    let mut ino = vec![u32::MAX; tree.nodes.len()];
    let mut order = vec![ROOT_NODE];
    ino[ROOT_NODE] = 0;
    let mut stack = vec![ROOT_NODE];
    while let Some(dir) = stack.pop() {
        let NodeKind::Dir(entries) = &tree.nodes[dir].kind else { continue };
        let mut subdirs = Vec::new();
        for &child in entries.values() {
            if ino[child] == u32::MAX {
                ino[child] = order.len() as u32;
                order.push(child);
                if matches!(tree.nodes[child].kind, NodeKind::Dir(_)) {
                    subdirs.push(child);
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Numbering { order, ino }
}

/// The prefetch list's regular files in the merged tree, in list order, each once (a hardlink
/// listed twice is one file). Paths are not followed through symlinks, as in [`resolve_prefetch`],
/// so the hot blob holds exactly the files the index's prefetch list names.
fn hot_nodes(tree: &Tree, paths: &[String]) -> Vec<NodeId> {
    let mut seen = std::collections::HashSet::new();
    paths
        .iter()
        .filter_map(|p| tree.lookup(&layers::components(p.as_bytes())?))
        .filter(|&node| matches!(tree.nodes[node].kind, NodeKind::File { .. }) && seen.insert(node))
        .collect()
}

/// Maps prefetch paths to regular-file inodes; unknown paths are warned about, others skipped.
fn resolve_prefetch(index: &Index, paths: &[String]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        match index.resolve(p.as_bytes()) {
            None => log::warn!("prefetch list: {p}: no such path in the image; ignored"),
            Some(ino) => match index.inode(ino).map(|i| &i.kind) {
                Some(Kind::File { .. }) => {
                    if seen.insert(ino) {
                        out.push(ino);
                    }
                }
                _ => log::info!("prefetch list: {p}: not a regular file; skipped"),
            },
        }
    }
    out
}

/// Reads a prefetch list file: one absolute path per line; blank lines and `#` comments ignored.
pub fn read_prefetch_list(path: &Path) -> Result<Vec<String>, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::Io {
        path: path.to_path_buf(),
        what: "read prefetch list".into(),
        error: e,
    })?;
    Ok(text.lines().map(str::trim_end).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
