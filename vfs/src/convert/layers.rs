//! Reading layer tars and merging them into one tree, the way a container runtime unpacks them:
//! `.wh.NAME` whiteouts and `.wh..wh..opq` opaque directories hide lower layers, hardlinks (also
//! to files of lower layers) stay one inode, PAX xattrs, device numbers and nanosecond mtimes are
//! kept. Only metadata is held in memory: a regular file records which layer and which tar entry
//! holds its final content; the content itself goes to [`super::chunker`] during the same read.
//!
//! Layers are untrusted input. Nothing here creates files from tar entries (the tree lives in
//! memory; the chunker's temp files are named after digests), so no entry can write outside the
//! conversion's temp dir. Paths are resolved the way containerd's unpack resolves them: `..` and
//! absolute paths are clamped at the image root, and symlinks in an entry's parent path (and in a
//! hardlink target's) are followed inside the image. What would make the converter read or hold
//! without bound is refused with an error naming the layer and the entry: see [`Limits`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::ConvertError;
use crate::digest::Digest;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// A layer blob on local disk (an OCI layout's blob, or a download in the conversion's temp dir).
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Default for [`Limits::max_layer_size`]: 256 GiB of uncompressed tar stream per layer. Real
/// layers stay far below it; a decompression bomb (a few MB inflating to terabytes) hits it.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 256 << 30;
/// Bytes of extension headers (PAX records, GNU long names and link names) before one entry: the
/// tar reader holds them in memory, so a huge one is refused before it is read. Real ones hold a
/// long path or a few xattrs (an xattr value is at most 64 KiB).
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;
/// Longest entry path or hardlink target (the kernel's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Most tar entries in one layer (an index holds at most this many inodes anyway).
pub const MAX_ENTRIES: u64 = crate::index::codec::MAX_INODES;
/// Most bytes of names, link targets and xattrs one layer may make the converter hold.
pub const MAX_LAYER_METADATA: u64 = 1 << 30;

/// What one layer may make the converter read and hold. Only the uncompressed size is a setting
/// (`lazyctl convert --max-layer-size`); the rest are fixed by what the kernel and the index accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of one layer's tar stream.
    pub max_layer_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_layer_size: DEFAULT_MAX_LAYER_SIZE }
    }
}

/// Counts the bytes the tar reader takes from the (decompressed) stream and fails its reads past
/// the layer's size limit, or, while a header is being read, past [`MAX_EXTENSION_BYTES`]. Shared
/// with [`parse_tar`] through an `Rc`, which marks where headers start and end.
struct Meter {
    read: Cell<u64>,
    max_total: u64,
    /// While a header (and its extension headers) is read: the stream position it may not pass.
    header_end: Cell<Option<u64>>,
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let m = &self.meter;
        let read = m.read.get();
        let end = m.header_end.get().map_or(m.max_total, |h| h.min(m.max_total));
        let allowed = end.saturating_sub(read);
        if allowed == 0 {
            // At the limit: only the end of the stream is still fine.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            return Err(if read >= m.max_total {
                io::Error::other(format!(
                    "the uncompressed layer is larger than the limit of {} bytes (a decompression bomb?); \
                     if the image is genuine, raise the limit with --max-layer-size",
                    m.max_total
                ))
            } else {
                io::Error::other(format!(
                    "extension headers (PAX records, GNU long names) of more than {MAX_EXTENSION_BYTES} bytes"
                ))
            });
        }
        let want = buf.len().min(allowed.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        m.read.set(read + n as u64);
        Ok(n)
    }
}

fn io_err(path: &Path, what: &str, e: io::Error) -> ConvertError {
    ConvertError::Io { path: path.to_path_buf(), what: what.to_string(), error: e }
}

