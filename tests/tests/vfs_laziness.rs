//! Laziness (issue 2 acceptance): after mounting a converted image of >= 100 MB with prefetch
//! off, reading one small file fetches under 5% of the image's bytes, per `lazyctl stats` AND per
//! the bytes the registry actually served (counted by the harness's proxy, not by lazyctl).

use harness::images::{Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions};
use harness::prerequisites_met;
use harness::registry::Registry;
use harness::scenario::{mib, publish_and_convert, VFS_PREREQS};

use harness::MIB;

#[test]
fn reading_one_small_file_fetches_under_5_percent() {
    harness::init_logging();
    if !prerequisites_met("vfs_laziness", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let mut base = Layer::new().add(Entry::dir("etc")).add(Entry::dir("srv"));
    for i in 0..4u64 {
        base.push(Entry::random_file(&format!("srv/blob{i}.bin"), 100 + i, 20 * MIB + i * 4099));
    }
    let mut app = Layer::new().add(Entry::dir("etc")).add(Entry::dir("app"));
    app.push(Entry::file("etc/hostname", "lazy-test\n"));
    app.push(Entry::file("etc/os-release", "NAME=\"lazy\"\nVERSION_ID=1\n"));
    for i in 0..3u64 {
        app.push(Entry::random_file(&format!("app/model{i}.bin"), 200 + i, 8 * MIB));
    }
    for i in 0..50 {
        app.push(Entry::file(&format!("app/conf{i}.txt"), format!("setting{i} = {}\n", i * 7).repeat(20)));
    }
    let image = Image::new(vec![base, app]);
    assert!(image.file_bytes() >= 100 * 1000 * 1000, "test image must be >= 100 MB");
    let published = publish_and_convert(&registry, &image, "big", &[]).expect("publish and convert");

    let served_before = registry.served_bytes();
    let mount = LazyMount::start(&published.lazy, MountOptions::default()).expect("mounting");
    let content = std::fs::read(mount.join("etc/hostname")).expect("reading /etc/hostname through the mount");
    assert_eq!(content, b"lazy-test\n");
    let stats = mount.stats().expect("lazyctl stats");
    let served = registry.served_bytes() - served_before;
    eprintln!(
        "image_bytes {} ; after reading one small file: lazyctl stats bytes_fetched {} bytes ({} requests), \
         registry served {} bytes (mount + read, manifests and index included)",
        mib(stats.image_bytes),
        stats.bytes_fetched,
        stats.requests,
        served
    );
    assert!(
        stats.image_bytes >= 100 * 1000 * 1000,
        "lazyctl stats image_bytes {} should report the image's >= 100 MB of file data",
        stats.image_bytes
    );
    let limit = stats.image_bytes / 20;
    assert!(
        stats.bytes_fetched < limit,
        "lazyctl stats: fetched {} >= 5% of {}",
        stats.bytes_fetched,
        stats.image_bytes
    );
    assert!(served < limit, "registry served {served} bytes >= 5% of the image's {} bytes", stats.image_bytes);
    assert!(stats.bytes_served >= content.len() as u64, "bytes_served {} counts the read", stats.bytes_served);
    mount.unmount().expect("clean unmount");
}
