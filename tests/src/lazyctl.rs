//! Drives `lazyctl` exactly as a user would: `convert`, `inspect`, `mount` (foreground process,
//! ready when it prints "mounted ..."), `stats`. A [`LazyMount`] is a drop guard: the mount
//! process gets SIGTERM, the mount point is detached if still there, temp dirs are removed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins;
use crate::cleanup::{force_unmount, is_mounted, temp_dir, ChildGuard};

/// Runs `lazyctl convert --plain-http [extra...] SRC DST`; returns its stdout (the summary).
pub fn convert(src: &str, dst: &str, extra: &[&str]) -> Result<String> {
    run(&[&["convert", "--plain-http"], extra, &[src, dst]].concat())
}

/// Runs `lazyctl inspect --plain-http --json IMAGE` and parses the JSON.
pub fn inspect_json(image: &str) -> Result<serde_json::Value> {
    let out = run(&["inspect", "--plain-http", "--json", image])?;
    serde_json::from_str(&out).with_context(|| format!("lazyctl inspect --json printed non-JSON: {out}"))
}

/// Runs lazyctl with `args`; stdout on success, an error with stderr otherwise.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(bins::lazyctl()).args(args).output().context("running lazyctl")?;
    if !out.status.success() {
        bail!(
            "lazyctl {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `lazyctl stats` output: the filesystem's own counters type, so a field the CLI drops or renames
/// fails the parse.
pub use vfs::stats::Snapshot as Stats;

/// Options of `lazyctl mount` beyond image and mount point.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// `--prefetch`: none, prioritized or all. Tests default to none, to measure on-demand reads.
    pub prefetch: String,
    /// `--cache-dir`; a fresh temp dir when None.
    pub cache_dir: Option<PathBuf>,
    /// `--record FILE`.
    pub record: Option<PathBuf>,
    /// `--deadline SECS`.
    pub deadline: Option<u64>,
    /// Any further arguments, placed before IMAGE.
    pub extra: Vec<String>,
    /// Extra environment of the lazyctl process (e.g. PATH with a test's credential helper).
    pub env: Vec<(String, String)>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            prefetch: "none".into(),
            cache_dir: None,
            record: None,
            deadline: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running `lazyctl mount`. Unmounted (SIGTERM) on drop.
pub struct LazyMount {
    child: Option<ChildGuard>,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    log: PathBuf,
    /// mnt/, cache/ (unless given), lazyctl.log; removed after unmount.
    dir: Option<tempfile::TempDir>,
}

impl LazyMount {
    /// Starts `lazyctl mount --plain-http ... IMAGE MOUNTPOINT` and waits (up to 60 s) for its
    /// "mounted" line and for the mount to show in /proc/self/mountinfo.
    pub fn start(image: &str, opts: MountOptions) -> Result<LazyMount> {
        let dir = temp_dir("mount");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let cache_dir = opts.cache_dir.clone().unwrap_or_else(|| dir.path().join("cache"));
        std::fs::create_dir_all(&cache_dir)?;
        let log = dir.path().join("lazyctl.log");
        let mut cmd = Command::new(bins::lazyctl());
        cmd.args(["mount", "--plain-http", "--prefetch", &opts.prefetch]).arg("--cache-dir").arg(&cache_dir);
        if let Some(record) = &opts.record {
            cmd.arg("--record").arg(record);
        }
        if let Some(deadline) = opts.deadline {
            cmd.args(["--deadline", &deadline.to_string()]);
        }
        cmd.args(&opts.extra).arg(image).arg(&mountpoint);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning lazyctl mount")?;
        let mut child = ChildGuard::new("lazyctl mount", child);
        let stdout = child_stdout(&mut child);
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut mount = LazyMount { child: Some(child), mountpoint, cache_dir, log, dir: Some(dir) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut printed = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("mounted") => break,
                Ok(line) => printed.push(line),
                Err(_) => {}
            }
            let exited = mount.child.as_mut().and_then(|c| c.try_status());
            if let Some(status) = exited {
                bail!(
                    "lazyctl mount {image} exited with {status} before printing \"mounted\"\nstdout: {}\nstderr:\n{}",
                    printed.join("\n"),
                    mount.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "lazyctl mount {image} did not print \"mounted\" within 60 s\nstdout: {}\nstderr:\n{}",
                    printed.join("\n"),
                    mount.log_text()
                );
            }
        }
        if !is_mounted(&mount.mountpoint) {
            bail!("lazyctl printed \"mounted\" but {} is not in /proc/self/mountinfo", mount.mountpoint.display());
        }
        Ok(mount)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `<mountpoint>/<rel>`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel.trim_start_matches('/'))
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// What `lazyctl mount` wrote to stderr so far (its log).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `lazyctl stats MOUNTPOINT`.
    pub fn stats(&self) -> Result<Stats> {
        let out = run(&["stats", &self.mountpoint.to_string_lossy()])?;
        serde_json::from_str(&out).with_context(|| format!("lazyctl stats printed unexpected JSON: {out}"))
    }

    /// Sends SIGTERM and checks what a user sees: the process exits successfully within 10 s and
    /// the mount is gone.
    pub fn unmount(mut self) -> Result<()> {
        let mut child = self.child.take().expect("present until unmount or drop");
        let (status, in_time) = child.terminate(Duration::from_secs(10));
        let mounted = is_mounted(&self.mountpoint);
        let _ = force_unmount(&self.mountpoint);
        if !in_time {
            bail!("lazyctl mount did not exit within 10 s of SIGTERM; log:\n{}", self.log_text());
        }
        if !status.is_some_and(|s| s.success()) {
            bail!("lazyctl mount exited with {status:?} after SIGTERM; log:\n{}", self.log_text());
        }
        if mounted {
            bail!("lazyctl mount exited but left {} mounted", self.mountpoint.display());
        }
        Ok(())
    }
}

fn child_stdout(child: &mut ChildGuard) -> std::process::ChildStdout {
    child.take_stdout().expect("stdout is piped")
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(10));
        }
        if let Err(err) = force_unmount(&self.mountpoint) {
            log::error!("cleanup: {err}");
        }
        if std::thread::panicking() {
            eprintln!("--- lazyctl mount log ({}) ---\n{}", self.log.display(), self.log_text());
        }
        drop(self.dir.take());
    }
}

