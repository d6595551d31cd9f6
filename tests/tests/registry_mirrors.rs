//! hosts.toml mirrors with real registries (issue 11 acceptance): a second docker-registry runs as a
//! pull-through cache (`proxy: remoteurl:`) in front of the origin, named as the mirror in
//! containerd's hosts.toml, as a cluster cache is.
//!
//! - Every lazy read of a mount goes to the mirror; the origin serves our client nothing (only the
//!   mirror's own fills).
//! - Mirror killed mid-run: the next uncached read succeeds from the origin, delayed by at most about
//!   a second, and only that one; the mirror restarted: later reads use it again.
//! - A mirror that drops connection attempts or never answers (a cache still starting behind a full
//!   backlog) costs one short timeout per mount, not one per read.
//! - A node that reaches the registry only through the mirror (the server entry is dead) mounts and
//!   reads a lazy image.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions, Stats};
use harness::prerequisites_met;
use harness::registry::{free_port, AccessLine, Registry, StartOptions};
use harness::scenario::{publish_and_convert, read_errno, wait_until, Published, VFS_PREREQS};

const MIB: u64 = 1024 * 1024;
const FILES: u64 = 6;

fn image() -> Image {
    let mut layer = Layer::new().add(Entry::dir("data"));
    for i in 0..FILES {
        layer = layer.add(Entry::random_file(&format!("data/f{i}.bin"), 100 + i, MIB));
    }
    Image::new(vec![layer])
}

fn content(i: u64) -> Vec<u8> {
    Content::Random { seed: 100 + i, len: MIB }.to_vec()
}

