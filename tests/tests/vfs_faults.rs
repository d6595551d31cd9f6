//! Faults under a live lazy mount (issue 12): a full cache disk, eviction at a tiny cap under many
//! readers, a cache changed or deleted underneath, a registry that flaps or trickles. In each, a
//! read returns the right bytes or EIO within the deadline, never a wrong byte or a hang, and the
//! mount recovers once the fault is gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::cleanup::{temp_dir, MountGuard};
use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{drop_caches, fetch_index, LazyMount, MountOptions};
use harness::link::{Link, Shape};
use harness::prerequisites_met;
use harness::registry::Registry;
use harness::scenario::{publish_and_convert, read_errno, timed_read, Published, VFS_PREREQS};
use sha2::{Digest as _, Sha256};

use harness::MIB;

/// An image of `n` random files `data/fI.bin` of `len` bytes each (seed `seed + I`).
fn files_image(registry: &Registry, name: &str, n: u64, len: u64, seed: u64) -> (Published, Vec<Vec<u8>>) {
    let mut layer = Layer::new().add(Entry::dir("data"));
    let mut contents = Vec::new();
    for i in 0..n {
        layer.push(Entry::random_file(&format!("data/f{i}.bin"), seed + i, len));
        contents.push(Content::Random { seed: seed + i, len }.to_vec());
    }
    let published = publish_and_convert(registry, &Image::new(vec![layer]), name, &[]).expect("publish and convert");
    (published, contents)
}

fn file(mount: &LazyMount, i: usize) -> PathBuf {
    mount.join(&format!("data/f{i}.bin"))
}

/// Chunk files in a cache directory: (path, whether the content hashes to the file's name).
fn cache_files(cache: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(cache.join("chunks")) else { return out };
    for dir in dirs.flatten() {
        for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let intact = std::fs::read(f.path()).is_ok_and(|b| hex::encode(Sha256::digest(&b)) == name);
            out.push((f.path(), intact));
        }
    }
    out
}

fn assert_no_partial_files(cache: &Path) {
    for (path, intact) in cache_files(cache) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(!name.starts_with(".tmp"), "a partial chunk file was left: {}", path.display());
        assert!(intact, "a cached chunk does not hash to its name: {}", path.display());
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    guard: MountGuard,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = temp_dir("tmpfs-cache");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lazy-test-cache"])
            .arg(dir.path())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mount -t tmpfs on {}", dir.path().display());
        Tmpfs { guard: MountGuard::new(dir.path()), _dir: dir }
    }

    fn path(&self) -> &Path {
        self.guard.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(self.path()).status();
        assert!(status.is_ok_and(|s| s.success()), "remount {}", self.path().display());
    }
}

