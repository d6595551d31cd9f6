//! Warm reads by FUSE passthrough (issue 9): a fully cached file is written once into the verified
//! file store (`<cache>/files`) and later opens hand the kernel that file, so reads never reach the
//! lazy filesystem. Real FUSE mounts (`lazyctl mount`), as root.
//!
//! - a partially cached file is served the normal way; once complete it is stored and a later open
//!   passes through (counter `passthrough_opens`, and no bytes served by FUSE reads), bytes exact;
//!   an inode keeps one mode while any handle is open;
//! - a stored file with a byte flipped on disk is detected, removed, logged, never served; the file
//!   is read from its verified chunks and stored again;
//! - eviction of a stored file under a live passthrough open does not break the reader;
//! - the mount works as an overlayfs lower layer with passthrough opens through the overlay;
//! - with `--no-passthrough` (what a kernel without passthrough gets) reads work as before.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::cleanup::{temp_dir, MountGuard};
use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions};
use harness::registry::{flip_byte, Registry};
use harness::scenario::{publish_and_convert, wait_until, Published, VFS_PREREQS};
use harness::{prerequisites_met, Prereq};

use harness::MIB;
/// Bigger than the fetcher's largest span around a miss (16 MiB) plus the kernel's readahead, so
/// reading its first page leaves most of it uncached.
const BIG: u64 = 40 * MIB + 12_345;

fn image() -> Image {
    Image::new(vec![Layer::new()
        .add(Entry::dir("data"))
        .add(Entry::random_file("data/big.bin", 91, BIG))
        .add(Entry::random_file("data/a.bin", 92, 8 * MIB + 1))
        .add(Entry::random_file("data/b.bin", 93, 8 * MIB + 2))
        .add(Entry::file("data/small.txt", "a small file\n".repeat(100)))
        .add(Entry::file("data/empty", ""))])
}

fn setup(name: &str) -> Option<(Registry, Image, Published)> {
    harness::init_logging();
    let mut prereqs = VFS_PREREQS.to_vec();
    prereqs.push(Prereq::Filesystem("overlay"));
    if !prerequisites_met(name, &prereqs) {
        return None;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let image = image();
    let published = publish_and_convert(&registry, &image, name, &[]).expect("publish and convert");
    Some((registry, image, published))
}

fn mount_with(published: &Published, cache: &Path, extra: &[&str]) -> LazyMount {
    let opts = MountOptions {
        cache_dir: Some(cache.to_path_buf()),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..MountOptions::default()
    };
    LazyMount::start(&published.lazy, opts).expect("mounting")
}

/// Stored files (not temp files) under `<cache>/files`.
fn stored_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(cache.join("files")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if !f.file_name().to_string_lossy().starts_with(".tmp.") {
                out.push(f.path());
            }
        }
    }
    out
}

/// Waits until the file store holds a file of exactly `len` bytes; returns its path.
fn wait_stored(cache: &Path, len: u64) -> PathBuf {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(20), || {
        found = stored_files(cache).into_iter().find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == len));
        found.is_some()
    });
    assert!(
        ok,
        "no stored file of {len} bytes appeared under {} within 20 s: {:?}",
        cache.display(),
        stored_files(cache)
    );
    found.unwrap()
}

fn read_to_end(f: &mut File) -> Vec<u8> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).expect("reading");
    buf
}

