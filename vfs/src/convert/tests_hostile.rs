//! The converter on hostile layers: names and links that try to leave the image, device nodes,
//! oversized headers, decompression bombs, whiteouts in odd places. Each case either comes out as
//! containerd's unpack would lay it out, or is refused with an error naming the layer and the entry;
//! nothing is ever written outside the conversion's temp dir.

use super::tests::{opts, read_file, write_layer, Comp, TarBuilder, CS};
use super::*;

/// Tar entries with raw names and link names, which the `tar` crate's builder refuses (`..`,
/// absolute paths).
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(mut self, ty: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = TarBuilder::header(ty, 0o644, data.len() as u64);
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(tar::EntryType::Regular, name.as_bytes(), b"", data)
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Link, name.as_bytes(), target.as_bytes(), b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Symlink, name.as_bytes(), target.as_bytes(), b"")
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// Converts `tars` (bottom first) with layers in `dir/layers` and temp files in `dir/tmp`.
fn convert(dir: &std::path::Path, tars: Vec<Vec<u8>>, o: &ConvertOptions) -> Result<Converted, ConvertError> {
    let (ldir, tmp) = (dir.join("layers"), dir.join("tmp"));
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let layers: Vec<LayerBlob> =
        tars.into_iter().enumerate().map(|(n, t)| write_layer(&ldir, n, t, Comp::Gzip)).collect();
    convert_layers(&layers, o, &tmp, &|_| {})
}

/// Everything under `dir` (relative paths), to show a conversion created nothing but its blobs.
fn tree_of(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn kind<'a>(conv: &'a Converted, path: &str) -> &'a Kind {
    let ino = conv.index.resolve(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    &conv.index.inodes[ino as usize].kind
}

fn layer_err(r: Result<Converted, ConvertError>) -> (Digest, String) {
    match r {
        Err(ConvertError::Layer { layer, reason }) => (layer, reason),
        other => panic!("expected a layer error, got {:?}", other.map(|c| c.summary)),
    }
}

#[test]
fn dotdot_and_absolute_names_stay_in_the_image_and_nothing_is_written_outside_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default()
        .file("../../../../etc/evil", b"escaped?")
        .file("/abs/file", b"absolute")
        .file("a/../../b", b"up and over")
        .file("./c/./d", b"dots")
        .hardlink("hl-up", "../../../abs/file")
        .hardlink("hl-abs", "/abs/file")
        .finish();
    let conv = convert(dir.path(), vec![tar], &opts()).unwrap();
    // Clamped at the root, as containerd's unpack does (filepath.Clean + RootPath).
    assert_eq!(read_file(&conv, "/etc/evil"), b"escaped?");
    assert_eq!(read_file(&conv, "/abs/file"), b"absolute");
    assert_eq!(read_file(&conv, "/b"), b"up and over");
    assert_eq!(read_file(&conv, "/c/d"), b"dots");
    assert!(conv.index.resolve(b"/a").is_none(), "a/../b creates no a");
    let f = conv.index.resolve(b"/abs/file");
    assert_eq!(conv.index.resolve(b"/hl-up"), f, "hardlink target clamped at the root");
    assert_eq!(conv.index.resolve(b"/hl-abs"), f, "absolute hardlink target is inside the image");
    // The only files: the layer blob, and data blobs (digest-named) in tmp.
    let files = tree_of(dir.path());
    assert!(
        files.iter().all(|f| f == "layers" || f == "layers/layer0" || f == "tmp" || f.starts_with("tmp/blob-")),
        "{files:?}"
    );
    assert!(!dir.path().parent().unwrap().join("etc/evil").exists());
    Index::decode(&conv.index.encode()).unwrap();
}

#[test]
fn symlinks_pointing_outside_are_kept_verbatim_and_followed_only_inside_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let lower = TarBuilder::new()
        .dir("usr/lib/", 0o755)
        .link(tar::EntryType::Symlink, "lib", "usr/lib")
        .link(tar::EntryType::Symlink, "shadow", "/etc/shadow")
        .link(tar::EntryType::Symlink, "up", "../../../../..")
        .link(tar::EntryType::Symlink, "abs", "/opt/app")
        .file("usr/lib/gone", b"whited out through the lib symlink")
        .finish();
    let upper = RawTar::default()
        .file("lib/x.so", b"through a relative symlink")
        .file("up/etc/passwd2", b"through a symlink above the root")
        .file("abs/bin/tool", b"through an absolute symlink to a missing dir")
        .file("lib/.wh.gone", b"")
        .hardlink("hl", "lib/x.so")
        .finish();
    let conv = convert(dir.path(), vec![lower, upper], &opts()).unwrap();
    // Targets are data: the container's kernel resolves them inside its root.
    assert_eq!(kind(&conv, "/shadow"), &Kind::Symlink { target: b"/etc/shadow".to_vec() });
    assert_eq!(kind(&conv, "/up"), &Kind::Symlink { target: b"../../../../..".to_vec() });
    assert_eq!(kind(&conv, "/lib"), &Kind::Symlink { target: b"usr/lib".to_vec() }, "not replaced by a directory");
    // Entries under a symlinked directory land where containerd's unpack puts them.
    assert_eq!(read_file(&conv, "/usr/lib/x.so"), b"through a relative symlink");
    assert_eq!(read_file(&conv, "/etc/passwd2"), b"through a symlink above the root");
    assert_eq!(read_file(&conv, "/opt/app/bin/tool"), b"through an absolute symlink to a missing dir");
    assert!(conv.index.resolve(b"/usr/lib/gone").is_none(), "whiteout through a symlinked parent");
    assert_eq!(conv.index.resolve(b"/hl"), conv.index.resolve(b"/usr/lib/x.so"), "hardlink through a symlinked parent");
    Index::decode(&conv.index.encode()).unwrap();
}

