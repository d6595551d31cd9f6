//! A node under load (issue 12): N lazy containers of one image started at once on one
//! containerd 1.6, sharing one node cache, each hashing the same 48 MiB file: every container
//! prints the right digest, the registry serves about one copy of the data (at most 1.2x what one
//! container reads, where each shim fetching on its own would make it Nx), and after delete
//! nothing is left (shims, mounts, cgroups). 10 and 50 with one shim per container; 10 and 30 in
//! one shim (one pod, through the sandbox annotation; `load_cri_pod` does 30 through CRI). Each
//! shim's peak RSS stays under a base plus a share per container it serves (README "Resources").
//! No timing is asserted; `bench-load` prints the figures.

use std::time::Duration;

use harness::containerd::{Containerd, StartOptions};
use harness::load::{self, LoadImage};
use harness::prereq::CONTAINERD_PREREQS;
use harness::registry::Registry;
use harness::{prerequisites_met, Prereq};

const DATA: u64 = 48 << 20;
/// A generous bound on one shim's peak RSS (VmHWM): a base (with the shim's one 32 MiB memory of
/// recently read chunks) plus a share per container it serves (each container's lazy mount has its
/// own FUSE threads and buffers). README "Resources" has the measured figures.
const RSS_BASE_MIB: u64 = 96;
const RSS_PER_CONTAINER_MIB: u64 = 8;

struct Node {
    ctrd: Containerd,
    image: LoadImage,
    config: std::path::PathBuf,
    cache: std::path::PathBuf,
    registry: Registry,
}

fn node(test: &str) -> Option<Node> {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Fuse]].concat();
    if !prerequisites_met(test, &prereqs) {
        return None;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    let image = load::publish(&registry, &registry.host(), "load", DATA).expect("publishing the load image");
    let ctrd = Containerd::start_with(&StartOptions::default()).expect("starting containerd");
    ctrd.pull(&image.lazy).expect("pulling the lazy stub image");
    let dir = ctrd.scratch("load");
    let cache = dir.join("cache");
    let config = load::shim_config(&dir, &cache, "none").expect("writing the shim config");
    Some(Node { ctrd, image, config, cache, registry })
}

fn check(node: &Node, n: usize, pod: bool) {
    let s = load::run_round(
        &node.ctrd,
        &node.registry,
        &node.image,
        &node.config,
        &node.cache,
        n,
        "c",
        pod,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| {
        panic!("{n} containers at once: {e:#}\ncontainerd log (tail):\n{}", load::tail(&node.ctrd.log(), 40))
    });
    log::info!(
        "{n} containers{}: all done in {:.2?}, registry {} blob bytes in {} requests for {} bytes read per container, \
         node_waits {}, passthrough opens {}, shim RSS peak sum {} KiB, max {} KiB, {} shims",
        if pod { " in one shim" } else { "" },
        s.all_done,
        s.blob_bytes,
        s.blob_requests,
        node.image.read_bytes,
        s.stats.node_waits,
        s.stats.passthrough_opens,
        s.rss.peak_sum_kib,
        s.rss.hwm_max_kib,
        s.rss.shims
    );
    assert!(s.wrong.is_empty(), "containers printed a wrong digest (want {}): {:?}", node.image.digest, s.wrong);
    let want_shims = if pod { 1 } else { n };
    assert_eq!(s.rss.shims, want_shims, "shims serving the {n} containers at once");
    let limit = node.image.read_bytes as f64 * 1.2;
    assert!(
        (s.blob_bytes as f64) <= limit,
        "the registry served {} blob bytes in {} requests for {n} containers reading {} bytes each: more than 1.2x one copy \
         (each shim fetched on its own?); node_waits {}",
        s.blob_bytes,
        s.blob_requests,
        node.image.read_bytes,
        s.stats.node_waits
    );
    let per_shim = if pod { n as u64 } else { 1 };
    let limit_mib = RSS_BASE_MIB + RSS_PER_CONTAINER_MIB * per_shim;
    assert!(
        s.rss.hwm_max_kib < limit_mib << 10,
        "a shim serving {per_shim} of the {n} containers peaked at {} KiB RSS: more than {limit_mib} MiB ({:?})",
        s.rss.hwm_max_kib,
        s.rss
    );
}

#[test]
fn load_ten_lazy_containers_one_shim_each_fetch_the_image_once() {
    let Some(node) = node("load_ten_lazy_containers_one_shim_each_fetch_the_image_once") else { return };
    check(&node, 10, false);
}

#[test]
fn load_fifty_lazy_containers_one_shim_each_fetch_the_image_once() {
    let Some(node) = node("load_fifty_lazy_containers_one_shim_each_fetch_the_image_once") else { return };
    check(&node, 50, false);
}

#[test]
fn load_ten_lazy_containers_in_one_shim_fetch_the_image_once() {
    let Some(node) = node("load_ten_lazy_containers_in_one_shim_fetch_the_image_once") else { return };
    check(&node, 10, true);
}

#[test]
fn load_thirty_lazy_containers_in_one_shim_fetch_the_image_once_with_bounded_rss() {
    let Some(node) = node("load_thirty_lazy_containers_in_one_shim_fetch_the_image_once_with_bounded_rss") else {
        return;
    };
    check(&node, 30, true);
}