/// Decides the compression from the media type AND the first bytes. Docker's media types say gzip
/// for everything, some tools write uncompressed blobs under a `+gzip` type: the magic decides, but
/// a media type that promises compression the data does not have is an error.
pub(crate) fn detect(media_type: &str, head: &[u8]) -> Result<Compression, String> {
    let by_magic = if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let by_type = if media_type.ends_with("gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with("zstd") {
        Some(Compression::Zstd)
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar.diff") {
        Some(Compression::None)
    } else {
        None
    };
    match (by_type, by_magic) {
        (Some(t), m) if t == m => Ok(m),
        (Some(Compression::None), m) => Ok(m),
        (Some(t), m) if m != Compression::None => {
            Err(format!("media type {media_type} says {t:?}, but the data starts with {m:?} magic bytes"))
        }
        (Some(t), _) => Err(format!("media type {media_type} says {t:?}, but the data has no {t:?} magic bytes")),
        (_, m) => Ok(m),
    }
}

/// Opens a layer blob as an uncompressed tar stream.
pub(crate) fn open_layer(layer: &LayerBlob) -> Result<Box<dyn Read + Send>, ConvertError> {
    let file = File::open(&layer.path).map_err(|e| io_err(&layer.path, "open layer", e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = {
        use std::io::BufRead as _;
        reader.fill_buf().map_err(|e| io_err(&layer.path, "read layer", e))?.to_vec()
    };
    let compression =
        detect(&layer.media_type, &head).map_err(|reason| ConvertError::Layer { layer: layer.digest, reason })?;
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| io_err(&layer.path, "start zstd decoder", e))?,
        ),
    })
}

pub(crate) type NodeId = usize;
pub(crate) const ROOT_NODE: NodeId = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// A directory the layers never described (a parent without its own tar header).
    fn implicit_dir() -> Meta {
        Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, xattrs: BTreeMap::new() }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// Content is entry number `ordinal` of layer `layer`.
    File {
        size: u64,
        layer: usize,
        ordinal: u64,
    },
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub meta: Meta,
    pub kind: NodeKind,
}

/// The merged tree. Nodes are never freed: a replaced or whited-out node just becomes unreachable.
#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
}

/// A layer's tar entries (metadata only), read by [`scan_layer`] and applied by [`Tree::apply_layer`].
pub(crate) struct ParsedLayer(Vec<Parsed>);

/// Called with each regular file's tar ordinal, size and content stream while a layer is scanned.
pub(crate) type OnFile<'a> = dyn FnMut(u64, u64, &mut dyn Read) -> Result<(), String> + 'a;

/// Reads a layer's metadata in one pass over its tar stream, handing every regular file's content
/// to `on_file` on the way. Independent of the tree, so layers can be scanned in parallel.
pub(crate) fn scan_layer(
    layer: &LayerBlob,
    limits: Limits,
    on_file: &mut OnFile<'_>,
) -> Result<ParsedLayer, ConvertError> {
    let reader = open_layer(layer)?;
    let warn = |msg: String| log::warn!("layer {}: {msg}", layer.digest);
    let parsed = parse_tar(reader, limits, on_file, &warn)
        .map_err(|reason| ConvertError::Layer { layer: layer.digest, reason })?;
    Ok(ParsedLayer(parsed))
}

/// One tar entry's metadata, parsed before the layer is applied (whiteouts first, then entries).
struct Parsed {
    ordinal: u64,
    components: Vec<Vec<u8>>,
    meta: Meta,
    what: What,
}

enum What {
    Dir,
    File(u64),
    Hardlink(Vec<Vec<u8>>),
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Whiteout(Vec<u8>),
    Opaque,
}

/// Splits a tar path into components; `None` if it tries to leave the root.
pub(crate) fn components(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (comps, clamped) = clamped_components(path);
    (!clamped).then_some(comps)
}

/// Splits a tar path into components the way containerd's unpack resolves it: `.` and empty
/// components dropped, `..` removes the previous component and stays at the root when there is
/// none (so does a leading `/`). The flag says whether a `..` went above the root.
pub(crate) fn clamped_components(path: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut clamped = false;
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => clamped |= out.pop().is_none(),
            c => out.push(c.to_vec()),
        }
    }
    (out, clamped)
}

