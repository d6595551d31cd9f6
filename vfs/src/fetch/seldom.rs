//! Files a program start seldom reads, which speculative spans leave out.
//!
//! A span fetches the chunks around a miss because the files next to a file in the blob are often
//! read next. Some files sit there that a start almost never opens: a package's documentation and
//! test suite, C headers and static libraries, and the source of every Python module whose compiled
//! form sits beside it in `__pycache__` (the interpreter reads the `.pyc`). In the python image of
//! the cold-start benchmark they are 43 of its 116 MB. Skipping them makes a span carry what a
//! start reads; a read of one of them is still served, by its own miss.

use std::collections::HashSet;

use crate::index::{DirEntry, Index, Kind, ROOT};

/// Where a chunk sits: (blob, offset).
pub(super) type Place = (u32, u64);

/// Directories whose whole tree is seldom read, by absolute path.
const SELDOM_TREES: [&str; 4] = ["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale"];

/// Directory names whose tree is seldom read wherever they are (test suites).
const SELDOM_DIR_NAMES: [&[u8]; 2] = [b"tests", b"test"];

/// File name extensions seldom read by a start: sources and headers, static libraries, type stubs,
/// documents.
const SELDOM_EXTENSIONS: [&[u8]; 12] =
    [b"h", b"hh", b"hpp", b"c", b"cc", b"cpp", b"a", b"pyi", b"md", b"rst", b"txt", b"html"];

/// Places of the chunks that only seldom-read files use: a chunk another file shares is kept.
pub(super) fn seldom_read_chunks(index: &Index) -> HashSet<Place> {
    let mut seldom = HashSet::new();
    let mut read = HashSet::new();
    let mut visited = vec![false; index.inodes.len()];
    let mut dirs: Vec<(u32, String, bool)> = vec![(ROOT, String::new(), false)];
    while let Some((dir, path, seldom_tree)) = dirs.pop() {
        // The codec guarantees a tree; a visited mark keeps a malformed index from looping here.
        if std::mem::replace(&mut visited[dir as usize], true) {
            continue;
        }
        let Some(Kind::Dir { entries }) = index.inodes.get(dir as usize).map(|i| &i.kind) else { continue };
        let compiled = compiled_modules(index, entries);
        for entry in entries {
            match index.inodes.get(entry.ino as usize).map(|i| &i.kind) {
                Some(Kind::Dir { .. }) => {
                    let sub = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
                    let tree = seldom_tree
                        || SELDOM_DIR_NAMES.contains(&entry.name.as_slice())
                        || SELDOM_TREES.contains(&sub.as_str());
                    dirs.push((entry.ino, sub, tree));
                }
                Some(Kind::File { chunks, .. }) => {
                    let into = if seldom_tree || seldom_file(&entry.name, &compiled) { &mut seldom } else { &mut read };
                    into.extend(chunks.iter().map(|c| (c.blob, c.offset)));
                }
                _ => {}
            }
        }
    }
    seldom.retain(|p| !read.contains(p));
    seldom
}

/// Module names (`name` of `__pycache__/name.<tag>.pyc`) compiled beside a directory's sources.
fn compiled_modules<'a>(index: &'a Index, entries: &[DirEntry]) -> HashSet<&'a [u8]> {
    let cache = entries.iter().find(|e| e.name == b"__pycache__");
    let Some(Kind::Dir { entries }) = cache.and_then(|e| index.inodes.get(e.ino as usize)).map(|i| &i.kind) else {
        return HashSet::new();
    };
    entries.iter().filter(|e| e.name.ends_with(b".pyc")).filter_map(|e| e.name.split(|&b| b == b'.').next()).collect()
}

