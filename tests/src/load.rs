//! Many lazy containers of one image on one containerd, started at once: the steps the load
//! benchmark (`bench-load`) and the load and fault tests (`load_node`, `load_faults`) share.
//!
//! Every container runs detached with a `file://` log, one shim each (or all in one shim when they
//! carry the same sandbox annotation), and all share one node cache (one shim config), so the
//! node-wide single flight is what keeps the registry from serving the image once per container.
//! What a run measures comes from outside the shim: each container's log (the digest it printed),
//! the registry's counting proxy and access log, and the shims' /proc status (VmRSS, VmHWM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{temp_dir, MountGuard};
use crate::containerd::{busybox_image, Containerd, RUNTIME};
use crate::images::{Entry, Image};
use crate::registry::Registry;

/// Where the big file is inside the image.
pub const DATA_FILE: &str = "data/big.bin";

/// A lazy image in the registry: busybox plus one random file that each container hashes.
pub struct LoadImage {
    /// `HOST/lazy/<name>:v1` (HOST is the registry or a link route to it).
    pub lazy: String,
    /// sha256 (hex) of [`DATA_FILE`].
    pub digest: String,
    /// Size of [`DATA_FILE`].
    pub data_bytes: u64,
    /// What one container reads at most: [`DATA_FILE`] plus busybox (sh and sha256sum).
    pub read_bytes: u64,
    /// Compressed bytes of the lazy image's data blobs.
    pub blob_bytes: u64,
}

/// Builds busybox + `data_bytes` random bytes at /data/big.bin, pushes it to `host` (the
/// registry's own `host()` or a link route to it) as `src/<name>:v1` and converts it to
/// `lazy/<name>:v1` with `lazyctl convert`.
pub fn publish(registry: &Registry, host: &str, name: &str, data_bytes: u64) -> Result<LoadImage> {
    let mut image: Image = busybox_image()?;
    image.layers[0].push(Entry::dir("data"));
    image.layers[0].push(Entry::random_file(DATA_FILE, 4242, data_bytes));
    let digest = image.content(DATA_FILE).context("the data file is in the image")?.sha256();
    let busybox = std::fs::metadata("/bin/busybox").context("stat /bin/busybox")?.len();
    let layout = temp_dir(&format!("layout-{name}"));
    image.write_layout(layout.path(), "v1").context("writing the OCI layout")?;
    let source = format!("{host}/src/{name}:v1");
    crate::images::push(layout.path(), "v1", &source)?;
    let lazy = format!("{host}/lazy/{name}:v1");
    crate::lazyctl::convert(&source, &lazy, &[])?;
    let blob_bytes = registry.lazy_data_blobs(&format!("lazy/{name}"), "v1")?.iter().map(|(_, s)| s).sum();
    Ok(LoadImage { lazy, digest, data_bytes, read_bytes: data_bytes + busybox, blob_bytes })
}

/// Writes a shim config (node cache `cache`, `prefetch`) to `dir/config.toml`; returns its path.
pub fn shim_config(dir: &Path, cache: &Path, prefetch: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("config.toml");
    let text = format!("[cache]\ndir = \"{}\"\n[fetch]\nprefetch = \"{prefetch}\"\n", cache.display());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The command each container runs: hash the big file (the line the run waits for), then stay up
/// so its shim can be measured and exec'd into.
pub fn hash_then_sleep() -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("sha256sum /{DATA_FILE}; exec sleep 100000")]
}

/// Containers started by [`start_all`]; their logs are `logs/<id>.log`.
pub struct Fleet {
    pub ids: Vec<String>,
    pub logs: PathBuf,
    /// When the first `ctr run` was started.
    pub started: Instant,
}