/// Decodes `%XX` escapes (libarchive's xattr names); anything malformed is kept as is.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&s[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The latest time containerd's unpack keeps: Go's time.Unix(0, 1<<63 - 1).
const MAX_MTIME: (i64, u32) = (9_223_372_036, 854_775_807);

/// An entry's mtime as containerd's unpack sets it: the PAX record if there is one, else the
/// header field (`None`: a negative GNU base-256 value); anything before the epoch or after
/// [`MAX_MTIME`] becomes the epoch.
fn parse_mtime(pax: Option<&[u8]>, header_mtime: Option<u64>) -> (i64, u32) {
    let bound = |t: (i64, u32)| if t.0 < 0 || t > MAX_MTIME { (0, 0) } else { t };
    if let Some(v) = pax.and_then(|v| std::str::from_utf8(v).ok()) {
        let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
        if let Ok(secs) = secs.parse::<i64>() {
            if secs < 0 || v.starts_with('-') {
                return (0, 0);
            }
            let digits: String = frac.chars().take(9).collect();
            let nsec = if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                0
            } else {
                format!("{digits:0<9}").parse::<u32>().unwrap_or(0)
            };
            return bound((secs, nsec));
        }
    }
    match header_mtime {
        Some(t) => bound((t.min(i64::MAX as u64) as i64, 0)),
        None => (0, 0),
    }
}

/// The header's mtime field; `None` when it holds a negative GNU base-256 number (leading byte
/// 0xff), which the tar crate would return as a huge unsigned value.
fn header_mtime(header: &tar::Header) -> std::io::Result<Option<u64>> {
    if header.as_old().mtime[0] == 0xff {
        return Ok(None);
    }
    header.mtime().map(Some)
}

