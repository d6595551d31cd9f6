//! How the open handles of each inode read, for both FUSE transports (fuser's /dev/fuse threads and
//! the io_uring queues).
//!
//! Passthrough: opening a file whose verified copy is in the file store registers that copy as the
//! inode's backing file and replies FOPEN_PASSTHROUGH: the kernel then reads (and maps) the backing
//! file itself, no request reaches us. The kernel refuses to mix passthrough and cached opens of one
//! inode, and all passthrough opens of an inode must share one backing id, so the mode is decided
//! per inode when it has no open handle and kept until its last handle is released.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::core::LazyFs;
use crate::stats::Stats;

/// File handle of a cached (normal) open.
pub const FH_CACHED: u64 = 0;
/// File handle of a passthrough open.
pub const FH_PASSTHROUGH: u64 = 1;

/// How one open is answered.
pub enum Opened<'a, B> {
    /// FOPEN_KEEP_CACHE, reads come to us.
    Cached,
    /// FOPEN_PASSTHROUGH with this backing id.
    Passthrough(&'a B),
}

/// A transport's answer to one open.
pub trait OpenReply {
    /// The transport's registered backing file (closed on drop).
    type Backing;
    /// Registers `file` as a backing file.
    fn register(&self, file: &File) -> std::io::Result<Self::Backing>;
    /// Answers the open.
    fn reply(self, opened: Opened<'_, Self::Backing>);
}

/// Open handles per inode. `B` is the transport's registered backing file (closed on drop).
pub struct OpenFiles<B> {
    /// Passthrough was asked for and granted by the kernel. Cleared for good if registering a
    /// backing file is refused for lack of privilege.
    passthrough: AtomicBool,
    io: Mutex<HashMap<u64, InodeIo<B>>>,
}

/// How the open handles of one inode read: all the same way (the kernel's rule).
enum InodeIo<B> {
    Cached { open: u32 },
    Passthrough { open: u32, backing: B },
}

impl<B> InodeIo<B> {
    fn join(&mut self) -> Opened<'_, B> {
        match self {
            InodeIo::Cached { open } => {
                *open += 1;
                Opened::Cached
            }
            InodeIo::Passthrough { open, backing } => {
                *open += 1;
                Opened::Passthrough(backing)
            }
        }
    }
}

impl<B> OpenFiles<B> {
    pub fn new(passthrough: bool) -> OpenFiles<B> {
        OpenFiles { passthrough: AtomicBool::new(passthrough), io: Mutex::new(HashMap::new()) }
    }

    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// Opens regular file `ino` the way its open handles read, or, when it has none, passthrough if
    /// its stored copy is there and can be registered as a backing file, cached otherwise (and
    /// queues the file for the store). The reply is given under the lock, so a release cannot close
    /// the backing id before the kernel has it.
    pub fn open(&self, fs: &LazyFs, ino: u64, reply: impl OpenReply<Backing = B>) {
        if let Some(state) = self.io.lock().get_mut(&ino) {
            return reply.reply(counted(fs, state.join()));
        }
        // No handle open: decide. The stored-file check may hash the file (first use on this
        // boot), so it runs without the lock; the decision is re-checked under it.
        let stored = fs.stored_file(ino);
        let mut io = self.io.lock();
        if let Some(state) = io.get_mut(&ino) {
            return reply.reply(counted(fs, state.join()));
        }
        let backing = stored.and_then(|file| match reply.register(&file) {
            Ok(b) => Some(b),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EPERM) {
                    log::warn!(
                        "FUSE passthrough: registering a backing file was refused ({e}); it needs CAP_SYS_ADMIN. \
                         Serving every file through FUSE reads from now on"
                    );
                    self.passthrough.store(false, Ordering::Relaxed);
                    fs.stop_storing();
                } else {
                    log::warn!(
                        "FUSE passthrough: cannot register the stored copy of {}: {e}; serving it through FUSE reads",
                        fs.path_of_fuse(ino)
                    );
                }
                None
            }
        });
        let state = match backing {
            Some(backing) => InodeIo::Passthrough { open: 0, backing },
            None => {
                fs.want_stored(ino);
                InodeIo::Cached { open: 0 }
            }
        };
        reply.reply(counted(fs, io.entry(ino).or_insert(state).join()))
    }

    /// The kernel released handle `fh` of `ino`: the last one closes the backing file.
    pub fn release(&self, fs: &LazyFs, ino: u64, fh: u64) {
        let mut io = self.io.lock();
        if let Some(state) = io.get_mut(&ino) {
            let (InodeIo::Cached { open } | InodeIo::Passthrough { open, .. }) = state;
            *open = open.saturating_sub(1);
            if *open == 0 {
                io.remove(&ino);
            }
        }
        drop(io);
        if fh == FH_CACHED {
            // Its reads may have brought the last chunks into the node cache.
            fs.want_stored(ino);
        }
    }
}

fn counted<'a, B>(fs: &LazyFs, opened: Opened<'a, B>) -> Opened<'a, B> {
    if let Opened::Passthrough(_) = opened {
        Stats::add(&fs.stats().passthrough_opens, 1);
    }
    opened
}