/// Starts `n` containers `<prefix>0..` of `image` at once (one `ctr run -d` thread each) with the
/// shim config `config`, each logging to a file. With `pod`, every container carries the sandbox
/// annotation `pod` and one shim serves them all. Fails naming every container that did not start.
pub fn start_all(
    ctrd: &Containerd,
    image: &str,
    config: &Path,
    n: usize,
    prefix: &str,
    cmd: &[String],
    pod: Option<&str>,
) -> Result<Fleet> {
    let logs = ctrd.scratch(&format!("logs-{prefix}"));
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let config = config.display().to_string();
    let annotation = pod.map(|p| format!("io.kubernetes.cri.sandbox-id={p}"));
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let (logs, config, annotation) = (&logs, &config, &annotation);
                s.spawn(move || {
                    let uri = format!("file://{}", logs.join(format!("{id}.log")).display());
                    let mut args =
                        vec!["run", "-d", "--runtime", RUNTIME, "--runtime-config-path", config, "--log-uri", &uri];
                    if let Some(a) = annotation {
                        args.extend(["--annotation", a]);
                    }
                    args.extend([image, id.as_str()]);
                    args.extend(cmd.iter().map(String::as_str));
                    let out = ctrd.ctr(&args);
                    (out.code != 0).then(|| format!("{id}: ctr run exited {}: {}", out.code, out.all().trim()))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("ctr run thread")).collect()
    });
    if !failures.is_empty() {
        bail!(
            "{} of {n} containers did not start:\n{}\ncontainerd log (tail):\n{}",
            failures.len(),
            failures.join("\n"),
            tail(&ctrd.log(), 30)
        );
    }
    Ok(Fleet { ids, logs, started })
}

