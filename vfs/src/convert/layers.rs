//! Reading layer tars and merging them into one tree, the way a container runtime unpacks them:
//! `.wh.NAME` whiteouts and `.wh..wh..opq` opaque directories hide lower layers, hardlinks (also
//! to files of lower layers) stay one inode, PAX xattrs, device numbers and nanosecond mtimes are
//! kept. Only metadata is held in memory: a regular file records which layer and which tar entry
//! holds its final content; the content itself goes to [`super::chunker`] during the same read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

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
    let compression = detect(&layer.media_type, &head).map_err(|reason| ConvertError::Layer { layer: layer.digest, reason })?;
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| io_err(&layer.path, "start zstd decoder", e))?,
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
    File { size: u64, layer: usize, ordinal: u64 },
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
pub(crate) fn scan_layer(layer: &LayerBlob, on_file: &mut OnFile<'_>) -> Result<ParsedLayer, ConvertError> {
    let reader = open_layer(layer)?;
    let parsed = parse_tar(reader, on_file).map_err(|reason| ConvertError::Layer { layer: layer.digest, reason })?;
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
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
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

    /// Walks to a directory, creating missing directories (and replacing non-directories in the
    /// way, as extracting the tar over the lower layers would).
    fn ensure_dir(&mut self, comps: &[Vec<u8>]) -> NodeId {
        let mut cur = ROOT_NODE;
        for c in comps {
            let existing = match &self.nodes[cur].kind {
                NodeKind::Dir(entries) => entries.get(c).copied(),
                _ => unreachable!("ensure_dir walks directories only"),
            };
            cur = match existing {
                Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => id,
                _ => {
                    let id = self.push(Node { meta: Meta::implicit_dir(), kind: NodeKind::Dir(BTreeMap::new()) });
                    self.entries_mut(cur).insert(c.clone(), id);
                    id
                }
            };
        }
        cur
    }

    /// Applies one layer: reads its tar stream (metadata only), applies its whiteouts to the lower
    /// layers, then its entries in tar order. Returns the number of tar entries (ordinals used).
    pub fn apply_layer(&mut self, layer_no: usize, layer: &LayerBlob, parsed: ParsedLayer) -> Result<u64, ConvertError> {
        let parsed = parsed.0;
        let count = parsed.len() as u64;
        for p in &parsed {
            let Some((name, parent)) = p.components.split_last() else { continue };
            match &p.what {
                What::Whiteout(target) => {
                    if let Some(dir) = self.lookup(parent).filter(|&d| matches!(self.nodes[d].kind, NodeKind::Dir(_))) {
                        self.entries_mut(dir).remove(target);
                    }
                }
                What::Opaque => {
                    let _ = name;
                    if let Some(dir) = self.lookup(parent).filter(|&d| matches!(self.nodes[d].kind, NodeKind::Dir(_))) {
                        self.entries_mut(dir).clear();
                    }
                }
                _ => {}
            }
        }
        for p in parsed {
            if matches!(p.what, What::Whiteout(_) | What::Opaque) {
                continue;
            }
            let Some((name, parent)) = p.components.split_last() else {
                // The root itself (`./`): keep its metadata, children stay.
                if matches!(p.what, What::Dir) {
                    self.nodes[ROOT_NODE].meta = p.meta;
                }
                continue;
            };
            let kind = match p.what {
                What::Dir => {
                    let dir = self.ensure_dir(parent);
                    let existing = self.entries_mut(dir).get(name).copied();
                    match existing {
                        Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => {
                            self.nodes[id].meta = p.meta;
                        }
                        _ => {
                            let id = self.push(Node { meta: p.meta, kind: NodeKind::Dir(BTreeMap::new()) });
                            self.entries_mut(dir).insert(name.clone(), id);
                        }
                    }
                    continue;
                }
                What::Hardlink(target) => {
                    match self.lookup(&target).filter(|&t| !matches!(self.nodes[t].kind, NodeKind::Dir(_))) {
                        Some(t) => {
                            let dir = self.ensure_dir(parent);
                            self.entries_mut(dir).insert(name.clone(), t);
                        }
                        None => log::warn!(
                            "layer {}: hardlink {} -> {}: target missing or a directory; entry skipped",
                            layer.digest,
                            String::from_utf8_lossy(&p.components.join(&b'/')),
                            String::from_utf8_lossy(&target.join(&b'/'))
                        ),
                    }
                    continue;
                }
                What::File(size) => NodeKind::File { size, layer: layer_no, ordinal: p.ordinal },
                What::Symlink(t) => NodeKind::Symlink(t),
                What::Char(a, b) => NodeKind::Char(a, b),
                What::Block(a, b) => NodeKind::Block(a, b),
                What::Fifo => NodeKind::Fifo,
                What::Whiteout(_) | What::Opaque => unreachable!(),
            };
            let dir = self.ensure_dir(parent);
            let id = self.push(Node { meta: p.meta, kind });
            self.entries_mut(dir).insert(name.clone(), id);
        }
        Ok(count)
    }
}

