//! One fetch of a chunk that several readers may wait on, and the guard that makes sure every
//! fetch this process starts is completed, even when its task is dropped or panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::{ChunkRef, FetchError, Inner};
use crate::digest::Digest;
use crate::index::Chunk;

/// Why a chunk failed, without the file it was read for (a shared fetch fails for all waiters,
/// each of which names its own file).
#[derive(Debug, Clone)]
pub(super) enum Failure {
    Mismatch(Digest),
    Corrupt(String),
    Unavailable(String),
}

impl Failure {
    pub(super) fn for_chunk(&self, c: &ChunkRef<'_>) -> FetchError {
        let (path, chunk_no, chunk) = (c.path.to_string(), c.chunk_no, c.chunk.digest);
        match self {
            Failure::Mismatch(got) => FetchError::DigestMismatch { path, chunk_no, chunk, got: *got },
            Failure::Corrupt(reason) => FetchError::Corrupt { path, chunk_no, chunk, reason: reason.clone() },
            Failure::Unavailable(reason) => FetchError::Unavailable { path, chunk_no, chunk, reason: reason.clone() },
        }
    }
}

/// The fetch of one chunk in flight.
#[derive(Default)]
pub(super) struct Flight {
    result: Mutex<Option<Result<Bytes, Failure>>>,
    done: Condvar,
}

impl Flight {
    /// Sets the result; the first one set stays.
    pub(super) fn complete(&self, result: Result<Bytes, Failure>) {
        let mut slot = self.result.lock();
        if slot.is_none() {
            *slot = Some(result);
            drop(slot);
            self.done.notify_all();
        }
    }

    pub(super) fn peek(&self) -> Option<Result<Bytes, Failure>> {
        self.result.lock().clone()
    }

    pub(super) fn wait(&self, timeout: Duration) -> Result<Bytes, Failure> {
        let until = Instant::now() + timeout;
        let mut slot = self.result.lock();
        while slot.is_none() {
            if self.done.wait_until(&mut slot, until).timed_out() && slot.is_none() {
                return Err(Failure::Unavailable(format!("the fetch of this chunk did not finish within {timeout:?}")));
            }
        }
        slot.clone().unwrap_or_else(|| Err(Failure::Unavailable("fetch abandoned".into())))
    }
}

/// A chunk this process has committed to fetch: its flight is registered in flight, and someone
/// must complete it. `label` says which read wants it; neighbours fetched speculatively have none.
/// `keep`: the chunk goes into the memory of recent chunks when it lands, not only into the node
/// cache: a read wants it, or it is ahead of a reader in the file it reads (who would otherwise
/// read it back from the cache file and hash it a second time).
pub(super) struct Claim {
    pub chunk: Chunk,
    pub flight: Arc<Flight>,
    pub label: Option<Label>,
    pub keep: bool,
}

/// The read a claimed chunk is for: errors and logs name the file and chunk number, and the span
/// around a miss in the middle of a file stops at the file's end.
pub(super) struct Label {
    pub path: String,
    pub chunk_no: usize,
    pub file_end: u64,
}

/// Claims on their way through one range request. Dropping it fails every claim not completed
/// yet (completing twice is a no-op), so a dropped or panicking fetch never leaves a waiter
/// hanging until its timeout.
pub(super) struct Pending {
    inner: Arc<Inner>,
    claims: Vec<Claim>,
}

impl Pending {
    pub(super) fn new(inner: Arc<Inner>, claims: Vec<Claim>) -> Pending {
        Pending { inner, claims }
    }

    pub(super) fn claims(&self) -> &[Claim] {
        &self.claims
    }

    pub(super) fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Moves the claims for which `f` is true into a new `Pending`, keeping the order of both.
    pub(super) fn split_off(&mut self, mut f: impl FnMut(&Claim) -> bool) -> Pending {
        let (taken, kept) = std::mem::take(&mut self.claims).into_iter().partition(|c| f(c));
        self.claims = kept;
        Pending::new(self.inner.clone(), taken)
    }

    /// Moves the first `n` claims into a new `Pending`.
    pub(super) fn take_front(&mut self, n: usize) -> Pending {
        let rest = self.claims.split_off(n.min(self.claims.len()));
        Pending::new(self.inner.clone(), std::mem::replace(&mut self.claims, rest))
    }

    /// For claims the caller completed itself: nothing is left to fail.
    pub(super) fn finish(mut self) {
        self.claims.clear();
    }

    pub(super) fn fail(self, failure: Failure) {
        for c in &self.claims {
            self.inner.complete(c, Err(failure.clone()));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        for c in &self.claims {
            self.inner.complete(c, Err(Failure::Unavailable("fetch abandoned".into())));
        }
    }
}

/// How long a failed chunk fails further reads at once instead of being fetched again. When the
/// kernel's readahead of a page fails, it retries that page with a synchronous read right away
/// (microseconds later); without this, one read(2) during an outage would wait for the fetch
/// deadline twice. Short, so a read made after the registry is back is never refused.
pub(crate) const FAILURE_MEMO: Duration = Duration::from_millis(100);

/// The one memory of failed chunks: which failed in the last [`FAILURE_MEMO`], and why.
/// (`Inner::outage_since` is the registry's health, not a chunk's: it shortens the next fetch's
/// wait but never refuses a chunk by itself.)
#[derive(Default)]
pub(super) struct FailureMemo {
    failed: Mutex<HashMap<Digest, (Instant, Failure)>>,
}

impl FailureMemo {
    /// Kept small: a long outage fails many chunks, and only the last moments matter.
    const MAX: usize = 1024;

    /// Why `digest` failed, if it did less than [`FAILURE_MEMO`] ago.
    pub(super) fn recent(&self, digest: &Digest) -> Option<Failure> {
        let failed = self.failed.lock();
        failed.get(digest).filter(|(at, _)| at.elapsed() < FAILURE_MEMO).map(|(_, why)| why.clone())
    }

    pub(super) fn note(&self, digest: Digest, why: &Failure) {
        let mut failed = self.failed.lock();
        if failed.len() >= Self::MAX {
            failed.retain(|_, (at, _)| at.elapsed() < FAILURE_MEMO);
        }
        failed.insert(digest, (Instant::now(), why.clone()));
    }
}
