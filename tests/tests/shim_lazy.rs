//! End-to-end: a LAZY image (converted with `lazyctl convert`) run through containerd (1.6, 1.7 and 2.1) and
//! `containerd-shim-lazy-v2`: the shim mounts the lazy filesystem in-process under the container's
//! overlay, the container runs before the image's content is downloaded, `lazyctl stats
//! <bundle>/lazy` shows how little was fetched, and a killed shim leaves nothing behind after
//! `ctr task delete` + `ctr container rm`.

use std::time::Duration;

use harness::containerd::{busybox_image, Containerd, StartOptions, Version, RUNTIME};
use harness::images::Entry;
use harness::prereq::CONTAINERD_PREREQS;
use harness::registry::Registry;
use harness::{prerequisites_met, wait_for, Prereq};

#[test]
fn shim_lazy_image_runs_fetches_little_and_cleans_up_after_a_shim_crash() {
    lazy_image_on("shim_lazy_image", Version::V1_6);
}

#[test]
fn shim_lazy_image_runs_fetches_little_and_cleans_up_after_a_shim_crash_on_1_7() {
    lazy_image_on("shim_lazy_image_on_1_7", Version::V1_7);
}

#[test]
fn shim_lazy_image_runs_fetches_little_and_cleans_up_after_a_shim_crash_on_2_1() {
    lazy_image_on("shim_lazy_image_on_2_1", Version::V2_1);
}

/// The scenario on containerd `version` (see harness::containerd::Version).
fn lazy_image_on(test: &str, version: Version) {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Fuse]].concat();
    if !prerequisites_met(test, &prereqs) {
        return;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    // busybox plus 64 MiB the container never reads.
    let mut image = busybox_image().unwrap();
    image.layers[0].push(Entry::dir("data"));
    image.layers[0].push(Entry::random_file("data/unused.bin", 7, 64 << 20));
    let published = harness::scenario::publish_and_convert(&registry, &image, "bb", &[]).expect("publish + convert");

    let ctrd =
        Containerd::start_with(&StartOptions { version, ..StartOptions::default() }).expect("starting containerd");
    let cfg_dir = ctrd.scratch("shimcfg");
    let cache = cfg_dir.join("cache");
    let cfg = cfg_dir.join("config.toml");
    std::fs::write(&cfg, format!("[cache]\ndir = \"{}\"\n[fetch]\nprefetch = \"none\"\n", cache.display())).unwrap();
    let cfg = cfg.display().to_string();
    ctrd.pull(&published.lazy).expect("pulling the lazy stub image");
    let served_before_runs = registry.served_bytes();

    // Foreground run: output and exit code as with a plain image.
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        &published.lazy,
        "l0",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!((out.code, out.stdout.as_str()), (3, "hi\n"), "{}\ncontainerd log:\n{}", out.all(), ctrd.log());
    // l0's start went into the image's start log in the node cache when its mount went away.
    let starts = || -> Vec<std::path::PathBuf> {
        let dir = std::fs::read_dir(cache.join("starts"));
        // Written as a dot-named temporary file, then renamed to the image's name.
        let named = |p: &std::path::PathBuf| !p.file_name().unwrap().to_string_lossy().starts_with('.');
        dir.map(|d| d.map(|e| e.unwrap().path()).filter(named).collect()).unwrap_or_default()
    };
    wait_for("l0's start log", Duration::from_secs(10), || !starts().is_empty());
    assert_eq!(starts().len(), 1, "one start log for the one image: {:?}", starts());
    let start_log = std::fs::read_to_string(&starts()[0]).unwrap();
    assert!(start_log.lines().any(|l| l == "l /bin/sh"), "the start looked up /bin/sh:\n{start_log}");

    // Detached run: the lazy mount is visible and its stats show a lazy start.
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        &published.lazy,
        "l1",
        "sleep",
        "1000",
    ])
    .unwrap();
    let bundle = ctrd.bundle("l1");
    let lazy = bundle.join("lazy");
    assert!(ctrd.mounts().contains(&lazy), "lazy FUSE mount at {}: {:?}", lazy.display(), ctrd.mounts());
    let out =
        ctrd.ctr(&["task", "exec", "--exec-id", "w", "l1", "sh", "-c", "echo written > /tmp/f; cat /tmp/f; ls /data"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "written\nunused.bin\n"), "{}", out.all());
    // l1's mount replayed it before l1 ran.
    let replayed = ctrd.log().lines().filter(|l| l.contains("replayed the image's start log (")).count();
    assert_eq!(replayed, 1, "l1's shim replays l0's start log once; containerd log:\n{}", ctrd.log());
    let stats = harness::lazyctl::run(&["stats", &lazy.display().to_string()]).expect("lazyctl stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let image_bytes = stats["image_bytes"].as_u64().unwrap();
    let fetched = stats["bytes_fetched"].as_u64().unwrap();
    assert!(image_bytes > 64 << 20, "{stats}");
    // Through FUSE requests, or (busybox being whole in the node cache after l0) passed through to
    // its verified stored copy.
    let read = stats["bytes_served"].as_u64().unwrap() + stats["passthrough_opens"].as_u64().unwrap();
    assert!(read > 0, "the container read through the mount: {stats}");
    // tests/run turns FUSE over io_uring on where the kernel has it: the shim's mount then uses it.
    let uring = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring").unwrap_or_default();
    if uring.trim() == "Y" {
        assert!(stats["uring_requests"].as_u64().unwrap() > 0, "FUSE over io_uring is on, but unused: {stats}");
    }
    // l0 fetched busybox into the node cache; l1 found it there.
    assert!(fetched * 10 < image_bytes, "fetched {fetched} of {image_bytes} bytes: not lazy: {stats}");
    let served = registry.served_bytes() - served_before_runs;
    assert!(
        served > 0 && served * 10 < image_bytes,
        "the registry served {served} of {image_bytes} bytes for both runs"
    );
    log::info!("lazy runs: registry served {served} of {image_bytes} image bytes; l1 stats {stats}");

    // SIGKILL the shim of the running lazy container: delete + rm must leave nothing.
    let init: i32 = ctrd
        .ctr_ok(&["task", "ls"])
        .unwrap()
        .lines()
        .find(|l| l.starts_with("l1 "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    // l0's shim exits on its own once containerd deleted l0 (after its unmount): wait for it.
    wait_for("l0's shim to exit", Duration::from_secs(20), || ctrd.shim_pids().len() == 1);
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for("the shim is gone", Duration::from_secs(10), || ctrd.shim_pids().is_empty());
    let _ = ctrd.ctr(&["task", "delete", "l1"]);
    ctrd.ctr_ok(&["container", "rm", "l1"]).unwrap();
    wait_for("the container's init is gone", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{init}")).exists()
    });
    assert_eq!(ctrd.mounts(), Vec::<std::path::PathBuf>::new(), "mounts left behind");
    assert_eq!(ctrd.leftover_cgroups(), Vec::<std::path::PathBuf>::new(), "cgroups left behind");
}
