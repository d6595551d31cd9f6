//! Snapshots of a directory tree (every path's type, mode, owner, size, mtime, content hash,
//! symlink target, device number, xattrs, inode) and a field-by-field comparison of two
//! snapshots, so a fidelity test can say exactly which path differs and how.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// What one path looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// One of `d f l c b p s`.
    pub kind: char,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    /// Hex sha256 of a regular file's contents.
    pub sha256: Option<String>,
    pub link_target: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub ino: u64,
}

/// Relative path ("" for the root) to metadata.
pub type Snapshot = BTreeMap<String, Meta>;

/// Walks `root` without following symlinks and records every path. Reads every regular file.
pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, path: &Path, out: &mut Snapshot) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("lstat {}", path.display()))?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
    let sha256 = if kind == 'f' { Some(hash_file(path)?) } else { None };
    let link_target = if kind == 'l' { Some(std::fs::read_link(path)?.to_string_lossy().into_owned()) } else { None };
    out.insert(
        rel,
        Meta {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            nlink: meta.nlink(),
            rdev: meta.rdev(),
            sha256,
            link_target,
            xattrs: xattrs(path)?,
            ino: meta.ino(),
        },
    );
    if kind == 'd' {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("readdir {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("readdir {}", path.display()))?;
        children.sort();
        for child in children {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

/// Hex sha256 of a file's contents.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// All xattrs of `path` (not following symlinks).
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: c_path is NUL-terminated; names is a valid writable buffer of the given length.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(BTreeMap::new());
        }
        return Err(err).with_context(|| format!("llistxattr {}", path.display()));
    }
    let mut out = BTreeMap::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let c_name = CString::new(name)?;
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated; value is a valid writable buffer of its length.
        let len = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            let err = std::io::Error::last_os_error();
            return Err(err).with_context(|| format!("lgetxattr {} {}", path.display(), String::from_utf8_lossy(name)));
        }
        value.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    Ok(out)
}

/// For every non-directory path that shares its inode with another path, the sorted group of
/// paths sharing it.
pub fn hardlink_groups(snap: &Snapshot) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (path, meta) in snap {
        if meta.kind != 'd' {
            by_ino.entry(meta.ino).or_default().insert(path.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_ino.into_values().filter(|g| g.len() > 1) {
        for path in &group {
            out.insert(path.clone(), group.clone());
        }
    }
    out
}

/// Differences between `expected` and `actual`, one line per path and field.
/// `ignore(path, field)` drops known, documented differences (field names as in [`Meta`], plus
/// `hardlinks`).
pub fn compare(expected: &Snapshot, actual: &Snapshot, ignore: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
    let mut diffs = Vec::new();
    for path in expected.keys().filter(|p| !actual.contains_key(*p)) {
        diffs.push(format!("{path:?}: missing from the lazy mount"));
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diffs.push(format!("{path:?}: in the lazy mount but not in the reference unpack"));
    }
    for (path, e) in expected {
        let Some(a) = actual.get(path) else { continue };
        let mut check = |field: &str, want: String, got: String| {
            if want != got && !ignore(path, field) {
                diffs.push(format!("{path:?}: {field}: want {want}, got {got}"));
            }
        };
        check("kind", e.kind.to_string(), a.kind.to_string());
        if e.kind != a.kind {
            continue;
        }
        check("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
        check("uid", e.uid.to_string(), a.uid.to_string());
        check("gid", e.gid.to_string(), a.gid.to_string());
        if e.kind != 'd' {
            check("size", e.size.to_string(), a.size.to_string());
            check("nlink", e.nlink.to_string(), a.nlink.to_string());
        }
        check("mtime", format!("{}.{:09}", e.mtime.0, e.mtime.1), format!("{}.{:09}", a.mtime.0, a.mtime.1));
        if matches!(e.kind, 'c' | 'b') {
            check("rdev", format!("{:#x}", e.rdev), format!("{:#x}", a.rdev));
        }
        check("sha256", format!("{:?}", e.sha256), format!("{:?}", a.sha256));
        check("link_target", format!("{:?}", e.link_target), format!("{:?}", a.link_target));
        check("xattrs", format!("{:?}", e.xattrs), format!("{:?}", a.xattrs));
    }
    let (eg, ag) = (hardlink_groups(expected), hardlink_groups(actual));
    for path in expected.keys().filter(|p| actual.contains_key(*p)) {
        let (want, got) = (eg.get(path), ag.get(path));
        if want != got && !ignore(path, "hardlinks") {
            diffs.push(format!("{path:?}: hardlinks (same inode): want {want:?}, got {got:?}"));
        }
    }
    diffs
}