/// Drops the page cache (so the next read goes through FUSE again). Returns false when not
/// permitted, which benchmarks report.
pub fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Runs `lazyctl optimize --plain-http [extra...] SRC DST -- CMD...` to completion and returns its
/// output whatever the exit status (tests check failures too). Its log goes to stderr.
pub fn optimize(src: &str, dst: &str, extra: &[&str], cmd: &[&str]) -> Result<std::process::Output> {
    let mut c = Command::new(bins::lazyctl());
    c.args(["optimize", "--plain-http"]).args(extra).args([src, dst, "--"]).args(cmd).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        c.env("RUST_LOG", "info");
    }
    let out = c.output().context("running lazyctl optimize")?;
    eprintln!(
        "lazyctl optimize {src} {dst} -- {cmd:?}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Mount points in /proc/self/mountinfo under a `lazyctl optimize` temp dir (its lazy mount and
/// anything a sandbox might leak into the host's mount namespace): empty when it cleaned up.
pub fn optimize_mounts() -> Vec<String> {
    vfs::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point.display().to_string())
        .filter(|mp| mp.contains("lazyctl-optimize-"))
        .collect()
}

/// Pids of `lazyctl sandbox-init` helpers still alive: empty when optimize cleaned up.
pub fn sandbox_helpers() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"sandbox-init"))
        })
        .collect()
}

/// The index of a lazy image, decoded by the vfs crate (what the shim and `lazyctl mount` load).
pub fn fetch_index(image: &str) -> Result<vfs::Index> {
    use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};
    let client = Client::new(ClientConfig { plain_http: PlainHttp::Always, ..ClientConfig::default() })?;
    let reference: Reference = image.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime
        .block_on(vfs::stub::fetch_index(&client, &reference))
        .with_context(|| format!("fetching the index of {image}"))
}
