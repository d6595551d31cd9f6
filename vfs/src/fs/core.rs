//! The filesystem logic over an [`Index`] and a [`ChunkSource`], in plain Rust: every answer the FUSE
//! adapter gives comes from here, so it is unit-tested without a mount.
//!
//! Metadata (lookup, getattr, readdir, readlink, xattrs, statfs) is answered from the index alone and
//! must never call the chunk source: a container's `ls -lR` works with the registry down. Only
//! [`LazyFs::read`] touches the source, asking for exactly the chunks that cover the request, in one
//! call, so the source can coalesce them into one range request.
//!
//! Errors are plain errnos ([`nix::errno::Errno`]) because that is all a filesystem can tell its
//! caller; the detail (file, chunk, digest) goes to the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;

use crate::fetch::{ChunkRef, ChunkSource};
use crate::filestore::{FileStore, Lookup};
use crate::index::{Index, Inode, Kind, ROOT};
use crate::stats::{Stats, STATS_IOCTL, STATS_MAX};

use super::linker::Linker;
use super::record::Recorder;
use super::startlog::StartRecorder;
use super::storer::Storer;

/// Block size reported by statfs and stat: the page size, so tools size their buffers sensibly.
pub const BLOCK_SIZE: u32 = 4096;
/// Longest name the index can hold.
pub const NAME_MAX: u32 = 255;

/// File type as the filesystem reports it (mirrors `fuser::FileType` without depending on it, so
/// this module stays free of FUSE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
    CharDevice,
    BlockDevice,
    NamedPipe,
    Socket,
}

/// Attributes of one inode, as stat(2) will show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number on the mount (index position + 1).
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// atime = mtime = ctime: the index stores one time, and the image is immutable.
    pub time: SystemTime,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number in the kernel's `new_encode_dev` format (what FUSE carries).
    pub rdev: u32,
}

/// One entry of a directory listing; `next_offset` is what the kernel passes back to continue after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirListEntry<'a> {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: FileKind,
    pub name: &'a [u8],
}

/// Answer to getxattr/listxattr: the FUSE protocol asks for the size first (buffer size 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// statfs(2) figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub files: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The filesystem: shared by every FUSE request thread (all state is immutable or atomic).
pub struct LazyFs {
    index: Arc<Index>,
    source: Arc<dyn ChunkSource>,
    stats: Arc<Stats>,
    /// One absolute path per inode (the first in walk order): names files in logs and the record.
    paths: Arc<[Box<str>]>,
    recorder: Option<Recorder>,
    /// What this start asks of the metadata, for the next mount of the image ([`super::startlog`]).
    start_recorder: Option<Arc<StartRecorder>>,
    errors: RateLimit,
    /// Whole verified files (for passthrough opens), and the thread that writes them.
    store: Option<(Arc<FileStore>, Storer)>,
    /// Cleared when the kernel cannot pass through: then stored files would only take disk space.
    store_wanted: std::sync::atomic::AtomicBool,
    /// Fetches the libraries a program or library being loaded names, ahead of the loader.
    linker: Option<Linker>,
    /// Whether any inode of the image has an xattr. When none has, getxattr answers ENOSYS, which
    /// the kernel takes as "no xattrs on this filesystem" and stops asking (see [`LazyFs::getxattr`]).
    has_xattrs: bool,
}

impl LazyFs {
    pub fn new(
        index: Arc<Index>,
        source: Arc<dyn ChunkSource>,
        stats: Arc<Stats>,
        recorder: Option<Recorder>,
    ) -> LazyFs {
        let mut paths: Vec<Option<Box<str>>> = vec![None; index.inodes.len()];
        for (path, ino) in paths_in_order(&index) {
            // The first path in name order wins for hardlinked files.
            if let Some(slot @ None) = paths.get_mut(ino as usize) {
                *slot = Some(String::from_utf8_lossy(&path).into());
            }
        }
        let paths = paths.into_iter().map(|p| p.unwrap_or_else(|| Box::from("?"))).collect();
        stats.image_bytes.store(index.image_bytes(), Ordering::Relaxed);
        let errors = RateLimit::new(Duration::from_secs(10), 20);
        let has_xattrs = index.inodes.iter().any(|i| !i.xattrs.is_empty());
        LazyFs {
            index,
            source,
            stats,
            paths,
            recorder,
            start_recorder: None,
            errors,
            store: None,
            store_wanted: true.into(),
            linker: None,
            has_xattrs,
        }
    }