#[test]
fn symlink_loops_in_a_path_are_refused_naming_layer_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default().symlink("a", "b").symlink("b", "/a").file("a/x", b"x").finish();
    let (layer, reason) = layer_err(convert(dir.path(), vec![tar.clone()], &opts()));
    assert_eq!(layer, Digest::of(&gz(&tar)));
    assert!(reason.contains("tar entry 2 (a/x)") && reason.contains("symlink loop"), "{reason}");
}

#[test]
fn symlinks_that_expand_into_long_paths_have_a_bounded_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = TarBuilder::new().dir("x/", 0o755);
    // 1,600 components that resolve back to the root: each entry below `s` walks them all.
    let mut h = TarBuilder::header(tar::EntryType::Symlink, 0o777, 0);
    tar.0.append_link(&mut h, "s", "x/../".repeat(800)).unwrap();
    for n in 0..1000 {
        tar = tar.file(&format!("s/f{n}"), b"");
    }
    let (_, reason) = layer_err(convert(dir.path(), vec![tar.finish()], &opts()));
    assert!(reason.contains("(s/f") && reason.contains("too many steps"), "{reason}");
    // A few such entries are fine, and land where the symlink points.
    let dir = tempfile::tempdir().unwrap();
    let mut tar = TarBuilder::new().dir("x/", 0o755);
    let mut h = TarBuilder::header(tar::EntryType::Symlink, 0o777, 0);
    tar.0.append_link(&mut h, "s", "x/../".repeat(800)).unwrap();
    let conv = convert(dir.path(), vec![tar.file("s/f", b"f").finish()], &opts()).unwrap();
    assert_eq!(read_file(&conv, "/f"), b"f");
}

#[test]
fn hardlinks_to_missing_targets_or_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default().file("f", b"f").hardlink("bad", "nope/f").finish();
    let (_, reason) = layer_err(convert(dir.path(), vec![tar], &opts()));
    assert!(reason.contains("tar entry 1 (bad)") && reason.contains("hardlink to /nope/f: no such file"), "{reason}");
    let dir = tempfile::tempdir().unwrap();
    let tar = TarBuilder::new().dir("d/", 0o755).link(tar::EntryType::Link, "bad", "d").finish();
    let (_, reason) = layer_err(convert(dir.path(), vec![tar], &opts()));
    assert!(reason.contains("tar entry 1 (bad)") && reason.contains("a directory"), "{reason}");
    // A hardlink whose target a later entry of the same layer creates is just as missing.
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::default().hardlink("early", "f").file("f", b"f").finish();
    let (_, reason) = layer_err(convert(dir.path(), vec![tar], &opts()));
    assert!(reason.contains("tar entry 0 (early)"), "{reason}");
}

#[test]
fn device_nodes_are_metadata_only() {
    let dir = tempfile::tempdir().unwrap();
    let tar = TarBuilder::new()
        .special(tar::EntryType::Block, "dev/sda", 8, 0)
        .special(tar::EntryType::Char, "dev/mem", 1, 1)
        .special(tar::EntryType::Char, "dev/big", 4095, 1 << 20)
        .special(tar::EntryType::Fifo, "dev/fifo", 0, 0)
        .finish();
    let conv = convert(dir.path(), vec![tar], &opts()).unwrap();
    assert_eq!(kind(&conv, "/dev/sda"), &Kind::BlockDevice { major: 8, minor: 0 });
    assert_eq!(kind(&conv, "/dev/mem"), &Kind::CharDevice { major: 1, minor: 1 });
    assert_eq!(kind(&conv, "/dev/big"), &Kind::CharDevice { major: 4095, minor: 1 << 20 });
    assert_eq!(kind(&conv, "/dev/fifo"), &Kind::Fifo);
    assert_eq!(conv.index.inodes[conv.index.resolve(b"/dev/mem").unwrap() as usize].mode, 0o600);
    assert!(tree_of(&dir.path().join("tmp")).is_empty(), "no file content, so no blob, and no node on disk");
    Index::decode(&conv.index.encode()).unwrap();
}

