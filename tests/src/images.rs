//! Builds OCI image layouts in Rust, with exact control over every tar header (whiteouts, opaque
//! directories, hardlinks, symlinks, PAX xattrs, fifos, device nodes, owners, modes, nanosecond
//! mtimes), and pushes them to a registry with skopeo.
//!
//! Big file contents are generated from a seed on the fly ([`Content::Random`]), so a 1 GiB image
//! costs no memory and the expected bytes can be regenerated to compare against.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

/// Contents of a regular file.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    /// `len` incompressible bytes from a seeded generator (same seed, same bytes).
    Random {
        seed: u64,
        len: u64,
    },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Random { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reader(&self) -> Box<dyn Read + Send + '_> {
        match self {
            Content::Bytes(b) => Box::new(&b[..]),
            Content::Random { seed, len } => Box::new(RandomReader::new(*seed, *len)),
        }
    }

    /// All bytes (only for small contents, or to compare in a test).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.reader().read_to_end(&mut out).expect("in-memory read");
        out
    }

    /// Hex sha256 of the contents.
    pub fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        io::copy(&mut self.reader(), &mut HashWriter(&mut hasher)).expect("in-memory read");
        hex::encode(hasher.finalize())
    }
}

/// Deterministic incompressible bytes.
pub struct RandomReader {
    rng: rand::rngs::StdRng,
    left: u64,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        Self { rng: rand::rngs::StdRng::seed_from_u64(seed), left: len }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a tar entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    /// Hardlink to another path of the image (in this layer or a lower one), relative to root.
    Hardlink(String),
    Fifo,
    CharDev(u32, u32),
    BlockDev(u32, u32),
}

/// One tar entry with explicit metadata. Paths are relative to the root, without `./`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds and nanoseconds since the epoch (written as a PAX `mtime` record when nsec != 0).
    pub mtime: (u64, u32),
    /// Written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Default mtime of entries: 2023-11-14T22:13:20Z.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Self {
        Self {
            path: path.trim_start_matches("./").trim_start_matches('/').to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: (DEFAULT_MTIME, 0),
            xattrs: Vec::new(),
        }
    }
    pub fn dir(path: &str) -> Self {
        Self::new(path, Kind::Dir, 0o755)
    }
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Self {
        Self::new(path, Kind::File(Content::Bytes(content.into())), 0o644)
    }
    pub fn random_file(path: &str, seed: u64, len: u64) -> Self {
        Self::new(path, Kind::File(Content::Random { seed, len }), 0o644)
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, Kind::Symlink(target.into()), 0o777)
    }
    pub fn hardlink(path: &str, target: &str) -> Self {
        Self::new(path, Kind::Hardlink(target.trim_start_matches('/').into()), 0o644)
    }
    pub fn fifo(path: &str) -> Self {
        Self::new(path, Kind::Fifo, 0o644)
    }
    pub fn char_dev(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::CharDev(major, minor), 0o666)
    }
    pub fn block_dev(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::BlockDev(major, minor), 0o660)
    }
    /// A whiteout deleting `path` (of a lower layer): an empty file `dir/.wh.<name>`.
    pub fn whiteout(path: &str) -> Self {
        let path = path.trim_start_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Self::file(&format!("{dir}.wh.{name}"), Vec::new())
    }
    /// Marks directory `dir` opaque: lower layers' contents of it are hidden.
    pub fn opaque(dir: &str) -> Self {
        Self::file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), Vec::new())
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, sec: u64, nsec: u32) -> Self {
        self.mtime = (sec, nsec);
        self
    }
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.into(), value.into()));
        self
    }
}

/// A layer: entries in tar order.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends `entry` (builder style: `Layer::new().add(a).add(b)`). Not `ops::Add`: a layer
    /// plus an entry is not a sum, and the name reads as what it does.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Writes the layer as a tar stream.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        for entry in &self.entries {
            append(&mut builder, entry).with_context(|| format!("writing tar entry {}", entry.path))?;
        }
        Ok(builder.into_inner()?)
    }
}

