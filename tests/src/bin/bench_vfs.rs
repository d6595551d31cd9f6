//! `cargo run -p lazy-tests --bin bench-vfs [-- --size-mib N --samples N --warm-only|--cold-only]`: the vfs
//! benchmark.
//!
//! Not a test: it measures and prints a table (medians of a few samples) of
//! - warm reads (everything in the node cache, page cache dropped) vs the same bytes on the local
//!   disk: sequential read of one big file, 4 KiB random reads of it, and reading every file of a
//!   tree of many small files; each through a mount with FUSE passthrough to the verified file
//!   store (the default) and through one without (`--no-passthrough`: every read goes through the
//!   FUSE request loop). "fresh mount" samples are the first read in a new mount (a new process,
//!   started after the caches were dropped, timed once it has replayed the start log the previous
//!   mount of the image left, as a container's next start on a node does); "same mount" samples
//!   read again in that mount, caches dropped in between;
//! - cold read through a fresh mount with an empty cache vs `curl` of the same data blob(s) from
//!   the same registry, plain and piped through `openssl dgst -sha256` (a verified download), all
//!   straight to the registry (not through the harness's counting proxy), with the CPU time the
//!   whole machine spent on each (registry included): a cold read verifies, caches and serves
//!   every byte beside the registry on the same cores, plain curl only receives;
//! - `lazyctl convert` throughput.
//!
//! Needs root (mount, drop_caches), /dev/fuse, docker-registry, skopeo, curl, openssl, and the built
//! binaries (`cargo build --workspace --bins`).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{convert, drop_caches, LazyMount, MountOptions};
use harness::registry::Registry;
use harness::{cleanup, Prereq};

use harness::MIB;
const FILE: &str = "data/big.bin";

struct Config {
    size_mib: u64,
    samples: usize,
    /// Only the warm reads (no convert, cold or curl samples).
    warm_only: bool,
    /// No warm reads (the fully cached file store and small files part).
    cold_only: bool,
}

/// The many-small-files tree: `TREE_DIRS` directories of `TREE_FILES` files each.
const TREE_DIRS: usize = 40;
const TREE_FILES: usize = 50;
/// 4 KiB random reads per sample.
const RANDOM_READS: usize = 4096;