fn seldom_file(name: &[u8], compiled: &HashSet<&[u8]>) -> bool {
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else { return false };
    let (stem, ext) = (&name[..dot], &name[dot + 1..]);
    SELDOM_EXTENSIONS.contains(&ext) || (ext == b"py" && compiled.contains(stem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::index::{BlobRef, Chunk, Inode};
    use std::collections::BTreeMap;

    /// An index of `files` (absolute paths), one chunk each; files with equal contents share one.
    fn index_of(files: &[(&str, &[u8])]) -> Index {
        let dir = |entries: &BTreeMap<Vec<u8>, u32>| Kind::Dir {
            entries: entries.iter().map(|(name, &ino)| DirEntry { name: name.clone(), ino }).collect(),
        };
        let mut kinds: Vec<Option<Kind>> = vec![None];
        let mut children: Vec<BTreeMap<Vec<u8>, u32>> = vec![BTreeMap::new()];
        let mut places: BTreeMap<&[u8], u64> = BTreeMap::new();
        for (path, data) in files {
            let names: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let mut at = 0usize;
            for name in &names[..names.len() - 1] {
                let next = kinds.len() as u32;
                let ino = *children[at].entry(name.as_bytes().to_vec()).or_insert(next);
                if ino == next {
                    kinds.push(None);
                    children.push(BTreeMap::new());
                }
                at = ino as usize;
            }
            let offset = places.len() as u64 * 100;
            let offset = *places.entry(data).or_insert(offset);
            let chunk =
                Chunk { blob: 0, offset, compressed_len: 100, len: data.len() as u32, digest: Digest::of(data) };
            children[at].insert(names[names.len() - 1].as_bytes().to_vec(), kinds.len() as u32);
            kinds.push(Some(Kind::File { size: data.len() as u64, chunks: vec![chunk] }));
            children.push(BTreeMap::new());
        }
        let inodes = kinds
            .into_iter()
            .zip(&children)
            .map(|(kind, entries)| Inode {
                kind: kind.unwrap_or_else(|| dir(entries)),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: Vec::new(),
            })
            .collect();
        let blobs = vec![BlobRef { digest: Digest::of(b"blob"), size: 1 << 20 }];
        Index::new(1 << 20, "127.0.0.1:5000/test".to_string(), blobs, inodes, Vec::new())
    }

    #[test]
    fn documentation_tests_headers_and_compiled_python_sources_are_seldom_read_and_shared_chunks_are_not() {
        let index = index_of(&[
            ("/usr/bin/python3", b"binary".as_slice()),
            ("/usr/lib/pkg/__init__.py", b"init source"),
            ("/usr/lib/pkg/__pycache__/__init__.cpython-311.pyc", b"init compiled"),
            ("/usr/lib/pkg/only_source.py", b"no pyc beside me"),
            ("/usr/lib/pkg/tests/test_x.cpython-311.pyc", b"a test"),
            ("/usr/lib/pkg/core.so", b"library"),
            ("/usr/include/pkg.h", b"header"),
            ("/usr/share/doc/pkg/changelog.gz", b"changes"),
            ("/usr/share/doc/pkg/copy-of-library", b"library"),
            ("/etc/readme.txt", b"text"),
        ]);
        let seldom = seldom_read_chunks(&index);
        let place_of = |path: &str| {
            let ino = index.resolve(path.as_bytes()).unwrap_or_else(|| panic!("{path} in the index"));
            match &index.inodes[ino as usize].kind {
                Kind::File { chunks, .. } => (chunks[0].blob, chunks[0].offset),
                other => panic!("{path} is {other:?}"),
            }
        };
        for path in [
            "/usr/lib/pkg/__init__.py",
            "/usr/lib/pkg/tests/test_x.cpython-311.pyc",
            "/usr/include/pkg.h",
            "/usr/share/doc/pkg/changelog.gz",
            "/etc/readme.txt",
        ] {
            assert!(seldom.contains(&place_of(path)), "{path} should be left out of spans");
        }
        for path in [
            "/usr/bin/python3",
            "/usr/lib/pkg/__pycache__/__init__.cpython-311.pyc",
            "/usr/lib/pkg/only_source.py",
            "/usr/lib/pkg/core.so",
            // Same bytes as core.so: one chunk, which a span must still carry.
            "/usr/share/doc/pkg/copy-of-library",
        ] {
            assert!(!seldom.contains(&place_of(path)), "{path} should stay in spans");
        }
    }
}