#[test]
fn complete_files_pass_through_partial_ones_do_not() {
    let Some((_registry, image, published)) = setup("passthrough_basic") else { return };
    let cache = temp_dir("pt-cache");
    let mount = mount_with(&published, cache.path(), &[]);
    let big = mount.join("data/big.bin");
    let want = image.content("data/big.bin").unwrap().to_vec();

    // A partial read: served the normal way, and the file is not stored (most chunks are missing).
    let mut head = [0u8; 4096];
    File::open(&big).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &want[..4096]);
    std::thread::sleep(Duration::from_millis(500));
    let s = mount.stats().unwrap();
    assert_eq!(s.passthrough_opens, 0, "{s:?}");
    assert!(stored_files(cache.path()).is_empty(), "a partly cached file was stored: {:?}", stored_files(cache.path()));

    // Read it whole through handle A, and open B while A is open: B must use A's mode (cached),
    // even once the file could be stored.
    let mut a = File::open(&big).unwrap();
    assert!(read_to_end(&mut a) == want, "big.bin read through FUSE differs");
    let mut b = File::open(&big).unwrap();
    assert_eq!(mount.stats().unwrap().passthrough_opens, 0, "an inode with a cached handle open must stay cached");
    b.seek(SeekFrom::Start(BIG - 100)).unwrap();
    assert_eq!(read_to_end(&mut b), &want[want.len() - 100..]);
    drop((a, b));

    // Complete now: the release queues it, the store writes it, the next open passes through.
    let stored = wait_stored(cache.path(), BIG);
    let before = mount.stats().unwrap();
    let mut c = File::open(&big).unwrap();
    let mut d = File::open(&big).unwrap();
    assert!(read_to_end(&mut c) == want, "big.bin read by passthrough differs");
    d.seek(SeekFrom::Start(12_345)).unwrap();
    let mut mid = vec![0u8; 1 << 20];
    d.read_exact(&mut mid).unwrap();
    assert!(mid == want[12_345..12_345 + (1 << 20)]);
    let after = mount.stats().unwrap();
    assert_eq!(after.passthrough_opens - before.passthrough_opens, 2, "both opens pass through: {after:?}");
    assert_eq!(after.bytes_served, before.bytes_served, "passthrough reads must not reach the FUSE read path");
    assert!(after.files_stored >= 1, "{after:?}");
    drop((c, d));
    assert_eq!(std::fs::read(&stored).unwrap(), want, "the stored file is the file");

    // Small files too; empty files are never stored (nothing to read).
    assert_eq!(std::fs::read(mount.join("data/small.txt")).unwrap(), image.content("data/small.txt").unwrap().to_vec());
    wait_stored(cache.path(), 1300);
    let n = mount.stats().unwrap().passthrough_opens;
    assert_eq!(std::fs::read(mount.join("data/small.txt")).unwrap(), image.content("data/small.txt").unwrap().to_vec());
    assert_eq!(std::fs::read(mount.join("data/empty")).unwrap(), b"");
    assert_eq!(mount.stats().unwrap().passthrough_opens, n + 1);
    mount.unmount().expect("clean unmount");
}

#[test]
fn a_corrupt_stored_file_is_never_served() {
    let Some((_registry, image, published)) = setup("passthrough_corrupt") else { return };
    let cache = temp_dir("pt-cache");
    let want = image.content("data/a.bin").unwrap().to_vec();
    let first = mount_with(&published, cache.path(), &[]);
    assert!(std::fs::read(first.join("data/a.bin")).unwrap() == want);
    let stored = wait_stored(cache.path(), 8 * MIB + 1);
    first.unmount().expect("clean unmount");

    flip_byte(&stored, 5 * MIB + 777).expect("corrupting the stored file");
    let second = mount_with(&published, cache.path(), &[]);
    let got = std::fs::read(second.join("data/a.bin")).expect("the file still reads, from its chunks");
    assert!(got == want, "corrupt stored bytes were served");
    let s = second.stats().unwrap();
    assert_eq!((s.passthrough_opens, s.stored_file_failures), (0, 1), "{s:?}");
    let log = second.log_text();
    assert!(
        log.lines().any(|l| l.contains("corrupt on disk") && l.contains("/data/a.bin")),
        "the log must say which stored file was corrupt:\n{log}"
    );
    // Stored again from verified chunks, then passed through with the right bytes.
    wait_stored(cache.path(), 8 * MIB + 1);
    assert!(std::fs::read(second.join("data/a.bin")).unwrap() == want);
    assert_eq!(second.stats().unwrap().passthrough_opens, 1);
    second.unmount().expect("clean unmount");
}

