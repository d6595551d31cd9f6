//! The fuser 0.18 adapter: with [`super::uring`], the only code in the crate that talks to
//! /dev/fuse. It translates FUSE requests into calls on [`LazyFs`] and replies; it holds no
//! filesystem logic of its own.
//!
//! Kernel caching is on everywhere because the content never changes: long entry/attr TTLs,
//! FOPEN_KEEP_CACHE on files, FOPEN_CACHE_DIR on directories, cached symlinks, readdirplus so an
//! `ls -l` is one round trip per directory, and parallel lookups in a directory.
//!
//! Passthrough ([`super::opens`]): the stack depth we ask for is 1: backing files live on a plain
//! filesystem, and the mount can still be an overlayfs lower layer (the kernel's limit is 2 stacked
//! filesystems).
//!
//! FUSE over io_uring ([`super::uring`]): when asked for and offered by the kernel, init requests it;
//! once the ring queues are registered the kernel sends every request but FORGET and INTERRUPT there,
//! and this adapter only answers what arrives on /dev/fuse before that (nothing, in practice).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::core::{Attr, FileKind, LazyFs, XattrReply, BLOCK_SIZE};
use super::opens::{OpenFiles, OpenReply, Opened, FH_CACHED, FH_PASSTHROUGH};

/// How long the kernel may trust entries and attributes: the image is immutable, so "forever".
pub const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Readahead we ask for: large sequential reads become few, chunk-sized requests.
const MAX_READAHEAD: u32 = 4 << 20;
/// Concurrent async (readahead) requests the kernel may queue for us.
const MAX_BACKGROUND: u16 = 64;
/// Largest write the kernel may send: none ever comes (read-only), but each io_uring entry's
/// buffer must hold this much, so it is kept at the largest read (FUSE's 256 pages).
const MAX_WRITE: u32 = 1 << 20;

/// The FUSE face of a [`LazyFs`].
pub struct FuseAdapter {
    fs: Arc<LazyFs>,
    /// What init settled, for the io_uring transport too.
    negotiated: Arc<OnceLock<Negotiated>>,
    want_uring: bool,
    no_open: bool,
    no_opendir: bool,
    opens: OpenFiles<BackingId>,
}

/// What the FUSE handshake settled.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// Answer open with ENOSYS once the file checks out: the kernel then stops sending opens (one
    /// round trip less per open) and applies FOPEN_KEEP_CACHE by itself. Only when not recording
    /// and not passing through, since both need to see opens.
    pub no_open: bool,
    /// The same for opendir (FOPEN_CACHE_DIR implied).
    pub no_opendir: bool,
    /// Passthrough asked for and granted.
    pub passthrough: bool,
    /// FUSE over io_uring asked for and granted: the ring queues must be registered now, the
    /// kernel holds every new request until they are.
    pub uring: bool,
}

impl FuseAdapter {
    /// `passthrough`: use FUSE passthrough for stored files if the kernel and privileges allow.
    /// `uring`: ask for FUSE over io_uring (only when the caller will register the queues).
    pub fn new(fs: Arc<LazyFs>, passthrough: bool, uring: bool) -> FuseAdapter {
        let passthrough = passthrough && fs.file_store().is_some();
        FuseAdapter {
            fs,
            negotiated: Arc::new(OnceLock::new()),
            want_uring: uring,
            no_open: false,
            no_opendir: false,
            opens: OpenFiles::new(passthrough),
        }
    }

    /// Filled in by the handshake.
    pub fn negotiated(&self) -> Arc<OnceLock<Negotiated>> {
        self.negotiated.clone()
    }
}

impl OpenReply for ReplyOpen {
    type Backing = BackingId;

    fn register(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        self.open_backing(file)
    }

