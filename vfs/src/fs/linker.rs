//! Fetching ahead of the dynamic loader. When a program or shared library is first read at its
//! start (an exec, a `dlopen`, the loader reading a library's header), a background thread reads
//! its ELF headers (fetched anyway: the kernel and the loader need them) and starts the fetch of
//! its interpreter and of every library it names, at once, and then of theirs. The loader opens
//! them one after another; each would otherwise cost a round trip before the next is even named.
//!
//! Libraries are found where the loader looks: `DT_RUNPATH`/`DT_RPATH` (with `$ORIGIN`), then the
//! default and multiarch directories ([`elf::default_dirs`]), following symlinks in the image.
//! Nothing here is trusted: a wrong guess only fetches a file early; the bytes are verified like
//! any other read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use parking_lot::Mutex;

use super::core::FileChunks;
use super::elf;
use crate::fetch::{ChunkRef, ChunkSource};
use crate::index::{Index, Kind};

pub struct Linker {
    tx: Mutex<Sender<u32>>,
    /// Inodes already looked at (or queued): each file is parsed once per mount.
    seen: Arc<[AtomicBool]>,
}

impl Linker {
    /// Starts the thread; it ends when the [`Linker`] is dropped. `paths` names inodes in logs.
    pub fn start(index: Arc<Index>, source: Arc<dyn ChunkSource>, paths: Arc<[Box<str>]>) -> Option<Linker> {
        let (tx, rx) = channel::<u32>();
        let seen: Arc<[AtomicBool]> = (0..index.inodes.len()).map(|_| AtomicBool::new(false)).collect();
        let worker = Worker { index, source, paths, seen: seen.clone() };
        std::thread::Builder::new()
            .name("lazy-linker".into())
            .spawn(move || {
                while let Ok(ino) = rx.recv() {
                    worker.examine(ino);
                }
            })
            .map_err(|e| log::warn!("cannot start the library prefetch thread: {e}"))
            .ok()?;
        Some(Linker { tx: Mutex::new(tx), seen })
    }

    /// A read at the start of regular file `ino`: look at it once.
    pub fn note(&self, ino: u32) {
        if let Some(flag) = self.seen.get(ino as usize) {
            if !flag.swap(true, Ordering::Relaxed) {
                let _ = self.tx.lock().send(ino);
            }
        }
    }
}

struct Worker {
    index: Arc<Index>,
    source: Arc<dyn ChunkSource>,
    paths: Arc<[Box<str>]>,
    seen: Arc<[AtomicBool]>,
}

impl Worker {
    fn path(&self, ino: u32) -> &str {
        self.paths.get(ino as usize).map(|p| &**p).unwrap_or("?")
    }

    fn examine(&self, ino: u32) {
        let Some(Kind::File { size, chunks }) = self.index.inode(ino).map(|i| &i.kind) else { return };
        let path = self.path(ino);
        let file = FileChunks { path, size: *size, chunks, chunk_size: self.index.chunk_size.max(1) as u64 };
        let mut read = |offset: u64, len: usize| -> Option<Vec<u8>> {
            let data = file.read(&*self.source, offset, len as u64).ok()?;
            (!data.is_empty()).then(|| data.to_vec())
        };
        let Some(deps) = elf::deps(&mut read) else { return };
        let origin = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut wanted = Vec::new();
        if let Some(interp) = &deps.interp {
            wanted.extend(resolve(&self.index, interp));
        }
        let mut dirs: Vec<String> = deps.search.iter().map(|d| d.replace("$ORIGIN", origin)).collect();
        dirs.extend(elf::default_dirs(deps.machine));
        for name in &deps.needed {
            let found = if name.contains('/') {
                resolve(&self.index, name)
            } else {
                dirs.iter().find_map(|d| resolve(&self.index, &format!("{d}/{name}")))
            };
            match found {
                Some(lib) => wanted.push(lib),
                None => log::debug!("{path}: needs {name}, not found in the image's library directories"),
            }
        }
        wanted.retain(|&lib| self.seen.get(lib as usize).is_some_and(|flag| !flag.swap(true, Ordering::Relaxed)));
        for &lib in &wanted {
            let Some(Kind::File { chunks, .. }) = self.index.inode(lib).map(|i| &i.kind) else { continue };
            if !chunks.is_empty() {
                log::debug!("{path} loads {}: fetching it now", self.path(lib));
                // As if the loader had read its first chunk: the rest of the file comes along.
                self.source.fetch_soon(&ChunkRef::of_file(self.path(lib), chunks, 0..1));
            }
        }
        // Their own libraries next (their headers are on their way).
        for lib in wanted {
            self.examine(lib);
        }
    }
}

/// The regular file at absolute `path` in the image, following symlinks.
fn resolve(index: &Index, path: &str) -> Option<u32> {
    let ino = index.resolve_following(path.as_bytes())?;
    matches!(index.inode(ino)?.kind, Kind::File { .. }).then_some(ino)
}
