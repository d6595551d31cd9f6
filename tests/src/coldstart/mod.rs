//! The cold-start benchmark behind `bench-coldstart`: one registry reached only through a shaped
//! [`Link`], one containerd (Debian trixie's 1.7, from [`crate::debs`]) for every variant, and
//! pull + run until the workload's first output line (or first HTTP 200) timed for:
//!
//! - `full`: `ctr images pull` of the plain image, then `ctr run` (overlayfs + runc);
//! - `lazy`: our shim with the image converted by `lazyctl convert` (no prefetch list);
//! - `optimized`: our shim with the image written by `lazyctl optimize` for that workload;
//! - `soci`: SOCI 0.4.1 as a proxy snapshotter (`soci image rpull`, `ctr run --snapshotter soci`),
//!   over HTTPS (the only way it fetches its index).
//!
//! A cold sample starts from an empty node: a fresh containerd root, an empty chunk cache, a
//! restarted SOCI with no state, the page cache dropped. The warm sample follows on the same node
//! (image pulled, caches full). Variants are alternated (rotated every round). Every sample records
//! what crossed the link and the requests the registry logged. The transfer floor of a workload is
//! the compressed size of the chunks its optimized image lists for prefetch, over the link's rate,
//! plus a few round trips; the practical floor adds the warm full-pull start (container start and
//! the workload's own CPU time with everything local).

pub mod chart;
pub mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::temp_dir;
use crate::containerd::{layout_from_rootfs_tar, Containerd, StartOptions, RUNTIME};
use crate::link::{Link, Measured, Shape};
use crate::registry::{self, Registry, Tls};
use crate::soci::Soci;

/// The Debian suite whose containerd every variant runs on.
pub const CONTAINERD_SUITE: &str = "trixie";

/// How long one pull + run may take before the sample fails.
const SAMPLE_LIMIT: Duration = Duration::from_secs(600);

/// A variant: how the image is stored and started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Full,
    Lazy,
    Optimized,
    Soci,
}

impl Variant {
    pub const ALL: [Variant; 4] = [Variant::Full, Variant::Lazy, Variant::Optimized, Variant::Soci];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::Lazy => "lazy",
            Variant::Optimized => "optimized",
            Variant::Soci => "soci",
        }
    }

    /// What the table and chart call it.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Full => "full pull + runc",
            Variant::Lazy => "lazy, no prefetch list",
            Variant::Optimized => "lazy, lazyctl optimize",
            Variant::Soci => "SOCI 0.4.1",
        }
    }

    pub fn parse(s: &str) -> Result<Variant> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .with_context(|| format!("unknown variant {s:?} (known: full, lazy, optimized, soci)"))
    }
}

/// When a start counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The container printed its first line on stdout.
    FirstLine,
    /// `GET /` on the container's port (host network) answered 200.
    Http,
}

/// A root filesystem the workloads run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rootfs {
    /// Debian bookworm with python3, numpy and pandas (the quickstart's image).
    Python,
    /// Debian bookworm with node.js and express.
    Node,
}

impl Rootfs {
    pub fn name(self) -> &'static str {
        match self {
            Rootfs::Python => "python",
            Rootfs::Node => "node",
        }
    }

    /// The rootfs tar, built with mmdebstrap once and cached.
    fn tar(self) -> Result<PathBuf> {
        match self {
            Rootfs::Python => crate::containerd::python_rootfs_tar(),
            Rootfs::Node => crate::containerd::debian_rootfs_tar("node-rootfs", &["nodejs", "node-express"]),
        }
    }
}

/// A workload: an image and a command, and when its start is done.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub rootfs: Rootfs,
    /// The command; `{PORT}` is replaced by the sample's port.
    pub cmd: &'static [&'static str],
    pub ready: Ready,
    /// For `lazyctl optimize --wait-for` when the command does not exit by itself.
    pub wait_for: Option<&'static str>,
}

const EXPRESS_APP: &str = "const e=require('express');const a=e();a.get('/',(q,r)=>r.send('ok'));\
a.listen(+(process.env.PORT||8080),'127.0.0.1',()=>console.log('ready'))";