impl Fleet {
    /// The log of container `id` so far.
    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{id}.log"))).unwrap_or_default()
    }

    /// Waits until every container's log has a `sha256sum` line, up to `limit` after the start;
    /// returns, per container, the time from the start to that line and the digest it printed.
    /// Fails naming the containers that printed nothing (with what they printed).
    pub fn wait_digests(&self, limit: Duration) -> Result<BTreeMap<String, (Duration, String)>> {
        let mut done = BTreeMap::new();
        loop {
            for id in &self.ids {
                if done.contains_key(id) {
                    continue;
                }
                let log = self.log(id);
                if let Some(line) = log.lines().find(|l| l.ends_with(&format!("/{DATA_FILE}"))) {
                    let digest = line.split_whitespace().next().unwrap_or("").to_string();
                    done.insert(id.clone(), (self.started.elapsed(), digest));
                } else if !log.is_empty() && !log.contains(DATA_FILE) {
                    // Anything else first is an error message (sha256sum: read error ...).
                    done.insert(id.clone(), (self.started.elapsed(), log.trim().to_string()));
                }
            }
            if done.len() == self.ids.len() {
                return Ok(done);
            }
            if self.started.elapsed() > limit {
                let missing: Vec<String> = self
                    .ids
                    .iter()
                    .filter(|id| !done.contains_key(*id))
                    .map(|id| format!("{id}: {:?}", self.log(id)))
                    .collect();
                bail!(
                    "{} of {} containers printed no digest within {limit:?}:\n{}",
                    missing.len(),
                    self.ids.len(),
                    missing.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `lazyctl stats` of every container's lazy mount, summed.
    pub fn stats(&self, ctrd: &Containerd) -> Result<crate::lazyctl::Stats> {
        let mut sum = crate::lazyctl::Stats::default();
        for id in &self.ids {
            let lazy = ctrd.bundle(id).join("lazy");
            let out = crate::lazyctl::run(&["stats", &lazy.display().to_string()])?;
            let s: crate::lazyctl::Stats = serde_json::from_str(&out)
                .with_context(|| format!("lazyctl stats {} printed {out}", lazy.display()))?;
            sum.bytes_served += s.bytes_served;
            sum.bytes_fetched += s.bytes_fetched;
            sum.requests += s.requests;
            sum.cache_hits += s.cache_hits;
            sum.cache_misses += s.cache_misses;
            sum.verify_failures += s.verify_failures;
            sum.prefetched_chunks += s.prefetched_chunks;
            sum.readahead_chunks += s.readahead_chunks;
            sum.node_waits += s.node_waits;
            sum.passthrough_opens += s.passthrough_opens;
            sum.files_stored += s.files_stored;
            sum.stored_file_failures += s.stored_file_failures;
            sum.image_bytes = s.image_bytes;
        }
        Ok(sum)
    }

    /// SIGKILLs, deletes and removes every container (in parallel); fails naming those whose
    /// delete or rm failed.
    pub fn delete_all(&self, ctrd: &Containerd) -> Result<()> {
        delete_all(ctrd, &self.ids)
    }
}

/// `ctr task kill -s SIGKILL`, wait until stopped, `ctr task delete`, `ctr container rm` for every
/// id, in parallel. A task that is already gone is fine; a container rm that fails is not.
pub fn delete_all(ctrd: &Containerd, ids: &[String]) -> Result<()> {
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline {
                        let out = ctrd.ctr(&["task", "delete", id]);
                        if out.code == 0 || out.all().contains("not found") {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let out = ctrd.ctr(&["container", "rm", id]);
                    (out.code != 0).then(|| format!("{id}: ctr container rm exited {}: {}", out.code, out.all().trim()))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("delete thread")).collect()
    });
    if !failures.is_empty() {
        bail!("deleting containers failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// What is left of a containerd's containers after every one was deleted: shim processes, mounts,
/// cgroups. Waits up to 30 s for shims, and for the `delete` actions containerd runs after a shim
/// died (they can be slow on a busy disk), to exit; an empty Vec means nothing leaked.
pub fn leftovers(ctrd: &Containerd) -> Vec<String> {
    let socket = ctrd.socket().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ctrd.shim_pids().is_empty() && delete_actions_of(&socket).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out: Vec<String> = ctrd.shim_pids().iter().map(|p| format!("shim process {}", describe(*p))).collect();
    out.extend(delete_actions_of(&socket).iter().map(|p| format!("shim delete action {p} still running after 30 s")));
    out.extend(ctrd.mounts().iter().map(|m| format!("mount {}", m.display())));
    out.extend(ctrd.leftover_cgroups().iter().map(|c| format!("cgroup {}", c.display())));
    out
}

/// `pid (state S, parent P, threads T, in WCHAN): ARGS` from /proc, for reports of leftovers.
fn describe(pid: i32) -> String {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let status = read("status");
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("?").trim().to_string();
    let args = read("cmdline").replace('\0', " ");
    format!(
        "{pid} (state {}, parent {}, threads {}, in {}): {}",
        field("State:"),
        field("PPid:"),
        field("Threads:"),
        read("wchan"),
        args.trim()
    )
}

/// Pids of our shim's `delete` action (containerd's cleanup of a dead shim) for the containerd on `socket`.
fn delete_actions_of(socket: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"containerd-shim-lazy-v2"))
            && args.contains(&socket.as_bytes())
            && args.contains(&&b"delete"[..])
        {
            pids.push(pid);
        }
    }
    pids
}

/// Memory of the shims, sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rss {
    /// Largest sum of VmRSS over all shims seen in one sample (KiB).
    pub peak_sum_kib: u64,
    /// Largest VmRSS of one shim seen (KiB).
    pub peak_max_kib: u64,
    /// Largest VmHWM (the kernel's own peak RSS of a process) of one shim (KiB): catches peaks
    /// between samples.
    pub hwm_max_kib: u64,
    /// Most shims seen at once.
    pub shims: usize,
    pub samples: u64,
}

/// Samples the VmRSS and VmHWM of `ctrd`'s shims every `every` until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    result: Arc<Mutex<Rss>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(ctrd: &Containerd, every: Duration) -> RssSampler {
        let socket = ctrd.socket().display().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(Rss::default()));
        let thread = {
            let (stop, result) = (stop.clone(), result.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let pids = shim_pids_of(&socket);
                    let (mut sum, mut max, mut hwm) = (0, 0, 0);
                    for pid in &pids {
                        let (rss, peak) = rss_kib(*pid);
                        sum += rss;
                        max = max.max(rss);
                        hwm = hwm.max(peak);
                    }
                    {
                        let mut r = result.lock().expect("rss lock");
                        r.peak_sum_kib = r.peak_sum_kib.max(sum);
                        r.peak_max_kib = r.peak_max_kib.max(max);
                        r.hwm_max_kib = r.hwm_max_kib.max(hwm);
                        r.shims = r.shims.max(pids.len());
                        r.samples += 1;
                    }
                    std::thread::sleep(every);
                }
            })
        };
        RssSampler { stop, result, thread: Some(thread) }
    }

    /// The figures so far.
    pub fn now(&self) -> Rss {
        *self.result.lock().expect("rss lock")
    }

    pub fn stop(mut self) -> Rss {
        self.halt();
        self.now()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Our shims serving the containerd on `socket` (as [`Containerd::shim_pids`], from a thread
/// that does not hold the Containerd).
fn shim_pids_of(socket: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-lazy-v2"))
            && args.contains(&socket.as_bytes())
            && !args.iter().any(|a| *a == b"start" || *a == b"delete");
        if ours {
            pids.push(pid);
        }
    }
    // A shim's fork that has not exec'd yet (its launcher helper) has the shim's command line.
    let parent = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<i32>().ok())
    };
    let all = pids.clone();
    pids.retain(|p| !parent(*p).is_some_and(|pp| all.contains(&pp)));
    pids
}

