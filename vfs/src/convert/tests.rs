//! Conversion tests over layer tars built here with the `tar` crate: no registry needed.

use std::io::Write as _;

use super::*;
use crate::index::ROOT;

pub(super) const CS: u32 = 4096;

/// Builds a tar in memory. Entries: (path, kind) where kind picks the header.
pub(super) struct TarBuilder(pub(super) tar::Builder<Vec<u8>>);

impl TarBuilder {
    pub(super) fn new() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
    pub(super) fn header(ty: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    }
    pub(super) fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    pub(super) fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    pub(super) fn link(mut self, ty: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(ty, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    pub(super) fn special(mut self, ty: tar::EntryType, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(ty, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    /// A file with PAX records (xattrs, nanosecond mtime).
    pub(super) fn pax_file(mut self, path: &str, data: &[u8], pax: &[(&str, &[u8])]) -> Self {
        self.0.append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v))).unwrap();
        self.file_inner(path, data);
        self
    }
    fn file_inner(&mut self, path: &str, data: &[u8]) {
        let mut h = Self::header(tar::EntryType::Regular, 0o755, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
    }
    pub(super) fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

#[derive(Clone, Copy)]
pub(super) enum Comp {
    Plain,
    Gzip,
    Zstd,
}

pub(super) fn write_layer(dir: &std::path::Path, n: usize, tar: Vec<u8>, comp: Comp) -> LayerBlob {
    let (data, media_type) = match comp {
        Comp::Plain => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            (gz.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Comp::Zstd => (zstd::encode_all(tar.as_slice(), 1).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
    };
    let path = dir.join(format!("layer{n}"));
    std::fs::write(&path, &data).unwrap();
    LayerBlob { digest: Digest::of(&data), media_type: media_type.into(), size: data.len() as u64, path }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

/// Reads a file's content back out of the data blobs, verifying every chunk digest.
pub(super) fn read_file(conv: &Converted, path: &str) -> Vec<u8> {
    let ino = conv.index.resolve(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    let Kind::File { size, chunks } = &conv.index.inodes[ino as usize].kind else { panic!("{path} is not a file") };
    let mut out = Vec::new();
    for c in chunks {
        let blob = std::fs::read(&conv.blobs[c.blob as usize].path).unwrap();
        let z = &blob[c.offset as usize..c.end() as usize];
        let data = zstd::decode_all(z).unwrap();
        assert_eq!(data.len(), c.len as usize);
        assert_eq!(Digest::of(&data), c.digest, "{path}: chunk digest");
        out.extend_from_slice(&data);
    }
    assert_eq!(out.len() as u64, *size);
    out
}

pub(super) fn opts() -> ConvertOptions {
    ConvertOptions {
        chunk_size: CS,
        source_repo: "127.0.0.1:5000/test/lazy".into(),
        prefetch: vec![],
        reuse: vec![],
        limits: Limits::default(),
    }
}

fn two_layer_image(dir: &std::path::Path) -> (Vec<LayerBlob>, Vec<u8>) {
    let big = pattern(3 * CS as usize + 100, 7);
    let lower = TarBuilder::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0\n")
        .dir("bin/", 0o755)
        .pax_file(
            "bin/a",
            &big,
            &[("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0x20, 0, 0, 0]), ("mtime", b"1700000001.123456789")],
        )
        .link(tar::EntryType::Link, "bin/b", "bin/a")
        .link(tar::EntryType::Symlink, "bin/abs", "/bin/a")
        .link(tar::EntryType::Symlink, "bin/dangling", "../nowhere")
        .special(tar::EntryType::Char, "dev/null", 1, 3)
        .special(tar::EntryType::Fifo, "run/fifo", 0, 0)
        .file("del", b"deleted in the upper layer")
        .dir("opq/", 0o700)
        .file("opq/old", b"hidden by the opaque marker")
        .file("empty", b"")
        .finish();
    let upper = TarBuilder::new()
        .file(".wh.del", b"")
        .dir("opq/", 0o750)
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .dir("up/", 0o755)
        .link(tar::EntryType::Link, "up/link", "bin/a")
        .file("etc/passwd", b"root:x:0:0\nuser:x:1000:100\n")
        .file("up/copy-of-a", &big)
        .file(&format!("up/{}", "n".repeat(255)), b"long name")
        .file("up/\u{00e9}t\u{00e9}", b"unicode")
        .finish();
    (vec![write_layer(dir, 0, lower, Comp::Gzip), write_layer(dir, 1, upper, Comp::Zstd)], big)
}

#[test]
fn merges_layers_with_whiteouts_opaque_dirs_and_hardlinks() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, big) = two_layer_image(dir.path());
    let conv = convert_layers(&layers, &opts(), dir.path(), &|_| {}).unwrap();
    let ix = &conv.index;

    assert!(ix.resolve(b"/del").is_none(), "whiteout removes the lower file");
    let opq = ix.resolve(b"/opq").unwrap();
    let Kind::Dir { entries } = &ix.inodes[opq as usize].kind else { panic!() };
    assert_eq!(entries.iter().map(|e| e.name.as_slice()).collect::<Vec<_>>(), vec![b"new".as_slice()]);
    assert_eq!(ix.inodes[opq as usize].mode, 0o750);

    let a = ix.resolve(b"/bin/a").unwrap();
    assert_eq!(ix.resolve(b"/bin/b"), Some(a), "hardlink in the same layer");
    assert_eq!(ix.resolve(b"/up/link"), Some(a), "hardlink to a lower layer's file");
    assert_eq!(ix.nlink(a), 3);
    let ia = &ix.inodes[a as usize];
    assert_eq!((ia.mtime, ia.mtime_nsec, ia.uid, ia.gid, ia.mode), (1_700_000_001, 123_456_789, 1000, 100, 0o755));
    assert_eq!(ia.xattrs[0].name, b"security.capability");
    assert_eq!(ia.xattrs[0].value, vec![1, 0, 0, 2, 0x20, 0, 0, 0]);
    assert_eq!(read_file(&conv, "/bin/a"), big);
    assert_eq!(read_file(&conv, "/up/copy-of-a"), big);
    assert_eq!(read_file(&conv, "/etc/passwd"), b"root:x:0:0\nuser:x:1000:100\n");
    assert_eq!(read_file(&conv, "/empty"), b"");
    assert_eq!(read_file(&conv, &format!("/up/{}", "n".repeat(255))), b"long name");
    assert_eq!(read_file(&conv, "/up/\u{00e9}t\u{00e9}"), b"unicode");

    let sym = |p: &str| match &ix.inodes[ix.resolve(p.as_bytes()).unwrap() as usize].kind {
        Kind::Symlink { target } => target.clone(),
        _ => panic!("{p} not a symlink"),
    };
    assert_eq!(sym("/bin/abs"), b"/bin/a");
    assert_eq!(sym("/bin/dangling"), b"../nowhere");
    assert_eq!(ix.inodes[ix.resolve(b"/dev/null").unwrap() as usize].kind, Kind::CharDevice { major: 1, minor: 3 });
    assert_eq!(ix.inodes[ix.resolve(b"/run/fifo").unwrap() as usize].kind, Kind::Fifo);
    assert_eq!(ix.inodes[ROOT as usize].uid, 1000, "./ entry sets the root's metadata");

    // Dedup: copy-of-a repeats a's chunks; the deleted and the overwritten files are not stored.
    let s = &conv.summary;
    assert_eq!(s.chunks, 4 + 4 + 1 + 1 + 1 + 1);
    assert_eq!(s.unique_chunks, 4 + 1 + 1 + 1 + 1);
    assert_eq!(s.stored_bytes, big.len() as u64 + 3 + 27 + 9 + 7, "nothing deleted or overwritten is stored");
    assert!(s.dedup_ratio() > 1.5);
    assert_eq!(conv.blobs.len(), 2);
    let lower_blob = std::fs::read(&conv.blobs[0].path).unwrap();
    assert_eq!(Digest::of(&lower_blob), conv.blobs[0].digest);

    // The index survives its own codec.
    let back = Index::decode(&conv.index.encode()).unwrap();
    assert_eq!(back, conv.index);
}

#[test]
fn identical_base_layers_give_identical_blobs() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let base = || TarBuilder::new().file("lib/x", &pattern(10_000, 1)).file("lib/y", &pattern(5000, 2)).finish();
    let l1 = vec![
        write_layer(d1.path(), 0, base(), Comp::Plain),
        write_layer(d1.path(), 1, TarBuilder::new().file("app", b"one").finish(), Comp::Plain),
    ];
    let l2 = vec![
        write_layer(d2.path(), 0, base(), Comp::Plain),
        write_layer(d2.path(), 1, TarBuilder::new().file("app", b"two").finish(), Comp::Plain),
    ];
    let c1 = convert_layers(&l1, &opts(), d1.path(), &|_| {}).unwrap();
    let c2 = convert_layers(&l2, &opts(), d2.path(), &|_| {}).unwrap();
    assert_eq!(c1.blobs[0].digest, c2.blobs[0].digest, "same base layer -> same data blob");
    assert_ne!(c1.blobs[1].digest, c2.blobs[1].digest);
}

#[test]
fn prefetch_list_keeps_known_regular_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, _) = two_layer_image(dir.path());
    let mut o = opts();
    o.prefetch = vec!["/etc/passwd".into(), "/no/such".into(), "/bin".into(), "/bin/a".into(), "/bin/b".into()];
    let conv = convert_layers(&layers, &o, dir.path(), &|_| {}).unwrap();
    let ix = &conv.index;
    assert_eq!(ix.prefetch, vec![ix.resolve(b"/etc/passwd").unwrap(), ix.resolve(b"/bin/a").unwrap()]);
    Index::decode(&ix.encode()).unwrap();
}

#[test]
fn rejects_bad_chunk_sizes_and_lying_media_types() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.chunk_size = 1000;
    assert!(matches!(convert_layers(&[], &o, dir.path(), &|_| {}), Err(ConvertError::ChunkSize(1000))));
    let mut layer = write_layer(dir.path(), 0, TarBuilder::new().file("a", b"a").finish(), Comp::Plain);
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    let err = convert_layers(&[layer], &opts(), dir.path(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("magic"), "{err}");
}

/// Writes an OCI layout with a two-platform index; returns its dir.
fn write_layout(dir: &std::path::Path, layers: &[LayerBlob]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    for l in layers {
        std::fs::copy(&l.path, blobs.join(l.digest.hex())).unwrap();
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/a"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": crate::registry::MEDIA_OCI_MANIFEST,
        "config": {"mediaType": crate::stub::MEDIA_OCI_CONFIG, "digest": cd.to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let md = put(&manifest);
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": crate::registry::MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": crate::registry::MEDIA_OCI_MANIFEST, "digest": Digest::of(b"nope").to_string(), "size": 4, "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": crate::registry::MEDIA_OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }))
    .unwrap();
    let ld = put(&list);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": crate::registry::MEDIA_OCI_INDEX, "digest": ld.to_string(), "size": list.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn reads_oci_layouts_and_selects_the_platform() {
    let work = tempfile::tempdir().unwrap();
    let (layers, big) = two_layer_image(work.path());
    let layout = work.path().join("layout");
    write_layout(&layout, &layers);
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let src = source::open_layout(&layout, Some("v1"), &amd64).unwrap();
    assert_eq!(src.layers.len(), 2);
    assert_eq!(src.config["config"]["Cmd"], serde_json::json!(["/bin/a"]));
    let conv = convert_layers(&src.layers, &opts(), work.path(), &|_| {}).unwrap();
    assert_eq!(read_file(&conv, "/bin/b"), big);

    let err = source::open_layout(&layout, Some("v1"), &"linux/arm64".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("no manifest for platform linux/arm64") && err.contains("linux/amd64"), "{err}");
    let err = source::open_layout(&layout, Some("v2"), &amd64).unwrap_err().to_string();
    assert!(err.contains("no manifest tagged \"v2\""), "{err}");
    // A corrupted layer blob is caught by its digest.
    let victim = layout.join("blobs/sha256").join(layers[1].digest.hex());
    let mut data = std::fs::read(&victim).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&victim, data).unwrap();
    let err = source::open_layout(&layout, Some("v1"), &amd64).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn keeps_bsdtar_xattrs_and_pax_owners() {
    let dir = tempfile::tempdir().unwrap();
    let tar = TarBuilder::new()
        .pax_file("f", b"x", &[("LIBARCHIVE.xattr.user.a%3Db", b"aGk="), ("uid", b"70000"), ("gid", b"80000")])
        .finish();
    let conv = convert_layers(&[write_layer(dir.path(), 0, tar, Comp::Gzip)], &opts(), dir.path(), &|_| {}).unwrap();
    let f = &conv.index.inodes[conv.index.resolve(b"/f").unwrap() as usize];
    assert_eq!(f.xattrs, vec![Xattr { name: b"user.a=b".to_vec(), value: b"hi".to_vec() }]);
    assert_eq!((f.uid, f.gid), (70000, 80000));
}

#[test]
fn reuses_chunks_of_earlier_images_in_the_repository() {
    let d1 = tempfile::tempdir().unwrap();
    let shared = pattern(3 * CS as usize, 9);
    let first = vec![write_layer(d1.path(), 0, TarBuilder::new().file("a/one.bin", &shared).finish(), Comp::Gzip)];
    let c1 = convert_layers(&first, &opts(), d1.path(), &|_| {}).unwrap();
    let earlier = Index::decode(&c1.index.encode()).unwrap();

    let d2 = tempfile::tempdir().unwrap();
    let second = vec![write_layer(
        d2.path(),
        0,
        TarBuilder::new().file("c/again.bin", &shared).file("c/note.txt", b"new").finish(),
        Comp::Zstd,
    )];
    let mut o = opts();
    o.reuse = vec![earlier];
    let c2 = convert_layers(&second, &o, d2.path(), &|_| {}).unwrap();
    assert_eq!(c2.summary.stored_bytes, 3, "only the new file is stored");
    assert_eq!(c2.summary.reused_bytes, shared.len() as u64);
    assert_eq!((c2.summary.blobs, c2.summary.reused_blobs), (1, 1));
    assert_eq!(c2.index.blobs.len(), 2);
    assert_eq!(c2.index.blobs[0].digest, c1.blobs[0].digest, "the earlier image's blob is referenced");
    // The reused chunks point into the earlier blob file; read through it.
    let Kind::File { chunks, .. } = &c2.index.inodes[c2.index.resolve(b"/c/again.bin").unwrap() as usize].kind else {
        panic!()
    };
    let blob = std::fs::read(&c1.blobs[0].path).unwrap();
    let mut back = Vec::new();
    for c in chunks {
        assert_eq!(c.blob, 0);
        back.extend(zstd::decode_all(&blob[c.offset as usize..c.end() as usize]).unwrap());
    }
    assert_eq!(back, shared);
    let new_blob = std::fs::read(&c2.blobs[0].path).unwrap();
    let Kind::File { chunks, .. } = &c2.index.inodes[c2.index.resolve(b"/c/note.txt").unwrap() as usize].kind else {
        panic!()
    };
    assert_eq!(chunks[0].blob, 1);
    assert_eq!(zstd::decode_all(&new_blob[chunks[0].offset as usize..]).unwrap(), b"new");
    Index::decode(&c2.index.encode()).unwrap();
}

/// Chunks of `path` in `conv`'s index.
fn chunks_of(ix: &Index, path: &str) -> Vec<crate::index::Chunk> {
    let ino = ix.resolve(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    match &ix.inodes[ino as usize].kind {
        Kind::File { chunks, .. } => chunks.clone(),
        _ => panic!("{path} is not a file"),
    }
}

/// Asserts that the chunks of `paths`, file by file and chunk by chunk, fill blob 0 from offset 0
/// without a gap, and that blob 0 holds nothing else.
fn assert_hot_front(conv: &Converted, paths: &[&str]) {
    let ix = &conv.index;
    let mut end = 0u64;
    for path in paths {
        for (n, c) in chunks_of(ix, path).iter().enumerate() {
            assert_eq!((c.blob, c.offset), (0, end), "{path} chunk {n}: want blob 0 offset {end}");
            end += c.compressed_len as u64;
        }
    }
    assert_eq!(ix.blobs[0].size, end, "blob 0 holds exactly the listed files");
    assert_eq!(conv.blobs[0].digest, ix.blobs[0].digest, "blob 0 is written by this conversion");
    assert_eq!(conv.summary.hot_blob_bytes, end);
    assert_eq!(conv.summary.hot_files, paths.len() as u64);
}

/// Three directories, files of 1-3 chunks, in a tar order that interleaves the directories.
fn scattered_image(dir: &std::path::Path) -> Vec<LayerBlob> {
    let tar = TarBuilder::new()
        .file("a/1.bin", &pattern(2 * CS as usize + 10, 1))
        .file("b/1.bin", &pattern(CS as usize, 2))
        .file("c/1.bin", &pattern(3 * CS as usize, 3))
        .file("a/2.txt", b"a two")
        .file("b/2.bin", &pattern(CS as usize + 1, 4))
        .file("c/2.txt", b"c two")
        .finish();
    let upper = TarBuilder::new().file("c/3.bin", &pattern(CS as usize / 2, 5)).file("a/3.txt", b"a three").finish();
    vec![write_layer(dir, 0, tar, Comp::Gzip), write_layer(dir, 1, upper, Comp::Plain)]
}

#[test]
fn prefetch_list_files_fill_the_front_of_blob_0_in_list_order() {
    let dir = tempfile::tempdir().unwrap();
    let layers = scattered_image(dir.path());
    let mut o = opts();
    // Across layers, against tar order, with a duplicate and a path that is not there.
    let list = ["/c/3.bin", "/c/1.bin", "/a/2.txt", "/b/2.bin", "/a/1.bin"];
    o.prefetch = list.iter().map(|p| p.to_string()).collect();
    o.prefetch.insert(2, "/c/3.bin".into());
    o.prefetch.push("/no/such".into());
    let conv = convert_layers(&layers, &o, dir.path(), &|_| {}).unwrap();
    let ix = &conv.index;
    assert_eq!(ix.prefetch, list.iter().map(|p| ix.resolve(p.as_bytes()).unwrap()).collect::<Vec<_>>());
    assert_hot_front(&conv, &list);
    // The other files are in their layers' blobs, and every file still reads back right.
    for p in ["/b/1.bin", "/c/2.txt", "/a/3.txt"] {
        assert!(chunks_of(ix, p).iter().all(|c| c.blob != 0), "{p} is not listed, so not in the hot blob");
    }
    assert_eq!(read_file(&conv, "/c/1.bin"), pattern(3 * CS as usize, 3));
    assert_eq!(read_file(&conv, "/a/3.txt"), b"a three");
    assert_eq!(conv.blobs.len(), 3, "hot blob + one blob per layer");
    assert_eq!(conv.summary.hot_bytes, (CS / 2 + 3 * CS + 5 + CS + 1 + 2 * CS + 10) as u64);
    assert_eq!(Index::decode(&ix.encode()).unwrap(), *ix);
}

#[test]
fn hot_set_is_copied_even_where_earlier_images_or_files_hold_its_chunks() {
    let shared = pattern(2 * CS as usize, 42);
    let image = |dir: &std::path::Path| {
        let tar = TarBuilder::new()
            .file("lib/early.bin", &shared)
            .file("lib/other.bin", &pattern(CS as usize, 43))
            .file("app/main", b"main")
            .file("app/late.bin", &shared)
            .finish();
        vec![write_layer(dir, 0, tar, Comp::Zstd)]
    };
    // An earlier image in the destination repository holds every chunk.
    let d1 = tempfile::tempdir().unwrap();
    let first = convert_layers(&image(d1.path()), &opts(), d1.path(), &|_| {}).unwrap();
    assert_eq!(first.summary.hot_files, 0);
    let earlier = Index::decode(&first.index.encode()).unwrap();

    let d2 = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.reuse = vec![earlier];
    o.prefetch = vec!["/app/late.bin".into(), "/app/main".into()];
    let conv = convert_layers(&image(d2.path()), &o, d2.path(), &|_| {}).unwrap();
    let ix = &conv.index;
    // late.bin duplicates early.bin (earlier in tar order, and in the earlier image): it gets
    // fresh copies at the front all the same.
    assert_hot_front(&conv, &["/app/late.bin", "/app/main"]);
    assert_eq!(conv.blobs.len(), 1, "only the hot blob is new: the rest is reused");
    assert_eq!(conv.summary.stored_bytes, shared.len() as u64 + 4);
    // Unlisted files reuse the earlier image's blob, except where the hot blob has the chunk.
    assert_eq!(ix.blobs[1].digest, first.blobs[0].digest);
    assert!(chunks_of(ix, "/lib/other.bin").iter().all(|c| c.blob == 1));
    assert_eq!(chunks_of(ix, "/lib/early.bin"), chunks_of(ix, "/app/late.bin"), "stored once, in the hot blob");
    assert_eq!(read_file(&conv, "/app/late.bin"), shared);
    assert_eq!(Index::decode(&ix.encode()).unwrap(), *ix);
}

#[test]
fn without_a_list_each_directory_is_contiguous_in_its_layers_blob() {
    let dir = tempfile::tempdir().unwrap();
    let conv = convert_layers(&scattered_image(dir.path()), &opts(), dir.path(), &|_| {}).unwrap();
    let ix = &conv.index;
    assert_eq!(conv.summary.hot_files, 0);
    // Layer 0's blob: a/, then b/, then c/, whatever the tar order.
    let mut end = 0u64;
    for p in ["/a/1.bin", "/a/2.txt", "/b/1.bin", "/b/2.bin", "/c/1.bin", "/c/2.txt"] {
        for c in chunks_of(ix, p) {
            assert_eq!((c.blob, c.offset), (0, end), "{p}");
            end += c.compressed_len as u64;
        }
    }
    assert_eq!(ix.blobs[0].size, end);
    assert_eq!(chunks_of(ix, "/a/3.txt")[0].blob, 1);
    assert!(chunks_of(ix, "/a/3.txt")[0].offset < chunks_of(ix, "/c/3.bin")[0].offset);
}