fn append<W: Write>(builder: &mut tar::Builder<W>, e: &Entry) -> Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if e.mtime.1 != 0 {
        pax.push(("mtime".into(), format!("{}.{:09}", e.mtime.0, e.mtime.1).into_bytes()));
    }
    for (name, value) in &e.xattrs {
        pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
    }
    // Long names go in PAX `path`/`linkpath` records (what Go's archive/tar, and so umoci and
    // containerd, write and read); the ustar fields then hold a truncated placeholder.
    let name = if e.kind_is_dir() { format!("{}/", e.path) } else { e.path.clone() };
    if name.len() > 100 {
        pax.push(("path".into(), name.clone().into_bytes()));
    }
    let link = match &e.kind {
        Kind::Symlink(t) | Kind::Hardlink(t) => Some(t.clone()),
        _ => None,
    };
    if let Some(link) = &link {
        if link.len() > 100 {
            pax.push(("linkpath".into(), link.clone().into_bytes()));
        }
    }
    if !pax.is_empty() {
        builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }

    let mut header = tar::Header::new_ustar();
    set_name(&mut header, &name)?;
    header.set_mode(e.mode);
    header.set_uid(e.uid);
    header.set_gid(e.gid);
    header.set_mtime(e.mtime.0);
    header.set_size(0);
    if let Some(link) = &link {
        let bytes = link.as_bytes();
        let field = &mut header.as_old_mut().linkname;
        let n = bytes.len().min(field.len());
        field[..n].copy_from_slice(&bytes[..n]);
    }
    match &e.kind {
        Kind::Dir => header.set_entry_type(tar::EntryType::Directory),
        Kind::File(content) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(content.len());
            header.set_cksum();
            builder.append(&header, content.reader())?;
            return Ok(());
        }
        Kind::Symlink(_) => header.set_entry_type(tar::EntryType::Symlink),
        Kind::Hardlink(_) => header.set_entry_type(tar::EntryType::Link),
        Kind::Fifo => header.set_entry_type(tar::EntryType::Fifo),
        Kind::CharDev(ma, mi) | Kind::BlockDev(ma, mi) => {
            header.set_entry_type(if matches!(e.kind, Kind::CharDev(..)) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            header.set_device_major(*ma)?;
            header.set_device_minor(*mi)?;
        }
    }
    header.set_cksum();
    builder.append(&header, io::empty())?;
    Ok(())
}

impl Entry {
    fn kind_is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// Puts `name` in the ustar name/prefix fields when it fits, else a truncated placeholder (the
/// caller has written a PAX `path` record, which readers prefer).
fn set_name(header: &mut tar::Header, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ustar = header.as_ustar_mut().context("ustar header")?;
    if bytes.len() <= 100 {
        ustar.name[..bytes.len()].copy_from_slice(bytes);
        return Ok(());
    }
    // Split at a '/' so that prefix <= 155 and name <= 100, as POSIX ustar allows.
    if bytes.len() <= 256 {
        for (i, b) in bytes.iter().enumerate().rev() {
            if *b == b'/' && i <= 155 && bytes.len() - i - 1 <= 100 && i > 0 {
                ustar.prefix[..i].copy_from_slice(&bytes[..i]);
                ustar.name[..bytes.len() - i - 1].copy_from_slice(&bytes[i + 1..]);
                return Ok(());
            }
        }
    }
    ustar.name.copy_from_slice(&bytes[..100]);
    Ok(())
}

/// The gzip level of every layer the harness writes: the default level, as `docker push` and
/// BuildKit write layers (Go's gzip). Not the fast level: flate2's zlib-rs backend writes a level-1
/// stream as one deflate block, which leaves a zran-style index (SOCI's zTOC) a single seek point,
/// so SOCI would fetch the whole layer for any read, as no real image would make it do.
pub const LAYER_GZIP: flate2::Compression = flate2::Compression::new(6);

/// An image to build: layers bottom to top, plus the config's command.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl Image {
    pub fn new(layers: Vec<Layer>) -> Self {
        Self { layers, cmd: vec!["/bin/sh".into()], env: vec!["PATH=/usr/bin:/bin".into()] }
    }

