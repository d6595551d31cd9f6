//! Turns chunk reads into verified bytes. The contract between the filesystem and the network.
//!
//! [`ChunkSource`] is what [`crate::fs`] reads through. The real implementation (the registry-backed
//! [`RegistryChunkSource`], built by the fetch/cache owner) checks the node cache first, otherwise
//! coalesces adjacent chunks into one range request, verifies every chunk against its digest before
//! serving or caching it, and makes concurrent readers of the same chunk share one fetch. Tests of
//! the filesystem use an in-memory fake.

use std::sync::Arc;

use bytes::Bytes;

use crate::digest::Digest;
use crate::index::Chunk;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: chunk {chunk_no} ({chunk}): digest mismatch (want {chunk}, got {got})")]
    DigestMismatch { path: String, chunk_no: usize, chunk: Digest, got: Digest },
    #[error("{path}: chunk {chunk_no} ({chunk}): {reason}")]
    Corrupt { path: String, chunk_no: usize, chunk: Digest, reason: String },
    #[error("{path}: chunk {chunk_no} ({chunk}): registry unreachable until the deadline: {reason}")]
    Unavailable { path: String, chunk_no: usize, chunk: Digest, reason: String },
}

/// Which chunk of which file a read is for: only used to make errors and logs name the file.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRef<'a> {
    pub path: &'a str,
    /// Position of the chunk in the file's chunk list.
    pub chunk_no: usize,
    pub chunk: &'a Chunk,
}

/// A source of verified, uncompressed chunk contents. Called from FUSE request threads (blocking).
pub trait ChunkSource: Send + Sync {
    /// Returns the contents of every requested chunk, in order. Chunks that are adjacent in the same
    /// blob should be fetched with one request. Blocks until every chunk is available or failed.
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>>;

    /// Brings chunks into the node cache without returning them (prefetch). Must yield to
    /// on-demand reads: implementations bound how much prefetch runs at once.
    fn prefetch(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<(), FetchError>> {
        self.read_chunks(chunks).into_iter().map(|r| r.map(|_| ())).collect()
    }
}

impl<T: ChunkSource + ?Sized> ChunkSource for Arc<T> {
    fn read_chunks(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<Bytes, FetchError>> {
        (**self).read_chunks(chunks)
    }
    fn prefetch(&self, chunks: &[ChunkRef<'_>]) -> Vec<Result<(), FetchError>> {
        (**self).prefetch(chunks)
    }
}