impl Tree {
    pub fn new() -> Tree {
        Tree { nodes: vec![Node { meta: Meta::implicit_dir(), kind: NodeKind::Dir(BTreeMap::new()) }] }
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn entries_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir(e) => e,
            _ => unreachable!("entries_mut on a non-directory"),
        }
    }

    /// Looks up an existing path without creating anything (whiteouts and hardlink targets).
    pub fn lookup(&self, comps: &[Vec<u8>]) -> Option<NodeId> {
        let mut cur = ROOT_NODE;
        for c in comps {
            match &self.nodes[cur].kind {
                NodeKind::Dir(entries) => cur = *entries.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// Walks to the directory `comps` names, as containerd's unpack does: symlinks on the way are
    /// followed inside the image (absolute targets from the image root, `..` stopping at the
    /// root). With `create`, missing directories are made and non-directories in the way replaced
    /// (as extracting the tar over the lower layers would); without it, `None` if there is none.
    /// `steps` is the layer's budget of components walked: symlinks that expand into long paths
    /// must not make a layer cost minutes per entry.
    fn resolve_dir(&mut self, comps: &[Vec<u8>], create: bool, steps: &mut u64) -> Result<Option<NodeId>, String> {
        /// Symlinks followed for one path before giving up (containerd's RootPath allows 255).
        const MAX_HOPS: u32 = 255;
        let mut hops = 0;
        let mut stack = vec![ROOT_NODE];
        let mut rest: std::collections::VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        while let Some(c) = rest.pop_front() {
            if *steps == 0 {
                return Err(
                    "resolving the layer's paths takes too many steps (symlinks that expand into long paths?)".into()
                );
            }
            *steps -= 1;
            let cur = *stack.last().expect("the root is never popped");
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let existing = match &self.nodes[cur].kind {
                NodeKind::Dir(entries) => entries.get(&c).copied(),
                _ => unreachable!("the walk stays on directories"),
            };
            match existing.map(|id| (id, &self.nodes[id].kind)) {
                Some((id, NodeKind::Dir(_))) => stack.push(id),
                Some((_, NodeKind::Symlink(target))) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(format!("more than {MAX_HOPS} symlinks on the way (a symlink loop?)"));
                    }
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        rest.push_front(t.to_vec());
                    }
                }
                _ if !create => return Ok(None),
                _ => {
                    let id = self.push(Node { meta: Meta::implicit_dir(), kind: NodeKind::Dir(BTreeMap::new()) });
                    self.entries_mut(cur).insert(c, id);
                    stack.push(id);
                }
            }
        }
        Ok(stack.last().copied())
    }

    /// Applies one layer: applies its whiteouts to the lower layers, then its entries in tar
    /// order. Returns the number of tar entries (ordinals used).
    pub fn apply_layer(
        &mut self,
        layer_no: usize,
        layer: &LayerBlob,
        parsed: ParsedLayer,
    ) -> Result<u64, ConvertError> {
        let parsed = parsed.0;
        let count = parsed.len() as u64;
        let mut steps = steps_budget(count);
        let err = |p: &Parsed, reason: String| ConvertError::Layer {
            layer: layer.digest,
            reason: format!(
                "tar entry {} ({}): {reason}",
                p.ordinal,
                String::from_utf8_lossy(&p.components.join(&b'/'))
            ),
        };
        for p in &parsed {
            let Some((_, parent)) = p.components.split_last() else { continue };
            let target = match &p.what {
                What::Whiteout(target) => Some(target),
                What::Opaque => None,
                _ => continue,
            };
            let Some(dir) = self.resolve_dir(parent, false, &mut steps).map_err(|e| err(p, e))? else { continue };
            let entries = self.entries_mut(dir);
            match target {
                Some(target) => drop(entries.remove(target)),
                None => entries.clear(),
            }
        }
        for p in &parsed {
            if matches!(p.what, What::Whiteout(_) | What::Opaque) {
                continue;
            }
            let Some((name, parent)) = p.components.split_last() else {
                // The root itself (`./`): keep its metadata, children stay.
                if matches!(p.what, What::Dir) {
                    self.nodes[ROOT_NODE].meta = p.meta.clone();
                }
                continue;
            };
            let dir = self.resolve_dir(parent, true, &mut steps).map_err(|e| err(p, e))?.expect("created");
            let kind = match &p.what {
                What::Dir => {
                    let existing = self.entries_mut(dir).get(name).copied();
                    match existing {
                        Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => {
                            self.nodes[id].meta = p.meta.clone();
                        }
                        _ => {
                            let id = self.push(Node { meta: p.meta.clone(), kind: NodeKind::Dir(BTreeMap::new()) });
                            self.entries_mut(dir).insert(name.clone(), id);
                        }
                    }
                    continue;
                }
                What::Hardlink(target) => {
                    // Like link(2): the target's parent path is resolved, its last component not.
                    let found = match target.split_last() {
                        None => None,
                        Some((last, tparent)) => self
                            .resolve_dir(tparent, false, &mut steps)
                            .map_err(|e| err(p, format!("hardlink target {}: {e}", show(target))))?
                            .and_then(|d| match &self.nodes[d].kind {
                                NodeKind::Dir(entries) => entries.get(last).copied(),
                                _ => None,
                            }),
                    };
                    match found.map(|t| (t, &self.nodes[t].kind)) {
                        Some((_, NodeKind::Dir(_))) => {
                            return Err(err(
                                p,
                                format!("hardlink to {}, a directory: directories cannot be hardlinked", show(target)),
                            ))
                        }
                        Some((t, _)) => {
                            self.entries_mut(dir).insert(name.clone(), t);
                        }
                        None => {
                            return Err(err(
                                p,
                                format!(
                                    "hardlink to {}: no such file in this layer (before the link) or a lower one",
                                    show(target)
                                ),
                            ))
                        }
                    }
                    continue;
                }
                What::File(size) => NodeKind::File { size: *size, layer: layer_no, ordinal: p.ordinal },
                What::Symlink(t) => NodeKind::Symlink(t.clone()),
                What::Char(a, b) => NodeKind::Char(*a, *b),
                What::Block(a, b) => NodeKind::Block(*a, *b),
                What::Fifo => NodeKind::Fifo,
                What::Whiteout(_) | What::Opaque => unreachable!(),
            };
            let id = self.push(Node { meta: p.meta.clone(), kind });
            self.entries_mut(dir).insert(name.clone(), id);
        }
        Ok(count)
    }
}