#[test]
fn a_full_cache_disk_costs_caching_never_a_read_and_the_cache_recovers() {
    harness::init_logging();
    if !prerequisites_met("vfs_faults", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    // 40 MiB: more than the fetcher keeps in memory (32 MiB), so re-reads go to the node cache.
    let (published, contents) = files_image(&registry, "cache-full", 5, 8 * MIB, 300);
    let tmpfs = Tmpfs::mount("1m");
    let cache = tmpfs.path().join("cache");
    let mount =
        LazyMount::start(&published.lazy, MountOptions { cache_dir: Some(cache.clone()), ..Default::default() })
            .expect("mounting");

    for (i, want) in contents.iter().enumerate() {
        assert!(
            read_errno(&file(&mount, i)).expect("reading with the cache disk full") == *want,
            "file {i}: wrong bytes"
        );
    }
    let log = mount.log_text();
    let full_lines = log.matches("reads go on from the registry, uncached").count();
    assert_eq!(full_lines, 1, "one clear log line when the cache disk fills, not one per chunk:\n{log}");
    assert!(log.contains("No space left on device"), "the log line names the cause:\n{log}");
    assert_no_partial_files(&cache);

    tmpfs.resize("128m");
    assert!(drop_caches(), "cannot drop the page cache");
    for (i, want) in contents.iter().enumerate() {
        assert!(read_errno(&file(&mount, i)).expect("reading after space returned") == *want, "file {i}: wrong bytes");
    }
    let log = mount.log_text();
    assert!(log.contains("takes writes again"), "no log line when the cache recovered:\n{log}");
    let cached: u64 = cache_files(&cache).iter().filter_map(|(p, _)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    assert!(cached >= 8 * MIB, "the cache holds only {cached} bytes after space returned: it did not recover");
    assert_no_partial_files(&cache);
    mount.unmount().expect("clean unmount");
}

#[test]
fn eviction_at_a_tiny_cap_under_ten_mounts_never_fails_a_read() {
    const EACH: usize = 5;
    harness::init_logging();
    if !prerequisites_met("vfs_faults", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let (old, old_contents) = files_image(&registry, "cache-gc-a", 2 * EACH as u64, 2 * MIB, 400);
    let (new, new_contents) = files_image(&registry, "cache-gc-b", 2 * EACH as u64, 2 * MIB, 450);
    let cache = temp_dir("gc-cache");
    let opts = MountOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        extra: vec!["--cache-max-bytes".into(), (4 * MIB).to_string()],
        ..Default::default()
    };
    let start = |image: &str| -> Vec<Arc<LazyMount>> {
        (0..EACH).map(|_| Arc::new(LazyMount::start(image, opts.clone()).expect("mounting"))).collect()
    };
    // Each mount reads its own files, all at once.
    let round = |mounts: &[Arc<LazyMount>], contents: &Arc<Vec<Vec<u8>>>, pick: &dyn Fn(usize) -> Vec<usize>| {
        mounts
            .iter()
            .enumerate()
            .map(|(m, mount)| {
                let (mount, contents, files) = (mount.clone(), contents.clone(), pick(m));
                std::thread::spawn(move || {
                    for i in files {
                        let got =
                            read_errno(&file(&mount, i)).unwrap_or_else(|e| panic!("mount {m}: file {i}: errno {e}"));
                        assert!(got == contents[i], "mount {m}: file {i}: wrong bytes");
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let (old_contents, new_contents) = (Arc::new(old_contents), Arc::new(new_contents));
    let old_mounts = start(&old.lazy);
    for r in round(&old_mounts, &old_contents, &|m| vec![2 * m, 2 * m + 1]) {
        r.join().expect("a reader failed");
    }
    // Chunks younger than 5 s are never evicted: let the first image's age.
    std::thread::sleep(Duration::from_secs(6));
    assert!(drop_caches(), "cannot drop the page cache");
    // Five mounts of a second image fill the cache (each put evicts) while the first five
    // re-read each other's files, whose chunks are being evicted under them.
    let new_mounts = start(&new.lazy);
    let mut readers = round(&new_mounts, &new_contents, &|m| vec![2 * m, 2 * m + 1]);
    readers.extend(round(&old_mounts, &old_contents, &|m| vec![(2 * m + 2) % (2 * EACH), (2 * m + 3) % (2 * EACH)]));
    for r in readers {
        r.join().expect("a reader failed");
    }
    let left: u64 =
        cache_files(cache.path()).iter().filter_map(|(p, _)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let total = 2 * 2 * EACH as u64 * 2 * MIB;
    let evictions =
        old_mounts.iter().chain(&new_mounts).map(|m| m.log_text().matches("evicted").count()).sum::<usize>();
    eprintln!("cache holds {left} of the {total} bytes read (cap {}); {evictions} eviction passes logged", 4 * MIB);
    assert!(
        left + 2 * MIB <= total,
        "nothing was evicted ({left} of {total} bytes left): the test did not exercise eviction"
    );
    assert_no_partial_files(cache.path());
    for m in old_mounts.into_iter().chain(new_mounts) {
        Arc::into_inner(m).expect("readers are done").unmount().expect("clean unmount");
    }
}

#[test]
fn a_cache_changed_or_deleted_under_a_live_mount_is_never_served_and_is_refetched() {
    harness::init_logging();
    if !prerequisites_met("vfs_faults", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let (published, contents) = files_image(&registry, "cache-tamper", 8, 8 * MIB, 500);
    // Chunks only: with passthrough, a fully read file is served from its stored copy (whose own
    // corruption vfs_passthrough covers) and the tampered chunk would never be read.
    let opts = MountOptions { extra: vec!["--no-passthrough".into()], ..Default::default() };
    let mount = LazyMount::start(&published.lazy, opts).expect("mounting");
    for (i, want) in contents.iter().enumerate() {
        assert!(read_errno(&file(&mount, i)).expect("first read") == *want, "file {i}: wrong bytes");
    }
    // The first file's chunks are no longer in the fetcher's memory (32 MiB, first in first out, of 64).
    let index = fetch_index(&published.lazy).expect("fetching the index");
    let ino = index.resolve(b"data/f0.bin").expect("f0 in the index");
    let vfs::index::Kind::File { chunks, .. } = &index.inode(ino).expect("inode").kind else {
        panic!("f0 is not a file")
    };
    let victim = mount.cache_dir().join("chunks").join(&chunks[0].digest.hex()[..2]).join(chunks[0].digest.hex());
    let mut bytes = std::fs::read(&victim).expect("f0's first chunk is cached");
    bytes[1000] ^= 0x40;
    std::fs::write(&victim, &bytes).expect("flipping a byte of a cached chunk");

    let before = mount.stats().expect("stats").requests;
    assert!(drop_caches(), "cannot drop the page cache");
    assert!(
        read_errno(&file(&mount, 0)).expect("reading over a corrupted cache file") == contents[0],
        "served a corrupted chunk"
    );
    let log = mount.log_text();
    assert!(
        log.contains("removing the corrupt file"),
        "the corruption was not reported (stats {:?}):\n{log}",
        mount.stats()
    );
    assert!(mount.stats().expect("stats").requests > before, "the corrupted chunk was not fetched again");

    // The whole cache directory removed under the mount.
    std::fs::remove_dir_all(mount.cache_dir()).expect("removing the cache dir");
    let before = mount.stats().expect("stats").requests;
    assert!(drop_caches(), "cannot drop the page cache");
    for (i, want) in contents.iter().enumerate() {
        assert!(
            read_errno(&file(&mount, i)).expect("reading with the cache dir gone") == *want,
            "file {i}: wrong bytes"
        );
    }
    assert!(
        mount.stats().expect("stats").requests > before,
        "nothing was fetched again after the cache dir was removed"
    );
    assert!(!cache_files(mount.cache_dir()).is_empty(), "the cache did not come back");
    assert_no_partial_files(mount.cache_dir());
    mount.unmount().expect("clean unmount");
}

/// A mount of `published` whose registry traffic goes through `link` (index and data blobs).
fn mount_through(link: &Link, registry: &Registry, published: &Published, deadline: u64) -> LazyMount {
    let port = link.route(registry.port()).expect("routing the link");
    let via = |r: &str| r.replacen(&registry.host(), &format!("127.0.0.1:{port}"), 1);
    let opts = MountOptions {
        deadline: Some(deadline),
        extra: vec!["--blob-repo".into(), via(&registry.reference(&published.lazy_repo))],
        ..Default::default()
    };
    LazyMount::start(&via(&published.lazy), opts).expect("mounting through the link")
}

#[test]
fn a_flapping_registry_gives_right_bytes_or_eio_and_never_hangs() {
    const DEADLINE: u64 = 3;
    harness::init_logging();
    if !prerequisites_met("vfs_faults", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let (published, contents) = files_image(&registry, "flapping", 48, MIB, 600);
    // 32 Mbit/s: the 48 MiB take ~12 s to arrive, so reads meet many cuts.
    let link = Link::new(Shape::new(Duration::from_millis(2), 32.0)).expect("link");
    let mount = Arc::new(mount_through(&link, &registry, &published, DEADLINE));
    let contents = Arc::new(contents);
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(2 * DEADLINE + 2);
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (mount, contents, stop) = (mount.clone(), contents.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut eio) = (0, 0);
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let n = i % contents.len();
                    let (result, took) = timed_read(&file(&mount, n));
                    assert!(took < limit, "reader {r}: file {n} took {took:?} (deadline {DEADLINE} s): a hang");
                    match result {
                        Ok(got) => {
                            assert!(got == contents[n], "reader {r}: file {n}: wrong bytes");
                            ok += 1;
                        }
                        Err(errno) => {
                            assert_eq!(errno, libc::EIO, "reader {r}: file {n}: errno {errno}, want EIO");
                            eio += 1;
                        }
                    }
                    i += 1;
                }
                (ok, eio)
            })
        })
        .collect();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        cut = !cut;
        link.set_cut(cut);
    }
    link.set_cut(false);
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut eio) = (0, 0);
    for r in readers {
        let (o, e) = r.join().expect("a reader failed");
        ok += o;
        eio += e;
    }
    eprintln!("30 s of a registry flapping every second: {ok} whole-file reads right, {eio} EIO");
    assert!(ok > 0, "no read succeeded while the registry flapped");
    // Spans still on their way share the slow link with what follows: let them land or time out.
    std::thread::sleep(Duration::from_secs(DEADLINE + 1));
    // Afterwards everything reads, each file on its first try.
    for (n, want) in contents.iter().enumerate() {
        let got = read_errno(&file(&mount, n))
            .unwrap_or_else(|e| panic!("file {n} after the registry settled: errno {e}\n{}", mount.log_text()));
        assert!(got == *want, "file {n}: wrong bytes");
    }
    Arc::into_inner(mount).expect("readers are done").unmount().expect("clean unmount");
}

#[test]
fn a_trickling_registry_fails_each_read_at_the_deadline() {
    const DEADLINE: u64 = 3;
    harness::init_logging();
    if !prerequisites_met("vfs_faults", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let (published, contents) = files_image(&registry, "trickle", 2, 2 * MIB, 700);
    let link = Link::new(Shape::unshaped()).expect("link");
    let mount = mount_through(&link, &registry, &published, DEADLINE);
    // 4 KB/s from now on: a 1 MiB span would take minutes.
    link.set_shape(Shape::new(Duration::from_millis(2), 0.032));
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let first = std::fs::File::open(file(&mount, 0)).and_then(|mut f| std::io::Read::read(&mut f, &mut buf));
    let took = start.elapsed();
    eprintln!("one 64 KiB read(2) over a 4 KB/s link returned {first:?} after {took:.1?}");
    assert_eq!(first.expect_err("a trickle cannot deliver in time").raw_os_error(), Some(libc::EIO));
    assert!(
        took < Duration::from_secs(DEADLINE + 2),
        "read(2) took {took:?}: the {DEADLINE} s deadline was not honoured"
    );
    let (result, took) = timed_read(&file(&mount, 1));
    assert_eq!(result.expect_err("a trickle cannot deliver in time"), libc::EIO);
    assert!(took < Duration::from_secs(2 * DEADLINE + 2), "whole-file read took {took:?}: a hang");

    link.set_shape(Shape::unshaped());
    // Requests sent during the trickle still crawl (their bytes were queued at 4 KB/s) until their
    // deadline; later ones are fast.
    std::thread::sleep(Duration::from_secs(DEADLINE + 1));
    for (n, want) in contents.iter().enumerate() {
        let got = read_errno(&file(&mount, n))
            .unwrap_or_else(|e| panic!("file {n} once the link is fast again: errno {e}\n{}", mount.log_text()));
        assert!(got == *want, "file {n}: wrong bytes");
    }
    mount.unmount().expect("clean unmount");
}