    /// Fetches ahead of the dynamic loader ([`super::linker`]).
    pub fn with_linker(mut self) -> LazyFs {
        self.linker = Linker::start(self.index.clone(), self.source.clone(), self.paths.clone());
        self
    }

    /// Notes lookups, symlink reads and directory listings in `recorder` ([`super::startlog`]).
    pub fn with_start_recorder(mut self, recorder: Arc<StartRecorder>) -> LazyFs {
        self.start_recorder = Some(recorder);
        self
    }

    /// Serves fully cached files from (and writes them into) `store`: see [`LazyFs::stored_file`].
    pub fn with_file_store(mut self, store: Arc<FileStore>) -> LazyFs {
        self.store = Storer::start(self.index.clone(), store.clone(), self.stats.clone()).map(|s| (store, s));
        self
    }

    pub fn file_store(&self) -> Option<&Arc<FileStore>> {
        self.store.as_ref().map(|(s, _)| s)
    }

    /// The verified stored copy of a regular file, opened read-only, if the file store has it
    /// (empty files never have one). A stored copy that fails its check is removed and counted,
    /// and the file is queued to be stored again from its chunks.
    pub fn stored_file(&self, fuse_ino: u64) -> Option<std::fs::File> {
        let (store, _) = self.store.as_ref()?;
        let (ino, inode) = self.inode(fuse_ino).ok()?;
        let Kind::File { size, chunks } = &inode.kind else { return None };
        if *size == 0 {
            return None;
        }
        match store.lookup(&FileStore::key(*size, chunks), *size, chunks, self.path(ino)) {
            Lookup::Found(f) => Some(f),
            Lookup::Absent => None,
            Lookup::Corrupt => {
                Stats::add(&self.stats.stored_file_failures, 1);
                None
            }
        }
    }

    /// Asks the background writer to store this regular file if all its chunks are in the node
    /// cache (cheap; deduplicated). A no-op without a file store.
    pub fn want_stored(&self, fuse_ino: u64) {
        let Some((_, storer)) = &self.store else { return };
        if !self.store_wanted.load(Ordering::Relaxed) {
            return;
        }
        if let Ok((ino, Inode { kind: Kind::File { size, .. }, .. })) = self.inode(fuse_ino) {
            if *size > 0 {
                storer.request(ino);
            }
        }
    }

    /// Stops writing files into the store (passthrough turned out to be unavailable).
    pub fn stop_storing(&self) {
        self.store_wanted.store(false, Ordering::Relaxed);
    }

