//! Integrity (issue 2 acceptance): one flipped byte in a data blob in the registry's storage makes
//! reading the affected file fail with EIO, the mount's log names the bad chunk, other files still
//! read, and the bad chunk never lands in the node cache.

use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions};
use harness::prerequisites_met;
use harness::registry::{flip_byte, Registry};
use harness::scenario::{find_files_containing, publish_and_convert, read_errno, VFS_PREREQS};

use harness::MIB;

#[test]
fn corrupt_chunk_is_eio_and_never_cached() {
    harness::init_logging();
    if !prerequisites_met("vfs_integrity", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let image = Image::new(vec![Layer::new()
        .add(Entry::dir("data"))
        .add(Entry::file("data/small.txt", "I stay readable\n"))
        .add(Entry::random_file("data/victim.bin", 42, 6 * MIB))
        .add(Entry::file("data/other.txt", "me too\n".repeat(1000)))]);
    let published = publish_and_convert(&registry, &image, "integrity", &[]).expect("publish and convert");

    // The random file dominates the data blobs (incompressible), so a byte near the middle of the
    // biggest blob is inside one of victim.bin's chunks. The offset is kept off 1 MiB multiples so
    // it lands in a chunk's payload (a digest mismatch), not in a zstd frame header.
    let blobs = registry.lazy_data_blobs(&published.lazy_repo, &published.tag).expect("listing data blobs");
    let (blob, size) = blobs.iter().max_by_key(|(_, s)| *s).expect("at least one data blob").clone();
    assert!(size >= 5 * MIB, "biggest data blob {blob} is only {size} bytes; expected victim.bin's chunks");
    flip_byte(&registry.blob_path(&blob), size / 2 + 54_321).expect("corrupting the blob");

    let mount = LazyMount::start(&published.lazy, MountOptions::default()).expect("mounting");
    let err = read_errno(&mount.join("data/victim.bin")).expect_err("reading a file with a corrupt chunk must fail");
    assert_eq!(err, libc::EIO, "corrupt chunk: want EIO, got errno {err}");
    assert_eq!(read_errno(&mount.join("data/small.txt")).expect("other files still read"), b"I stay readable\n");
    assert_eq!(
        read_errno(&mount.join("data/other.txt")).expect("other files still read"),
        "me too\n".repeat(1000).as_bytes()
    );
    // A second attempt fails the same way (no bad bytes were cached by the first).
    assert_eq!(read_errno(&mount.join("data/victim.bin")).expect_err("still corrupt"), libc::EIO);

    let log = mount.log_text();
    let named: Vec<&str> = log
        .match_indices("sha256:")
        .map(|(i, _)| &log[i + 7..(i + 7 + 64).min(log.len())])
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let mentions_chunk = log.lines().any(|l| l.contains("chunk") && l.contains("sha256:") && l.contains("victim.bin"));
    assert!(mentions_chunk, "the mount's log should name the file, the chunk and its digest; log:\n{log}");
    let blob_hex = blob.trim_start_matches("sha256:");
    let chunk_digests: Vec<&str> = named.iter().copied().filter(|h| *h != blob_hex).collect();
    assert!(!chunk_digests.is_empty(), "no chunk digest in the log:\n{log}");
    for hex in &chunk_digests {
        let found = find_files_containing(mount.cache_dir(), hex);
        assert!(found.is_empty(), "chunk {hex} named in the error log is in the cache: {found:?}");
    }
    let stats = mount.stats().expect("lazyctl stats");
    assert!(stats.verify_failures >= 1 || log.contains("mismatch"), "stats {stats:?}");
    mount.unmount().expect("clean unmount");
}
