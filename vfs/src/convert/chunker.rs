//! File contents into chunks, in ONE read of each layer.
//!
//! While a layer's tar stream is scanned for metadata, every regular file is cut into chunks;
//! each UNCOMPRESSED chunk is hashed (its digest names it) and zstd-compressed on its own (so any
//! chunk can be fetched and decoded alone) into the layer's staging file. Which files survive
//! (whiteouts, overwrites by upper layers) is only known once every layer is scanned, so the data
//! blobs are assembled afterwards ([`Assembler`]): the prefetch list's files first, into a hot blob
//! of their own; then for each layer, in directory order, the chunks of the files whose final
//! content it holds are copied from staging unless an earlier layer already stored them.
//! The result is "a hot blob, then one blob per layer, deduplicated against lower layers",
//! deterministic for a given base, without decompressing any layer twice.
//!
//! A reader thread decompresses and cuts chunks while the calling thread hashes and compresses
//! batches on all cores. Memory is bounded by the batch size, never by file or layer size.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::blobs::{BlobFile, BlobWriter};
use super::layers::{scan_layer, LayerBlob, Limits, ParsedLayer};
use super::ConvertError;
use crate::digest::Digest;
use crate::index::{BlobRef, Chunk};

/// zstd level of chunks: level 3 is zstd's default, a good balance for a one-off conversion.
const ZSTD_LEVEL: i32 = 3;

/// A chunk in a layer's staging file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StagedChunk {
    pub digest: Digest,
    pub len: u32,
    pub offset: u64,
    pub compressed_len: u32,
}

/// A scanned layer's staged chunks of every regular file (by tar ordinal) and the staging file
/// holding them.
pub(crate) struct StagedLayer {
    pub files: HashMap<u64, Vec<StagedChunk>>,
    staging: PathBuf,
}

struct Pending {
    ordinal: u64,
    data: Vec<u8>,
}

/// What the reader thread hands over: files that start in this batch (so empty files are known
/// too), and the chunks cut since the last batch, in file order.
#[derive(Default)]
struct Batch {
    files: Vec<u64>,
    chunks: Vec<Pending>,
}

/// A batch item after hashing: its position, digest and compressed bytes (empty if already staged).
type Hashed = (usize, Digest, Result<Vec<u8>, std::io::Error>);

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8)
}

/// Scans one layer (metadata) and stages every regular file's chunks under `tmp`.
/// `progress` gets bytes of file content as they are staged.
pub(crate) fn stage_layer(
    layer_no: usize,
    layer: &LayerBlob,
    chunk_size: u32,
    limits: Limits,
    tmp: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(ParsedLayer, StagedLayer), ConvertError> {
    let threads = threads();
    let batch_limit = (chunk_size as usize * 2 * threads).max(8 << 20);
    let mut writer = BlobWriter::create(tmp, &format!("staging-{layer_no}-{}", layer.digest.hex()))?;
    let mut files: HashMap<u64, Vec<StagedChunk>> = HashMap::new();
    let mut seen: HashMap<Digest, StagedChunk> = HashMap::new();
    let parsed = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        let reader = s.spawn(move || {
            let mut batch = Batch::default();
            let mut batch_bytes = 0usize;
            let mut on_file = |ordinal: u64, size: u64, content: &mut dyn Read| -> Result<(), String> {
                batch.files.push(ordinal);
                let mut left = size;
                while left > 0 {
                    let want = left.min(chunk_size as u64) as usize;
                    let mut data = vec![0u8; want];
                    let n = read_full(content, &mut data).map_err(|e| format!("read content: {e}"))?;
                    if n != want {
                        return Err(format!("content ends after {} of {size} bytes", size - left + n as u64));
                    }
                    left -= n as u64;
                    batch_bytes += n;
                    batch.chunks.push(Pending { ordinal, data });
                    if batch_bytes >= batch_limit {
                        tx.send(std::mem::take(&mut batch)).map_err(|_| "chunk writer stopped".to_string())?;
                        batch_bytes = 0;
                    }
                }
                Ok(())
            };
            let parsed = scan_layer(layer, limits, &mut on_file);
            let _ = tx.send(batch);
            parsed
        });
        let mut failed = None;
        for batch in rx {
            let bytes: u64 = batch.chunks.iter().map(|p| p.data.len() as u64).sum();
            for ordinal in batch.files {
                files.entry(ordinal).or_default();
            }
            match stage_batch(&batch.chunks, &mut seen, &mut writer, threads) {
                Ok(staged) => {
                    for (p, c) in batch.chunks.iter().zip(staged) {
                        files.get_mut(&p.ordinal).expect("file registered before its chunks").push(c);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break; // dropping rx stops the reader
                }
            }
            progress(bytes);
        }
        let parsed = reader.join().expect("layer reader thread panicked");
        match failed {
            Some(e) => Err(e),
            None => parsed,
        }
    })?;
    let staged = writer.finish()?;
    Ok((parsed, StagedLayer { files, staging: staged.path }))
}

