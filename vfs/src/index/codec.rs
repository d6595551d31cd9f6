//! Compact, versioned encoding of [`Index`], and the validating decoder.
//!
//! Layout: `LAZYIDX\0`, a little-endian u32 version, a little-endian u64 body length, then the body
//! as one zstd frame. The body is a sequence of LEB128 varints, length-prefixed byte strings and raw
//! 32-byte digests: chunk size, source, blobs, inodes (kind, mode, uid, gid, mtime, nsec, xattrs,
//! then entries / chunks / target / device numbers), prefetch list. Nothing follows the body.
//!
//! The index is read from images, i.e. from strangers. The decoder therefore never trusts a count
//! or a length: every length is checked against the remaining input (and a named limit) before
//! anything is allocated, the tree is checked without recursion, and every rule the rest of the
//! crate relies on (sorted unique names, chunks inside their blobs, one parent per directory,
//! everything reachable from the root) is enforced here, so the filesystem never has to re-check.

use std::fmt;
use std::io::Read;

use super::model::{BlobRef, Chunk, DirEntry, Index, Inode, Kind, Xattr, ROOT};
use crate::digest::Digest;

pub const INDEX_MAGIC: &[u8; 8] = b"LAZYIDX\0";
pub const INDEX_VERSION: u32 = 1;

/// Most inodes an index may hold.
pub const MAX_INODES: u64 = 16 << 20;
/// Most data blobs an index may reference.
pub const MAX_BLOBS: u64 = 1 << 20;
/// Longest name of a directory entry or an xattr (the kernel's NAME_MAX / XATTR_NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target (PATH_MAX).
pub const MAX_SYMLINK_LEN: usize = 4096;
/// Largest xattr value (XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE_LEN: usize = 64 << 10;
/// Most xattrs on one inode.
pub const MAX_XATTRS_PER_INODE: u64 = 1024;
/// Largest regular file.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Smallest and largest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Longest `source` repository string.
pub const MAX_SOURCE_LEN: usize = 4096;
/// Largest decompressed body: bounds what a zstd bomb can make us allocate. A 1M-file image with
/// 1M chunks encodes to well under 100 MiB.
pub const MAX_BODY_LEN: u64 = 1 << 30;

const HEADER_LEN: usize = 8 + 4 + 8;

const TAG_DIR: u8 = 0;
const TAG_FILE: u8 = 1;
const TAG_SYMLINK: u8 = 2;
const TAG_CHAR: u8 = 3;
const TAG_BLOCK: u8 = 4;
const TAG_FIFO: u8 = 5;
const TAG_SOCKET: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("lazy index: not a lazy index (bad magic); expected a file written by `lazyctl convert`")]
    BadMagic,
    #[error("lazy index: format version {found} is not supported (this build reads version {INDEX_VERSION}); upgrade the shim/lazyctl or re-convert the image")]
    UnsupportedVersion { found: u32 },
    #[error("lazy index: body is not valid zstd: {0}")]
    Decompress(String),
    #[error("lazy index: truncated while reading {what}")]
    Truncated { what: String },
    #[error("lazy index: {0}")]
    Invalid(String),
}

fn invalid(msg: impl fmt::Display) -> IndexError {
    IndexError::Invalid(msg.to_string())
}

/// Where in an inode a field is; formatted only when something is wrong with it (decoding an
/// image's index must not build a string per field).
#[derive(Clone, Copy)]
struct Field<'a> {
    ino: usize,
    chunk: Option<usize>,
    what: &'a str,
}

impl Field<'_> {
    /// Names fields of inode `ino` (and of its chunk `chunk`).
    fn namer(ino: usize, chunk: Option<usize>) -> impl for<'a> Fn(&'a str) -> Field<'a> {
        move |what| Field { ino, chunk, what }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inode {}: ", self.ino)?;
        if let Some(i) = self.chunk {
            write!(f, "chunk {i}: ")?;
        }
        f.write_str(self.what)
    }
}