    fn reply(self, opened: Opened<'_, BackingId>) {
        match opened {
            Opened::Passthrough(backing) => {
                self.opened_passthrough(FileHandle(FH_PASSTHROUGH), FopenFlags::empty(), backing)
            }
            Opened::Cached => self.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }
}

fn errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::NamedPipe => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.time,
        mtime: a.time,
        ctime: a.time,
        crtime: a.time,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn negative_attr() -> FileAttr {
    let mut attr = file_attr(&Attr {
        ino: 0,
        size: 0,
        blocks: 0,
        time: SystemTime::UNIX_EPOCH,
        kind: FileKind::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
    });
    attr.ino = INodeNo(0);
    attr
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for (flag, name) in [
            (InitFlags::FUSE_PARALLEL_DIROPS, "PARALLEL_DIROPS"),
            (InitFlags::FUSE_CACHE_SYMLINKS, "CACHE_SYMLINKS"),
            (InitFlags::FUSE_DO_READDIRPLUS, "DO_READDIRPLUS"),
            (InitFlags::FUSE_ASYNC_READ, "ASYNC_READ"),
        ] {
            if config.add_capabilities(flag).is_err() {
                log::debug!("FUSE capability {name} not supported by the kernel");
            }
        }
        if self.opens.passthrough() {
            let granted =
                config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok();
            if !granted {
                log::info!(
                    "FUSE passthrough not supported by the kernel: every read goes through FUSE, no files are stored"
                );
                self.opens.set_passthrough(false);
                self.fs.stop_storing();
            }
        }
        let uring = self.want_uring && config.add_capabilities(InitFlags::FUSE_OVER_IO_URING).is_ok();
        if self.want_uring && !uring {
            log::info!("the kernel did not offer FUSE over io_uring at init: serving requests through /dev/fuse");
        }
        let caps = config.capabilities();
        self.no_open =
            !self.fs.records() && !self.opens.passthrough() && caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = self.negotiated.set(Negotiated {
            no_open: self.no_open,
            no_opendir: self.no_opendir,
            passthrough: self.opens.passthrough(),
            uring,
        });
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            // A node id of 0 is a NEGATIVE entry the kernel caches for the TTL: interpreters probe
            // many paths that do not exist (sys.path, ld.so), and the answer never changes.
            Err(nix::errno::Errno::ENOENT) => reply.entry(&TTL, &negative_attr(), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(()) if self.no_open => reply.error(Errno::ENOSYS),
            Ok(()) if self.opens.passthrough() => self.opens.open(&self.fs, ino.0, reply),
            Ok(()) => reply.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
        if self.opens.passthrough() || self.fs.file_store().is_some() {
            self.opens.release(&self.fs, ino.0, fh.0);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0, flags.0) {
            Ok(()) if self.no_opendir => reply.error(Errno::ENOSYS),
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), OsStr::from_bytes(e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    let Ok(attr) = self.fs.getattr(e.ino) else { continue };
                    let full = reply.add(
                        INodeNo(e.ino),
                        e.next_offset,
                        OsStr::from_bytes(e.name),
                        &TTL,
                        &file_attr(&attr),
                        Generation(0),
                    );
                    if full {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(s.blocks, 0, 0, s.files, 0, s.bsize, s.namelen, s.bsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name.as_bytes(), size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(v)) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(v)) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// The stats ioctl on the root; anything else (e.g. `lsattr`'s FS_IOC_GETFLAGS) gets ENOTTY,
    /// what an unsupported ioctl returns.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        match self.fs.ioctl(ino.0, cmd, out_size) {
            Ok((result, data)) => reply.ioctl(result, &data),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Only reached without `default_permissions`; the kernel checks modes itself otherwise.
    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Requests fuser would answer with ENOSYS plus a warning per call. For flush/fsync/fsyncdir,
    // ENOSYS tells the kernel to treat them as successful no-ops and stop sending them (nothing to
    // flush on a read-only filesystem), which saves a round trip per close.

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS makes the kernel use its generic SEEK_DATA/SEEK_HOLE (whole file is data) from now on.
    fn lseek(&self, _: &Request, _: INodeNo, _: FileHandle, _: i64, _: i32, reply: ReplyLseek) {
        reply.error(Errno::ENOSYS);
    }

    // Everything that would change the image: read-only. The `ro` mount flag makes the kernel refuse
    // most of these before they reach us; these answers cover the rest.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _: &Request, _: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(&self, _: &Request, _: INodeNo, _: &OsStr, _: INodeNo, _: &OsStr, _: RenameFlags, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(&self, _: &Request, _: INodeNo, _: &OsStr, _: &[u8], _: i32, _: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(&self, _: &Request, _: INodeNo, _: FileHandle, _: u64, _: u64, _: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