/// Hashes and compresses a batch in parallel, then appends chunks not staged before, in order.
fn stage_batch(
    batch: &[Pending],
    seen: &mut HashMap<Digest, StagedChunk>,
    writer: &mut BlobWriter,
    threads: usize,
) -> Result<Vec<StagedChunk>, ConvertError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let next = AtomicUsize::new(0);
    let threads = threads.min(batch.len());
    let known = &*seen;
    let parts: Vec<Vec<Hashed>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut compressor = match zstd::bulk::Compressor::new(ZSTD_LEVEL) {
                        Ok(c) => c,
                        Err(e) => {
                            out.push((usize::MAX, Digest([0; 32]), Err(e)));
                            return out;
                        }
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = batch.get(i) else { break };
                        let digest = Digest::of(&item.data);
                        // Duplicates are only referenced: skip compressing them.
                        let compressed =
                            if known.contains_key(&digest) { Ok(Vec::new()) } else { compressor.compress(&item.data) };
                        out.push((i, digest, compressed));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("chunk compression thread panicked")).collect()
    });
    let mut results: Vec<Option<(Digest, Vec<u8>)>> = (0..batch.len()).map(|_| None).collect();
    for (i, digest, compressed) in parts.into_iter().flatten() {
        let compressed = compressed.map_err(|e| ConvertError::Compress(e.to_string()))?;
        results[i] = Some((digest, compressed));
    }
    let mut out = Vec::with_capacity(batch.len());
    for (item, result) in batch.iter().zip(results) {
        let (digest, compressed) = result.expect("every batch item was processed");
        let chunk = match seen.get(&digest) {
            Some(c) => *c,
            None => {
                let offset = writer.append(&compressed)?;
                let c = StagedChunk {
                    digest,
                    len: item.data.len() as u32,
                    offset,
                    compressed_len: compressed.len() as u32,
                };
                seen.insert(digest, c);
                c
            }
        };
        out.push(chunk);
    }
    Ok(out)
}

/// Builds the data blobs from staged layers. With a prefetch list, the listed files come first:
/// [`Assembler::add_hot`] copies their chunks, in list order, into a "hot" blob of their own that
/// becomes blob 0, so a mount fetches the whole hot set with a few large range requests. Then, per
/// layer, the chunks of the other files whose final content it holds go to that layer's blob in
/// the order the caller gives (directory order), each stored once across all blobs. Chunks that
/// earlier lazy images in the destination repository already hold ([`Assembler::reuse`]) are
/// referenced in their blobs instead of being stored again, except in the hot blob: a hot set
/// scattered over older blobs costs a round trip per piece, while a duplicate costs only storage.
pub(crate) struct Assembler {
    /// Chunks placed in this conversion's index, by digest.
    stored: HashMap<Digest, Chunk>,
    /// Chunks of earlier images: (blob, offset, compressed length), by digest.
    reusable: HashMap<Digest, (BlobRef, u64, u32)>,
    /// Index of each blob in the new index's blob list.
    blob_index: HashMap<Digest, u32>,
    /// The new index's blob list (`None` while a new blob is being written).
    pub refs: Vec<Option<BlobRef>>,
    /// Blobs written by this conversion (to push).
    pub blobs: Vec<BlobFile>,
    pub chunks_total: u64,
    pub bytes_stored: u64,
    pub bytes_compressed: u64,
    pub bytes_reused: u64,
    /// The hot blob: files placed, their bytes, and the blob's (compressed) size.
    pub hot_files: u64,
    pub hot_bytes: u64,
    pub hot_blob_bytes: u64,
}