impl Index {
    /// Encodes the index (zstd-compressed body). Deterministic: the same index gives the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and fully validates an index read from an image.
    pub fn decode(data: &[u8]) -> Result<Index, IndexError> {
        decode(data)
    }
}

pub fn encode(index: &Index) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + index.inodes.len() * 24));
    w.uint(index.chunk_size as u64);
    w.bytes(index.source.as_bytes());
    w.uint(index.blobs.len() as u64);
    for b in &index.blobs {
        w.digest(&b.digest);
        w.uint(b.size);
    }
    w.uint(index.inodes.len() as u64);
    for inode in &index.inodes {
        let tag = match inode.kind {
            Kind::Dir { .. } => TAG_DIR,
            Kind::File { .. } => TAG_FILE,
            Kind::Symlink { .. } => TAG_SYMLINK,
            Kind::CharDevice { .. } => TAG_CHAR,
            Kind::BlockDevice { .. } => TAG_BLOCK,
            Kind::Fifo => TAG_FIFO,
            Kind::Socket => TAG_SOCKET,
        };
        w.0.push(tag);
        w.uint(inode.mode as u64);
        w.uint(inode.uid as u64);
        w.uint(inode.gid as u64);
        w.uint(((inode.mtime << 1) ^ (inode.mtime >> 63)) as u64);
        w.uint(inode.mtime_nsec as u64);
        w.uint(inode.xattrs.len() as u64);
        for x in &inode.xattrs {
            w.bytes(&x.name);
            w.bytes(&x.value);
        }
        match &inode.kind {
            Kind::Dir { entries } => {
                w.uint(entries.len() as u64);
                for e in entries {
                    w.bytes(&e.name);
                    w.uint(e.ino as u64);
                }
            }
            Kind::File { size, chunks } => {
                w.uint(*size);
                w.uint(chunks.len() as u64);
                for c in chunks {
                    w.uint(c.blob as u64);
                    w.uint(c.offset);
                    w.uint(c.compressed_len as u64);
                    w.uint(c.len as u64);
                    w.digest(&c.digest);
                }
            }
            Kind::Symlink { target } => w.bytes(target),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                w.uint(*major as u64);
                w.uint(*minor as u64);
            }
            Kind::Fifo | Kind::Socket => {}
        }
    }
    w.uint(index.prefetch.len() as u64);
    for p in &index.prefetch {
        w.uint(*p as u64);
    }
    let body = w.0;
    let compressed = zstd::bulk::compress(&body, 3).expect("zstd compression into memory cannot fail");
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&compressed);
    out
}