/// The workloads this benchmark knows.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "py-print",
            rootfs: Rootfs::Python,
            cmd: &["python3", "-c", "print(42)"],
            ready: Ready::FirstLine,
            wait_for: None,
        },
        Workload {
            name: "py-import",
            rootfs: Rootfs::Python,
            cmd: &["python3", "-c", "import numpy, pandas; print(1)"],
            ready: Ready::FirstLine,
            wait_for: None,
        },
        Workload {
            name: "node-http",
            rootfs: Rootfs::Node,
            cmd: &["node", "-e", EXPRESS_APP],
            ready: Ready::Http,
            wait_for: Some("ready"),
        },
    ]
}

pub fn workload(name: &str) -> Result<Workload> {
    workloads().into_iter().find(|w| w.name == name).with_context(|| {
        let known: Vec<_> = workloads().iter().map(|w| w.name).collect();
        format!("unknown workload {name:?} (known: {})", known.join(", "))
    })
}

/// Cold (empty node) or warm (same node again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cold,
    Warm,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub samples: usize,
    pub workloads: Vec<Workload>,
    pub variants: Vec<Variant>,
    /// Also time a warm start after each cold one.
    pub warm: bool,
    pub shape: Shape,
}

/// One timed start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub workload: String,
    pub variant: Variant,
    pub mode: Mode,
    pub round: usize,
    /// Pull + run until ready.
    pub seconds: f64,
    /// The pull part of it.
    pub pull_seconds: f64,
    /// Bytes the link carried from the registry to the node.
    pub link_down_bytes: u64,
    pub link_up_bytes: u64,
    pub connections: u64,
    /// Requests the registry logged (manifests, blobs, tags, `/v2/`).
    pub requests: usize,
    /// Blob GETs among them, and their body bytes.
    pub blob_requests: usize,
    pub blob_bytes: u64,
    /// The first output line (or `HTTP 200`).
    pub output: String,
    /// What a reader of the figures must know about this sample (e.g. SOCI fell back to a full
    /// pull); empty when nothing.
    pub note: String,
}

/// The floor of a workload's cold start, from the bytes it reads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Floor {
    pub workload: String,
    /// Files the workload read (the optimized image's prefetch list).
    pub files: usize,
    /// Compressed bytes of their chunks (each chunk once).
    pub compressed_bytes: u64,
    /// compressed_bytes / rate + 4 round trips (resolve, manifest, index, first range).
    pub transfer_seconds: f64,
    /// transfer_seconds + the median warm start of the full pull, when measured.
    pub practical_seconds: Option<f64>,
}

/// Everything a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub shape: String,
    pub measured: Measured,
    pub versions: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub floors: Vec<Floor>,
}

/// The images of one root filesystem in the registry (references through the link).
struct Images {
    /// Plain OCI gzip image (full pull; SOCI indexes it).
    plain: String,
    /// The same image on the link port that answers both HTTP and HTTPS (for SOCI).
    tls: String,
    /// `lazyctl convert` of it.
    lazy: String,
    /// Compressed bytes of the plain image's layer: what a full pull downloads.
    layer_bytes: u64,
}

/// The bench's fixed parts: registries, link, images, SOCI, the shim config.
struct Bench {
    opts: Options,
    link: Link,
    /// The plain registry's route through the link, and the TLS one's.
    link_port: u16,
    /// `GET` path of a 16 MiB blob for the link's throughput check.
    link_check_blob: String,
    registry: Registry,
    tls_registry: Option<Registry>,
    soci: Option<Soci>,
    containerd_bin: PathBuf,
    images: BTreeMap<Rootfs, Images>,
    /// `lazyctl optimize`d image per workload.
    optimized: BTreeMap<&'static str, String>,
    /// Holds the shim config, its chunk cache, the certificates, layouts.
    scratch: tempfile::TempDir,
}

