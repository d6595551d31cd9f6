//! The slice of the FUSE kernel ABI (include/uapi/linux/fuse.h) that the io_uring transport reads
//! and writes itself: request headers, the per-entry ring header, and the replies this read-only
//! filesystem gives. Everything is native-endian, as on /dev/fuse.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::core::{Attr, FileKind, BLOCK_SIZE};

/// `fuse_uring_cmd` values (the SQE's cmd_op).
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Opcodes this transport answers (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const TMPFILE: u32 = 51;
}

/// FOPEN_* reply flags.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// `struct fuse_uring_req_header`: the first buffer of every ring entry. The kernel writes the
/// request's `fuse_in_header` into `in_out` and its per-opcode header (e.g. `fuse_read_in`) into
/// `op_in`; the reply's `fuse_out_header` goes back in `in_out`.
#[repr(C, align(8))]
pub struct RingHeader {
    pub in_out: [u8; 128],
    pub op_in: [u8; 128],
    /// `struct fuse_uring_ent_in_out`: flags, commit_id, payload_sz, padding, reserved.
    pub ent: [u8; 32],
}

impl RingHeader {
    pub fn new() -> Box<RingHeader> {
        Box::new(RingHeader { in_out: [0; 128], op_in: [0; 128], ent: [0; 32] })
    }

    /// The request to answer (`fuse_in_header`).
    pub fn request(&self) -> InHeader {
        let h = &self.in_out;
        InHeader { opcode: u32_at(h, 4), unique: u64_at(h, 8), nodeid: u64_at(h, 16) }
    }

    /// What the request carries in the payload buffer.
    pub fn payload_len(&self) -> usize {
        u32_at(&self.ent, 16) as usize
    }

    /// The id to commit the reply with.
    pub fn commit_id(&self) -> u64 {
        u64_at(&self.ent, 8)
    }

    /// Writes the reply's `fuse_out_header` (error 0, or a negative errno) and the payload length.
    pub fn set_reply(&mut self, unique: u64, error: i32, payload_len: usize) {
        let h = &mut self.in_out;
        h[0..4].copy_from_slice(&((16 + payload_len) as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&error.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        self.ent[16..20].copy_from_slice(&(payload_len as u32).to_ne_bytes());
    }
}

/// The fields of `fuse_in_header` the filesystem uses.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

/// `struct fuse_uring_cmd_req`, in the SQE's 80-byte command area.
pub fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A reply being written into an entry's payload buffer.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_ne_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_ne_bytes());
    }

    /// Zeroes up to the next multiple of 8 (dirent padding).
    pub fn pad8(&mut self) {
        let end = self.len.next_multiple_of(8);
        self.buf[self.len..end].fill(0);
        self.len = end;
    }

    /// `struct fuse_attr` (88 bytes).
    pub fn attr(&mut self, a: &Attr) {
        let (secs, nsecs) = since_epoch(a.time);
        self.u64(a.ino);
        self.u64(a.size);
        self.u64(a.blocks);
        for _ in 0..3 {
            self.u64(secs);
        }
        for _ in 0..3 {
            self.u32(nsecs);
        }
        self.u32(mode_type(a.kind) | u32::from(a.perm));
        self.u32(a.nlink);
        self.u32(a.uid);
        self.u32(a.gid);
        self.u32(a.rdev);
        self.u32(BLOCK_SIZE);
        self.u32(0);
    }

    /// `struct fuse_entry_out` (128 bytes); `None` is a negative entry (node id 0) the kernel caches.
    pub fn entry(&mut self, attr: Option<&Attr>, ttl: Duration) {
        self.u64(attr.map_or(0, |a| a.ino));
        self.u64(0); // generation
        self.u64(ttl.as_secs()); // entry_valid
        self.u64(ttl.as_secs()); // attr_valid
        self.u32(ttl.subsec_nanos());
        self.u32(ttl.subsec_nanos());
        match attr {
            Some(a) => self.attr(a),
            None => self.bytes(&[0; 88]),
        }
    }

    /// `struct fuse_attr_out` (104 bytes).
    pub fn attr_out(&mut self, a: &Attr, ttl: Duration) {
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(0);
        self.attr(a);
    }

