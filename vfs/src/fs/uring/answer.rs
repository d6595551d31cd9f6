//! One FUSE request from a ring entry, answered from [`LazyFs`] into the same entry: the io_uring
//! counterpart of the fuser adapter ([`crate::fs::fuse`]), giving the same answers.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;

use super::abi::{self, op, u32_at, u64_at, Out, RingHeader};
use crate::fs::core::{LazyFs, XattrReply};
use crate::fs::fuse::{Negotiated, TTL};
use crate::fs::opens::{OpenFiles, OpenReply, Opened, FH_CACHED, FH_PASSTHROUGH};
use crate::stats::Stats;

/// A ring entry's buffers: registered with the kernel once, then owned by whoever answers the
/// request in them (the queue's thread, or a worker for reads). Boxed, so they never move.
pub struct Entry {
    pub header: Box<RingHeader>,
    pub payload: Vec<u8>,
    /// Position in the owning queue thread's entry table (the SQE's user data).
    pub slot: usize,
    pub qid: u16,
}

/// Longest request payload this filesystem reads (a name plus its NUL; xattr names are shorter).
const MAX_INPUT: usize = 512;

/// What every queue thread and worker of one mount shares.
pub struct Answerer {
    pub fs: Arc<LazyFs>,
    pub negotiated: Negotiated,
    /// The /dev/fuse connection (backing files are registered on it).
    pub dev: Arc<OwnedFd>,
    opens: OpenFiles<Backing>,
}

impl Answerer {
    pub fn new(fs: Arc<LazyFs>, negotiated: Negotiated, dev: Arc<OwnedFd>) -> Answerer {
        Answerer { fs, negotiated, dev, opens: OpenFiles::new(negotiated.passthrough) }
    }

    /// Reads may wait on the network: they go to a worker so the queue keeps answering.
    pub fn may_block(entry: &Entry) -> bool {
        entry.header.request().opcode == op::READ
    }

    /// Requests the kernel sends without its caller waiting for the answer: RELEASE, and READ
    /// (readahead is; a read(2) that missed the page cache is not, but cannot be told apart).
    pub fn is_async(entry: &Entry) -> bool {
        matches!(entry.header.request().opcode, op::RELEASE | op::RELEASEDIR | op::READ)
    }

    /// Answers the request in `entry`, writing the reply into it.
    pub fn answer(&self, entry: &mut Entry) {
        let req = entry.header.request();
        let n = entry.header.payload_len().min(MAX_INPUT).min(entry.payload.len());
        let mut input = [0u8; MAX_INPUT];
        input[..n].copy_from_slice(&entry.payload[..n]);
        let mut out = Out::new(&mut entry.payload);
        let result = self.reply(req.opcode, req.nodeid, &entry.header.op_in, &input[..n], &mut out);
        let (error, len) = match result {
            Ok(()) => (0, out.len()),
            Err(e) => (-(e as i32), 0),
        };
        entry.header.set_reply(req.unique, error, len);
        Stats::add(&self.fs.stats().uring_requests, 1);
    }