/// Runs the benchmark as `opts` says.
pub fn run(opts: Options) -> Result<Report> {
    if opts.samples == 0 || opts.workloads.is_empty() || opts.variants.is_empty() {
        bail!("nothing to run: need at least one sample, workload and variant");
    }
    let mut bench = Bench::setup(opts)?;
    bench.link.set_shape(bench.opts.shape);
    let check = bench.link_check_blob.clone();
    let measured = crate::link::check_shape(bench.link_port, "/v2/", &check, &bench.opts.shape)?;
    let mut samples = Vec::new();
    for round in 0..bench.opts.samples {
        for workload in bench.opts.workloads.clone() {
            let mut variants = bench.opts.variants.clone();
            let n = variants.len();
            variants.rotate_left(round % n);
            for variant in variants {
                let got = bench.cold_and_warm(&workload, variant, round)?;
                for s in &got {
                    println!(
                        "round {} {:<10} {:<9} {:<4} {:>7.2} s (pull {:.2} s) {:>8.1} MB {:>5} requests  {:?} {}",
                        round + 1,
                        s.workload,
                        s.variant.name(),
                        s.mode.name(),
                        s.seconds,
                        s.pull_seconds,
                        s.link_down_bytes as f64 / 1e6,
                        s.requests,
                        s.output,
                        s.note
                    );
                }
                samples.extend(got);
            }
        }
    }
    let floors = bench.floors(&samples)?;
    let mut versions = BTreeMap::new();
    versions.insert(
        "containerd".to_string(),
        crate::debs::cached_version(CONTAINERD_SUITE, "containerd").unwrap_or_default()
            + " (Debian "
            + CONTAINERD_SUITE
            + ")",
    );
    if bench.soci.is_some() {
        versions.insert(
            "soci-snapshotter".to_string(),
            crate::debs::cached_version(crate::soci::SUITE, crate::soci::PACKAGE).unwrap_or_default()
                + " (Debian "
                + crate::soci::SUITE
                + ")",
        );
    }
    // What the lazy variants' FUSE requests went through (the fuse module's switch, which
    // runtimeclass/install.sh turns on).
    let uring = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring").unwrap_or_default();
    let transport = if uring.trim() == "Y" { "io_uring (enable_uring=Y)" } else { "/dev/fuse (enable_uring off)" };
    versions.insert("lazy FUSE transport".to_string(), format!("{} on Linux {}", transport, kernel_release()));
    if let Some(reporting) = crate::machine::free_page_reporting() {
        versions.insert("free page reporting".to_string(), reporting);
    }
    Ok(Report { shape: bench.opts.shape.to_string(), measured, versions, samples, floors })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

impl Bench {
    fn setup(opts: Options) -> Result<Bench> {
        let scratch = temp_dir("coldstart");
        let containerd_bin = crate::debs::extracted(CONTAINERD_SUITE, "containerd")?.join("usr/bin");
        let tls = Tls::generate(&scratch.path().join("tls"))?;
        let registry = Registry::start()?;
        let link = Link::new(Shape::unshaped())?;
        let link_port = link.route(registry.port())?;
        let host = format!("127.0.0.1:{link_port}");
        let (tls_registry, soci, tls_host) = if opts.variants.contains(&Variant::Soci) {
            let storage = Some(registry.storage_dir());
            let r =
                Registry::start_with(registry::StartOptions { storage, tls: Some(tls.clone()), ..Default::default() })?;
            let port = link.route_by_protocol(registry.port(), r.port())?;
            (Some(r), Some(Soci::start(&tls.ca)?), format!("127.0.0.1:{port}"))
        } else {
            (None, None, String::new())
        };
        let mut check = vec![0u8; 16 << 20];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut check);
        let digest = registry.push_blob("linkcheck/blob", &check)?;
        let link_check_blob = format!("/v2/linkcheck/blob/blobs/{digest}");

        let mut images = BTreeMap::new();
        let rootfses: std::collections::BTreeSet<Rootfs> = opts.workloads.iter().map(|w| w.rootfs).collect();
        for rootfs in rootfses {
            let name = rootfs.name();
            let tar = rootfs.tar()?;
            let t = Instant::now();
            let layout = scratch.path().join(format!("layout-{name}"));
            let layer_bytes = layout_from_rootfs_tar(&tar, &layout, "v1", &["/bin/sh"])?;
            let plain = format!("{host}/src/{name}:v1");
            crate::images::push(&layout, "v1", &plain)?;
            std::fs::remove_dir_all(&layout).with_context(|| format!("removing {}", layout.display()))?;
            let lazy = format!("{host}/lazy/{name}:v1");
            if opts.variants.contains(&Variant::Lazy) {
                crate::lazyctl::convert(&plain, &lazy, &[])?;
            }
            println!(
                "setup: {name} image pushed{} in {:.1?}",
                if opts.variants.contains(&Variant::Lazy) { " and converted" } else { "" },
                t.elapsed()
            );
            images.insert(rootfs, Images { plain, tls: format!("{tls_host}/src/{name}:v1"), lazy, layer_bytes });
        }

        let mut optimized = BTreeMap::new();
        if opts.variants.contains(&Variant::Optimized) {
            for w in &opts.workloads {
                let t = Instant::now();
                let src = &images[&w.rootfs].plain;
                let dst = format!("{host}/opt/{}:v1", w.name);
                let mut args = vec!["optimize", "--plain-http", "--timeout", "300"];
                if let Some(re) = w.wait_for {
                    args.extend(["--wait-for", re]);
                }
                args.extend([src.as_str(), dst.as_str(), "--"]);
                args.extend(w.cmd.iter().copied());
                let summary =
                    crate::lazyctl::run(&args).with_context(|| format!("optimizing the image for {}", w.name))?;
                println!("setup: {} optimized in {:.1?}: {}", w.name, t.elapsed(), summary.trim());
                optimized.insert(w.name, dst);
            }
        }

        let shim_dir = scratch.path().join("shim");
        std::fs::create_dir_all(&shim_dir)?;
        std::fs::write(
            shim_dir.join("config.toml"),
            format!("[cache]\ndir = \"{}\"\n", shim_dir.join("chunks").display()),
        )?;

        let bench = Bench {
            opts,
            link,
            link_port,
            link_check_blob,
            registry,
            tls_registry,
            soci,
            containerd_bin,
            images,
            optimized,
            scratch,
        };
        if let Some(soci) = &bench.soci {
            let t = Instant::now();
            let ctrd = bench.node()?;
            for images in bench.images.values() {
                soci.create_and_push(&ctrd, &images.tls)?;
            }
            drop(ctrd);
            println!("setup: SOCI indexes created and pushed in {:.1?}", t.elapsed());
        }
        Ok(bench)
    }

    fn shim_config(&self) -> PathBuf {
        self.scratch.path().join("shim/config.toml")
    }

    /// A fresh containerd: empty root, our shim on PATH, SOCI registered when in use.
    fn node(&self) -> Result<Containerd> {
        let extra_config = self.soci.as_ref().map(|s| s.containerd_config()).unwrap_or_default();
        Containerd::start_with(&StartOptions {
            bin_dir: Some(self.containerd_bin.clone()),
            extra_config,
            ..StartOptions::default()
        })
    }

    /// Empties the node's caches outside containerd: our chunk cache, SOCI's state.
    fn empty_caches(&mut self, variant: Variant) -> Result<()> {
        let chunks = self.scratch.path().join("shim/chunks");
        if let Err(e) = std::fs::remove_dir_all(&chunks) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("emptying the chunk cache {}", chunks.display()));
            }
        }
        if variant == Variant::Soci {
            self.soci.as_mut().expect("soci variant has a daemon").reset()?;
        }
        Ok(())
    }

    fn cold_and_warm(&mut self, workload: &Workload, variant: Variant, round: usize) -> Result<Vec<Sample>> {
        self.link.set_shape(Shape::unshaped());
        self.empty_caches(variant)?;
        let ctrd = self.node()?;
        if !crate::lazyctl::drop_caches() {
            bail!("cannot drop the page cache (/proc/sys/vm/drop_caches): run as root");
        }
        self.link.set_shape(self.opts.shape);
        let mut out = vec![self.sample(&ctrd, workload, variant, Mode::Cold, round)?];
        if self.opts.warm {
            out.push(self.sample(&ctrd, workload, variant, Mode::Warm, round)?);
        }
        self.link.set_shape(Shape::unshaped());
        Ok(out)
    }

    fn image(&self, workload: &Workload, variant: Variant) -> &str {
        let images = &self.images[&workload.rootfs];
        match variant {
            Variant::Full => &images.plain,
            Variant::Lazy => &images.lazy,
            Variant::Optimized => &self.optimized[workload.name],
            Variant::Soci => &images.tls,
        }
    }

    fn sample(
        &self,
        ctrd: &Containerd,
        workload: &Workload,
        variant: Variant,
        mode: Mode,
        round: usize,
    ) -> Result<Sample> {
        let image = self.image(workload, variant).to_string();
        let id = format!("{}-{}-{}-{round}", workload.name, variant.name(), mode.name());
        let port = registry::free_port()?;
        let link_before = self.link.counters();
        let log_before = [self.registry.log_offset(), self.tls_registry.as_ref().map_or(0, |r| r.log_offset())];
        let what = format!("{} {} {} start (round {})", workload.name, variant.name(), mode.name(), round + 1);

        let soci_log = self.soci.as_ref().map_or(0, |s| s.log_offset());
        let t0 = Instant::now();
        match variant {
            Variant::Soci => {
                let soci = self.soci.as_ref().expect("soci variant has a daemon");
                let args = soci.rpull_args(&image);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                soci.run(ctrd, &args).with_context(|| format!("{what}: soci log:\n{}", soci.log()))?;
            }
            _ => {
                ctrd.ctr_ok(&["images", "pull", "--plain-http", &image]).with_context(|| what.clone())?;
            }
        }
        let pull = t0.elapsed();
        let cfg = self.shim_config().display().to_string();
        let env = format!("PORT={port}");
        let mut args: Vec<&str> = vec!["run", "--rm"];
        if workload.ready == Ready::Http {
            args.extend(["--net-host", "--env", &env]);
        }
        match variant {
            Variant::Full => {}
            Variant::Lazy | Variant::Optimized => args.extend(["--runtime", RUNTIME, "--runtime-config-path", &cfg]),
            Variant::Soci => args.extend(["--snapshotter", crate::soci::SNAPSHOTTER]),
        }
        args.extend([image.as_str(), id.as_str()]);
        args.extend(workload.cmd.iter().copied());
        let mut child = ctrd
            .ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning ctr run")?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut child = crate::cleanup::ChildGuard::new("ctr run", child);
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_text = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let failed = |child: &mut crate::cleanup::ChildGuard, why: String| -> anyhow::Error {
            child.terminate(Duration::from_secs(5));
            anyhow::anyhow!("{what}: {why}\ncontainerd log (tail):\n{}", tail(&ctrd.log(), 40))
        };
        let output = match workload.ready {
            Ready::FirstLine => match rx.recv_timeout(SAMPLE_LIMIT.saturating_sub(t0.elapsed())) {
                Ok(line) => line,
                Err(_) => {
                    let status = child.wait_timeout(Duration::from_secs(1));
                    let err = stderr_text.join().unwrap_or_default();
                    return Err(failed(&mut child, format!("no output line (ctr run: {status:?}): {err}")));
                }
            },
            Ready::Http => loop {
                if registry::http_status(port, "/").is_ok_and(|s| s == 200) {
                    break "HTTP 200".to_string();
                }
                if let Some(status) = child.try_status() {
                    let err = stderr_text.join().unwrap_or_default();
                    let lines: Vec<String> = rx.try_iter().collect();
                    return Err(failed(
                        &mut child,
                        format!("ctr run exited {status} before serving: {}{err}", lines.join("\n")),
                    ));
                }
                if t0.elapsed() > SAMPLE_LIMIT {
                    return Err(failed(&mut child, format!("no HTTP 200 on port {port} within {SAMPLE_LIMIT:?}")));
                }
                std::thread::sleep(Duration::from_millis(5));
            },
        };
        let seconds = t0.elapsed();
        if workload.ready == Ready::Http {
            ctrd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id])?;
        }
        let status = child.wait_timeout(Duration::from_secs(120));
        let stderr_text = stderr_text.join().unwrap_or_default();
        match status {
            Some(s) if s.success() || workload.ready == Ready::Http => {}
            other => bail!("{what}: ctr run ended with {other:?} after printing {output:?}: {stderr_text}"),
        }

        let link = self.link.counters() - link_before;
        let mut requests = self.registry.requests_since(log_before[0])?;
        if let Some(r) = &self.tls_registry {
            requests.extend(r.requests_since(log_before[1])?);
        }
        for r in &requests {
            log::debug!("{what}: registry: {} {} -> {} ({} bytes)", r.method, r.uri, r.status, r.bytes);
        }
        let blob_bytes: u64 = requests.iter().filter(|r| r.is_blob_get()).map(|r| r.bytes).sum();

        let mut note = String::new();
        if let (Variant::Soci, Some(soci)) = (variant, &self.soci) {
            let (remote, local) = soci.layers_since(soci_log);
            let layer_bytes = self.images[&workload.rootfs].layer_bytes;
            if local > 0 {
                note = format!("SOCI prepared {local} layer(s) by a full download ({remote} lazily)");
            } else if mode == Mode::Cold && blob_bytes * 100 >= layer_bytes * 95 {
                // Mounted lazily, yet it fetched the whole layer: its zTOC had no usable seek
                // points (a layer written as one deflate block), so this is a full pull.
                note = format!("SOCI fetched {blob_bytes} bytes of a {layer_bytes}-byte layer: no lazy loading");
            }
            if !note.is_empty() {
                log::warn!("{what}: {note}; soci log:\n{}", tail(&soci.log(), 20));
            }
        }
        Ok(Sample {
            workload: workload.name.to_string(),
            variant,
            mode,
            round,
            seconds: seconds.as_secs_f64(),
            pull_seconds: pull.as_secs_f64(),
            link_down_bytes: link.down_bytes,
            link_up_bytes: link.up_bytes,
            connections: link.connections,
            requests: requests.len(),
            blob_requests: requests.iter().filter(|r| r.is_blob_get()).count(),
            blob_bytes,
            output,
            note,
        })
    }

    /// Floors of the workloads that have an optimized image (its prefetch list is what the
    /// workload read when `lazyctl optimize` recorded it).
    fn floors(&self, samples: &[Sample]) -> Result<Vec<Floor>> {
        let mut out = Vec::new();
        let Some(rate) = self.opts.shape.bytes_per_sec() else { return Ok(out) };
        for w in &self.opts.workloads {
            let Some(image) = self.optimized.get(w.name) else { continue };
            let (files, compressed_bytes) = prefetch_bytes(image)?;
            let transfer_seconds = compressed_bytes as f64 / rate + 4.0 * self.opts.shape.rtt().as_secs_f64();
            let mut warm: Vec<f64> = samples
                .iter()
                .filter(|s| s.workload == w.name && s.variant == Variant::Full && s.mode == Mode::Warm)
                .map(|s| s.seconds)
                .collect();
            let practical_seconds = report::median(&mut warm).map(|m| transfer_seconds + m);
            out.push(Floor {
                workload: w.name.to_string(),
                files,
                compressed_bytes,
                transfer_seconds,
                practical_seconds,
            });
        }
        Ok(out)
    }
}

/// Files in `image`'s prefetch list and the compressed bytes of their chunks (each chunk once).
fn prefetch_bytes(image: &str) -> Result<(usize, u64)> {
    use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};
    let reference: Reference = image.parse().with_context(|| format!("parsing {image}"))?;
    let client = Client::new(ClientConfig { plain_http: PlainHttp::Always, ..ClientConfig::default() })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let index = runtime
        .block_on(vfs::stub::fetch_index(&client, &reference))
        .with_context(|| format!("lazy index of {image}"))?;
    let mut chunks = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for &ino in &index.prefetch {
        if let Some(vfs::index::Inode { kind: vfs::index::Kind::File { chunks: list, .. }, .. }) = index.inode(ino) {
            for c in list {
                if chunks.insert((c.blob, c.offset)) {
                    bytes += u64::from(c.compressed_len);
                }
            }
        }
    }
    Ok((index.prefetch.len(), bytes))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the benchmark writes its raw samples next to the chart: `coldstart.png` ->
/// `coldstart.json`, `coldstart.csv`.
pub fn sibling(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}
