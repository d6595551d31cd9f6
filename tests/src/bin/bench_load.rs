//! `cargo run --release -p lazy-tests --bin bench-load -- [--n 1,10,30,50] [--rounds 5] [--pod]`:
//! N lazy containers of one image (busybox + a 48 MiB random file that each container hashes with
//! sha256sum) started at once on one containerd, one shim each (with `--pod`, also all N in one
//! shim), sharing one node cache that is emptied before every round. Prints, per N, medians over
//! the rounds: time until the first and the last container printed the right digest, what the
//! registry served (blob bytes and requests, in total and per container, and as a multiple of
//! the data one container reads), and shim memory (peak sum of VmRSS over all shims, peak VmHWM of
//! one shim), and the time for all N as a multiple of the time for N=1 (NaN without N=1). The N
//! values are alternated (rotated each round). Prints figures; asserts no timing.
//!
//! Needs root, FUSE, containerd, ctr, docker-registry, skopeo and the workspace binaries
//! (`cargo build --release --workspace --bins`). See README "Benchmarks".

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use harness::containerd::{Containerd, StartOptions, Version};
use harness::link::{Link, Shape};
use harness::load::{self, Sample};
use harness::registry::Registry;

#[derive(Parser)]
#[command(
    name = "bench-load",
    about = "N lazy containers of one image started at once: time, registry bytes, shim RSS"
)]
struct Args {
    /// Comma-separated container counts.
    #[arg(long, default_value = "1,10,30,50", value_delimiter = ',')]
    n: Vec<usize>,
    /// Rounds per count (medians are printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Size of the file each container hashes, in MiB.
    #[arg(long, default_value_t = 48)]
    data_mib: u64,
    /// Also run each N with all containers in one shim (one pod, through the sandbox annotation).
    #[arg(long)]
    pod: bool,
    /// containerd version: 1.6 (Debian 12's), 1.7 or 2.1.
    #[arg(long, default_value = "1.6")]
    containerd: String,
    /// Round-trip time of the emulated link to the registry, in ms (0 with no --mbit: loopback).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Rate of the link in Mbit/s each way (default: unlimited).
    #[arg(long)]
    mbit: Option<f64>,
    /// Drop the page cache before every round (as on a cold node).
    #[arg(long)]
    drop_caches: bool,
}

fn main() -> Result<()> {
    harness::init_logging();
    let args = Args::parse();
    let version = Version::ALL
        .into_iter()
        .find(|v| v.label() == args.containerd)
        .with_context(|| format!("unknown containerd version {:?} (known: 1.6, 1.7, 2.1)", args.containerd))?;
    let shape = Shape {
        one_way_delay: Duration::from_secs_f64(args.rtt_ms / 2e3),
        rate_bps: args.mbit.map(|m| (m * 1e6) as u64),
    };

    let registry = Registry::start()?;
    let link = Link::new(Shape::unshaped())?;
    let host = format!("127.0.0.1:{}", link.route(registry.port())?);
    let image = load::publish(&registry, &host, "load", args.data_mib << 20)?;
    let ctrd = Containerd::start_with(&StartOptions { version, ..StartOptions::default() })?;
    ctrd.pull(&image.lazy)?;
    let dir = ctrd.scratch("bench-load");
    let cache = dir.join("cache");
    let config = load::shim_config(&dir, &cache, "none")?;
    link.set_shape(shape);
    println!(
        "containerd {}, link {shape}, image: busybox + {} MiB file ({:.1} MB of lazy data blobs); a container reads {:.1} MB",
        version.label(),
        args.data_mib,
        image.blob_bytes as f64 / 1e6,
        image.read_bytes as f64 / 1e6
    );

    let mut cells: Vec<(usize, bool)> = args.n.iter().map(|n| (*n, false)).collect();
    if args.pod {
        cells.extend(args.n.iter().filter(|n| **n > 1).map(|n| (*n, true)));
    }
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..args.rounds {
        for k in 0..cells.len() {
            let (n, pod) = cells[(k + round) % cells.len()];
            if args.drop_caches && !harness::lazyctl::drop_caches() {
                bail!("cannot drop the page cache (/proc/sys/vm/drop_caches): run as root");
            }
            let prefix = format!("r{round}{}n{n}-", if pod { "pod" } else { "" });
            let limit = Duration::from_secs(120 + 10 * n as u64);
            let s = load::run_round(&ctrd, &registry, &image, &config, &cache, n, &prefix, pod, limit).with_context(
                || format!("round {} with {n} containers{}", round + 1, if pod { " in one shim" } else { "" }),
            )?;
            if !s.wrong.is_empty() {
                bail!("round {}, N={n}: wrong output from {} containers: {:?}", round + 1, s.wrong.len(), s.wrong);
            }
            println!(
                "round {} N={n}{}: all done {:.2} s (first {:.2} s), registry {:.1} MB in {} blob requests, node_waits {}, \
                 shim RSS peak sum {:.1} MiB, max {:.1} MiB",
                round + 1,
                if pod { " (one shim)" } else { "" },
                s.all_done.as_secs_f64(),
                s.first_done.as_secs_f64(),
                s.blob_bytes as f64 / 1e6,
                s.blob_requests,
                s.stats.node_waits,
                s.rss.peak_sum_kib as f64 / 1024.0,
                s.rss.hwm_max_kib as f64 / 1024.0,
            );
            samples.push(s);
        }
    }
    drop(link);

    println!();
    println!(
        "medians of {} rounds; a container reads {:.1} MB; registry bytes are blob response bodies (access log)",
        args.rounds,
        image.read_bytes as f64 / 1e6
    );
    // The bar: all N done within 3x the time one container takes alone.
    let alone = {
        let one: Vec<f64> = samples.iter().filter(|s| s.n == 1 && !s.pod).map(|s| s.all_done.as_secs_f64()).collect();
        median(one)
    };
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>11} {:>8} {:>11} {:>10} {:>8} {:>11} {:>12} {:>11}",
        "N",
        "first s",
        "all s",
        "x N=1",
        "registry MB",
        "x data",
        "MB/contnr",
        "requests",
        "req/ctr",
        "node_waits",
        "RSS sum MiB",
        "RSS max MiB"
    );
    for (n, pod) in &cells {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.n == *n && s.pod == *pod).collect();
        let med = |f: &dyn Fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
        let bytes = med(&|s| s.blob_bytes as f64);
        let requests = med(&|s| s.blob_requests as f64);
        println!(
            "{:<14} {:>9.2} {:>9.2} {:>9.2} {:>11.1} {:>8.2} {:>11.2} {:>10.0} {:>8.1} {:>11.0} {:>12.1} {:>11.1}",
            if *pod { format!("{n} (one shim)") } else { n.to_string() },
            med(&|s| s.first_done.as_secs_f64()),
            med(&|s| s.all_done.as_secs_f64()),
            med(&|s| s.all_done.as_secs_f64()) / alone,
            bytes / 1e6,
            bytes / image.read_bytes as f64,
            bytes / 1e6 / *n as f64,
            requests,
            requests / *n as f64,
            med(&|s| s.stats.node_waits as f64),
            med(&|s| s.rss.peak_sum_kib as f64 / 1024.0),
            med(&|s| s.rss.hwm_max_kib as f64 / 1024.0),
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}