pub fn decode(data: &[u8]) -> Result<Index, IndexError> {
    if data.len() < 8 || &data[..8] != INDEX_MAGIC {
        return Err(IndexError::BadMagic);
    }
    if data.len() < HEADER_LEN {
        return Err(IndexError::Truncated { what: "header".into() });
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != INDEX_VERSION {
        return Err(IndexError::UnsupportedVersion { found: version });
    }
    let body_len = u64::from_le_bytes(data[12..20].try_into().expect("8 bytes"));
    if body_len > MAX_BODY_LEN {
        return Err(invalid(format!("body of {body_len} bytes exceeds the limit of {MAX_BODY_LEN}")));
    }
    // Stream-decompress into a buffer that only grows as real output arrives: a hostile header
    // declaring a huge body cannot make us allocate it up front.
    let mut body = Vec::new();
    let decoder =
        zstd::stream::read::Decoder::new(&data[HEADER_LEN..]).map_err(|e| IndexError::Decompress(e.to_string()))?;
    decoder.take(body_len + 1).read_to_end(&mut body).map_err(|e| IndexError::Decompress(e.to_string()))?;
    if body.len() as u64 != body_len {
        return Err(invalid(format!("body is {} bytes, header says {body_len}", body.len())));
    }
    let mut index = decode_body(&body)?;
    validate_tree(&index)?;
    index.derive();
    Ok(index)
}

struct Writer(Vec<u8>);

impl Writer {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn digest(&mut self, d: &Digest) {
        self.0.extend_from_slice(&d.0);
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncated(what: &dyn fmt::Display) -> IndexError {
        IndexError::Truncated { what: what.to_string() }
    }

    fn u8(&mut self, what: &dyn fmt::Display) -> Result<u8, IndexError> {
        let b = *self.data.get(self.pos).ok_or_else(|| Self::truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self, what: &dyn fmt::Display) -> Result<u64, IndexError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = (b & 0x7f) as u64;
            if shift == 63 && bits > 1 {
                return Err(invalid(format!("{what}: varint overflows 64 bits")));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid(format!("{what}: varint longer than 10 bytes")))
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32, IndexError> {
        let v = self.uint(what)?;
        u32::try_from(v).map_err(|_| invalid(format!("{what}: {v} does not fit in 32 bits")))
    }

    /// A count of items each taking at least `min_item_len` encoded bytes, bounded by `max`.
    /// Checking it against the remaining input before allocating keeps hostile counts harmless.
    fn count(&mut self, what: &dyn fmt::Display, max: u64, min_item_len: usize) -> Result<usize, IndexError> {
        let n = self.uint(what)?;
        if n > max {
            return Err(invalid(format!("{what}: {n} exceeds the limit of {max}")));
        }
        if n.saturating_mul(min_item_len as u64) > self.remaining() as u64 {
            return Err(Self::truncated(what));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, what: &dyn fmt::Display, max: usize) -> Result<&'a [u8], IndexError> {
        let n = self.uint(what)?;
        if n > max as u64 {
            return Err(invalid(format!("{what}: length {n} exceeds the limit of {max}")));
        }
        let n = n as usize;
        if n > self.remaining() {
            return Err(Self::truncated(what));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn digest(&mut self, what: &dyn fmt::Display) -> Result<Digest, IndexError> {
        if self.remaining() < 32 {
            return Err(Self::truncated(what));
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(&self.data[self.pos..self.pos + 32]);
        self.pos += 32;
        Ok(Digest(d))
    }
}

/// Checks a directory-entry name: what the kernel would accept as one path component.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("entry name is empty")
    } else if name == b"." || name == b".." {
        Err("entry name is '.' or '..'")
    } else if name.contains(&b'/') {
        Err("entry name contains '/'")
    } else if name.contains(&0) {
        Err("entry name contains NUL")
    } else if name.len() > MAX_NAME_LEN {
        Err("entry name is longer than 255 bytes")
    } else {
        Ok(())
    }
}

fn decode_body(body: &[u8]) -> Result<Index, IndexError> {
    let mut r = Reader { data: body, pos: 0 };
    let chunk_size = r.u32(&"chunk size")?;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(invalid(format!("chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")));
    }
    let source = r.bytes(&"source", MAX_SOURCE_LEN)?;
    let source = String::from_utf8(source.to_vec()).map_err(|_| invalid("source is not UTF-8"))?;

    let nblobs = r.count(&"blob count", MAX_BLOBS, 33)?;
    let mut blobs = Vec::with_capacity(nblobs);
    for i in 0..nblobs {
        let digest = r.digest(&format!("blob {i}"))?;
        let size = r.uint(&format!("blob {i} size"))?;
        blobs.push(BlobRef { digest, size });
    }

    // Smallest inode: tag + 5 one-byte varints + xattr count + one-byte payload.
    let ninodes = r.count(&"inode count", MAX_INODES, 8)?;
    if ninodes == 0 {
        return Err(invalid("no root directory (zero inodes)"));
    }
    let mut inodes = Vec::with_capacity(ninodes);
    for ino in 0..ninodes {
        inodes.push(decode_inode(&mut r, ino, ninodes, chunk_size, &blobs)?);
    }

    let nprefetch = r.count(&"prefetch count", MAX_INODES, 1)?;
    let mut prefetch = Vec::with_capacity(nprefetch);
    for _ in 0..nprefetch {
        prefetch.push(r.u32(&"prefetch entry")?);
    }
    if r.remaining() != 0 {
        return Err(invalid(format!("{} unexpected bytes after the prefetch list", r.remaining())));
    }
    Ok(Index { chunk_size, source, blobs, inodes, prefetch, parents: Vec::new(), nlinks: Vec::new() })
}

fn decode_inode(
    r: &mut Reader<'_>,
    ino: usize,
    ninodes: usize,
    chunk_size: u32,
    blobs: &[BlobRef],
) -> Result<Inode, IndexError> {
    let at = Field::namer(ino, None);
    let tag = r.u8(&at("kind"))?;
    let mode = r.u32(&at("mode"))?;
    if mode & !0o7777 != 0 {
        return Err(invalid(at(&format!("mode {mode:#o} has bits outside 0o7777"))));
    }
    let uid = r.u32(&at("uid"))?;
    let gid = r.u32(&at("gid"))?;
    let zz = r.uint(&at("mtime"))?;
    let mtime = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
    let mtime_nsec = r.u32(&at("mtime nsec"))?;
    if mtime_nsec >= 1_000_000_000 {
        return Err(invalid(at(&format!("mtime nanoseconds {mtime_nsec} is not below 1e9"))));
    }
    let nx = r.count(&at("xattr count"), MAX_XATTRS_PER_INODE, 2)?;
    let mut xattrs: Vec<Xattr> = Vec::with_capacity(nx);
    for _ in 0..nx {
        let name = r.bytes(&at("xattr name"), MAX_NAME_LEN)?;
        if name.is_empty() || name.contains(&0) {
            return Err(invalid(at("xattr name is empty or contains NUL")));
        }
        let value = r.bytes(&at("xattr value"), MAX_XATTR_VALUE_LEN)?;
        if let Some(prev) = xattrs.last() {
            if prev.name.as_slice() >= name {
                return Err(invalid(at(&format!(
                    "xattr {:?} is not sorted after {:?} (duplicate or unsorted)",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&prev.name)
                ))));
            }
        }
        xattrs.push(Xattr { name: name.to_vec(), value: value.to_vec() });
    }

    let kind = match tag {
        TAG_DIR => {
            let n = r.count(&at("entry count"), MAX_INODES, 2)?;
            let mut entries: Vec<DirEntry> = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.bytes(&at("entry name"), MAX_NAME_LEN)?;
                if let Err(why) = check_name(name) {
                    return Err(invalid(at(why)));
                }
                let child = r.u32(&at("entry inode"))?;
                let shown = String::from_utf8_lossy(name);
                if child as usize >= ninodes {
                    return Err(invalid(at(&format!(
                        "entry {shown:?} names inode {child}, but there are only {ninodes}"
                    ))));
                }
                if child == ROOT {
                    return Err(invalid(at(&format!("entry {shown:?} links the root directory"))));
                }
                if let Some(prev) = entries.last() {
                    if prev.name.as_slice() >= name {
                        return Err(invalid(at(&format!(
                            "entry {shown:?} is not sorted after {:?} (duplicate or unsorted)",
                            String::from_utf8_lossy(&prev.name)
                        ))));
                    }
                }
                entries.push(DirEntry { name: name.to_vec(), ino: child });
            }
            Kind::Dir { entries }
        }
        TAG_FILE => {
            let size = r.uint(&at("file size"))?;
            if size > MAX_FILE_SIZE {
                return Err(invalid(at(&format!("file size {size} exceeds the limit of {MAX_FILE_SIZE}"))));
            }
            let expected = size.div_ceil(chunk_size as u64);
            let n = r.count(&at("chunk count"), expected, 36)?;
            if n as u64 != expected {
                return Err(invalid(at(&format!(
                    "{n} chunks for {size} bytes; chunk size {chunk_size} needs {expected}"
                ))));
            }
            let mut chunks = Vec::with_capacity(n);
            let mut total: u64 = 0;
            for i in 0..n {
                let cat = Field::namer(ino, Some(i));
                let blob = r.u32(&cat("blob"))?;
                let offset = r.uint(&cat("offset"))?;
                let compressed_len = r.u32(&cat("compressed length"))?;
                let len = r.u32(&cat("length"))?;
                let digest = r.digest(&cat("digest"))?;
                let b = blobs
                    .get(blob as usize)
                    .ok_or_else(|| invalid(cat(&format!("names blob {blob}, but there are only {}", blobs.len()))))?;
                if compressed_len == 0 || offset.checked_add(compressed_len as u64).is_none_or(|end| end > b.size) {
                    return Err(invalid(cat(&format!(
                        "bytes {offset}+{compressed_len} lie outside blob {} of {} bytes",
                        b.digest, b.size
                    ))));
                }
                let last = i + 1 == n;
                if len == 0 || len > chunk_size || (!last && len != chunk_size) {
                    return Err(invalid(cat(&format!("length {len} is invalid for chunk size {chunk_size}"))));
                }
                total += len as u64;
                chunks.push(Chunk { blob, offset, compressed_len, len, digest });
            }
            if total != size {
                return Err(invalid(at(&format!("chunk lengths sum to {total}, file size is {size}"))));
            }
            Kind::File { size, chunks }
        }
        TAG_SYMLINK => {
            let target = r.bytes(&at("symlink target"), MAX_SYMLINK_LEN)?;
            if target.is_empty() || target.contains(&0) {
                return Err(invalid(at("symlink target is empty or contains NUL")));
            }
            Kind::Symlink { target: target.to_vec() }
        }
        TAG_CHAR | TAG_BLOCK => {
            let major = r.u32(&at("device major"))?;
            let minor = r.u32(&at("device minor"))?;
            if tag == TAG_CHAR {
                Kind::CharDevice { major, minor }
            } else {
                Kind::BlockDevice { major, minor }
            }
        }
        TAG_FIFO => Kind::Fifo,
        TAG_SOCKET => Kind::Socket,
        other => return Err(invalid(at(&format!("unknown kind {other}")))),
    };
    Ok(Inode { kind, mode, uid, gid, mtime, mtime_nsec, xattrs })
}

/// Tree rules: the root is a directory; every directory is linked exactly once (so there are no
/// directory hardlinks and no cycles through the root); every inode is reachable from the root;
/// prefetch entries are regular files. Iterative, so a deep tree cannot overflow the stack.
fn validate_tree(index: &Index) -> Result<(), IndexError> {
    let n = index.inodes.len();
    if !index.inodes[ROOT as usize].is_dir() {
        return Err(invalid("inode 0 (the root) is not a directory"));
    }
    let mut dir_linked = vec![false; n];
    for (dir, inode) in index.inodes.iter().enumerate() {
        if let Kind::Dir { entries } = &inode.kind {
            for e in entries {
                if index.inodes[e.ino as usize].is_dir() {
                    if dir_linked[e.ino as usize] {
                        return Err(invalid(format!(
                            "inode {dir}: entry {:?} links directory inode {} a second time",
                            String::from_utf8_lossy(&e.name),
                            e.ino
                        )));
                    }
                    dir_linked[e.ino as usize] = true;
                }
            }
        }
    }
    let mut seen = vec![false; n];
    seen[ROOT as usize] = true;
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        if let Kind::Dir { entries } = &index.inodes[dir as usize].kind {
            for e in entries {
                let child = e.ino as usize;
                if !seen[child] {
                    seen[child] = true;
                    if index.inodes[child].is_dir() {
                        stack.push(e.ino);
                    }
                }
            }
        }
    }
    if let Some(lost) = seen.iter().position(|s| !s) {
        return Err(invalid(format!("inode {lost}: not reachable from the root (orphan, or a directory cycle)")));
    }
    let mut prefetched = vec![false; n];
    for (i, &p) in index.prefetch.iter().enumerate() {
        match index.inodes.get(p as usize) {
            Some(Inode { kind: Kind::File { .. }, .. }) => {}
            Some(_) => return Err(invalid(format!("prefetch entry {i}: inode {p} is not a regular file"))),
            None => return Err(invalid(format!("prefetch entry {i}: inode {p} does not exist ({n} inodes)"))),
        }
        if std::mem::replace(&mut prefetched[p as usize], true) {
            return Err(invalid(format!("prefetch entry {i}: inode {p} is listed twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