#[test]
fn oversized_pax_headers_and_xattrs_are_refused() {
    let huge = vec![b'x'; 2 * layers::MAX_EXTENSION_BYTES as usize];
    let (deep, long) = ("p/".repeat(2100), "n".repeat(256));
    type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![("SCHILY.xattr.user.big", &huge)], "extension headers"),
        (vec![("SCHILY.xattr.user.v", &[b'v'; 64 * 1024 + 1])], "user.v: value of 65537 bytes exceeds 65536"),
        (vec![("SCHILY.xattr.", b"empty name")], "is empty, holds NUL"),
        (vec![("path", b"a\0b")], "entry name contains NUL"),
        (vec![("path", deep.as_bytes())], "exceeds 4096"),
        (vec![("path", long.as_bytes())], "longer than 255"),
    ];
    for (pax, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let tar = TarBuilder::new().file("ok", b"fine").pax_file("f", b"data", &pax).finish();
        let (_, reason) = layer_err(convert(dir.path(), vec![tar], &opts()));
        assert!(reason.contains("tar entry 1") && reason.contains(want), "want {want:?}: {reason}");
    }
    // A GNU long name that is too long for any path.
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = TarBuilder::header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut h, "d/".repeat(3000) + "f", &b"x"[..]).unwrap();
    let (_, reason) = layer_err(convert(dir.path(), vec![b.into_inner().unwrap()], &opts()));
    assert!(reason.contains("tar entry 0: path of 6001 bytes exceeds 4096"), "{reason}");
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn decompression_bombs_stop_at_the_layer_size_limit() {
    let zeros = vec![0u8; 32 << 20];
    let tar = TarBuilder::new().file("small", b"small").file("bomb", &zeros).finish();
    let mut o = opts();
    o.limits.max_layer_size = 4 << 20;
    for comp in [Comp::Gzip, Comp::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let layer = write_layer(dir.path(), 0, tar.clone(), comp);
        assert!(layer.size < (32 << 20) / 100, "a bomb: {} bytes inflate to 32 MiB", layer.size);
        let (digest, reason) = layer_err(convert_layers(std::slice::from_ref(&layer), &o, dir.path(), &|_| {}));
        assert_eq!(digest, layer.digest);
        assert!(
            reason.contains("tar entry 1 (bomb)") && reason.contains("larger than the limit of 4194304 bytes"),
            "{reason}"
        );
        assert!(reason.contains("--max-layer-size"), "says what to do: {reason}");
    }
    // The same layer under the default limit converts.
    let dir = tempfile::tempdir().unwrap();
    let conv = convert(dir.path(), vec![tar], &opts()).unwrap();
    assert_eq!(read_file(&conv, "/bomb").len(), 32 << 20);
    assert_eq!(conv.summary.unique_chunks, 2, "zeros are one chunk of {CS} bytes, stored once");
}

#[test]
fn whiteouts_in_odd_places() {
    let dir = tempfile::tempdir().unwrap();
    let lower = TarBuilder::new()
        .file("keep", b"keep")
        .file("file", b"a file, not a directory")
        .dir("d/", 0o755)
        .file("d/x", b"x")
        .file("top", b"hidden by the root's opaque marker in layer 3")
        .finish();
    let upper = RawTar::default()
        .file(".wh.", b"")
        .file(".wh..", b"")
        .file(".wh...", b"")
        .file("file/.wh.x", b"")
        .file("missing/.wh.y", b"")
        .file("new/.wh..wh..opq", b"")
        .file("new/n", b"n")
        .file("d/.wh.nothing", b"")
        .finish();
    let conv = convert(dir.path(), vec![lower.clone(), upper.clone()], &opts()).unwrap();
    assert_eq!(read_file(&conv, "/keep"), b"keep", "whiteouts of '', '.' and '..' remove nothing");
    assert_eq!(read_file(&conv, "/file"), b"a file, not a directory", "a whiteout below a file leaves it a file");
    assert!(conv.index.resolve(b"/missing").is_none(), "a whiteout does not create its directory");
    assert_eq!(read_file(&conv, "/new/n"), b"n", "an opaque marker keeps its own layer's entries");
    assert_eq!(read_file(&conv, "/d/x"), b"x");
    // An opaque marker at the root hides every lower entry.
    let dir = tempfile::tempdir().unwrap();
    let top = RawTar::default().file(".wh..wh..opq", b"").file("only", b"only").finish();
    let conv = convert(dir.path(), vec![lower, upper, top], &opts()).unwrap();
    let Kind::Dir { entries } = kind(&conv, "/") else { panic!() };
    assert_eq!(entries.iter().map(|e| e.name.as_slice()).collect::<Vec<_>>(), vec![b"only".as_slice()]);
}

#[test]
fn data_of_non_files_is_skipped_without_losing_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let junk = vec![7u8; 3000];
    let tar = RawTar::default()
        .entry(tar::EntryType::Symlink, b"s", b"target", &junk)
        .entry(tar::EntryType::Directory, b"d/", b"", &junk)
        .file("after", b"still in sync")
        .finish();
    let conv = convert(dir.path(), vec![tar], &opts()).unwrap();
    assert_eq!(read_file(&conv, "/after"), b"still in sync");
    assert_eq!(kind(&conv, "/s"), &Kind::Symlink { target: b"target".to_vec() });
}