    /// Files queued for the background writer (tests).
    pub fn store_backlog(&self) -> usize {
        self.store.as_ref().map_or(0, |(_, s)| s.backlog())
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn source(&self) -> &Arc<dyn ChunkSource> {
        &self.source
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Whether first reads are being recorded (`--record`).
    pub fn records(&self) -> bool {
        self.recorder.is_some()
    }

    /// Absolute path of an index inode (the first one found for hardlinked files).
    pub fn path(&self, ino: u32) -> &str {
        self.paths.get(ino as usize).map(|p| &**p).unwrap_or("?")
    }

    /// One absolute path per index inode.
    pub fn paths(&self) -> &Arc<[Box<str>]> {
        &self.paths
    }

    /// Path of a FUSE inode, for logs.
    pub fn path_of_fuse(&self, fuse_ino: u64) -> &str {
        self.index.from_fuse_ino(fuse_ino).map_or("?", |ino| self.path(ino))
    }

    fn inode(&self, fuse_ino: u64) -> Result<(u32, &Inode), Errno> {
        let ino = self.index.from_fuse_ino(fuse_ino).ok_or(Errno::ENOENT)?;
        Ok((ino, &self.index.inodes[ino as usize]))
    }

    /// Attributes of an index inode (by index position).
    pub fn attr_of(&self, ino: u32) -> Attr {
        let inode = &self.index.inodes[ino as usize];
        let size = inode.size();
        let rdev = match inode.kind {
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => encode_dev(major, minor),
            _ => 0,
        };
        Attr {
            ino: Index::fuse_ino(ino),
            size,
            blocks: size.div_ceil(512),
            time: system_time(inode.mtime, inode.mtime_nsec),
            kind: kind_of(inode),
            perm: (inode.mode & 0o7777) as u16,
            nlink: self.index.nlink(ino),
            uid: inode.uid,
            gid: inode.gid,
            rdev,
        }
    }

    pub fn getattr(&self, fuse_ino: u64) -> Result<Attr, Errno> {
        let (ino, _) = self.inode(fuse_ino)?;
        Ok(self.attr_of(ino))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        let (dir, inode) = self.inode(parent)?;
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > NAME_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let child = match name {
            b"." => dir,
            b".." => self.index.parent(dir),
            _ => {
                Stats::add(&self.stats.lookups, 1);
                if let Some(r) = &self.start_recorder {
                    r.lookup(dir, name);
                }
                self.index.lookup(dir, name).ok_or(Errno::ENOENT)?
            }
        };
        Ok(self.attr_of(child))
    }

    pub fn readlink(&self, fuse_ino: u64) -> Result<&[u8], Errno> {
        let (ino, inode) = self.inode(fuse_ino)?;
        match &inode.kind {
            Kind::Symlink { target } => {
                if let Some(r) = &self.start_recorder {
                    r.readlink(ino);
                }
                Ok(target)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Checks an open of a regular file and notes it in the record. Any write intent is EROFS.
    pub fn open(&self, fuse_ino: u64, flags: i32) -> Result<(), Errno> {
        let (ino, inode) = self.inode(fuse_ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        match inode.kind {
            Kind::Dir { .. } => Err(Errno::EISDIR),
            Kind::File { .. } => {
                self.note_read(ino);
                Ok(())
            }
            // Devices and fifos are opened by the kernel without asking us; a lone symlink cannot be opened.
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn opendir(&self, fuse_ino: u64, flags: i32) -> Result<(), Errno> {
        let (_, inode) = self.inode(fuse_ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(())
    }

    /// A directory listing from `offset` (0 = start): ".", "..", then the index's entries in order.
    /// Offsets are positions, so they stay valid across calls (the directory never changes).
    pub fn readdir(&self, fuse_ino: u64, offset: u64) -> Result<impl Iterator<Item = DirListEntry<'_>> + '_, Errno> {
        let (dir, inode) = self.inode(fuse_ino)?;
        let Kind::Dir { entries } = &inode.kind else {
            return Err(Errno::ENOTDIR);
        };
        if let (Some(r), 0) = (&self.start_recorder, offset) {
            r.readdir(dir);
        }
        let dots = [(dir, &b"."[..]), (self.index.parent(dir), &b".."[..])];
        let all = dots.into_iter().chain(entries.iter().map(|e| (e.ino, e.name.as_slice())));
        Ok(all.enumerate().skip(offset.min(usize::MAX as u64) as usize).map(move |(pos, (ino, name))| DirListEntry {
            ino: Index::fuse_ino(ino),
            next_offset: pos as u64 + 1,
            kind: self.index.inode(ino).map(kind_of).unwrap_or(FileKind::RegularFile),
            name,
        }))
    }

    /// Reads `[offset, offset + size)` of a regular file, clipped at its end. Asks the source for
    /// exactly the covering chunks in ONE call and fails with EIO if any of them fails.
    pub fn read(&self, fuse_ino: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let (ino, inode) = self.inode(fuse_ino)?;
        let Kind::File { size: file_size, chunks } = &inode.kind else {
            return Err(if inode.is_dir() { Errno::EISDIR } else { Errno::EINVAL });
        };
        self.note_read(ino);
        if offset == 0 {
            if let Some(linker) = &self.linker {
                linker.note(ino);
            }
        }
        let chunk_size = self.index.chunk_size.max(1) as u64;
        let file = FileChunks { path: self.path(ino), size: *file_size, chunks, chunk_size };
        let out = file.read(&*self.source, offset, size as u64).map_err(|msg| {
            self.log_error(format_args!("{msg}; returning EIO"));
            Errno::EIO
        })?;
        Stats::add(&self.stats.bytes_served, out.len() as u64);
        Ok(out)
    }

    /// An xattr of the image. On an image without any, ENOSYS: the kernel then answers every later
    /// getxattr of this mount itself (EOPNOTSUPP, "no xattrs here"), which matters because an
    /// overlay above the mount asks for `trusted.overlay.metacopy` on every regular file it looks
    /// up: a round trip per file of a container start, for an answer that is always "none".
    pub fn getxattr(&self, fuse_ino: u64, name: &[u8], size: u32) -> Result<XattrReply, Errno> {
        let (_, inode) = self.inode(fuse_ino)?;
        if !self.has_xattrs {
            return Err(Errno::ENOSYS);
        }
        let i = inode.xattrs.binary_search_by(|x| x.name.as_slice().cmp(name)).map_err(|_| Errno::ENODATA)?;
        sized_reply(inode.xattrs[i].value.clone(), size)
    }

    /// The mount's one ioctl, [`STATS_IOCTL`] on the root: the counters as JSON and their length.
    pub fn ioctl(&self, fuse_ino: u64, cmd: u32, out_size: u32) -> Result<(i32, Vec<u8>), Errno> {
        let (ino, _) = self.inode(fuse_ino)?;
        if ino != ROOT || cmd != STATS_IOCTL || (out_size as usize) < STATS_MAX {
            return Err(Errno::ENOTTY);
        }
        let json = serde_json::to_vec(&self.stats.snapshot()).map_err(|_| Errno::EIO)?;
        if json.len() > STATS_MAX {
            return Err(Errno::E2BIG);
        }
        Ok((json.len() as i32, json))
    }

    /// Lists the index's xattr names, NUL-terminated.
    pub fn listxattr(&self, fuse_ino: u64, size: u32) -> Result<XattrReply, Errno> {
        let (_, inode) = self.inode(fuse_ino)?;
        let mut names = Vec::new();
        for x in &inode.xattrs {
            names.extend_from_slice(&x.name);
            names.push(0);
        }
        sized_reply(names, size)
    }

    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.index.image_bytes().div_ceil(BLOCK_SIZE as u64),
            files: self.index.inodes.len() as u64,
            bsize: BLOCK_SIZE,
            namelen: NAME_MAX,
        }
    }

    fn note_read(&self, ino: u32) {
        if let Some(recorder) = &self.recorder {
            recorder.note(ino, self.path(ino));
        }
    }

    fn log_error(&self, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.errors.allow() {
            if suppressed > 0 {
                log::error!("{msg} ({suppressed} similar errors suppressed)");
            } else {
                log::error!("{msg}");
            }
        }
    }
}

/// The FUSE size-probing protocol: size 0 asks for the length; a buffer too small is ERANGE.
fn sized_reply(value: Vec<u8>, size: u32) -> Result<XattrReply, Errno> {
    let len = u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?;
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrReply::Data(value))
    }
}

/// Every path with its index inode, depth-first in name order (`/`, `/a`, `/a/x`, `/b`, ...): the
/// order a recursive listing shows, used to name hardlinked files and to order full prefetch.
pub fn paths_in_order(index: &Index) -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::with_capacity(index.inodes.len());
    if index.inodes.is_empty() {
        return out;
    }
    // Directories are never hardlinked (the codec enforces it); `expanded` still guards against a
    // hand-built index with a directory cycle.
    let mut expanded = vec![false; index.inodes.len()];
    let mut stack = vec![(b"/".to_vec(), ROOT)];
    while let Some((path, ino)) = stack.pop() {
        if let Some(Inode { kind: Kind::Dir { entries }, .. }) = index.inode(ino) {
            if std::mem::replace(&mut expanded[ino as usize], true) {
                continue;
            }
            for e in entries.iter().rev() {
                let mut child = path.clone();
                if child.len() > 1 {
                    child.push(b'/');
                }
                child.extend_from_slice(&e.name);
                stack.push((child, e.ino));
            }
        }
        out.push((path, ino));
    }
    out
}

pub fn kind_of(inode: &Inode) -> FileKind {
    match inode.kind {
        Kind::Dir { .. } => FileKind::Directory,
        Kind::File { .. } => FileKind::RegularFile,
        Kind::Symlink { .. } => FileKind::Symlink,
        Kind::CharDevice { .. } => FileKind::CharDevice,
        Kind::BlockDevice { .. } => FileKind::BlockDevice,
        Kind::Fifo => FileKind::NamedPipe,
        Kind::Socket => FileKind::Socket,
    }
}

/// The kernel's `new_encode_dev`: what FUSE's 32-bit rdev carries (majors up to 4095, minors up to 2^20).
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn system_time(secs: i64, nsec: u32) -> SystemTime {
    let nsec = nsec.min(999_999_999);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        // -1.5 s is stored as secs = -2, nsec = 5e8.
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// Lets at most `burst` lines through per `window`, and says how many were dropped since the last one.
struct RateLimit {
    start: Instant,
    window: Duration,
    burst: u64,
    /// Window number (since `start`) and lines logged in it, packed: the window in the high 44 bits.
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new(window: Duration, burst: u64) -> RateLimit {
        RateLimit { start: Instant::now(), window, burst, state: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(dropped so far)` if this line may be logged.
    fn allow(&self) -> Option<u64> {
        let window = (self.start.elapsed().as_nanos() / self.window.as_nanos().max(1)) as u64;
        let result = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            let (w, n) = (s >> 20, s & 0xfffff);
            if w != window {
                Some(window << 20 | 1)
            } else if n < self.burst {
                Some(s + 1)
            } else {
                None
            }
        });
        match result {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// A regular file's chunks, as reads see them.
pub(super) struct FileChunks<'a> {
    pub path: &'a str,
    pub size: u64,
    pub chunks: &'a [crate::index::Chunk],
    pub chunk_size: u64,
}

impl FileChunks<'_> {
    /// `[offset, offset + len)`, clipped at the file's end (empty past it), from ONE
    /// `read_chunks` call for exactly the covering chunks. Fails, with a message naming the file,
    /// if the index is inconsistent or any chunk fails or has the wrong length.
    pub fn read(&self, source: &dyn ChunkSource, offset: u64, len: u64) -> Result<Bytes, String> {
        let Self { path, size, chunks, chunk_size } = *self;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = (offset / chunk_size) as usize;
        let last = ((end - 1) / chunk_size) as usize;
        if last >= chunks.len() {
            return Err(format!(
                "{path}: index lists {} chunks for {size} bytes at chunk size {chunk_size}; cannot read offset {offset}",
                chunks.len()
            ));
        }
        let refs = ChunkRef::of_file(path, chunks, first..last + 1);
        let results = source.read_chunks(&refs);
        if results.len() != refs.len() {
            return Err(format!("{path}: chunk source returned {} results for {} chunks", results.len(), refs.len()));
        }
        let mut pieces = Vec::with_capacity(results.len());
        for (r, result) in refs.iter().zip(results) {
            match result {
                Ok(data) if data.len() == r.chunk.len as usize => pieces.push(data),
                Ok(data) => {
                    return Err(format!(
                        "{path}: chunk {} ({}): got {} bytes, index says {}",
                        r.chunk_no,
                        r.chunk.digest,
                        data.len(),
                        r.chunk.len
                    ))
                }
                Err(err) => return Err(format!("read failed: {err}")),
            }
        }
        let start_in_first = (offset - first as u64 * chunk_size) as usize;
        let want = (end - offset) as usize;
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_default().slice(start_in_first..start_in_first + want));
        }
        let mut buf = BytesMut::with_capacity(want);
        for (i, piece) in pieces.iter().enumerate() {
            let from = if i == 0 { start_in_first } else { 0 };
            let to = piece.len().min(from + (want - buf.len()));
            buf.extend_from_slice(&piece[from..to]);
        }
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_burst_through_then_counts_what_it_drops() {
        let limit = RateLimit::new(Duration::from_millis(200), 3);
        assert_eq!((0..3).map(|_| limit.allow()).collect::<Vec<_>>(), [Some(0), Some(0), Some(0)]);
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.allow(), Some(2), "the next window's first line reports the drops");
    }

    #[test]
    fn device_numbers_and_negative_times() {
        assert_eq!(encode_dev(1, 3), 0x103);
        // What stat(2) shows as st_rdev (glibc's makedev) for small majors.
        assert_eq!(encode_dev(8, 0x12345) as u64, libc::makedev(8, 0x12345));
        assert_eq!(encode_dev(8, 0x12345), 0x1230_0845);
        assert_eq!(system_time(-2, 500_000_000), UNIX_EPOCH - Duration::from_millis(1500));
        assert_eq!(system_time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
    }
}