    /// `struct fuse_open_out`.
    pub fn open_out(&mut self, fh: u64, flags: u32, backing_id: u32) {
        self.u64(fh);
        self.u32(flags);
        self.u32(backing_id);
    }

    /// `struct fuse_dirent` plus its name, padded; false (nothing written) if it does not fit.
    pub fn dirent(&mut self, ino: u64, next_offset: u64, kind: FileKind, name: &[u8]) -> bool {
        if self.room() < (24 + name.len()).next_multiple_of(8) {
            return false;
        }
        self.u64(ino);
        self.u64(next_offset);
        self.u32(name.len() as u32);
        self.u32(mode_type(kind) >> 12);
        self.bytes(name);
        self.pad8();
        true
    }
}

/// The S_IFMT bits of a kind.
fn mode_type(kind: FileKind) -> u32 {
    match kind {
        FileKind::Directory => libc::S_IFDIR,
        FileKind::RegularFile => libc::S_IFREG,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::BlockDevice => libc::S_IFBLK,
        FileKind::NamedPipe => libc::S_IFIFO,
        FileKind::Socket => libc::S_IFSOCK,
    }
}

fn since_epoch(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        // Before 1970: FUSE carries seconds as a signed value in an unsigned field.
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            };
            (secs as u64, nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: FileKind) -> Attr {
        Attr {
            ino: 7,
            size: 4097,
            blocks: 9,
            time: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            kind,
            perm: 0o4755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
        }
    }

    #[test]
    fn replies_have_the_kernels_sizes_and_fields_where_it_reads_them() {
        let mut buf = [0u8; 512];
        let mut out = Out::new(&mut buf);
        out.entry(Some(&attr(FileKind::RegularFile)), Duration::from_secs(60));
        assert_eq!(out.len(), 128);
        out.attr_out(&attr(FileKind::Directory), Duration::from_secs(60));
        assert_eq!(out.len(), 128 + 104);
        out.open_out(1, FOPEN_PASSTHROUGH, 3);
        assert_eq!(out.len(), 128 + 104 + 16);
        // fuse_entry_out: nodeid, then attr at 40: ino, size, ..., mode at 40 + 60.
        assert_eq!(u64_at(&buf, 0), 7);
        assert_eq!(u64_at(&buf, 40 + 8), 4097);
        assert_eq!(u64_at(&buf, 40 + 24), 1_700_000_000);
        assert_eq!(u32_at(&buf, 40 + 48), 5);
        assert_eq!(u32_at(&buf, 40 + 60), libc::S_IFREG | 0o4755);
        assert_eq!(u32_at(&buf, 40 + 72), 100);
        // fuse_attr_out: attr at 16, mode at 16 + 60.
        assert_eq!(u32_at(&buf, 128 + 16 + 60), libc::S_IFDIR | 0o4755);
        assert_eq!(u32_at(&buf, 232 + 8), FOPEN_PASSTHROUGH);
        assert_eq!(u32_at(&buf, 232 + 12), 3);
    }

    #[test]
    fn a_dirent_is_padded_to_8_and_refused_when_it_does_not_fit() {
        let mut buf = [0xffu8; 64];
        let mut out = Out::new(&mut buf);
        assert!(out.dirent(5, 1, FileKind::Symlink, b"abc"));
        assert_eq!(out.len(), 32);
        assert!(!out.dirent(6, 2, FileKind::Directory, b"0123456789"), "24 + 10 rounded up is 40 > 32 left");
        assert_eq!(out.len(), 32);
        assert_eq!(u32_at(&buf, 16), 3);
        assert_eq!(u32_at(&buf, 20), libc::DT_LNK as u32);
        assert_eq!(&buf[24..32], b"abc\0\0\0\0\0");
    }

    #[test]
    fn times_before_1970_are_negative_seconds_and_positive_nanoseconds() {
        assert_eq!(since_epoch(UNIX_EPOCH - Duration::new(1, 250)), ((-2i64) as u64, 999_999_750));
        assert_eq!(since_epoch(UNIX_EPOCH - Duration::from_secs(3)), ((-3i64) as u64, 0));
    }
}