fn parse_tar(reader: Box<dyn Read + Send>, on_file: &mut OnFile<'_>) -> Result<Vec<Parsed>, String> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    let entries = archive.entries().map_err(|e| format!("not a tar stream: {e}"))?;
    for (ordinal, entry) in entries.enumerate() {
        let ordinal = ordinal as u64;
        let mut entry = entry.map_err(|e| format!("tar entry {ordinal}: {e}"))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let at = |what: &str, e: &dyn std::fmt::Display| format!("tar entry {ordinal} ({shown}): {what}: {e}");
        let Some(comps) = components(&raw_path) else {
            log::warn!("tar entry {ordinal} ({shown}): path leaves the root; skipped");
            continue;
        };
        if let Some(bad) = comps.iter().find(|c| c.len() > crate::index::codec::MAX_NAME_LEN) {
            return Err(format!("tar entry {ordinal} ({shown}): name of {} bytes exceeds 255", bad.len()));
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
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.insert(name.to_vec(), ext.value_bytes().to_vec());
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    // bsdtar: the name is URL-encoded, the value base64.
                    use base64::Engine as _;
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(ext.value_bytes())
                        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(ext.value_bytes()))
                        .map_err(|e| at("PAX LIBARCHIVE.xattr value", &e))?;
                    xattrs.insert(percent_decode(name), value);
                } else if key == b"mtime" {
                    pax_mtime = Some(ext.value_bytes().to_vec());
                } else if key == b"uid" || key == b"gid" {
                    let v = std::str::from_utf8(ext.value_bytes()).ok().and_then(|v| v.parse::<u64>().ok());
                    match (key, v) {
                        (b"uid", Some(v)) => uid = v,
                        (b"gid", Some(v)) => gid = v,
                        _ => return Err(at("PAX uid/gid", &"not a number")),
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
            What::Whiteout(target.to_vec())
        } else {
            match ty {
                tar::EntryType::Directory => What::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => What::File(size),
                tar::EntryType::Link => {
                    let target = link.ok_or_else(|| at("hardlink", &"no link name"))?;
                    What::Hardlink(components(&target).ok_or_else(|| at("hardlink", &"target leaves the root"))?)
                }
                tar::EntryType::Symlink => {
                    let target = link.ok_or_else(|| at("symlink", &"no link name"))?;
                    if target.is_empty() || target.len() > crate::index::codec::MAX_SYMLINK_LEN {
                        return Err(at("symlink", &format!("target of {} bytes", target.len())));
                    }
                    What::Symlink(target)
                }
                tar::EntryType::Char => What::Char(dev.0, dev.1),
                tar::EntryType::Block => What::Block(dev.0, dev.1),
                tar::EntryType::Fifo => What::Fifo,
                tar::EntryType::XGlobalHeader => continue,
                other => return Err(at("entry type", &format!("{other:?} is not supported"))),
            }
        };
        if matches!(what, What::File(s) if s > crate::index::codec::MAX_FILE_SIZE) {
            return Err(at("size", &format!("{size} exceeds the 1 TiB limit")));
        }
        if let What::File(size) = what {
            on_file(ordinal, size, &mut entry).map_err(|e| format!("tar entry {ordinal} ({shown}): {e}"))?;
        }
        out.push(Parsed { ordinal, components: comps, meta, what });
    }
    Ok(out)
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
        let parsed = parse_tar(Box::new(std::io::Cursor::new(tar)), &mut |_, _, r| {
            std::io::copy(r, &mut std::io::sink()).map(|_| ()).map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!((parsed[0].meta.mtime, parsed[0].meta.mtime_nsec), (0, 0));
    }
}