    /// Writes an OCI image layout at `dir` with `tag` (gzip layers at [`LAYER_GZIP`]) and returns
    /// the manifest digest.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let tmp = dir.join(format!("layer-{i}.tmp"));
            let file = std::fs::File::create(&tmp)?;
            let compressed = DigestWriter::new(io::BufWriter::with_capacity(1 << 20, file));
            let gz = GzEncoder::new(compressed, LAYER_GZIP);
            let uncompressed = layer.write_tar(DigestWriter::new(gz))?;
            let (gz, diff_id, _) = uncompressed.finish();
            let (mut file, digest, size) = gz.finish()?.finish();
            file.flush()?;
            std::fs::rename(&tmp, blobs.join(&digest))?;
            layer_descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{digest}"),
                "size": size,
            }));
            diff_ids.push(format!("sha256:{diff_id}"));
        }
        let config = serde_json::json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": self.cmd, "Env": self.env, "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config_desc = write_json_blob(&blobs, &config, "application/vnd.oci.image.config.v1+json")?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": layer_descs,
        });
        let mut manifest_desc = write_json_blob(&blobs, &manifest, "application/vnd.oci.image.manifest.v1+json")?;
        manifest_desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
        manifest_desc["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_desc.clone()] });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(manifest_desc["digest"].as_str().expect("set above").to_string())
    }

    /// Sum of the sizes of all regular files in all layers (before whiteouts).
    pub fn file_bytes(&self) -> u64 {
        self.layers.iter().flat_map(|l| &l.entries).map(|e| if let Kind::File(c) = &e.kind { c.len() } else { 0 }).sum()
    }

    /// The content of regular file `path` as the topmost layer that has it defines it.
    pub fn content(&self, path: &str) -> Option<&Content> {
        self.layers.iter().rev().flat_map(|l| l.entries.iter().rev()).find_map(|e| match &e.kind {
            Kind::File(c) if e.path == path => Some(c),
            _ => None,
        })
    }
}

fn write_json_blob(blobs: &Path, value: &serde_json::Value, media_type: &str) -> Result<serde_json::Value> {
    let bytes = serde_json::to_vec(value)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    std::fs::write(blobs.join(&digest), &bytes)?;
    Ok(serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len() }))
}

/// A writer that hashes and counts what passes through it.
struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }
    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.size)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Pushes the layout's `tag` to `docker://<dest>` (e.g. `127.0.0.1:5000/app:v1`) over plain HTTP.
pub fn push(layout: &Path, tag: &str, dest: &str) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo copy oci:{}:{tag} docker://{dest} failed ({}): {}",
            layout.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Unpacks the layout's `tag` with umoci (as root: owners, devices and xattrs are applied) and
/// returns `<bundle>/rootfs`. `bundle` must not exist yet.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<PathBuf> {
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .context("running umoci (apt-get install umoci)")?;
    if !out.status.success() {
        bail!(
            "umoci unpack --image {}:{tag} {} failed ({}): {}",
            layout.display(),
            bundle.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bundle.join("rootfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_content_is_deterministic_and_sized() {
        let a = Content::Random { seed: 7, len: 100_000 };
        let b = Content::Random { seed: 7, len: 100_000 };
        assert_eq!(a.to_vec().len(), 100_000);
        assert_eq!(a.sha256(), b.sha256());
        assert_ne!(a.sha256(), Content::Random { seed: 8, len: 100_000 }.sha256());
    }

    #[test]
    fn tar_roundtrip_keeps_long_names_pax_and_links() {
        let long = format!("d/{}", "x".repeat(255));
        let layer = Layer::new()
            .add(Entry::dir("d").mode(0o1777))
            .add(Entry::file(&long, b"hello".to_vec()).mtime(12, 345).xattr("user.k", b"v".to_vec()))
            .add(Entry::hardlink("d/h", &long))
            .add(Entry::whiteout("d/gone"))
            .add(Entry::char_dev("d/null", 1, 3));
        let bytes = layer.write_tar(Vec::new()).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let pax: Vec<String> = match entry.pax_extensions().unwrap() {
                Some(exts) => exts.map(|e| e.unwrap().key().unwrap().to_string()).collect(),
                None => Vec::new(),
            };
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((path, link, pax, data));
        }
        assert_eq!(seen[0].0, "d/");
        assert_eq!(seen[1].0, long);
        assert_eq!(seen[1].3, b"hello");
        assert!(seen[1].2.contains(&"mtime".to_string()) && seen[1].2.contains(&"SCHILY.xattr.user.k".to_string()));
        assert_eq!(seen[2].1.as_deref(), Some(long.as_str()));
        assert_eq!(seen[3].0, "d/.wh.gone");
        assert_eq!(seen.len(), 5);
    }
}