/// Components a layer of `entries` entries may walk while resolving its paths: deep trees and
/// the odd symlinked parent fit easily; symlinks that expand into thousands of components each do not.
fn steps_budget(entries: u64) -> u64 {
    (1 << 20) + entries * 256
}

fn show(comps: &[Vec<u8>]) -> String {
    format!("/{}", String::from_utf8_lossy(&comps.join(&b'/')))
}

/// Reads a layer's tar stream: every entry's metadata, every regular file's content to `on_file`.
/// `warn` gets what is accepted but odd (names clamped at the root, whiteouts of nothing).
fn parse_tar(
    reader: Box<dyn Read + Send>,
    limits: Limits,
    on_file: &mut OnFile<'_>,
    warn: &dyn Fn(String),
) -> Result<Vec<Parsed>, String> {
    let meter = Rc::new(Meter { read: Cell::new(0), max_total: limits.max_layer_size, header_end: Cell::new(None) });
    let mut archive = tar::Archive::new(Metered { inner: reader, meter: meter.clone() });
    let mut out = Vec::new();
    let mut entries = archive.entries().map_err(|e| format!("not a tar stream: {e}"))?;
    let mut metadata = 0u64;
    for ordinal in 0u64.. {
        // The tar reader holds extension headers in memory: bound what it reads for one header.
        meter.header_end.set(Some(meter.read.get().saturating_add(MAX_EXTENSION_BYTES + 8 * 512)));
        let next = entries.next();
        meter.header_end.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|e| format!("tar entry {ordinal}: {e}"))?;
        if ordinal >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} tar entries in one layer"));
        }
        let parsed = parse_entry(ordinal, &mut entry, on_file, warn)?;
        // Whatever the entry's data holds (a symlink or directory with a size, content on_file
        // did not read) is skipped here, outside the header bound.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| format!("tar entry {ordinal}: skip data: {e}"))?;
        if let Some(p) = parsed {
            metadata += p.held_bytes();
            if metadata > MAX_LAYER_METADATA {
                return Err(format!(
                    "tar entry {ordinal}: the layer's names, link targets and xattrs exceed {MAX_LAYER_METADATA} bytes"
                ));
            }
            out.push(p);
        }
    }
    Ok(out)
}

impl Parsed {
    /// About how much memory this entry holds.
    fn held_bytes(&self) -> u64 {
        let names: usize = self.components.iter().map(|c| c.len() + 24).sum();
        let xattrs: usize = self.meta.xattrs.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
        let what = match &self.what {
            What::Hardlink(t) => t.iter().map(|c| c.len() + 24).sum(),
            What::Symlink(t) | What::Whiteout(t) => t.len(),
            _ => 0,
        };
        (std::mem::size_of::<Parsed>() + names + xattrs + what) as u64
    }
}