/// (VmRSS, VmHWM) of `pid` in KiB; zeros when it is gone.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The kernel's FUSE control filesystem mounted at a private temp dir: lists live FUSE
/// connections (one directory per connection, named by the mount's device minor). Unmounted on drop.
pub struct FuseCtl {
    mount: Option<MountGuard>,
    _dir: tempfile::TempDir,
}

impl FuseCtl {
    pub fn mount() -> Result<FuseCtl> {
        let dir = temp_dir("fusectl");
        nix::mount::mount(Some("fusectl"), dir.path(), Some("fusectl"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| {
                format!("mounting fusectl at {} (needs root and the fuse module)", dir.path().display())
            })?;
        Ok(FuseCtl { mount: Some(MountGuard::new(dir.path())), _dir: dir })
    }

    /// Whether FUSE connection `id` still exists (aborted or not).
    pub fn exists(&self, id: u32) -> bool {
        self.mount.as_ref().is_some_and(|m| m.path().join(id.to_string()).exists())
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        // Unmount before the temp dir is removed.
        self.mount.take();
    }
}

/// The FUSE connection id of the filesystem mounted at `path` (its device minor).
pub fn fuse_connection(path: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.dev();
    Ok(nix::sys::stat::minor(dev) as u32)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One round of [`run_round`]: N containers started at once on a cold node cache.
#[derive(Debug, Clone)]
pub struct Sample {
    pub n: usize,
    /// All in one shim (sandbox annotation) rather than one shim each.
    pub pod: bool,
    /// From the first `ctr run` to the last container's digest line.
    pub all_done: Duration,
    /// From the first `ctr run` to the first container's digest line.
    pub first_done: Duration,
    /// Blob GETs the registry answered during the round (its access log) and their body bytes.
    pub blob_requests: usize,
    pub blob_bytes: u64,
    /// Every request the registry answered (manifests, `/v2/` probes too).
    pub requests: usize,
    /// Bytes the registry's proxy sent (headers included).
    pub served_bytes: u64,
    pub rss: Rss,
    /// The containers' `lazyctl stats`, summed.
    pub stats: crate::lazyctl::Stats,
    /// Containers that printed something other than the right digest: `id: what`.
    pub wrong: Vec<String>,
}

/// Empties the node cache `cache`, starts `n` containers of `image` at once (see [`start_all`];
/// `pod`: all in one shim), waits up to `limit` for every digest line, reads the mounts' stats,
/// deletes every container and checks that nothing is left (an error names what leaked).
#[allow(clippy::too_many_arguments)]
pub fn run_round(
    ctrd: &Containerd,
    registry: &Registry,
    image: &LoadImage,
    config: &Path,
    cache: &Path,
    n: usize,
    prefix: &str,
    pod: bool,
    limit: Duration,
) -> Result<Sample> {
    if let Err(e) = std::fs::remove_dir_all(cache) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e).with_context(|| format!("emptying the node cache {}", cache.display()));
        }
    }
    let log_offset = registry.log_offset();
    let served_before = registry.served_bytes();
    let sampler = RssSampler::start(ctrd, Duration::from_millis(100));
    let pod_id = format!("pod-{prefix}");
    let fleet = start_all(ctrd, &image.lazy, config, n, prefix, &hash_then_sleep(), pod.then_some(pod_id.as_str()));
    let result = fleet.and_then(|fleet| {
        let done = fleet.wait_digests(limit);
        let stats = fleet.stats(ctrd);
        let rss = sampler.stop();
        let deleted = fleet.delete_all(ctrd);
        let (done, stats) = (done?, stats?);
        deleted?;
        Ok((done, stats, rss))
    });
    let (done, stats, rss) = match result {
        Ok(r) => r,
        Err(e) => {
            // Leave the containerd clean for the next round, or for its Drop check.
            let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
            let _ = delete_all(ctrd, &ids);
            return Err(e);
        }
    };
    let left = leftovers(ctrd);
    if !left.is_empty() {
        bail!("after deleting {n} containers, left behind: {left:?}");
    }
    // The access log is written as responses complete: give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let requests = registry.requests_since(log_offset)?;
    let blobs: Vec<_> = requests.iter().filter(|r| r.is_blob_get()).collect();
    let wrong = done.iter().filter(|(_, (_, d))| *d != image.digest).map(|(id, (_, d))| format!("{id}: {d}")).collect();
    Ok(Sample {
        n,
        pod,
        all_done: done.values().map(|(t, _)| *t).max().unwrap_or_default(),
        first_done: done.values().map(|(t, _)| *t).min().unwrap_or_default(),
        blob_requests: blobs.len(),
        blob_bytes: blobs.iter().map(|r| r.bytes).sum(),
        requests: requests.len(),
        served_bytes: registry.served_bytes() - served_before,
        rss,
        stats,
        wrong,
    })
}