    fn reply(&self, opcode: u32, ino: u64, op_in: &[u8; 128], input: &[u8], out: &mut Out) -> Result<(), Errno> {
        let fs = &*self.fs;
        match opcode {
            op::LOOKUP => match fs.lookup(ino, until_nul(input)) {
                Ok(a) => out.entry(Some(&a), TTL),
                // A negative entry the kernel caches (see the fuser adapter).
                Err(Errno::ENOENT) => out.entry(None, TTL),
                Err(e) => return Err(e),
            },
            op::GETATTR => out.attr_out(&fs.getattr(ino)?, TTL),
            op::READLINK => out.bytes(fs.readlink(ino)?),
            op::OPEN => {
                fs.open(ino, u32_at(op_in, 0) as i32)?;
                if self.negotiated.no_open {
                    return Err(Errno::ENOSYS);
                } else if self.opens.passthrough() {
                    self.opens.open(fs, ino, RingOpen { dev: &self.dev, out });
                } else {
                    out.open_out(FH_CACHED, abi::FOPEN_KEEP_CACHE, 0);
                }
            }
            op::READ => {
                let data = fs.read(ino, u64_at(op_in, 8), u32_at(op_in, 16))?;
                if data.len() > out.room() {
                    return Err(Errno::EIO);
                }
                out.bytes(&data);
            }
            op::RELEASE => {
                if self.opens.passthrough() || fs.file_store().is_some() {
                    self.opens.release(fs, ino, u64_at(op_in, 0));
                }
            }
            op::OPENDIR => {
                fs.opendir(ino, u32_at(op_in, 0) as i32)?;
                if self.negotiated.no_opendir {
                    return Err(Errno::ENOSYS);
                }
                out.open_out(0, abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR, 0);
            }
            op::READDIR | op::READDIRPLUS => {
                let plus = opcode == op::READDIRPLUS;
                let limit = (u32_at(op_in, 16) as usize).min(out.room());
                for e in fs.readdir(ino, u64_at(op_in, 8))? {
                    let need = (24 + e.name.len()).next_multiple_of(8) + if plus { 128 } else { 0 };
                    if out.len() + need > limit {
                        break;
                    }
                    if plus {
                        let Ok(attr) = fs.getattr(e.ino) else { continue };
                        out.entry(Some(&attr), TTL);
                    }
                    out.dirent(e.ino, e.next_offset, e.kind, e.name);
                }
            }
            op::RELEASEDIR | op::DESTROY => {}
            op::STATFS => {
                let s = fs.statfs();
                for v in [s.blocks, 0, 0, s.files, 0] {
                    out.u64(v);
                }
                for v in [s.bsize, s.namelen, s.bsize, 0, 0, 0, 0, 0, 0, 0] {
                    out.u32(v);
                }
            }
            op::GETXATTR | op::LISTXATTR => {
                let size = u32_at(op_in, 0);
                let answer = match opcode {
                    op::GETXATTR => fs.getxattr(ino, until_nul(input), size)?,
                    _ => fs.listxattr(ino, size)?,
                };
                match answer {
                    XattrReply::Size(n) => {
                        out.u32(n);
                        out.u32(0);
                    }
                    XattrReply::Data(v) if v.len() <= out.room() => out.bytes(&v),
                    XattrReply::Data(_) => return Err(Errno::ERANGE),
                }
            }
            op::IOCTL => {
                let (result, data) = fs.ioctl(ino, u32_at(op_in, 12), u32_at(op_in, 28))?;
                for v in [result as u32, 0, 0, 0] {
                    out.u32(v);
                }
                out.bytes(&data);
            }
            op::ACCESS => {
                fs.getattr(ino)?;
                if u32_at(op_in, 0) & libc::W_OK as u32 != 0 {
                    return Err(Errno::EROFS);
                }
            }
            // Nothing to flush or sync; the kernel's own lseek knows the whole file is data. ENOSYS
            // makes the kernel stop sending these.
            op::FLUSH | op::FSYNC | op::FSYNCDIR | op::LSEEK => return Err(Errno::ENOSYS),
            op::SETATTR
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::RENAME2
            | op::LINK
            | op::WRITE
            | op::CREATE
            | op::TMPFILE
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::FALLOCATE => return Err(Errno::EROFS),
            _ => return Err(Errno::ENOSYS),
        }
        Ok(())
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |end| &b[..end])
}

/// A file registered as a passthrough backing file on the connection; closed on drop.
pub struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32, the id, from the pointer.
        if let Err(e) = unsafe { backing_close(self.dev.as_raw_fd(), &self.id) } {
            log::warn!("FUSE passthrough: closing backing id {}: {e}", self.id);
        }
    }
}

struct RingOpen<'a, 'b> {
    dev: &'a Arc<OwnedFd>,
    out: &'a mut Out<'b>,
}

impl OpenReply for RingOpen<'_, '_> {
    type Backing = Backing;

    fn register(&self, file: &std::fs::File) -> std::io::Result<Backing> {
        let id = fuser::BackingId::create_raw(&**self.dev, file)?;
        Ok(Backing { dev: self.dev.clone(), id })
    }

    fn reply(self, opened: Opened<'_, Backing>) {
        match opened {
            Opened::Passthrough(b) => self.out.open_out(FH_PASSTHROUGH, abi::FOPEN_PASSTHROUGH, b.id),
            Opened::Cached => self.out.open_out(FH_CACHED, abi::FOPEN_KEEP_CACHE, 0),
        }
    }
}
