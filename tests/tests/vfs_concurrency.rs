//! Concurrency (issue 2 acceptance): 8 processes read the same cold files at once; each gets the
//! right bytes, and each chunk is fetched once: the fetch counters equal those of a single reader
//! on a fresh cache, and the registry serves about one copy.

use std::process::{Command, Stdio};

use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions, Stats};
use harness::prerequisites_met;
use harness::registry::Registry;
use harness::scenario::{mib, publish_and_convert, VFS_PREREQS};

use harness::MIB;
const READERS: usize = 8;

fn files() -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> =
        (0..4).map(|i| (format!("data/f{i}.bin"), 10 + i, 6 * MIB + i * 777)).collect();
    out.push(("data/tiny.bin".into(), 20, 3000));
    out
}

/// Reads every file in `readers` concurrent `sha256sum` processes; returns each one's hashes in
/// file order. Odd readers go through the files in reverse, so different chunks are cold at the
/// same moment, not only the same chunk.
fn read_all(mount: &LazyMount, readers: usize) -> Vec<Vec<String>> {
    let paths: Vec<_> = files().iter().map(|(p, ..)| mount.join(p)).collect();
    let children: Vec<_> = (0..readers)
        .map(|i| {
            let mut order = paths.clone();
            if i % 2 == 1 {
                order.reverse();
            }
            Command::new("sha256sum")
                .args(&order)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sha256sum")
        })
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let out = c.wait_with_output().expect("waiting for sha256sum");
            assert!(out.status.success(), "reader {i} failed: {}", String::from_utf8_lossy(&out.stderr));
            let mut hashes: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .collect();
            if i % 2 == 1 {
                hashes.reverse();
            }
            hashes
        })
        .collect()
}

fn pass(registry: &Registry, image: &str, readers: usize) -> (Stats, u64, Vec<Vec<String>>) {
    let before = registry.served_bytes();
    let mount = LazyMount::start(image, MountOptions::default()).expect("mounting");
    let outputs = read_all(&mount, readers);
    let stats = mount.stats().expect("lazyctl stats");
    mount.unmount().expect("clean unmount");
    (stats, registry.served_bytes() - before, outputs)
}

#[test]
fn eight_cold_readers_fetch_each_chunk_once() {
    harness::init_logging();
    if !prerequisites_met("vfs_concurrency", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let mut layer = Layer::new().add(Entry::dir("data"));
    for (path, seed, len) in files() {
        layer.push(Entry::random_file(&path, seed, len));
    }
    let image = Image::new(vec![layer]);
    let published = publish_and_convert(&registry, &image, "concurrency", &[]).expect("publish and convert");
    let expected: Vec<String> = files().iter().map(|(p, ..)| image.content(p).expect("in image").sha256()).collect();
    let data_blob_bytes: u64 = registry
        .lazy_data_blobs(&published.lazy_repo, &published.tag)
        .expect("data blobs")
        .iter()
        .map(|(_, s)| s)
        .sum();

    let (one, one_served, _) = pass(&registry, &published.lazy, 1);
    let (many, many_served, outputs) = pass(&registry, &published.lazy, READERS);
    eprintln!(
        "1 reader: fetched {} in {} requests, {} misses, registry served {}\n\
         {READERS} readers: fetched {} in {} requests, {} misses, registry served {}\n\
         data blobs total {}",
        mib(one.bytes_fetched),
        one.requests,
        one.cache_misses,
        mib(one_served),
        mib(many.bytes_fetched),
        many.requests,
        many.cache_misses,
        mib(many_served),
        mib(data_blob_bytes)
    );
    assert_eq!(outputs.len(), READERS);
    for (i, got) in outputs.iter().enumerate() {
        assert_eq!(got, &expected, "reader {i} got wrong bytes (sha256 per file, in file order)");
    }
    assert_eq!(many.bytes_fetched, one.bytes_fetched, "8 readers must fetch exactly what 1 reader fetches");
    // Which chunks a reader misses and which arrive in the span around another miss depends on
    // timing; that each chunk is fetched exactly once does not.
    assert_eq!(
        many.cache_misses + many.readahead_chunks,
        one.cache_misses + one.readahead_chunks,
        "8 readers must fetch the same chunks as 1 reader"
    );
    assert!(many.bytes_fetched <= data_blob_bytes, "fetched more than all data blobs: some chunk twice");
    assert!(
        many.requests <= one.requests.max(1) * 2,
        "8 readers sent {} requests vs {} for one reader",
        many.requests,
        one.requests
    );
    assert!(
        many_served <= one_served + one_served / 10 + 64 * 1024,
        "registry served {many_served} bytes to 8 readers vs {one_served} to one"
    );
}

/// Issue 12: processes sharing one node cache (one shim per pod, each with its own mount) fetch
/// each chunk once between them, through the cache's lock files.
#[test]
fn six_mounts_sharing_a_node_cache_fetch_each_chunk_once_between_them() {
    const MOUNTS: usize = 6;
    harness::init_logging();
    if !prerequisites_met("vfs_concurrency", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let mut layer = Layer::new().add(Entry::dir("data"));
    for (path, seed, len) in files() {
        layer.push(Entry::random_file(&path, seed + 100, len));
    }
    let image = Image::new(vec![layer]);
    let published = publish_and_convert(&registry, &image, "node-single-flight", &[]).expect("publish and convert");
    let expected: Vec<String> = files().iter().map(|(p, ..)| image.content(p).expect("in image").sha256()).collect();

    let (_, one_served, _) = pass(&registry, &published.lazy, 2);

    let shared = harness::cleanup::temp_dir("node-cache");
    let mounts: Vec<LazyMount> = (0..MOUNTS)
        .map(|_| {
            let opts = MountOptions { cache_dir: Some(shared.path().to_path_buf()), ..MountOptions::default() };
            LazyMount::start(&published.lazy, opts).expect("mounting")
        })
        .collect();
    let before = registry.served_bytes();
    let readers: Vec<_> = mounts
        .iter()
        .map(|m| {
            let paths: Vec<_> = files().iter().map(|(p, ..)| m.join(p)).collect();
            std::thread::spawn(move || {
                let out = Command::new("sha256sum").args(&paths).output().expect("sha256sum");
                assert!(out.status.success(), "sha256sum: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outputs: Vec<Vec<String>> = readers.into_iter().map(|t| t.join().expect("reader thread")).collect();
    let served = registry.served_bytes() - before;
    let stats: Vec<Stats> = mounts.iter().map(|m| m.stats().expect("lazyctl stats")).collect();
    for m in mounts {
        m.unmount().expect("clean unmount");
    }
    let waits: u64 = stats.iter().map(|s| s.node_waits).sum();
    let fetched: u64 = stats.iter().map(|s| s.bytes_fetched).sum();
    eprintln!(
        "1 mount: registry served {}; {MOUNTS} mounts on one node cache: registry served {}, fetched {} in all, {waits} chunks waited for a neighbour",
        mib(one_served),
        mib(served),
        mib(fetched)
    );
    for (i, got) in outputs.iter().enumerate() {
        assert_eq!(got, &expected, "mount {i} read wrong bytes (sha256 per file, in file order)");
    }
    assert!(
        served <= one_served + one_served / 5,
        "{MOUNTS} mounts sharing a node cache made the registry serve {served} bytes vs {one_served} for one mount (limit 1.2x)"
    );
    assert!(waits > 0, "no mount waited for another's fetch: the reads did not overlap, so the test proves nothing");
}
