//! Outage (issue 2 acceptance): with the registry stopped, cached files still read, an uncached
//! read fails with EIO within the configured deadline (no hang), and after the registry comes back
//! the same read succeeds on the same mount.

use std::time::Duration;

use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{drop_caches, LazyMount, MountOptions};
use harness::prerequisites_met;
use harness::registry::Registry;
use harness::scenario::{publish_and_convert, read_errno, timed_read, VFS_PREREQS};

use harness::MIB;
const DEADLINE: u64 = 5;

#[test]
fn registry_outage_fails_fast_and_recovers() {
    harness::init_logging();
    if !prerequisites_met("vfs_outage", VFS_PREREQS) {
        return;
    }
    let mut registry = Registry::start().expect("starting docker-registry");
    let image = Image::new(vec![Layer::new()
        .add(Entry::dir("srv"))
        .add(Entry::random_file("srv/a.bin", 1, 2 * MIB))
        .add(Entry::random_file("srv/b.bin", 2, 3 * MIB))]);
    let published = publish_and_convert(&registry, &image, "outage", &[]).expect("publish and convert");
    let (a, b) =
        (Content::Random { seed: 1, len: 2 * MIB }.to_vec(), Content::Random { seed: 2, len: 3 * MIB }.to_vec());

    let opts = MountOptions { deadline: Some(DEADLINE), ..Default::default() };
    let mount = LazyMount::start(&published.lazy, opts).expect("mounting");
    assert!(read_errno(&mount.join("srv/a.bin")).expect("reading A while the registry is up") == a, "A's bytes");

    registry.stop();
    if !drop_caches() {
        eprintln!("note: cannot drop the page cache; A may come from the kernel's page cache");
    }
    assert!(read_errno(&mount.join("srv/a.bin")).expect("cached A must read with the registry down") == a);

    // One read(2) of the first 64 KiB: what a process blocked on the outage sees first.
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let first = std::fs::File::open(mount.join("srv/b.bin")).and_then(|mut f| std::io::Read::read(&mut f, &mut buf));
    let first_took = start.elapsed();
    eprintln!("single 64 KiB read(2) during the outage returned {first:?} after {first_took:.1?}");
    assert_eq!(first.expect_err("uncached B cannot read with the registry down").raw_os_error(), Some(libc::EIO));
    assert!(
        first_took < Duration::from_secs(DEADLINE + 2),
        "a read(2) of uncached data took {first_took:?}: must fail within the deadline ({DEADLINE} s) + 2 s"
    );

    // Reading the whole file (std::fs::read: several read(2) calls, kernel readahead) must fail
    // too, and not hang.
    let (result, took) = timed_read(&mount.join("srv/b.bin"));
    eprintln!("uncached read during the outage returned {:?} after {took:.1?}", result.as_ref().err());
    assert_eq!(result.expect_err("uncached B cannot read with the registry down"), libc::EIO, "want EIO");
    let limit = Duration::from_secs(2 * DEADLINE + 2);
    assert!(took < limit, "whole-file read of uncached data took {took:?}: a hang (limit {limit:?})");

    // Once the registry is back, the very next read of B on the same mount must succeed. The only
    // grace is the filesystem's failure memo (a chunk that failed under 100 ms ago fails the
    // kernel's immediate retry at once), so wait a little longer than that: no longer poisoning.
    registry.restart().expect("restarting the registry on the same port and storage");
    std::thread::sleep(Duration::from_millis(300));
    let back = std::time::Instant::now();
    let result = read_errno(&mount.join("srv/b.bin"));
    eprintln!("after the restart B read in {:.1?}", back.elapsed());
    let bytes = result.unwrap_or_else(|errno| {
        panic!("B still fails with errno {errno} {:.1?} after the registry came back", back.elapsed())
    });
    assert!(bytes == b, "B's bytes after the outage");
    mount.unmount().expect("clean unmount");
}
