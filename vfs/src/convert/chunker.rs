//! Second pass over the layers: cut every file whose final content comes from a layer into chunks,
//! hash each UNCOMPRESSED chunk (its digest names it), zstd-compress it on its own (so any chunk can
//! be fetched and decoded alone), and append chunks not seen before to that layer's data blob.
//!
//! Reading the tar stream stays sequential; hashing and compression of a batch of chunks run on
//! all cores. Memory is bounded by the batch size, never by file or layer size.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::blobs::{BlobFile, BlobWriter};
use super::layers::{open_layer, LayerBlob, NodeId};
use super::ConvertError;
use crate::digest::Digest;
use crate::index::Chunk;

/// zstd level of chunks: level 3 is zstd's default, a good balance for a one-off conversion.
const ZSTD_LEVEL: i32 = 3;

pub(crate) struct Chunker {
    chunk_size: u32,
    threads: usize,
    /// Every chunk stored so far in this conversion, by digest of its uncompressed content.
    stored: HashMap<Digest, Chunk>,
    pub blobs: Vec<BlobFile>,
    /// Chunk lists of the files processed so far.
    pub files: HashMap<NodeId, Vec<Chunk>>,
    pub chunks_total: u64,
    pub bytes_total: u64,
    pub bytes_stored: u64,
    pub bytes_compressed: u64,
}

struct Pending {
    node: NodeId,
    data: Vec<u8>,
}

/// A batch item after hashing: its position, digest and compressed bytes (empty if already stored).
type Hashed = (usize, Digest, Result<Vec<u8>, std::io::Error>);

/// What the reader thread hands over: files that start in this batch (so empty files are known
/// too), and the chunks cut since the last batch, in file order.
#[derive(Default)]
struct Batch {
    files: Vec<NodeId>,
    chunks: Vec<Pending>,
}

/// The reader thread: decompresses the layer, walks its tar entries and sends the wanted files'
/// contents as chunk-sized buffers, batched. Stops early when the receiver hangs up.
fn read_chunks(
    layer: &LayerBlob,
    wanted: &HashMap<u64, NodeId>,
    chunk_size: u32,
    batch_limit: usize,
    tx: std::sync::mpsc::SyncSender<Batch>,
) -> Result<(), ConvertError> {
    let layer_err = |reason: String| ConvertError::Layer { layer: layer.digest, reason };
    let mut archive = tar::Archive::new(open_layer(layer)?);
    let mut batch = Batch::default();
    let mut batch_bytes = 0usize;
    let mut found = 0usize;
    let entries = archive.entries().map_err(|e| layer_err(format!("not a tar stream: {e}")))?;
    for (ordinal, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| layer_err(format!("tar entry {ordinal}: {e}")))?;
        let Some(&node) = wanted.get(&(ordinal as u64)) else { continue };
        found += 1;
        batch.files.push(node);
        let size = entry.size();
        let mut left = size;
        while left > 0 {
            let want = left.min(chunk_size as u64) as usize;
            let mut data = vec![0u8; want];
            let n = read_full(&mut entry, &mut data).map_err(|e| layer_err(format!("tar entry {ordinal}: read content: {e}")))?;
            if n != want {
                return Err(layer_err(format!("tar entry {ordinal}: content ends after {} of {size} bytes", size - left + n as u64)));
            }
            left -= n as u64;
            batch_bytes += n;
            batch.chunks.push(Pending { node, data });
            if batch_bytes >= batch_limit {
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    return Ok(()); // the consumer failed and reports its own error
                }
                batch_bytes = 0;
            }
        }
        if found == wanted.len() {
            break;
        }
    }
    if found != wanted.len() {
        return Err(layer_err(format!("second read found {found} of {} files: the blob changed during conversion", wanted.len())));
    }
    let _ = tx.send(batch);
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

impl Chunker {
    pub fn new(chunk_size: u32) -> Chunker {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
        Chunker {
            chunk_size,
            threads,
            stored: HashMap::new(),
            blobs: Vec::new(),
            files: HashMap::new(),
            chunks_total: 0,
            bytes_total: 0,
            bytes_stored: 0,
            bytes_compressed: 0,
        }
    }