#[test]
fn eviction_under_a_live_passthrough_open_keeps_the_reader_going() {
    let Some((registry, image, published)) = setup("passthrough_evict") else { return };
    // A second image over the same cache: reading it puts chunks nobody has fetched yet (the
    // first image's b.bin is already cached by the spans around a.bin).
    let other =
        Image::new(vec![Layer::new().add(Entry::dir("data")).add(Entry::random_file("data/c.bin", 94, 8 * MIB))]);
    let other_published =
        publish_and_convert(&registry, &other, "passthrough_evict_other", &[]).expect("publish and convert");
    let cache = temp_dir("pt-cache");
    // Cap 12 MiB: a.bin's chunks (8 MiB) plus its stored copy (8 MiB) are already over it, but
    // files younger than 5 s are never evicted.
    let mount = mount_with(&published, cache.path(), &["--cache-max-bytes", &(12 * MIB).to_string()]);
    let want = image.content("data/a.bin").unwrap().to_vec();
    assert!(std::fs::read(mount.join("data/a.bin")).unwrap() == want);
    let stored = wait_stored(cache.path(), 8 * MIB + 1);
    std::thread::sleep(Duration::from_secs(6));

    let mut reader = File::open(mount.join("data/a.bin")).unwrap();
    assert_eq!(mount.stats().unwrap().passthrough_opens, 1);
    let mut first_half = vec![0u8; 4 * MIB as usize];
    reader.read_exact(&mut first_half).unwrap();
    // That read made the stored copy the most recently used file in the cache (its LRU clock is
    // the atime, which the kernel moves on a first read); make it the oldest, as if the reader had
    // been reading it for a long time, so that eviction takes it from under the reader.
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(1000);
    File::open(&stored).unwrap().set_times(std::fs::FileTimes::new().set_accessed(long_ago)).unwrap();
    // Reading c.bin puts 8 MiB of new chunks: eviction removes the old ones, stored a.bin included.
    let second = mount_with(&other_published, cache.path(), &["--cache-max-bytes", &(12 * MIB).to_string()]);
    assert!(std::fs::read(second.join("data/c.bin")).unwrap() == other.content("data/c.bin").unwrap().to_vec());
    assert!(wait_until(Duration::from_secs(10), || !stored.exists()), "a.bin's stored copy was not evicted");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("reading on after eviction");
    first_half.extend_from_slice(&rest);
    assert!(first_half == want, "the passthrough reader saw different bytes after eviction");
    drop(reader);
    // A new open after eviction is served the normal way (the chunks are refetched).
    assert!(std::fs::read(mount.join("data/a.bin")).unwrap() == want);
    second.unmount().expect("clean unmount");
    mount.unmount().expect("clean unmount");
}

#[test]
fn overlay_on_a_passthrough_mount() {
    let Some((_registry, image, published)) = setup("passthrough_overlay") else { return };
    let cache = temp_dir("pt-cache");
    let lazy = mount_with(&published, cache.path(), &[]);
    let want = image.content("data/a.bin").unwrap().to_vec();
    assert!(std::fs::read(lazy.join("data/a.bin")).unwrap() == want);
    wait_stored(cache.path(), 8 * MIB + 1);

    let dir = temp_dir("pt-overlay");
    let (upper, work, merged) = (dir.path().join("upper"), dir.path().join("work"), dir.path().join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lazy.path().display(), upper.display(), work.display());
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(options.as_str()))
        .unwrap_or_else(|e| panic!("mount -t overlay -o {options} {}: {e}", merged.display()));
    let overlay = MountGuard::new(&merged);
    assert!(std::fs::read(merged.join("data/a.bin")).unwrap() == want, "a.bin through overlayfs");
    assert_eq!(lazy.stats().unwrap().passthrough_opens, 1, "the overlay's open of the lower file passes through");
    // Copy-up reads the lower file through passthrough too.
    let f = std::fs::OpenOptions::new().append(true).open(merged.join("data/a.bin")).expect("copy-up");
    drop(f);
    assert!(std::fs::read(upper.join("data/a.bin")).unwrap() == want, "copy-up copied the exact bytes");
    drop(overlay);
    lazy.unmount().expect("clean unmount after the overlay is gone");
}

#[test]
fn without_passthrough_reads_work_as_before() {
    let Some((_registry, image, published)) = setup("passthrough_off") else { return };
    let cache = temp_dir("pt-cache");
    let mount = mount_with(&published, cache.path(), &["--no-passthrough"]);
    let want = image.content("data/a.bin").unwrap().to_vec();
    for round in 0..3 {
        // Page cache dropped, so every round's read must go through FUSE again.
        let can_drop = harness::lazyctl::drop_caches();
        let before = mount.stats().unwrap();
        assert!(std::fs::read(mount.join("data/a.bin")).unwrap() == want, "round {round}");
        let after = mount.stats().unwrap();
        assert_eq!(after.passthrough_opens, 0, "{after:?}");
        if can_drop || round == 0 {
            assert!(after.bytes_served > before.bytes_served, "round {round}: reads go through FUSE");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        stored_files(cache.path()).is_empty(),
        "no file store without passthrough: {:?}",
        stored_files(cache.path())
    );
    mount.unmount().expect("clean unmount");
}
