//! `cargo run -p lazy-tests --bin bench-vfs [-- --size-mib N --samples N]`: the vfs benchmark.
//!
//! Not a test: it measures and prints a table (medians of a few samples) of
//! - warm sequential read of one big file through a lazy mount (chunks in the node cache, page
//!   cache dropped) vs the same bytes in a file on the local disk (page cache dropped);
//! - cold read through a fresh mount with an empty cache vs `curl` of the same data blob(s) from
//!   the same registry;
//! - `lazyctl convert` throughput.
//!
//! Needs root (mount, drop_caches), /dev/fuse, docker-registry, skopeo, curl, and the built
//! binaries (`cargo build --workspace --bins`).

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{convert, drop_caches, LazyMount, MountOptions};
use harness::registry::Registry;
use harness::{cleanup, Prereq};

const MIB: u64 = 1024 * 1024;
const FILE: &str = "data/big.bin";

struct Config {
    size_mib: u64,
    samples: usize,
}

fn parse_args() -> Result<Config> {
    let mut config = Config { size_mib: 1024, samples: 3 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--size-mib" => config.size_mib = value("--size-mib")?,
            "--samples" => config.samples = value("--samples")?.max(1) as usize,
            "-h" | "--help" => {
                println!("bench-vfs [--size-mib N (default 1024)] [--samples N (default 3)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    Ok(config)
}

fn main() -> Result<()> {
    harness::init_logging();
    let config = parse_args()?;
    let prereqs = [Prereq::Root, Prereq::Fuse, Prereq::Tool("docker-registry"), Prereq::Tool("skopeo"), Prereq::Tool("curl")];
    let missing: Vec<String> = prereqs.iter().filter_map(|p| p.missing()).collect();
    if !missing.is_empty() {
        bail!("cannot run the benchmark: {}", missing.join("; "));
    }
    let size = config.size_mib * MIB;
    let content = Content::Random { seed: 0xbe4c, len: size };
    let can_drop = drop_caches();
    let work = cleanup::temp_dir("bench");
    let disk_fs = fs_type(work.path());
    eprintln!("bench-vfs: building a {} MiB image...", config.size_mib);

    let registry = Registry::start()?;
    let image = Image::new(vec![Layer::new().add(Entry::dir("data")).add(Entry::random_file(FILE, 0xbe4c, size))]);
    let layout = work.path().join("layout");
    image.write_layout(&layout, "v1")?;
    let source = registry.reference("src/bench:v1");
    harness::images::push(&layout, "v1", &source)?;

    // Convert: each sample into its own repository, so nothing is deduplicated against an
    // earlier sample and every sample pushes all chunks.
    let mut convert_times = Vec::new();
    for i in 0..config.samples {
        let dst = registry.reference(&format!("lazy/bench{i}:v1"));
        eprintln!("bench-vfs: convert sample {}/{}", i + 1, config.samples);
        let start = Instant::now();
        convert(&source, &dst, &[])?;
        convert_times.push(start.elapsed());
    }
    let lazy = registry.reference("lazy/bench0:v1");
    let blobs = registry.lazy_data_blobs("lazy/bench0", "v1")?;
    let blob_bytes: u64 = blobs.iter().map(|(_, s)| s).sum();

    // Local disk baseline: the same bytes in a plain file next to the work dir.
    let local = work.path().join("big.bin");
    std::io::copy(&mut content.reader(), &mut std::fs::File::create(&local)?)?;
    let mut disk = Vec::new();
    for _ in 0..config.samples {
        drop_caches();
        disk.push(read_all(&local, size)?);
    }

    // Cold: fresh mount, empty node cache, page cache dropped.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut hot = Vec::new();
    let mut curl = Vec::new();
    for i in 0..config.samples {
        eprintln!("bench-vfs: mount sample {}/{}", i + 1, config.samples);
        // curl of the same data blob(s) from the same registry, alternated with the cold read and
        // with the same page cache state (the registry's blob files not cached either).
        drop_caches();
        let start = Instant::now();
        for (digest, _) in &blobs {
            let url = format!("http://{}/v2/lazy/bench0/blobs/{digest}", registry.host());
            let out = Command::new("curl").args(["-sfS", "-o", "/dev/null", &url]).output()?;
            if !out.status.success() {
                bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        curl.push(start.elapsed());

        let mount = LazyMount::start(&lazy, MountOptions::default())?;
        drop_caches();
        cold.push(read_all(&mount.join(FILE), size)?);
        // Warm: every chunk is in the node cache; the page cache is dropped, so reads go through FUSE.
        drop_caches();
        warm.push(read_all(&mount.join(FILE), size)?);
        // Hot: straight from the kernel's page cache (FUSE keep_cache).
        hot.push(read_all(&mount.join(FILE), size)?);
        if i == 0 {
            let got = harness::tree::hash_file(&mount.join(FILE))?;
            if got != content.sha256() {
                bail!("{FILE} read through the mount has the wrong content (sha256 {got})");
            }
        }
        mount.unmount()?;
    }

    println!();
    println!(
        "bench-vfs: one {} MiB file of random bytes ({} data blob(s), {:.1} MiB compressed); medians of {} samples",
        config.size_mib,
        blobs.len(),
        blob_bytes as f64 / MIB as f64,
        config.samples
    );
    println!("local disk: {} ({disk_fs}); page cache dropped between samples: {}",
        work.path().display(),
        if can_drop { "yes" } else { "NO (no permission for /proc/sys/vm/drop_caches: disk and warm figures include page cache)" });
    println!("{:<64} {:>10} {:>12}", "case", "median", "throughput");
    let row = |name: &str, times: &[Duration], bytes: u64| {
        let m = median(times);
        println!("{name:<64} {:>9.2}s {:>7.0} MiB/s", m.as_secs_f64(), bytes as f64 / MIB as f64 / m.as_secs_f64());
    };
    row(&format!("sequential read, local disk ({disk_fs}, cold page cache)"), &disk, size);
    row("sequential read, lazy mount, warm node cache, cold page cache", &warm, size);
    row("sequential read, lazy mount, page cache hot", &hot, size);
    row("cold read, lazy mount, empty cache, from the registry", &cold, size);
    row("curl of the data blob(s), same registry, cold page cache", &curl, blob_bytes);
    row("lazyctl convert registry -> registry (file bytes)", &convert_times, size);
    Ok(())
}

/// Reads `path` sequentially with 1 MiB reads; checks the length; returns the time taken.
fn read_all(path: &Path, expect: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let took = start.elapsed();
    if total != expect {
        bail!("{}: read {total} bytes, expected {expect}", path.display());
    }
    Ok(took)
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Filesystem type of the mount holding `path`, from /proc/self/mounts (longest prefix wins).
fn fs_type(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mp, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mp).then(|| (mp.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
        .unwrap_or_else(|| "unknown filesystem".into())
}