    pub fn unique_chunks(&self) -> u64 {
        self.stored.len() as u64
    }

    /// Chunks the entries `wanted` (tar ordinal -> file node) of one layer into at most one new
    /// data blob (none if every chunk was already stored). `progress` gets bytes of file content.
    ///
    /// A reader thread decompresses the layer and cuts chunks while this thread hashes, compresses
    /// and writes the previous batch: decompression and compression overlap.
    pub fn chunk_layer(
        &mut self,
        layer: &LayerBlob,
        wanted: &HashMap<u64, NodeId>,
        tmp: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<(), ConvertError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let batch_limit = (self.chunk_size as usize * 2 * self.threads).max(8 << 20);
        let chunk_size = self.chunk_size;
        let mut writer: Option<BlobWriter> = None;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
            let reader = s.spawn(move || read_chunks(layer, wanted, chunk_size, batch_limit, tx));
            let mut failed = None;
            for batch in rx {
                let bytes: u64 = batch.chunks.iter().map(|p| p.data.len() as u64).sum();
                for node in &batch.files {
                    self.files.entry(*node).or_default();
                }
                let mut chunks = batch.chunks;
                if let Err(e) = self.flush(&mut chunks, &mut writer, tmp, &layer.digest) {
                    failed = Some(e);
                    break; // dropping rx stops the reader
                }
                progress(bytes);
            }
            let read = reader.join().expect("layer reader thread panicked");
            match failed {
                Some(e) => Err(e),
                None => read,
            }
        })?;
        if let Some(w) = writer {
            self.blobs.push(w.finish()?);
        }
        Ok(())
    }

    /// Hashes and compresses a batch in parallel, then stores new chunks in order.
    fn flush(
        &mut self,
        batch: &mut Vec<Pending>,
        writer: &mut Option<BlobWriter>,
        tmp: &Path,
        layer: &Digest,
    ) -> Result<(), ConvertError> {
        if batch.is_empty() {
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let items: &[Pending] = batch;
        let stored = &self.stored;
        let mut results: Vec<Option<(Digest, Vec<u8>)>> = (0..items.len()).map(|_| None).collect();
        let threads = self.threads.min(items.len());
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
                            let Some(item) = items.get(i) else { break };
                            let digest = Digest::of(&item.data);
                            // Already stored chunks are only referenced: skip compressing them.
                            let compressed = if stored.contains_key(&digest) { Ok(Vec::new()) } else { compressor.compress(&item.data) };
                            out.push((i, digest, compressed));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("chunk compression thread panicked")).collect()
        });
        for (i, digest, compressed) in parts.into_iter().flatten() {
            let compressed = compressed.map_err(|e| ConvertError::Compress(e.to_string()))?;
            results[i] = Some((digest, compressed));
        }
        for (item, result) in batch.drain(..).zip(results) {
            let (digest, compressed) = result.expect("every batch item was processed");
            let len = item.data.len() as u32;
            self.chunks_total += 1;
            self.bytes_total += len as u64;
            let chunk = match self.stored.get(&digest) {
                Some(c) => *c,
                None => {
                    if writer.is_none() {
                        *writer = Some(BlobWriter::create(tmp, &format!("blob-{}-{}", self.blobs.len(), layer.hex()))?);
                    }
                    let w = writer.as_mut().expect("just created");
                    let offset = w.append(&compressed)?;
                    let c = Chunk {
                        blob: self.blobs.len() as u32,
                        offset,
                        compressed_len: compressed.len() as u32,
                        len,
                        digest,
                    };
                    self.stored.insert(digest, c);
                    self.bytes_stored += len as u64;
                    self.bytes_compressed += compressed.len() as u64;
                    c
                }
            };
            self.files.get_mut(&item.node).expect("file registered before its chunks").push(chunk);
        }
        Ok(())
    }
}
