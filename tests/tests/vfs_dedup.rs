//! Dedup (issue 2, item 1): identical chunks are stored once, across layers of one image and
//! across images converted into the same repository. Measured as a user would: the bytes the
//! registry has to store, not the converter's own summary.

use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{convert, LazyMount, MountOptions};
use harness::prerequisites_met;
use harness::registry::Registry;
use harness::scenario::{mib, publish_and_convert, read_errno, VFS_PREREQS};

use harness::MIB;

/// Total bytes of every blob in the registry's storage.
fn stored_blob_bytes(registry: &Registry) -> u64 {
    let root = registry.storage_dir().join("docker/registry/v2/blobs");
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[test]
fn identical_chunks_are_stored_once() {
    harness::init_logging();
    if !prerequisites_met("vfs_dedup", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let size = 4 * MIB;
    // The same 4 MiB in both layers, under two names.
    let image = Image::new(vec![
        Layer::new().add(Entry::dir("a")).add(Entry::random_file("a/copy1.bin", 5, size)),
        Layer::new().add(Entry::dir("b")).add(Entry::random_file("b/copy2.bin", 5, size)),
    ]);
    let published = publish_and_convert(&registry, &image, "dedup", &[]).expect("publish and convert");
    let blobs = registry.lazy_data_blobs(&published.lazy_repo, &published.tag).expect("data blobs");
    let data: u64 = blobs.iter().map(|(_, s)| s).sum();
    eprintln!("two layers holding the same {}: data blobs {}", mib(size), mib(data));
    assert!(data < size + MIB / 2, "the same 4 MiB in two layers stored as {data} bytes of data blobs (want one copy)");

    // A second image with the same file plus a small one, converted into the same repository.
    let second = Image::new(vec![Layer::new()
        .add(Entry::dir("c"))
        .add(Entry::random_file("c/again.bin", 5, size))
        .add(Entry::file("c/note.txt", "new\n"))]);
    let layout = harness::cleanup::temp_dir("layout-dedup2");
    second.write_layout(layout.path(), "v2").unwrap();
    let source2 = registry.reference("src/dedup2:v2");
    harness::images::push(layout.path(), "v2", &source2).unwrap();
    let before = stored_blob_bytes(&registry);
    let lazy2 = registry.reference(&format!("{}:v2", published.lazy_repo));
    let summary = convert(&source2, &lazy2, &[]).expect("converting the second image into the same repository");
    let grew = stored_blob_bytes(&registry) - before;
    eprintln!("second image into the same repository: registry storage grew by {}\n{summary}", mib(grew));
    assert!(
        grew < MIB / 2,
        "converting an image whose 4 MiB file is already in the repository stored {grew} more bytes"
    );

    let mount = LazyMount::start(&lazy2, MountOptions::default()).expect("mounting the second image");
    assert_eq!(read_errno(&mount.join("c/again.bin")).unwrap(), second.content("c/again.bin").unwrap().to_vec());
    assert_eq!(read_errno(&mount.join("c/note.txt")).unwrap(), b"new\n");
    mount.unmount().expect("clean unmount");
}
