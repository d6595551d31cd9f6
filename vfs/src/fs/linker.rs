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

use super::elf;
use crate::fetch::{ChunkRef, ChunkSource};
use crate::index::{Index, Kind, ROOT};

/// Symlinks followed while resolving one path (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

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
        let chunk_size = self.index.chunk_size.max(1) as u64;
        let path = self.path(ino);
        let mut read = |offset: u64, len: usize| -> Option<Vec<u8>> {
            let end = offset.checked_add(len as u64)?.min(*size);
            if offset >= end {
                return None;
            }
            let (first, last) = ((offset / chunk_size) as usize, ((end - 1) / chunk_size) as usize);
            if last >= chunks.len() {
                return None;
            }
            let mut out = Vec::with_capacity((end - offset) as usize);
            let refs = ChunkRef::of_file(path, chunks, first..last + 1);
            for (n, data) in (first..).zip(self.source.read_chunks(&refs)) {
                let data = data.ok()?;
                let base = n as u64 * chunk_size;
                let from = offset.saturating_sub(base) as usize;
                let to = ((end - base) as usize).min(data.len());
                out.extend_from_slice(data.get(from..to)?);
            }
            Some(out)
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
    let mut pending: Vec<Vec<u8>> = path.as_bytes().split(|&b| b == b'/').rev().map(<[u8]>::to_vec).collect();
    if !path.starts_with('/') {
        return None;
    }
    let (mut dir, mut links) = (ROOT, 0);
    let mut at = ROOT;
    while let Some(name) = pending.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                dir = index.parent(dir);
                at = dir;
                continue;
            }
            _ => {}
        }
        let child = index.lookup(dir, &name)?;
        match &index.inode(child)?.kind {
            Kind::Symlink { target } => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                if target.starts_with(b"/") {
                    dir = ROOT;
                }
                pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                at = dir;
            }
            Kind::Dir { .. } => {
                dir = child;
                at = child;
            }
            _ => {
                at = child;
                if !pending.iter().all(|c| c.is_empty() || c == b".") {
                    return None; // a file in the middle of the path
                }
            }
        }
    }
    matches!(index.inode(at)?.kind, Kind::File { .. }).then_some(at)
}