/// `lazyctl stats` of container `id`'s lazy mount.
pub fn stats_of(ctrd: &Containerd, id: &str) -> Result<crate::lazyctl::Stats> {
    let lazy = ctrd.bundle(id).join("lazy");
    let out = crate::lazyctl::run(&["stats", &lazy.display().to_string()])?;
    serde_json::from_str(&out).with_context(|| format!("lazyctl stats {} printed {out}", lazy.display()))
}

/// `ctr task ls`: task id -> (pid, status) as ctr prints them (RUNNING, CREATED, STOPPED, ...).
pub fn tasks(ctrd: &Containerd) -> Result<BTreeMap<String, (i32, String)>> {
    let out = ctrd.ctr_ok(&["task", "ls"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), (f[1].parse().unwrap_or(0), f[2].to_string())))
        })
        .collect())
}

/// Whether process `pid` is gone (or a zombie: dead, waiting to be reaped).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) == Some("Z"),
    }
}

/// The node cache's lock files (`<cache>/locks/*`, one per data blob, kept by design) and what is
/// wrong with each: not empty, or a write lock over the whole file cannot be taken at once (a lock
/// of a process that died must die with it). Returns (files, problems).
pub fn check_lock_files(cache: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    use std::os::fd::AsRawFd as _;
    let dir = cache.join("locks");
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = e.with_context(|| format!("listing {}", dir.display()))?.path();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("stat {}", path.display()))?.len();
        if len != 0 {
            problems.push(format!("{}: {len} bytes (lock files stay empty)", path.display()));
        }
        // SAFETY: an all-zero flock is a valid value of this plain C struct; l_pid stays 0 as OFD
        // locks require, l_len 0 covers the whole file.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl on a descriptor `file` owns, with a pointer to a live flock it only reads.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc != 0 {
            problems.push(format!(
                "{}: a fresh write lock failed: {} (a dead fetcher's lock survived it)",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        files.push(path);
        // Dropping `file` releases the test's own lock.
    }
    Ok((files, problems))
}

/// cgroup directories named `id` under this containerd's namespace in any hierarchy (v1 controllers
/// and the cgroup2 mount).
pub fn cgroups_of(ctrd: &Containerd, id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(ctrd.namespace()).join(id))
        .filter(|p| p.is_dir())
        .collect()
}
