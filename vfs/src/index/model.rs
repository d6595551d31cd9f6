//! In-memory model of a lazy image index.
//!
//! Inodes are stored in a flat vector; an inode's number on the mounted filesystem is its position
//! plus one ([`Index::fuse_ino`]), so numbers are stable for a given index. Directory entries name
//! inodes, so a hardlink is simply two entries naming the same file inode. Directories are never
//! hardlinked: every directory except the root has exactly one parent entry (the codec enforces it).

use crate::digest::Digest;

/// Symlinks followed while resolving one path (the kernel's limit).
pub const MAX_SYMLINKS: usize = 40;

/// Position of the root directory in [`Index::inodes`].
pub const ROOT: u32 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Uncompressed size of every chunk but a file's last one.
    pub chunk_size: u32,
    /// The registry repository that holds the data blobs, e.g. `127.0.0.1:5000/library/python`.
    /// Readers may override it (mirrors, a copied image); the blobs are found by digest.
    pub source: String,
    /// Data blobs that chunks point into.
    pub blobs: Vec<BlobRef>,
    /// `inodes[0]` is the root directory.
    pub inodes: Vec<Inode>,
    /// Regular-file inodes to fetch first after mounting, in order.
    pub prefetch: Vec<u32>,
    /// Derived on load: parent directory of every directory inode (root is its own parent), and the
    /// link count of every inode. Not encoded.
    pub(crate) parents: Vec<u32>,
    pub(crate) nlinks: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    /// Compressed size of the blob in bytes.
    pub size: u64,
}

/// A piece of a regular file: `len` bytes of content, stored zstd-compressed at
/// `blobs[blob]`[offset .. offset + compressed_len]. `digest` is the sha256 of the UNCOMPRESSED bytes:
/// it names the chunk in the cache and is checked on every fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub blob: u32,
    pub offset: u64,
    pub compressed_len: u32,
    pub len: u32,
    pub digest: Digest,
}

impl Chunk {
    /// The blob offset just past the chunk's compressed bytes (saturating: the index is untrusted).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.compressed_len as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`); the type is in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name; names are unique.
    pub xattrs: Vec<Xattr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Entries sorted by name bytes; names are unique, non-empty, at most 255 bytes, and contain no
    /// `/` or NUL and are not `.` or `..`.
    Dir {
        entries: Vec<DirEntry>,
    },
    /// `chunks` cover `size` bytes in order; their `len`s sum to `size`.
    File {
        size: u64,
        chunks: Vec<Chunk>,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u32,
}

impl Inode {
    /// The full `st_mode`: file type bits | permission bits.
    pub fn st_mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir { .. } => libc::S_IFDIR,
            Kind::File { .. } => libc::S_IFREG,
            Kind::Symlink { .. } => libc::S_IFLNK,
            Kind::CharDevice { .. } => libc::S_IFCHR,
            Kind::BlockDevice { .. } => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        };
        ty | (self.mode & 0o7777)
    }

    /// `st_size` as stat(2) reports it: file length, symlink target length, 0 otherwise.
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File { size, .. } => *size,
            Kind::Symlink { target } => target.len() as u64,
            Kind::Dir { entries } => entries.len() as u64,
            _ => 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

impl Index {
    /// Builds an index from its parts and derives parents and link counts. Callers that take input
    /// from outside must go through [`crate::index::codec`], which validates the tree first.
    pub fn new(chunk_size: u32, source: String, blobs: Vec<BlobRef>, inodes: Vec<Inode>, prefetch: Vec<u32>) -> Index {
        let mut index = Index { chunk_size, source, blobs, inodes, prefetch, parents: Vec::new(), nlinks: Vec::new() };
        index.derive();
        index
    }

    pub(crate) fn derive(&mut self) {
        let n = self.inodes.len();
        self.parents = (0..n as u32).collect();
        self.nlinks = vec![0; n];
        if n > 0 {
            self.nlinks[ROOT as usize] = 2;
        }
        for (dir, inode) in self.inodes.iter().enumerate() {
            if let Kind::Dir { entries } = &inode.kind {
                for e in entries {
                    let child = e.ino as usize;
                    if child >= n {
                        continue;
                    }
                    if self.inodes[child].is_dir() {
                        self.parents[child] = dir as u32;
                        // "." in the child and the entry in the parent, plus ".." of the child in the parent.
                        self.nlinks[child] += 2;
                        self.nlinks[dir] += 1;
                    } else {
                        self.nlinks[child] += 1;
                    }
                }
            }
        }
    }

