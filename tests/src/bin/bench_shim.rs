//! `cargo run -p lazy-tests --bin bench-shim [-- RUNS]`: start-up latency and memory of
//! `containerd-shim-lazy-v2` against `io.containerd.runc.v2` on this machine (not a timed test).
//!
//! - `ctr run --rm IMG true` with each runtime, RUNS times (default 10), alternated so drift hits
//!   both equally; prints median, min and max wall time.
//! - RSS of the shim process: idle with one running plain container (and runc's shim likewise),
//!   and with the lazy python image (~330 MB, built with mmdebstrap and cached) mounted after
//!   `python3 -c 'print(42)'` ran in it.
//!
//! Needs root, containerd, runc, docker-registry, skopeo (and mmdebstrap for the lazy figure).
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::containerd::{layout_from_rootfs_tar, push_busybox, python_rootfs_tar, Containerd, RUNTIME};
use harness::registry::Registry;

const RUNC: &str = "io.containerd.runc.v2";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// Pids of processes whose argv[0] ends with `name` and that serve containerd at `sock`.
fn shim_pids_named(name: &str, sock: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.ends_with(name)) && args.iter().any(|a| a == sock) {
            out.push(pid);
        }
    }
    out
}

fn main() -> Result<()> {
    harness::init_logging();
    let runs: usize =
        std::env::args().nth(1).map(|s| s.parse()).transpose().context("RUNS must be a number")?.unwrap_or(10);
    let registry = Registry::start()?;
    let image = push_busybox(&registry)?;
    let ctrd = Containerd::start()?;
    ctrd.pull(&image)?;
    let sock = ctrd.socket().display().to_string();

    // Warm-up: first runs pay for page cache and snapshot setup.
    for rt in [RUNC, RUNTIME] {
        ctrd.ctr_ok(&["run", "--rm", "--runtime", rt, &image, "warm", "true"])?;
    }
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, rt) in [RUNC, RUNTIME].iter().enumerate() {
            let id = format!("b{i}-{k}");
            let t = Instant::now();
            let out = ctrd.ctr(&["run", "--rm", "--runtime", rt, &image, &id, "true"]);
            let d = t.elapsed();
            if out.code != 0 {
                bail!("{rt}: ctr run failed: {}", out.all());
            }
            times[k].push(d);
        }
    }
    println!("ctr run --rm IMG true, {runs} runs each, alternated (busybox image, pre-pulled)");
    println!("{:<26} {:>10} {:>10} {:>10}", "runtime", "median", "min", "max");
    for (k, rt) in [RUNC, RUNTIME].iter().enumerate() {
        let min = *times[k].iter().min().unwrap();
        let max = *times[k].iter().max().unwrap();
        let med = median(&mut times[k]);
        println!(
            "{rt:<26} {:>8.0}ms {:>8.0}ms {:>8.0}ms",
            med.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }

    // Idle RSS with one running container each.
    ctrd.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image, "idle-lazy", "sleep", "1000"])?;
    ctrd.ctr_ok(&["run", "-d", "--runtime", RUNC, &image, "idle-runc", "sleep", "1000"])?;
    std::thread::sleep(Duration::from_millis(500));
    let ours: u64 = shim_pids_named("containerd-shim-lazy-v2", &sock).iter().map(|p| rss_kib(*p)).sum();
    let runc: u64 = shim_pids_named("containerd-shim-runc-v2", &sock).iter().map(|p| rss_kib(*p)).sum();
    println!("\nshim RSS, one running plain container");
    println!("{RUNC:<26} {:>8} KiB", runc);
    println!("{RUNTIME:<26} {:>8} KiB", ours);
    for id in ["idle-lazy", "idle-runc"] {
        let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    }
    std::thread::sleep(Duration::from_secs(1));
    for id in ["idle-lazy", "idle-runc"] {
        let _ = ctrd.ctr(&["task", "delete", id]);
        let _ = ctrd.ctr(&["container", "rm", id]);
    }

    // RSS with the lazy python image mounted.
    match python_rootfs_tar() {
        Err(e) => println!("\nlazy python image: skipped ({e:#})"),
        Ok(tar) => {
            let layout = harness::cleanup::temp_dir("bench-python");
            layout_from_rootfs_tar(&tar, layout.path(), "v1", &["python3"])?;
            let src = registry.reference("src/python:v1");
            harness::images::push(layout.path(), "v1", &src)?;
            let lazy = registry.reference("lazy/python:v1");
            harness::lazyctl::convert(&src, &lazy, &[])?;
            ctrd.pull(&lazy)?;
            let cfg_dir = ctrd.scratch("benchcfg");
            let cfg = cfg_dir.join("config.toml");
            std::fs::write(&cfg, format!("[cache]\ndir = \"{}\"\n", cfg_dir.join("cache").display()))?;
            let cfg = cfg.display().to_string();
            let t = Instant::now();
            ctrd.ctr_ok(&[
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                "--runtime-config-path",
                &cfg,
                &lazy,
                "py",
                "sleep",
                "1000",
            ])?;
            let out = ctrd.ctr_ok(&["task", "exec", "--exec-id", "p", "py", "python3", "-c", "print(42)"])?;
            let first = t.elapsed();
            let stats = harness::lazyctl::run(&["stats", &ctrd.bundle("py").join("lazy").display().to_string()])?;
            // The resident size the container lives with: FUSE over io_uring queues give the pages
            // of large replies back once they have been idle for 100 ms.
            std::thread::sleep(Duration::from_millis(500));
            let rss: u64 = shim_pids_named("containerd-shim-lazy-v2", &sock).iter().map(|p| rss_kib(*p)).sum();
            println!(
                "\nlazy python image (cold node cache): run -d + exec python3 -c 'print(42)' -> {} in {:.0}ms",
                out.trim(),
                first.as_secs_f64() * 1e3
            );
            println!("{RUNTIME:<26} {:>8} KiB RSS with the lazy image mounted", rss);
            println!("stats: {}", stats.split_whitespace().collect::<Vec<_>>().join(" "));
            let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "py"]);
            std::thread::sleep(Duration::from_secs(1));
            let _ = ctrd.ctr(&["task", "delete", "py"]);
            let _ = ctrd.ctr(&["container", "rm", "py"]);
        }
    }
    Ok(())
}
