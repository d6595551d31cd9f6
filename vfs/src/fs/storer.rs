//! The background writer of the verified file store: files whose chunks are all in the node cache
//! (after a read, a prefetch or the background fetch) are written once into the
//! [`FileStore`], so their later opens can be served by FUSE passthrough.
//!
//! Requests are cheap to make (an inode number into a channel, deduplicated); the thread does the
//! work off the FUSE request threads and never fetches: a file with a chunk missing is skipped
//! until it is requested again (its next release or prefetch).

use std::collections::HashSet;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::filestore::{FileStore, StoreError};
use crate::index::{Index, Kind};
use crate::stats::Stats;

pub struct Storer {
    tx: Mutex<Sender<u32>>,
    pending: Arc<Mutex<HashSet<u32>>>,
}

impl Storer {
    /// Starts the writer thread; it ends when the [`Storer`] is dropped (after the file in hand).
    pub fn start(index: Arc<Index>, store: Arc<FileStore>, stats: Arc<Stats>) -> Option<Storer> {
        let (tx, rx) = channel::<u32>();
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let queued = pending.clone();
        std::thread::Builder::new()
            .name("lazy-store".into())
            .spawn(move || {
                while let Ok(ino) = rx.recv() {
                    queued.lock().remove(&ino);
                    let Some(Kind::File { size, chunks }) = index.inode(ino).map(|i| &i.kind) else { continue };
                    let key = FileStore::key(*size, chunks);
                    match store.store(&key, *size, chunks) {
                        Ok(0) => {}
                        Ok(_) => Stats::add(&stats.files_stored, 1),
                        Err(StoreError::Incomplete { .. }) => {}
                        Err(e) => log::warn!("file store: inode {ino}: {e}; the file stays served from chunks"),
                    }
                }
            })
            .map_err(|e| log::warn!("cannot start the file store thread: {e}; files are served from chunks only"))
            .ok()?;
        Some(Storer { tx: Mutex::new(tx), pending })
    }

    /// Asks for index inode `ino` (a regular file) to be stored if it is complete.
    pub fn request(&self, ino: u32) {
        if self.pending.lock().insert(ino) {
            let _ = self.tx.lock().send(ino);
        }
    }

    /// Files waiting to be looked at (tests).
    pub fn backlog(&self) -> usize {
        self.pending.lock().len()
    }
}