/// `<dir>/<registry>/hosts.toml` with one mirror before the server, as containerd reads it.
fn write_hosts(dir: &Path, registry: &str, server: &str, mirror: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    let toml = format!(
        "server = \"http://{server}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(d.join("hosts.toml"), toml).unwrap();
}

fn mount_with_hosts(published: &Published, hosts: &Path) -> LazyMount {
    let opts = MountOptions {
        deadline: Some(10),
        extra: vec!["--hosts-dir".into(), hosts.display().to_string()],
        ..Default::default()
    };
    LazyMount::start(&published.lazy, opts).expect("mounting through hosts.toml")
}

/// Blob GETs our client (lazyctl) sent to `registry` since `offset`.
fn our_blob_gets(registry: &Registry, offset: u64) -> Vec<AccessLine> {
    // The access log line is written when the response completes: let it land.
    std::thread::sleep(Duration::from_millis(200));
    registry.requests_since(offset).unwrap().into_iter().filter(|l| l.is_ours() && l.is_blob_get()).collect()
}

fn host_bytes(stats: &Stats, host: &str) -> u64 {
    stats.hosts.get(host).map_or(0, |h| h.bytes)
}

fn timed_file(mount: &LazyMount, i: u64) -> Duration {
    let start = Instant::now();
    let bytes =
        read_errno(&mount.join(&format!("data/f{i}.bin"))).unwrap_or_else(|e| panic!("reading f{i}: errno {e}"));
    let took = start.elapsed();
    assert!(bytes == content(i), "f{i}: wrong bytes");
    took
}

#[test]
fn reads_go_to_the_mirror_fail_over_within_a_second_and_come_back() {
    harness::init_logging();
    if !prerequisites_met("registry_mirrors", VFS_PREREQS) {
        return;
    }
    let origin = Registry::start().expect("starting the origin registry");
    let published = publish_and_convert(&origin, &image(), "mirrored", &[]).expect("publish and convert");
    let mut mirror = Registry::start_with(StartOptions {
        pull_through: Some(format!("http://{}", origin.host())),
        ..Default::default()
    })
    .expect("starting the pull-through mirror");
    let hosts = tempfile::tempdir().unwrap();
    write_hosts(hosts.path(), &origin.host(), &origin.host(), &mirror.host());

    let origin_start = origin.log_offset();
    let mirror_start = mirror.log_offset();
    let mount = mount_with_hosts(&published, hosts.path());
    let first = timed_file(&mount, 0);
    let second = timed_file(&mount, 1);
    eprintln!("through the mirror: f0 {first:.1?} (cache fill), f1 {second:.1?}");
    let from_mirror = our_blob_gets(&mirror, mirror_start);
    let from_origin = our_blob_gets(&origin, origin_start);
    assert!(!from_mirror.is_empty(), "the mirror served no blob reads of ours");
    assert!(from_origin.is_empty(), "the origin served our client while the mirror was up: {from_origin:?}");
    // The origin only saw the mirror filling its cache.
    let fills = origin.requests_since(origin_start).unwrap().into_iter().filter(|l| l.is_blob_get()).count();
    assert!(fills > 0, "the mirror never fetched from the origin: is it a pull-through cache?");
    let stats = mount.stats().unwrap();
    assert!(host_bytes(&stats, &mirror.host()) >= 2 * MIB, "lazyctl stats hosts: {:?}", stats.hosts);
    assert_eq!(host_bytes(&stats, &origin.host()), 0, "lazyctl stats hosts: {:?}", stats.hosts);

    // Kill the mirror mid-run.
    mirror.stop();
    let origin_at_kill = origin.log_offset();
    let failover = timed_file(&mount, 2);
    let after = timed_file(&mount, 3);
    eprintln!("mirror down: first uncached read {failover:.1?}, the next {after:.1?}");
    assert!(failover < Duration::from_millis(1500), "the read that met the dead mirror took {failover:?} (limit ~1 s)");
    assert!(
        after < Duration::from_millis(500),
        "the read after failover took {after:?}: the dead mirror is tried again"
    );
    assert!(!our_blob_gets(&origin, origin_at_kill).is_empty(), "reads with the mirror down must come from the origin");
    let stats = mount.stats().unwrap();
    let failures = stats.hosts.get(&mirror.host()).map_or(0, |h| h.failures);
    assert!(failures <= 2, "the dead mirror was tried {failures} times: once per mount is the contract");

    // Restart it: once the background probe sees it, reads use it again.
    mirror.restart().expect("restarting the mirror");
    let probe_from = mirror.log_offset();
    let probed = wait_until(Duration::from_secs(15), || {
        mirror.requests_since(probe_from).unwrap().iter().any(|l| l.is_ours() && l.uri.starts_with("/v2/"))
    });
    assert!(probed, "no re-probe of the restarted mirror within 15 s");
    let (origin_back, mirror_back) = (origin.log_offset(), mirror.log_offset());
    timed_file(&mount, 4);
    timed_file(&mount, 5);
    assert!(!our_blob_gets(&mirror, mirror_back).is_empty(), "reads after the mirror came back did not use it");
    assert!(
        our_blob_gets(&origin, origin_back).is_empty(),
        "reads after the mirror came back still went to the origin"
    );
    eprintln!("lazyctl stats hosts: {:?}", mount.stats().unwrap().hosts);
    mount.unmount().expect("clean unmount");
}

#[test]
fn a_mirror_that_drops_connection_attempts_costs_one_short_timeout() {
    harness::init_logging();
    if !prerequisites_met("registry_mirrors", VFS_PREREQS) {
        return;
    }
    let origin = Registry::start().expect("starting the origin registry");
    let published = publish_and_convert(&origin, &image(), "blackhole", &[]).expect("publish and convert");
    // A listener that never accepts, its backlog filled: a connection attempt hangs (the SYN is
    // dropped) or connects and never gets an answer, as with a firewalled, overloaded or hung host.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let bh = blackhole.local_addr().unwrap();
    let _fill: Vec<TcpStream> =
        (0..8).filter_map(|_| TcpStream::connect_timeout(&bh, Duration::from_millis(200)).ok()).collect();
    let hosts = tempfile::tempdir().unwrap();
    write_hosts(hosts.path(), &origin.host(), &origin.host(), &bh.to_string());

    let start = Instant::now();
    let mount = mount_with_hosts(&published, hosts.path());
    let mount_took = start.elapsed();
    eprintln!("mount through a black-hole mirror took {mount_took:.1?}");
    // One connect timeout (1 s) or answer timeout (1 s + 3 s), once: not one per request of the mount.
    assert!(mount_took < Duration::from_secs(7), "mounting past a black-hole mirror took {mount_took:?}");
    let mut slowest = Duration::ZERO;
    for i in 0..FILES {
        slowest = slowest.max(timed_file(&mount, i));
    }
    eprintln!("slowest read with the black-hole mirror: {slowest:.1?}");
    assert!(slowest < Duration::from_millis(1500), "a read took {slowest:?}: the dead mirror costs more than once");
    let stats = mount.stats().unwrap();
    let failures = stats.hosts.get(&bh.to_string()).map_or(0, |h| h.failures);
    assert!(
        (1..=2).contains(&failures),
        "black-hole mirror attempts: {failures} (want one per mount); {:?}",
        stats.hosts
    );
    assert!(host_bytes(&stats, &origin.host()) >= FILES * MIB, "{:?}", stats.hosts);
    drop(blackhole);
    mount.unmount().expect("clean unmount");
}

#[test]
fn a_node_that_reaches_the_registry_only_through_the_mirror_runs_a_lazy_image() {
    harness::init_logging();
    if !prerequisites_met("registry_mirrors", VFS_PREREQS) {
        return;
    }
    let origin = Registry::start().expect("starting the origin registry");
    let published = publish_and_convert(&origin, &image(), "mirroronly", &[]).expect("publish and convert");
    let mirror = Registry::start_with(StartOptions {
        pull_through: Some(format!("http://{}", origin.host())),
        ..Default::default()
    })
    .expect("starting the pull-through mirror");
    // The node's view: the registry's own address is dead (nothing listens there); only the mirror
    // reaches it.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let hosts = tempfile::tempdir().unwrap();
    write_hosts(hosts.path(), &origin.host(), &dead, &mirror.host());
    let origin_start = origin.log_offset();
    let mount = mount_with_hosts(&published, hosts.path());
    for i in 0..FILES {
        timed_file(&mount, i);
    }
    let ours: Vec<AccessLine> =
        origin.requests_since(origin_start).unwrap().into_iter().filter(AccessLine::is_ours).collect();
    assert!(ours.is_empty(), "the node talked to the origin directly: {ours:?}");
    let stats = mount.stats().unwrap();
    assert!(host_bytes(&stats, &mirror.host()) >= FILES * MIB, "{:?}", stats.hosts);
    assert!(!stats.hosts.contains_key(&dead), "the dead server was tried: {:?}", stats.hosts);
    mount.unmount().expect("clean unmount");
}