    pub fn inode(&self, ino: u32) -> Option<&Inode> {
        self.inodes.get(ino as usize)
    }

    /// Inode number on the mounted filesystem (FUSE reserves 0; the root is 1).
    pub fn fuse_ino(ino: u32) -> u64 {
        ino as u64 + 1
    }

    /// Inverse of [`Index::fuse_ino`]; `None` for numbers outside the index.
    pub fn from_fuse_ino(&self, fuse_ino: u64) -> Option<u32> {
        let i = fuse_ino.checked_sub(1)?;
        (i < self.inodes.len() as u64).then_some(i as u32)
    }

    /// Parent directory of a directory inode (the root is its own parent).
    pub fn parent(&self, dir: u32) -> u32 {
        self.parents.get(dir as usize).copied().unwrap_or(ROOT)
    }

    pub fn nlink(&self, ino: u32) -> u32 {
        self.nlinks.get(ino as usize).copied().unwrap_or(1).max(1)
    }

    /// Looks a name up in a directory (binary search: entries are sorted).
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.inode(dir)?.kind {
            Kind::Dir { entries } => {
                entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| entries[i].ino)
            }
            _ => None,
        }
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<u32> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .try_fold(ROOT, |dir, name| self.lookup(dir, name))
    }

    /// Resolves an absolute path as the kernel would inside the image: `..` and symlinks
    /// (relative to their directory, absolute ones from the root) are followed, at most
    /// [`MAX_SYMLINKS`] of them. None when a component is missing, a non-directory has a
    /// component after it, or the links run out.
    pub fn resolve_following(&self, path: &[u8]) -> Option<u32> {
        if !path.starts_with(b"/") {
            return None;
        }
        let mut pending: Vec<&[u8]> = path.split(|&b| b == b'/').rev().collect();
        // `dir` is where the next component is looked up; `at` is what the path names so far
        // (differs from `dir` only once a non-directory was reached).
        let (mut dir, mut at, mut links) = (ROOT, ROOT, 0);
        while let Some(name) = pending.pop() {
            if at != dir {
                return None;
            }
            if name.is_empty() || name == b"." {
                continue;
            }
            if name == b".." {
                dir = self.parent(dir);
                at = dir;
                continue;
            }
            let child = self.lookup(dir, name)?;
            match &self.inode(child)?.kind {
                Kind::Symlink { target } => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    if target.starts_with(b"/") {
                        dir = ROOT;
                    }
                    pending.extend(target.split(|&b| b == b'/').rev());
                    at = dir;
                }
                Kind::Dir { .. } => (dir, at) = (child, child),
                _ => at = child,
            }
        }
        Some(at)
    }

    /// Sum of all regular file sizes, each hardlinked file counted once: the bytes a full pull unpacks.
    pub fn image_bytes(&self) -> u64 {
        self.inodes.iter().map(|i| if let Kind::File { size, .. } = i.kind { size } else { 0 }).sum()
    }

    /// Every path in the filesystem with its inode (root is `/`); a hardlinked file appears once per path.
    pub fn walk(&self) -> Vec<(Vec<u8>, u32)> {
        let mut out = vec![(b"/".to_vec(), ROOT)];
        let mut stack = vec![(Vec::new(), ROOT)];
        while let Some((prefix, dir)) = stack.pop() {
            if let Some(Inode { kind: Kind::Dir { entries }, .. }) = self.inode(dir) {
                for e in entries.iter().rev() {
                    let mut path = prefix.clone();
                    path.push(b'/');
                    path.extend_from_slice(&e.name);
                    if self.inode(e.ino).is_some_and(Inode::is_dir) {
                        stack.push((path.clone(), e.ino));
                    }
                    out.push((path, e.ino));
                }
            }
        }
        out
    }
}