fn parse_args() -> Result<Config> {
    let mut config = Config { size_mib: 1024, samples: 3, warm_only: false, cold_only: false };
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
            "--warm-only" => config.warm_only = true,
            "--cold-only" => config.cold_only = true,
            "-h" | "--help" => {
                println!(
                    "bench-vfs [--size-mib N (default 1024)] [--samples N (default 3)] [--warm-only | --cold-only]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if config.warm_only && config.cold_only {
        bail!("--warm-only and --cold-only exclude each other");
    }
    Ok(config)
}

fn main() -> Result<()> {
    harness::init_logging();
    let config = parse_args()?;
    let prereqs = [
        Prereq::Root,
        Prereq::Fuse,
        Prereq::Tool("docker-registry"),
        Prereq::Tool("skopeo"),
        Prereq::Tool("curl"),
        Prereq::Tool("openssl"),
    ];
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
    let tree = tree_files();
    let tree_bytes: u64 = tree.iter().map(|(_, len)| len).sum();
    let mut layer =
        Layer::new().add(Entry::dir("data")).add(Entry::random_file(FILE, 0xbe4c, size)).add(Entry::dir("tree"));
    for d in 0..TREE_DIRS {
        layer = layer.add(Entry::dir(&format!("tree/d{d:02}")));
    }
    for (i, (path, len)) in tree.iter().enumerate() {
        layer = layer.add(Entry::random_file(path, 7000 + i as u64, *len));
    }
    let image = Image::new(vec![layer]);
    let layout = work.path().join("layout");
    image.write_layout(&layout, "v1")?;
    let source = registry.reference("src/bench:v1");
    harness::images::push(&layout, "v1", &source)?;

    // Convert: each sample into its own repository, so nothing is deduplicated against an
    // earlier sample and every sample pushes all chunks.
    let mut convert_times = Vec::new();
    for i in 0..if config.warm_only { 1 } else { config.samples } {
        let dst = registry.reference(&format!("lazy/bench{i}:v1"));
        eprintln!("bench-vfs: convert sample {}/{}", i + 1, config.samples);
        let start = Instant::now();
        convert(&source, &dst, &[])?;
        convert_times.push(start.elapsed());
    }
    // The first sample's conversion is the image every mount reads.
    let repo = "lazy/bench0";
    let lazy = registry.reference(&format!("{repo}:v1"));
    // The cold read and curl talk to the registry directly: the harness's counting proxy would
    // take CPU time from the reader (this machine's 2 cores are busy during a cold read). The
    // index names the repository it was converted into (through the proxy) as the home of its
    // data blobs, so the mount is pointed at the direct one for those too.
    let direct = registry.direct_host();
    let lazy_direct = format!("{direct}/{repo}:v1");
    let direct_blobs =
        MountOptions { extra: vec!["--blob-repo".into(), format!("{direct}/{repo}")], ..MountOptions::default() };
    let blobs = registry.lazy_data_blobs(repo, "v1")?;
    let blob_bytes: u64 = blobs.iter().map(|(_, s)| s).sum();

    // Local disk baseline: the same bytes in a plain file next to the work dir.
    let local = work.path().join("big.bin");
    std::io::copy(&mut content.reader(), &mut std::fs::File::create(&local)?)?;
    for (path, _) in &tree {
        let dst = work.path().join(path);
        std::fs::create_dir_all(dst.parent().unwrap_or(work.path()))?;
        std::io::copy(
            &mut image.content(path).context("tree file content")?.reader(),
            &mut std::fs::File::create(&dst)?,
        )?;
    }
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
    let mut verified = Vec::new();
    let (mut cold_cpu, mut curl_cpu, mut verified_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..if config.warm_only { 0 } else { config.samples } {
        eprintln!("bench-vfs: mount sample {}/{}", i + 1, config.samples);
        // curl of the same data blob(s) from the same registry, plain and verified, alternated with
        // the cold read and with the same page cache state (the registry's blob files not cached).
        let (took, cpu) = download(&direct, repo, &blobs, false)?;
        curl.push(took);
        curl_cpu.push(cpu);
        let (took, cpu) = download(&direct, repo, &blobs, true)?;
        verified.push(took);
        verified_cpu.push(cpu);

        let mount = LazyMount::start(&lazy_direct, direct_blobs.clone())?;
        drop_caches();
        let busy = busy_cpu()?;
        cold.push(read_all(&mount.join(FILE), size)?);
        cold_cpu.push(busy_cpu()? - busy);
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

    let warm_results =
        if config.cold_only { Vec::new() } else { warm_reads(&config, &lazy, work.path(), &tree, size, &content)? };

    println!();
    println!(
        "bench-vfs: one {} MiB file of random bytes ({} data blob(s), {:.1} MiB compressed); medians of {} samples",
        config.size_mib,
        blobs.len(),
        blob_bytes as f64 / MIB as f64,
        config.samples
    );
    println!(
        "local disk: {} ({disk_fs}); page cache dropped between samples: {}",
        work.path().display(),
        if can_drop {
            "yes"
        } else {
            "NO (no permission for /proc/sys/vm/drop_caches: disk and warm figures include page cache)"
        }
    );
    if let Some(reporting) = harness::machine::free_page_reporting() {
        println!("free page reporting: {reporting}");
    }
    println!("{:<64} {:>10} {:>12}", "case", "median", "throughput");
    let row = |name: &str, times: &[Duration], bytes: u64| {
        let m = median(times);
        println!("{name:<64} {:>9.2}s {:>7.0} MiB/s", m.as_secs_f64(), bytes as f64 / MIB as f64 / m.as_secs_f64());
    };
    row(&format!("sequential read, local disk ({disk_fs}, cold page cache)"), &disk, size);
    if !config.warm_only {
        row("sequential read, lazy mount, warm node cache, cold page cache", &warm, size);
        row("sequential read, lazy mount, page cache hot", &hot, size);
        row("cold read, lazy mount, empty cache, from the registry", &cold, size);
        row("curl of the data blob(s), same registry, cold page cache", &curl, blob_bytes);
        row("curl | openssl dgst -sha256 (verified), same registry, cold cache", &verified, blob_bytes);
    }
    row("lazyctl convert registry -> registry (file bytes)", &convert_times, size);
    if !config.warm_only {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_gib = |cpu: &[Duration], bytes: u64| median(cpu).as_secs_f64() / (bytes as f64 / (1 << 30) as f64);
        let busy_pct = |cpu: &[Duration], times: &[Duration]| {
            100.0 * median(cpu).as_secs_f64() / (median(times).as_secs_f64() * cores as f64)
        };
        println!(
            "machine CPU ({cores} cores, registry included): cold read {:.2} CPU-s per GiB ({:.0}% busy), \
             curl {:.2} ({:.0}%), verified curl {:.2} ({:.0}%)",
            per_gib(&cold_cpu, size),
            busy_pct(&cold_cpu, &cold),
            per_gib(&curl_cpu, blob_bytes),
            busy_pct(&curl_cpu, &curl),
            per_gib(&verified_cpu, blob_bytes),
            busy_pct(&verified_cpu, &verified)
        );
    }
    if config.cold_only {
        return Ok(());
    }
    println!();
    println!(
        "warm reads, node cache and file store full, page cache dropped before each; {} random 4 KiB reads; \
         tree: {} files, {:.1} MiB; variants alternated",
        RANDOM_READS,
        tree.len(),
        tree_bytes as f64 / MIB as f64
    );
    let random_bytes = (RANDOM_READS * 4096) as u64;
    for (what, bytes) in [("sequential", size), ("random 4 KiB", random_bytes), ("many small files", tree_bytes)] {
        for (variant, times) in warm_results.iter().filter(|(w, _, _)| *w == what).map(|(_, v, t)| (v, t)) {
            row(&format!("{what}: {variant}"), times, bytes);
        }
        let base =
            warm_results.iter().find(|(w, v, _)| *w == what && v.starts_with("local disk")).map(|(_, _, t)| median(t));
        if let Some(base) = base {
            for (variant, times) in warm_results
                .iter()
                .filter(|(w, v, _)| *w == what && !v.starts_with("local disk"))
                .map(|(_, v, t)| (v, t))
            {
                println!(
                    "  {what}: {variant}: {:.2}x local disk throughput",
                    base.as_secs_f64() / median(times).as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

/// The small files of the tree: (path, length), lengths spread like an interpreter's library
/// tree (most a few KiB, some tens of KiB, a few hundreds).
fn tree_files() -> Vec<(String, u64)> {
    let mut rng = 0x5eed_u64;
    let mut out = Vec::new();
    for d in 0..TREE_DIRS {
        for f in 0..TREE_FILES {
            let r = next(&mut rng);
            let len = match r % 100 {
                0..70 => 200 + r / 100 % 8_000,
                70..95 => 8_000 + r / 100 % 56_000,
                _ => 64_000 + r / 100 % 448_000,
            };
            out.push((format!("tree/d{d:02}/f{f:03}.bin"), len));
        }
    }
    out
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

type WarmResults = Vec<(&'static str, String, Vec<Duration>)>;

/// Warm reads through mounts with and without passthrough, and from the local disk, alternated.
fn warm_reads(
    config: &Config,
    lazy: &str,
    work: &Path,
    tree: &[(String, u64)],
    size: u64,
    content: &Content,
) -> Result<WarmResults> {
    let cache = work.join("warm-cache");
    std::fs::create_dir_all(&cache)?;
    // Fill the node cache and the file store: read everything once through a passthrough mount
    // (each release queues the file for the store), then wait until every file is stored.
    eprintln!("bench-vfs: filling the node cache and the file store");
    {
        let mount = LazyMount::start(lazy, MountOptions { cache_dir: Some(cache.clone()), ..MountOptions::default() })?;
        read_all(&mount.join(FILE), size)?;
        read_tree(mount.path(), tree)?;
        let want = tree.len() + 1;
        let deadline = Instant::now() + Duration::from_secs(300);
        while stored_count(&cache) < want {
            if Instant::now() > deadline {
                bail!(
                    "the file store holds {} of {want} files after 300 s; mount log:\n{}",
                    stored_count(&cache),
                    mount.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        mount.unmount()?;
    }
    let local = work.join("big.bin");
    let mut results: WarmResults = Vec::new();
    let mut push = |what: &'static str, variant: &str, d: Duration| match results
        .iter_mut()
        .find(|(w, v, _)| *w == what && v == variant)
    {
        Some((_, _, times)) => times.push(d),
        None => results.push((what, variant.to_string(), vec![d])),
    };
    for i in 0..config.samples {
        eprintln!("bench-vfs: warm sample {}/{}", i + 1, config.samples);
        drop_caches();
        push("sequential", "local disk", read_all(&local, size)?);
        drop_caches();
        push("random 4 KiB", "local disk", random_reads(&local, size, i as u64)?);
        drop_caches();
        push("many small files", "local disk", read_tree(work, tree)?);
        for (variant, extra) in
            [("passthrough", vec![]), ("FUSE reads (--no-passthrough)", vec!["--no-passthrough".to_string()])]
        {
            // Sequential and random each on a fresh mount (a new process), then again on the same one.
            for (what, mut run) in [
                (
                    "sequential",
                    Box::new(|m: &LazyMount| read_all(&m.join(FILE), size))
                        as Box<dyn FnMut(&LazyMount) -> Result<Duration>>,
                ),
                ("random 4 KiB", Box::new(|m: &LazyMount| random_reads(&m.join(FILE), size, i as u64))),
                ("many small files", Box::new(|m: &LazyMount| read_tree(m.path(), tree))),
            ] {
                let opts =
                    MountOptions { cache_dir: Some(cache.clone()), extra: extra.clone(), ..MountOptions::default() };
                // Caches dropped BEFORE mounting: a fresh mount replays the start log the previous
                // mount of the image left in the node cache (as a container's second start on a node
                // does), and dropping the dentry cache after mounting would undo that at random.
                drop_caches();
                let mount = LazyMount::start(lazy, opts)?;
                wait_for_start_log_replay(&mount)?;
                push(what, &format!("{variant}, fresh mount"), run(&mount)?);
                drop_caches();
                push(what, &format!("{variant}, same mount"), run(&mount)?);
                let stats = mount.stats()?;
                if variant == "passthrough" && stats.passthrough_opens == 0 {
                    bail!(
                        "{what}: the passthrough mount opened nothing by passthrough: {stats:?}\n{}",
                        mount.log_text()
                    );
                }
                if i == 0 && what == "sequential" {
                    let got = harness::tree::hash_file(&mount.join(FILE))?;
                    if got != content.sha256() {
                        bail!("{FILE} read through the {variant} mount has the wrong content (sha256 {got})");
                    }
                }
                mount.unmount()?;
            }
        }
    }
    Ok(results)
}

/// Files (not temp files) in the file store under `cache`.
/// Waits until the mount has replayed its start log (every measured mount has one: the mount that
/// filled the cache wrote it).
fn wait_for_start_log_replay(mount: &LazyMount) -> Result<()> {
    let replayed = || mount.stats().is_ok_and(|s| s.start_log_replayed > 0);
    if !harness::wait_until(Duration::from_secs(30), replayed) {
        bail!("the mount replayed no start log within 30 s; mount log:\n{}", mount.log_text());
    }
    Ok(())
}

fn stored_count(cache: &Path) -> usize {
    let Ok(subs) = std::fs::read_dir(cache.join("files")) else { return 0 };
    subs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with(".tmp."))
        .count()
}

/// `RANDOM_READS` 4 KiB reads at random 4 KiB-aligned offsets of `path` (one open).
fn random_reads(path: &Path, size: u64, seed: u64) -> Result<Duration> {
    use std::os::unix::fs::FileExt;
    let start = Instant::now();
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (seed + 1);
    let mut buf = [0u8; 4096];
    let blocks = (size / 4096).max(1);
    for _ in 0..RANDOM_READS {
        let off = next(&mut rng) % blocks * 4096;
        file.read_exact_at(&mut buf, off).with_context(|| format!("pread {} at {off}", path.display()))?;
    }
    Ok(start.elapsed())
}

/// Reads every file of the tree under `root` (open, read to the end, close), in path order.
fn read_tree(root: &Path, tree: &[(String, u64)]) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 256 << 10];
    for (path, len) in tree {
        let path = root.join(path);
        let mut f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        if total != *len {
            bail!("{}: read {total} bytes, expected {len}", path.display());
        }
    }
    Ok(start.elapsed())
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

/// Downloads every data blob with curl, page cache dropped first: to /dev/null, or (`verify`)
/// through `openssl dgst -sha256`, checking each digest, as a verified download would. Returns
/// the time taken and the CPU time the whole machine was busy meanwhile.
fn download(host: &str, repo: &str, blobs: &[(String, u64)], verify: bool) -> Result<(Duration, Duration)> {
    drop_caches();
    let (start, busy) = (Instant::now(), busy_cpu()?);
    for (digest, _) in blobs {
        let url = format!("http://{host}/v2/{repo}/blobs/{digest}");
        let mut curl = Command::new("curl")
            .args(["-sfS", &url])
            .stdout(if verify { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .context("running curl")?;
        // curl is waited for even when openssl fails (its pipe closes, so it ends).
        let hashed = curl.stdout.take().map(|body| {
            Command::new("openssl").args(["dgst", "-sha256", "-r"]).stdin(body).output().context("running openssl")
        });
        let out = curl.wait_with_output()?;
        if !out.status.success() {
            bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(hashed) = hashed {
            let hashed = hashed?;
            let got = String::from_utf8_lossy(&hashed.stdout);
            if got.split_whitespace().next() != digest.strip_prefix("sha256:") {
                bail!("curl {url} | openssl dgst -sha256: got {got:?}, want {digest}");
            }
        }
    }
    Ok((start.elapsed(), busy_cpu()? - busy))
}

/// CPU time the whole machine has spent busy (not idle or waiting for I/O) since boot.
fn busy_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest is in user)
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .map(|t| t.parse().context("/proc/stat: bad cpu field"))
        .collect::<Result<_>>()?;
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(busy as f64 / hz as f64))
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Filesystem type of the mount holding `path`, from /proc/self/mountinfo (longest prefix wins).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    vfs::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| m.fstype)
        .unwrap_or_else(|| "unknown filesystem".into())
}
