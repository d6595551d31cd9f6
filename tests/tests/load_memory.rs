//! Shim memory while `prefetch = "all"` streams a 1 GiB image (issue 12): a lazy container of
//! busybox + a 1 GiB file of incompressible bytes runs `sleep` while its shim prefetches the whole
//! image into the node cache over loopback; the shim's peak RSS (the kernel's VmHWM, so peaks between
//! samples count) stays under [`RSS_LIMIT`], the registry serves the image about once, and the
//! container then reads the whole file with the right digest. README "Resources" states the bound.
//! (30 containers in one pod shim: `load_node`.)

use std::time::{Duration, Instant};

use harness::containerd::{Containerd, StartOptions};
use harness::load::{self, RssSampler};
use harness::prereq::CONTAINERD_PREREQS;
use harness::registry::Registry;
use harness::scenario::wait_until;
use harness::{prerequisites_met, Prereq};

/// A generous bound on one shim's peak RSS; README "Resources" has the measured figure.
const RSS_LIMIT_MIB: u64 = 150;
const DATA: u64 = 1 << 30;

#[test]
fn shim_rss_stays_bounded_while_prefetch_all_streams_a_1_gib_image() {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Fuse]].concat();
    if !prerequisites_met("shim_rss_stays_bounded_while_prefetch_all_streams_a_1_gib_image", &prereqs) {
        return;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    let published = Instant::now();
    let image = load::publish(&registry, &registry.host(), "big", DATA).expect("publishing the 1 GiB image");
    eprintln!(
        "published busybox + 1 GiB ({} bytes of lazy data blobs) in {:.1?}",
        image.blob_bytes,
        published.elapsed()
    );
    let ctrd = Containerd::start_with(&StartOptions::default()).expect("starting containerd");
    ctrd.pull(&image.lazy).expect("pulling the lazy stub");
    let dir = ctrd.scratch("big");
    let config = load::shim_config(&dir, &dir.join("cache"), "all").expect("writing the shim config");

    let log_offset = registry.log_offset();
    let sampler = RssSampler::start(&ctrd, Duration::from_millis(50));
    let started = Instant::now();
    let sleep = ["sleep".to_string(), "100000".to_string()];
    let fleet = load::start_all(&ctrd, &image.lazy, &config, 1, "big", &sleep, None).expect("starting the container");
    let id = &fleet.ids[0];
    let mut stats = None;
    let prefetched = wait_until(Duration::from_secs(300), || {
        stats = load::stats_of(&ctrd, id).ok();
        stats.as_ref().is_some_and(|s| s.bytes_fetched as f64 >= image.blob_bytes as f64 * 0.99)
    });
    let streamed = started.elapsed();
    let during = sampler.now();
    assert!(
        prefetched,
        "the prefetch did not bring the image within 300 s: {stats:?} of {} blob bytes",
        image.blob_bytes
    );
    eprintln!(
        "prefetched {} bytes in {streamed:.1?}; shim RSS peak {} KiB (VmHWM {} KiB) over {} samples",
        stats.as_ref().unwrap().bytes_fetched,
        during.peak_max_kib,
        during.hwm_max_kib,
        during.samples
    );

    // The container reads the whole file, now from the node cache.
    let out = ctrd.ctr(&["task", "exec", "--exec-id", "hash", id, "sha256sum", &format!("/{}", load::DATA_FILE)]);
    assert!(
        out.code == 0 && out.stdout.starts_with(&image.digest),
        "sha256sum in the container: {:?} (want {})",
        out.all(),
        image.digest
    );
    let rss = sampler.stop();
    std::thread::sleep(Duration::from_millis(200));
    let blob_bytes: u64 =
        registry.requests_since(log_offset).unwrap().iter().filter(|r| r.is_blob_get()).map(|r| r.bytes).sum();
    fleet.delete_all(&ctrd).expect("deleting the container");
    let left = load::leftovers(&ctrd);
    assert!(left.is_empty(), "left behind: {left:?}");

    eprintln!(
        "after reading the file: shim VmHWM {} KiB; the registry served {blob_bytes} blob bytes",
        rss.hwm_max_kib
    );
    assert_eq!(rss.shims, 1, "one shim: {rss:?}");
    assert!(
        rss.hwm_max_kib < RSS_LIMIT_MIB << 10,
        "the shim's peak RSS was {} KiB while prefetching and serving a 1 GiB image: more than {RSS_LIMIT_MIB} MiB ({rss:?})",
        rss.hwm_max_kib
    );
    assert!(
        blob_bytes as f64 <= image.blob_bytes as f64 * 1.1,
        "the registry served {blob_bytes} blob bytes for an image of {} (prefetch and reads fetched twice?)",
        image.blob_bytes
    );
}