/// A data blob being written and its position in the index's blob list.
struct OpenBlob {
    writer: BlobWriter,
    index: u32,
}

/// A staged file to place: the layer it comes from, that layer's staging, its tar ordinal.
pub(crate) type StagedFile<'a> = (&'a LayerBlob, &'a StagedLayer, u64);

impl Assembler {
    pub fn new() -> Assembler {
        Assembler {
            stored: HashMap::new(),
            reusable: HashMap::new(),
            blob_index: HashMap::new(),
            refs: Vec::new(),
            blobs: Vec::new(),
            chunks_total: 0,
            bytes_stored: 0,
            bytes_compressed: 0,
            bytes_reused: 0,
            hot_files: 0,
            hot_bytes: 0,
            hot_blob_bytes: 0,
        }
    }

    /// Makes the chunks of an earlier index (whose blobs are in the destination repository)
    /// available for reuse.
    pub fn reuse(&mut self, earlier: &crate::index::Index) {
        for inode in &earlier.inodes {
            if let crate::index::Kind::File { chunks, .. } = &inode.kind {
                for c in chunks {
                    if let Some(b) = earlier.blobs.get(c.blob as usize) {
                        self.reusable.entry(c.digest).or_insert((*b, c.offset, c.compressed_len));
                    }
                }
            }
        }
    }

    pub fn unique_chunks(&self) -> u64 {
        self.stored.len() as u64
    }

    /// A chunk already stored by this conversion or an earlier image, if any.
    fn existing(&mut self, digest: &Digest, len: u32) -> Option<Chunk> {
        if let Some(c) = self.stored.get(digest) {
            return Some(*c);
        }
        let (blob, offset, compressed_len) = *self.reusable.get(digest)?;
        let index = match self.blob_index.get(&blob.digest) {
            Some(i) => *i,
            None => {
                let i = self.refs.len() as u32;
                self.refs.push(Some(blob));
                self.blob_index.insert(blob.digest, i);
                i
            }
        };
        let c = Chunk { blob: index, offset, compressed_len, len, digest: *digest };
        self.stored.insert(*digest, c);
        self.bytes_reused += len as u64;
        Some(c)
    }

    /// Copies a staged chunk into `out` (created on first use as `tmp/name`) and records it as stored.
    fn copy_chunk(
        &mut self,
        out: &mut Option<OpenBlob>,
        tmp: &Path,
        name: &str,
        staging: &Staging,
        s: &StagedChunk,
        buf: &mut Vec<u8>,
    ) -> Result<Chunk, ConvertError> {
        buf.resize(s.compressed_len as usize, 0);
        staging.file.read_exact_at(buf, s.offset).map_err(|e| ConvertError::Io {
            path: staging.path.to_path_buf(),
            what: "read staging file".into(),
            error: e,
        })?;
        if out.is_none() {
            let writer = BlobWriter::create(tmp, name)?;
            let index = self.refs.len() as u32;
            self.refs.push(None);
            *out = Some(OpenBlob { writer, index });
        }
        let blob = out.as_mut().expect("just created");
        let offset = blob.writer.append(buf)?;
        let c = Chunk { blob: blob.index, offset, compressed_len: s.compressed_len, len: s.len, digest: s.digest };
        self.stored.insert(s.digest, c);
        self.bytes_stored += s.len as u64;
        self.bytes_compressed += s.compressed_len as u64;
        Ok(c)
    }

    /// Finishes a blob written by [`Assembler::copy_chunk`] and lists it in the index.
    fn finish_blob(&mut self, open: OpenBlob, what: &str) -> Result<BlobFile, ConvertError> {
        let blob = open.writer.finish()?;
        let r = BlobRef { digest: blob.digest, size: blob.size };
        // An earlier image may hold this very blob (same base layer): list it once.
        if let Some(&i) = self.blob_index.get(&r.digest) {
            log::debug!("{what}: data blob {} already referenced as blob {i}", r.digest);
        }
        self.blob_index.entry(r.digest).or_insert(open.index);
        self.refs[open.index as usize] = Some(r);
        self.blobs.push(blob.clone());
        Ok(blob)
    }

