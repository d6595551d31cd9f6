//! Node-wide single flight: processes sharing a node cache (one shim per pod, `lazyctl mount`)
//! fetch each chunk once between them.
//!
//! Each data blob has a lock file in the cache (`<cache>/locks/<blob>`), and a process that is
//! about to fetch a chunk holds a write lock on the chunk's byte range of that file: an
//! open-file-description lock (`F_OFD_SETLK`), so it belongs to the open file, not to the process
//! or a thread, and the kernel drops it when the file is closed or its process dies. Chunks are
//! locked one by one (their ranges never overlap), so spans of different sizes in different
//! processes compose: a request takes the chunks nobody holds and waits for the others, which
//! land in the cache under their owner's lock. A waiter polls: once it can take the lock, the
//! owner is done; the chunk is then in the cache (read and verified like any hit), or the owner
//! failed or died, and the waiter fetches it itself.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::index::Chunk;

/// This process's open of a blob's lock file. One per blob and process: the chunks a process
/// claims are distinct (it has one fetch in flight per chunk), so its locks never overlap, and
/// locks of one open never conflict with each other. Process death closes it, releasing all.
pub(super) struct Lease {
    file: File,
    path: PathBuf,
}

impl Lease {
    /// Opens `path`, creating it and its directory if needed.
    pub(super) fn open(path: &Path) -> io::Result<Lease> {
        let open = || File::options().read(true).write(true).create(true).truncate(false).open(path);
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                open()?
            }
            other => other?,
        };
        Ok(Lease { file, path: path.to_path_buf() })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock of `chunk` unless another open of the file holds it. Errors other than
    /// "held" count as taken: coordination is an optimisation, and failing open only costs a
    /// duplicate fetch.
    pub(super) fn try_lock(&self, chunk: &Chunk) -> bool {
        match self.set(libc::F_WRLCK, byte_range(chunk)) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => false,
            Err(e) => {
                log::debug!(
                    "lock {} of {}: {e}; fetching without node-wide coordination",
                    chunk.digest,
                    self.path.display()
                );
                true
            }
        }
    }

    pub(super) fn unlock(&self, chunk: &Chunk) {
        let _ = self.set(libc::F_UNLCK, byte_range(chunk));
    }

    fn set(&self, kind: libc::c_int, range: Range<u64>) -> io::Result<()> {
        // SAFETY: an all-zero flock is a valid value of this plain C struct; the fields that
        // matter are set below (l_pid must stay 0 for OFD locks).
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // Offsets past i64::MAX (a hostile index) become negative: fcntl refuses them (EINVAL).
        lock.l_start = range.start as libc::off_t;
        lock.l_len = (range.end - range.start) as libc::off_t;
        // SAFETY: fcntl on a descriptor this struct owns, with a pointer to a live flock it only
        // reads (F_OFD_SETLK does not write it back).
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Locks one request holds; dropping it unlocks them (also when the request's task is dropped or
/// panics, so a lock never outlives its fetch while the process lives on).
pub(super) struct Held {
    lease: Arc<Lease>,
    chunks: Vec<Chunk>,
}

impl Held {
    pub(super) fn new(lease: Arc<Lease>, chunks: Vec<Chunk>) -> Held {
        Held { lease, chunks }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for c in &self.chunks {
            self.lease.unlock(c);
        }
    }
}

/// A chunk's range in its blob, the unit of locking. Zero-length chunks lock one byte (a zero
/// length means "to the end of the file" to fcntl).
fn byte_range(chunk: &Chunk) -> Range<u64> {
    chunk.offset..chunk.offset.saturating_add(u64::from(chunk.compressed_len).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn chunk(offset: u64, len: u32) -> Chunk {
        Chunk { blob: 0, offset, compressed_len: len, len, digest: Digest::of(&offset.to_le_bytes()) }
    }

    #[test]
    fn two_opens_exclude_each_other_per_chunk_and_close_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/blob");
        let a = Lease::open(&path).unwrap();
        let b = Lease::open(&path).unwrap();
        let (c0, c1) = (chunk(0, 100), chunk(100, 50));
        assert!(a.try_lock(&c0));
        assert!(a.try_lock(&c0), "an open never conflicts with itself");
        assert!(!b.try_lock(&c0), "held by the other open");
        assert!(b.try_lock(&c1), "the neighbouring chunk is free");
        assert!(!a.try_lock(&c1));
        a.unlock(&c0);
        assert!(b.try_lock(&c0), "free once unlocked");
        drop(b);
        assert!(a.try_lock(&c0) && a.try_lock(&c1), "closing the file releases every lock it held");
        let a = Arc::new(a);
        let held = Held::new(a.clone(), vec![c0, c1]);
        let c = Lease::open(&path).unwrap();
        assert!(!c.try_lock(&c1));
        drop(held);
        assert!(c.try_lock(&c0) && c.try_lock(&c1), "dropping Held unlocks its chunks");
        assert!(c.try_lock(&chunk(u64::MAX - 1, 10)), "an out-of-range chunk does not panic (counts as taken)");
    }
}