/// One entry's metadata; `None` for entries that add nothing to the tree (PAX global headers).
fn parse_entry<R: Read>(
    ordinal: u64,
    entry: &mut tar::Entry<'_, R>,
    on_file: &mut OnFile<'_>,
    warn: &dyn Fn(String),
) -> Result<Option<Parsed>, String> {
    use crate::index::codec::{check_name, MAX_NAME_LEN, MAX_SYMLINK_LEN, MAX_XATTRS_PER_INODE, MAX_XATTR_VALUE_LEN};
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let at = |what: &str, e: &dyn std::fmt::Display| format!("tar entry {ordinal} ({shown}): {what}: {e}");
    if raw_path.len() > MAX_PATH_LEN {
        return Err(format!("tar entry {ordinal}: path of {} bytes exceeds {MAX_PATH_LEN}", raw_path.len()));
    }
    let (comps, clamped) = clamped_components(&raw_path);
    if clamped || raw_path.starts_with(b"/") {
        warn(format!(
            "tar entry {ordinal} ({shown}): path leaves the image root; kept at {}, as containerd does",
            show(&comps)
        ));
    }
    if let Some(bad) = comps.iter().find(|c| check_name(c).is_err()) {
        let reason = check_name(bad).expect_err("just found");
        return Err(at("path", &format!("{reason} ({})", String::from_utf8_lossy(bad).escape_debug())));
    }
    let header = entry.header();
    let ty = header.entry_type();
    let mode = header.mode().map_err(|e| at("mode", &e))? & 0o7777;
    let mut uid = header.uid().map_err(|e| at("uid", &e))?;
    let mut gid = header.gid().map_err(|e| at("gid", &e))?;
    let header_mtime = header_mtime(header).map_err(|e| at("mtime", &e))?;
    let dev = if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
        let major = header.device_major().map_err(|e| at("device major", &e))?.unwrap_or(0);
        let minor = header.device_minor().map_err(|e| at("device minor", &e))?.unwrap_or(0);
        (major, minor)
    } else {
        (0, 0)
    };
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let size = entry.size();
    let mut xattrs = BTreeMap::new();
    let mut pax_mtime = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| at("PAX header", &e))? {
        for ext in exts {
            let ext = ext.map_err(|e| at("PAX record", &e))?;
            let key = ext.key_bytes();
            let xattr = if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                Some((name.to_vec(), ext.value_bytes().to_vec()))
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                // bsdtar: the name is URL-encoded, the value base64.
                use base64::Engine as _;
                let value = base64::engine::general_purpose::STANDARD
                    .decode(ext.value_bytes())
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(ext.value_bytes()))
                    .map_err(|e| at("PAX LIBARCHIVE.xattr value", &e))?;
                Some((percent_decode(name), value))
            } else {
                if key == b"mtime" {
                    pax_mtime = Some(ext.value_bytes().to_vec());
                } else if key == b"uid" || key == b"gid" {
                    let v = std::str::from_utf8(ext.value_bytes()).ok().and_then(|v| v.parse::<u64>().ok());
                    match (key, v) {
                        (b"uid", Some(v)) => uid = v,
                        (b"gid", Some(v)) => gid = v,
                        _ => return Err(at("PAX uid/gid", &"not a number")),
                    }
                }
                None
            };
            if let Some((name, value)) = xattr {
                // What setxattr(2) accepts, so also what the index holds.
                let shown_name = String::from_utf8_lossy(&name).escape_debug().to_string();
                if name.is_empty() || name.contains(&0) || name.len() > MAX_NAME_LEN {
                    return Err(at(
                        "xattr",
                        &format!("name {shown_name:?} is empty, holds NUL or exceeds {MAX_NAME_LEN} bytes"),
                    ));
                }
                if value.len() > MAX_XATTR_VALUE_LEN {
                    return Err(at(
                        "xattr",
                        &format!("{shown_name}: value of {} bytes exceeds {MAX_XATTR_VALUE_LEN}", value.len()),
                    ));
                }
                xattrs.insert(name, value);
                if xattrs.len() as u64 > MAX_XATTRS_PER_INODE {
                    return Err(at("xattrs", &format!("more than {MAX_XATTRS_PER_INODE}")));
                }
            }
        }
    }
    let (mtime, mtime_nsec) = parse_mtime(pax_mtime.as_deref(), header_mtime);
    let uid = u32::try_from(uid).map_err(|_| at("uid", &"does not fit in 32 bits"))?;
    let gid = u32::try_from(gid).map_err(|_| at("gid", &"does not fit in 32 bits"))?;
    let meta = Meta { mode, uid, gid, mtime, mtime_nsec, xattrs };
    let name = comps.last().map(Vec::as_slice).unwrap_or(b"");
    let what = if name == b".wh..wh..opq" {
        What::Opaque
    } else if let Some(target) = name.strip_prefix(b".wh.") {
        if check_name(target).is_err() {
            warn(format!("tar entry {ordinal} ({shown}): whiteout of no valid name; ignored"));
        }
        What::Whiteout(target.to_vec())
    } else {
        match ty {
            tar::EntryType::Directory => What::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => What::File(size),
            tar::EntryType::Link => {
                let target = link.filter(|l| !l.is_empty()).ok_or_else(|| at("hardlink", &"no link name"))?;
                if target.len() > MAX_PATH_LEN {
                    return Err(at("hardlink", &format!("target of {} bytes exceeds {MAX_PATH_LEN}", target.len())));
                }
                let (target_comps, clamped) = clamped_components(&target);
                if clamped {
                    warn(format!(
                        "tar entry {ordinal} ({shown}): hardlink target {} leaves the image root; kept at {}, as containerd does",
                        String::from_utf8_lossy(&target),
                        show(&target_comps)
                    ));
                }
                What::Hardlink(target_comps)
            }
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| at("symlink", &"no link name"))?;
                if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                    return Err(at(
                        "symlink",
                        &format!("target of {} bytes (empty, over {MAX_SYMLINK_LEN} or with NUL)", target.len()),
                    ));
                }
                What::Symlink(target)
            }
            tar::EntryType::Char => What::Char(dev.0, dev.1),
            tar::EntryType::Block => What::Block(dev.0, dev.1),
            tar::EntryType::Fifo => What::Fifo,
            tar::EntryType::XGlobalHeader => return Ok(None),
            other => return Err(at("entry type", &format!("{other:?} is not supported"))),
        }
    };
    if matches!(what, What::File(s) if s > crate::index::codec::MAX_FILE_SIZE) {
        return Err(at("size", &format!("{size} exceeds the 1 TiB limit")));
    }
    if let What::File(size) = what {
        on_file(ordinal, size, entry).map_err(|e| format!("tar entry {ordinal} ({shown}): {e}"))?;
    }
    Ok(Some(Parsed { ordinal, components: comps, meta, what }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_type_and_magic() {
        let gz = [0x1f, 0x8b, 8, 0];
        assert_eq!(detect("application/vnd.oci.image.layer.v1.tar+gzip", &gz), Ok(Compression::Gzip));
        assert_eq!(detect("application/vnd.docker.image.rootfs.diff.tar.gzip", &gz), Ok(Compression::Gzip));
        assert_eq!(detect("application/vnd.oci.image.layer.v1.tar", &gz), Ok(Compression::Gzip));
        assert_eq!(detect("application/vnd.oci.image.layer.v1.tar+zstd", ZSTD_MAGIC), Ok(Compression::Zstd));
        assert_eq!(detect("application/vnd.oci.image.layer.v1.tar", b"etc/"), Ok(Compression::None));
        assert!(detect("application/vnd.oci.image.layer.v1.tar+zstd", &gz).is_err());
        assert!(detect("application/vnd.oci.image.layer.v1.tar+gzip", b"etc/").is_err());
    }

    #[test]
    fn decodes_libarchive_xattr_names() {
        assert_eq!(percent_decode(b"user.a%3Db"), b"user.a=b");
        assert_eq!(percent_decode(b"user.%zz%4"), b"user.%zz%4");
        assert_eq!(percent_decode(b"security.capability"), b"security.capability");
    }

    #[test]
    fn parses_pax_mtimes() {
        assert_eq!(parse_mtime(Some(b"1700000000.5"), Some(1)), (1_700_000_000, 500_000_000));
        assert_eq!(parse_mtime(Some(b"1700000000.123456789123"), Some(1)), (1_700_000_000, 123_456_789));
        assert_eq!(parse_mtime(None, Some(42)), (42, 0));
    }

    #[test]
    fn times_outside_what_containerd_keeps_become_the_epoch() {
        assert_eq!(parse_mtime(Some(b"-1.25"), Some(1)), (0, 0));
        assert_eq!(parse_mtime(Some(b"-0.5"), Some(1)), (0, 0));
        assert_eq!(parse_mtime(None, None), (0, 0), "negative base-256 header field");
        assert_eq!(parse_mtime(None, Some(u64::MAX)), (0, 0));
        assert_eq!(parse_mtime(Some(b"9223372036.854775807"), None), MAX_MTIME);
        assert_eq!(parse_mtime(Some(b"9223372036.854775808"), None), (0, 0));
    }

    /// A GNU header whose mtime field is -1 in base-256 (what GNU tar writes for a 1969 file).
    #[test]
    fn reads_negative_base256_mtimes_as_the_epoch() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(1);
        h.as_old_mut().mtime = [0xff; 12];
        h.set_cksum();
        assert_eq!(h.mtime().unwrap(), u64::MAX, "the tar crate reads the field as unsigned");
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, "old", &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let parsed = parse_tar(
            Box::new(std::io::Cursor::new(tar)),
            Limits::default(),
            &mut |_, _, r| std::io::copy(r, &mut std::io::sink()).map(|_| ()).map_err(|e| e.to_string()),
            &|_| {},
        )
        .unwrap();
        assert_eq!((parsed[0].meta.mtime, parsed[0].meta.mtime_nsec), (0, 0));
    }

    fn header(ty: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_path(if ty == tar::EntryType::Regular { "f" } else { "././@LongLink" }).unwrap();
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn parse_stream(stream: impl Read + Send + 'static, limits: Limits) -> Result<Vec<Parsed>, String> {
        parse_tar(
            Box::new(stream),
            limits,
            &mut |_, _, r| std::io::copy(r, &mut std::io::sink()).map(|_| ()).map_err(|e| format!("read content: {e}")),
            &|_| {},
        )
    }

    /// An extension header claiming 8 GiB, followed by endless data: the tar reader would keep
    /// it all in memory; the meter stops it after MAX_EXTENSION_BYTES.
    #[test]
    fn endless_extension_headers_stop_after_the_bound() {
        for ty in [tar::EntryType::XHeader, tar::EntryType::GNULongName, tar::EntryType::GNULongLink] {
            let stream = std::io::Cursor::new(header(ty, 8 << 30)).chain(std::io::repeat(b'a'));
            let err = parse_stream(stream, Limits::default()).err().expect("refused");
            assert!(err.contains("tar entry 0") && err.contains("extension headers"), "{ty:?}: {err}");
        }
    }

    /// A file claiming 1 TiB of endless zeros stops at the layer limit, with the entry named.
    #[test]
    fn endless_content_stops_at_the_layer_limit() {
        let stream = std::io::Cursor::new(header(tar::EntryType::Regular, 1 << 40)).chain(std::io::repeat(0));
        let err = parse_stream(stream, Limits { max_layer_size: 16 << 20 }).err().expect("refused");
        assert!(err.contains("tar entry 0 (f)") && err.contains("larger than the limit of 16777216"), "{err}");
    }

    /// A stream exactly at the limit is fine: only reading past it fails.
    #[test]
    fn a_layer_exactly_at_the_limit_converts() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, "f", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let n = tar.len() as u64;
        assert_eq!(parse_stream(std::io::Cursor::new(tar.clone()), Limits { max_layer_size: n }).unwrap().len(), 1);
        assert!(
            parse_stream(std::io::Cursor::new(tar), Limits { max_layer_size: n - 1024 }).is_err(),
            "the first end block is past the limit"
        );
    }

    #[test]
    fn clamps_dotdot_at_the_root() {
        assert_eq!(clamped_components(b"../../etc/x"), (vec![b"etc".to_vec(), b"x".to_vec()], true));
        assert_eq!(clamped_components(b"a/../b"), (vec![b"b".to_vec()], false));
        assert_eq!(clamped_components(b"/a/./b/"), (vec![b"a".to_vec(), b"b".to_vec()], false));
        assert_eq!(components(b"a/../../b"), None);
    }
}