    /// Writes the hot blob: every chunk of `files`, file by file in the given (prefetch list)
    /// order, chunk by chunk, from offset 0 and without gaps. A chunk repeated within the hot set
    /// is stored once; chunks stored anywhere else (earlier images) are copied anyway. Must run
    /// before [`Assembler::add_layer`], so the hot blob is blob 0 and the layers' blobs reference
    /// its copies instead of storing the same chunks again. Returns each file's chunk list.
    pub fn add_hot(&mut self, files: &[StagedFile<'_>], tmp: &Path) -> Result<Vec<Vec<Chunk>>, ConvertError> {
        debug_assert!(self.stored.is_empty() && self.refs.is_empty(), "the hot blob is placed first");
        let mut staging: HashMap<&Path, Staging> = HashMap::new();
        let mut hot: Option<OpenBlob> = None;
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(files.len());
        for &(layer, staged, ordinal) in files {
            let staged_chunks = staged_file(layer, staged, ordinal)?;
            let file = match staging.entry(staged.staging.as_path()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(open_staging(&staged.staging)?),
            };
            let mut chunks = Vec::with_capacity(staged_chunks.len());
            for s in staged_chunks {
                self.chunks_total += 1;
                // `stored` holds only hot chunks at this point.
                let chunk = match self.stored.get(&s.digest) {
                    Some(c) => *c,
                    None => self.copy_chunk(&mut hot, tmp, "blob-hot", file, s, &mut buf)?,
                };
                self.hot_bytes += s.len as u64;
                chunks.push(chunk);
            }
            self.hot_files += 1;
            out.push(chunks);
        }
        if let Some(open) = hot {
            self.hot_blob_bytes = self.finish_blob(open, "prefetch list")?.size;
        }
        Ok(out)
    }

    /// Places the files of one layer whose final content it holds, given by tar ordinal in the
    /// order their chunks should follow each other in the layer's blob. Returns their chunk lists
    /// by ordinal. The staging file is removed afterwards.
    pub fn add_layer(
        &mut self,
        layer: &LayerBlob,
        staged: &StagedLayer,
        ordinals: &[u64],
        tmp: &Path,
    ) -> Result<HashMap<u64, Vec<Chunk>>, ConvertError> {
        let staging = open_staging(&staged.staging)?;
        let name = format!("blob-{}-{}", self.blobs.len(), layer.digest.hex());
        let mut open: Option<OpenBlob> = None;
        let mut out = HashMap::with_capacity(ordinals.len());
        let mut buf = Vec::new();
        for &ordinal in ordinals {
            let staged_chunks = staged_file(layer, staged, ordinal)?;
            let mut chunks = Vec::with_capacity(staged_chunks.len());
            for s in staged_chunks {
                self.chunks_total += 1;
                let chunk = match self.existing(&s.digest, s.len) {
                    Some(c) => c,
                    None => self.copy_chunk(&mut open, tmp, &name, &staging, s, &mut buf)?,
                };
                chunks.push(chunk);
            }
            out.insert(ordinal, chunks);
        }
        if let Some(open) = open {
            self.finish_blob(open, &format!("layer {}", layer.digest))?;
        }
        drop(staging);
        let _ = std::fs::remove_file(&staged.staging);
        Ok(out)
    }
}

/// A layer's staging file, open for reading.
struct Staging {
    file: std::fs::File,
    path: PathBuf,
}

fn open_staging(path: &Path) -> Result<Staging, ConvertError> {
    let file = std::fs::File::open(path).map_err(|e| ConvertError::Io {
        path: path.to_path_buf(),
        what: "open staging file".into(),
        error: e,
    })?;
    Ok(Staging { file, path: path.to_path_buf() })
}

fn staged_file<'a>(
    layer: &LayerBlob,
    staged: &'a StagedLayer,
    ordinal: u64,
) -> Result<&'a [StagedChunk], ConvertError> {
    staged.files.get(&ordinal).map(Vec::as_slice).ok_or_else(|| ConvertError::Layer {
        layer: layer.digest,
        reason: format!("tar entry {ordinal}: no staged content (internal error)"),
    })
}
