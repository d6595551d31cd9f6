//! A lazy mount works as the lower layer of kernel overlayfs (issue 2, item 5), which is how a
//! container's writable root sits on top of it: reads come from the lazy image, writes and
//! deletions land in the upper dir (copy-up, whiteouts), and the lazy mount itself never changes.

use std::os::unix::fs::MetadataExt;

use harness::cleanup::{temp_dir, MountGuard};
use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions};
use harness::registry::Registry;
use harness::scenario::{publish_and_convert, VFS_PREREQS};
use harness::{prerequisites_met, Prereq};
use nix::mount::{mount, MsFlags};

#[test]
fn lazy_mount_as_overlayfs_lower_layer() {
    harness::init_logging();
    let mut prereqs = VFS_PREREQS.to_vec();
    prereqs.push(Prereq::Filesystem("overlay"));
    if !prerequisites_met("vfs_overlay", &prereqs) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let image = Image::new(vec![Layer::new()
        .add(Entry::dir("etc"))
        .add(Entry::file("etc/config", "original\n").mode(0o640).owner(1000, 1000))
        .add(Entry::file("etc/doomed", "to be deleted\n"))
        .add(Entry::random_file("etc/blob.bin", 9, 3 * 1024 * 1024 + 5))]);
    let published = publish_and_convert(&registry, &image, "overlay", &[]).expect("publish and convert");
    let lazy = LazyMount::start(&published.lazy, MountOptions::default()).expect("mounting");

    let dir = temp_dir("overlay");
    let (upper, work, merged) = (dir.path().join("upper"), dir.path().join("work"), dir.path().join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lazy.path().display(), upper.display(), work.display());
    mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .unwrap_or_else(|e| panic!("mount -t overlay -o {options} {}: {e}", merged.display()));
    // Declared after `lazy`, so it is unmounted first, also when an assertion fails.
    let overlay = MountGuard::new(&merged);

    let m = |rel: &str| merged.join(rel);
    assert_eq!(std::fs::read(m("etc/blob.bin")).unwrap(), image.content("etc/blob.bin").unwrap().to_vec());
    let meta = std::fs::metadata(m("etc/config")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o640, 1000, 1000), "metadata through overlayfs");

    std::fs::write(m("etc/config"), "changed in the container\n").expect("copy-up write");
    std::fs::remove_file(m("etc/doomed")).expect("delete (whiteout)");
    std::fs::write(m("etc/new"), "new file\n").expect("create");
    assert_eq!(std::fs::read_to_string(m("etc/config")).unwrap(), "changed in the container\n");
    assert!(!m("etc/doomed").exists());
    assert_eq!(std::fs::read_to_string(upper.join("etc/config")).unwrap(), "changed in the container\n");
    let meta = std::fs::metadata(upper.join("etc/config")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "copy-up keeps the owner");

    assert_eq!(std::fs::read_to_string(lazy.join("etc/config")).unwrap(), "original\n", "lower layer unchanged");
    assert_eq!(std::fs::read_to_string(lazy.join("etc/doomed")).unwrap(), "to be deleted\n");
    assert!(!lazy.join("etc/new").exists());
    let err = std::fs::write(lazy.join("etc/config"), "x").expect_err("the lazy mount is read-only");
    assert!(matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)), "{err}");

    drop(overlay);
    lazy.unmount().expect("clean unmount after the overlay is gone");
}
