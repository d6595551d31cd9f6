//! Prefetch and record (issue 2): `lazyctl mount --record` writes the order in which files were
//! first read; `convert --prefetch-list` puts that list in the index; a mount with
//! `--prefetch prioritized` then fetches exactly those files' chunks without anyone reading them.

use std::time::Duration;

use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{convert, inspect_json, LazyMount, MountOptions};
use harness::registry::Registry;
use harness::scenario::{mib, publish_and_convert, read_errno, wait_until, VFS_PREREQS};
use harness::{cleanup, prerequisites_met};

use harness::MIB;
const READ_ORDER: [&str; 3] = ["app/p2.bin", "app/p1.bin", "app/p3.bin"];

#[test]
fn record_then_prioritized_prefetch() {
    harness::init_logging();
    if !prerequisites_met("vfs_prefetch", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let mut layer = Layer::new().add(Entry::dir("app"));
    for i in 1..=3u64 {
        layer.push(Entry::random_file(&format!("app/p{i}.bin"), i, 2 * MIB));
        layer.push(Entry::random_file(&format!("app/q{i}.bin"), 10 + i, 2 * MIB));
    }
    let image = Image::new(vec![layer]);
    let published = publish_and_convert(&registry, &image, "prefetch", &[]).expect("publish and convert");
    let work = cleanup::temp_dir("prefetch");
    let record = work.path().join("record.txt");

    let opts = MountOptions { record: Some(record.clone()), ..Default::default() };
    let mount = LazyMount::start(&published.lazy, opts).expect("mounting with --record");
    for path in READ_ORDER {
        assert_eq!(read_errno(&mount.join(path)).expect("reading"), image.content(path).unwrap().to_vec(), "{path}");
    }
    mount.unmount().expect("clean unmount");
    let text = std::fs::read_to_string(&record).expect("the record file exists after unmount");
    let listed: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(listed, READ_ORDER, "record file should list the files read, in first-read order:\n{text}");

    let prioritized = registry.reference("lazy/prefetch:prioritized");
    let record_arg = record.to_string_lossy().into_owned();
    convert(&published.source, &prioritized, &["--prefetch-list", &record_arg]).expect("convert --prefetch-list");
    let plain = inspect_json(&published.lazy).expect("lazyctl inspect --json");
    let listed = inspect_json(&prioritized).expect("lazyctl inspect --json");
    assert_eq!(plain["prefetch"], 0, "no --prefetch-list, no prefetch list: {plain}");
    assert_eq!(listed["prefetch"], 3, "inspect shows the 3 listed files: {listed}");
    assert_eq!(listed["prefetch_bytes"], 3 * 2 * MIB, "{listed}");

    let opts = MountOptions { prefetch: "prioritized".into(), ..Default::default() };
    let mount = LazyMount::start(&prioritized, opts).expect("mounting with --prefetch prioritized");
    let wanted = 3 * 2 * MIB;
    let done = wait_until(Duration::from_secs(60), || mount.stats().is_ok_and(|s| s.bytes_fetched >= wanted));
    let stats = mount.stats().expect("lazyctl stats");
    eprintln!("after prefetch, nothing read: {stats:?} (fetched {})", mib(stats.bytes_fetched));
    assert!(done, "prioritized prefetch did not fetch the 3 listed files ({wanted} bytes) within 60 s: {stats:?}");
    assert_eq!(stats.bytes_served, 0, "nothing was read, yet bytes were served: {stats:?}");
    std::thread::sleep(Duration::from_secs(1));
    let settled = mount.stats().expect("lazyctl stats");
    assert!(
        settled.bytes_fetched < wanted + MIB,
        "prefetch fetched {} bytes: more than the 3 listed files (q*.bin must not be prefetched)",
        settled.bytes_fetched
    );
    for path in READ_ORDER {
        assert_eq!(read_errno(&mount.join(path)).expect("reading"), image.content(path).unwrap().to_vec(), "{path}");
    }
    let after = mount.stats().expect("lazyctl stats");
    assert_eq!(after.bytes_fetched, settled.bytes_fetched, "reading prefetched files must not fetch again: {after:?}");
    mount.unmount().expect("clean unmount");
}
