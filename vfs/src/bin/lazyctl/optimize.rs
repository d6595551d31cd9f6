//! `lazyctl optimize SRC DST -- CMD [ARGS...]`: convert SRC, run CMD in a sandbox over a lazy
//! mount of the conversion, record the order in which it first reads files, and publish DST with
//! that order as its prefetch list and hot blob (the listed files' chunks contiguous at the front).
//!
//! Steps: pull and convert SRC; push the data blobs (no tag) to DST's repository; mount the index
//! with `--record`-style recording; run CMD ([`super::sandbox`]) until it exits, prints a line
//! matching `--wait-for`, or `--timeout` passes; stop the sandbox and unmount; convert again with
//! the recorded list, reusing every chunk the first conversion pushed (only the hot blob is new);
//! push and tag DST. DST is only tagged when everything before it worked.
//!
//! Nothing is left behind on any path out (error, Ctrl-C, panic): the sandbox's mounts die with
//! its namespace, [`Sandbox`] kills and reaps the workload on drop, [`vfs::fs::Mounted`] unmounts on
//! drop, and the temp dir goes last.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{SigSet, Signal};
use serde_json::Value;
use vfs::builder::{CacheSettings, LazyMountBuilder};
use vfs::cache::DEFAULT_MAX_BYTES;
use vfs::convert::{self, ConvertOptions, SourceRef};
use vfs::fetch::FetchOptions;
use vfs::fs::{MountOptions, PrefetchMode};
use vfs::registry::Reference;
use vfs::stats::Stats;

use super::convert::{
    convert_with_progress, fetch_source, mb, network_runtime, print_figures, publish, registry_client, reused_blobs,
    ConvertArgs,
};
use super::sandbox::{Sandbox, Spec};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: ConvertArgs,
    /// Stop recording when a line of CMD's stdout or stderr matches REGEX (a server's "ready" line).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    wait_for: Option<regex::Regex>,
    /// Stop recording after SECS seconds of CMD (the normal end for a server without --wait-for).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
    /// Publish DST even if CMD fails (non-zero exit, or exit or timeout before the --wait-for line).
    #[arg(long)]
    allow_failure: bool,
    /// Extra environment for CMD, on top of the image config's Env (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Also write the recorded list to FILE (input of `convert --prefetch-list`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Seconds a read of the lazy mount may wait for the registry before failing with EIO.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    deadline: u64,
    /// Source image: a registry reference, or an OCI layout as oci:DIR[:TAG].
    src: SourceRef,
    /// Destination registry reference for the optimized lazy image.
    dst: Reference,
    /// The workload, after `--` (default: the image's Entrypoint and Cmd). Resolved with the
    /// image's PATH; runs with its Env, WorkingDir and User.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string())
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Why recording ended.
#[derive(Debug)]
enum Stop {
    Exited(std::process::ExitStatus),
    Ready(String),
    Timeout,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Blocked before any thread exists (all inherit the mask): Ctrl-C and SIGTERM become events the
    // recording loop and the steps between check, so cleanup always runs.
    let mut stop_signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop_signals.add(s);
    }
    stop_signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let interrupted = || pending_signal(&stop_signals);

    let started = Instant::now();
    let runtime = network_runtime()?;
    let client = registry_client(args.common.plain_http)?;
    let platform = args.common.platform();
    let tmp = tempfile::Builder::new().prefix("lazyctl-optimize-").tempdir().context("creating a temp dir")?;

    let source = fetch_source(&runtime, &client, &args.src, &platform, tmp.path())?;
    let image = ImageConfig::from_config(&source.config);
    let argv = if args.cmd.is_empty() { image.default_cmd.clone() } else { args.cmd.clone() };
    if argv.is_empty() {
        bail!("{} has neither Entrypoint nor Cmd: give the workload after --, e.g. -- /bin/sh -c '...'", args.src);
    }
    check_interrupted(interrupted())?;

    // First conversion: what the workload runs on. Its blobs go to DST's repository untagged.
    let earlier = runtime.block_on(convert::reuse::earlier_indexes(&client, &args.dst));
    let mut opts = ConvertOptions {
        chunk_size: args.common.chunk_size,
        source_repo: format!("{}/{}", args.dst.registry, args.dst.repository),
        prefetch: Vec::new(),
        reuse: earlier.clone(),
        limits: args.common.limits(),
    };
    let work = |name: &str| -> anyhow::Result<PathBuf> {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    };
    let first = convert_with_progress(&source, &opts, &work("convert-1")?)?;
    check_interrupted(interrupted())?;
    runtime
        .block_on(convert::push::push_blobs(&client, &args.dst, &first.blobs, &reused_blobs(&first)))
        .with_context(|| format!("pushing data blobs to {} (DST)", args.dst.repository_only()))?;
    check_interrupted(interrupted())?;

    let recording = record(&args, &runtime, &client, &first.index, &image, argv, tmp.path(), &stop_signals)?;
    if let Some(path) = &args.record {
        let text: String = recording.files.iter().map(|f| format!("{f}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing the recorded list to {}", path.display()))?;
    }
    if recording.files.is_empty() {
        bail!("CMD read no file of the image, so there is nothing to lay out; DST not written");
    }
    check_interrupted(interrupted())?;

    // Second conversion: the recorded files first. Everything else is found in the blobs just
    // pushed, so only the hot blob is new.
    opts.prefetch = recording.files.clone();
    opts.reuse = std::iter::once(first.index).chain(earlier).collect();
    let converted = convert_with_progress(&source, &opts, &work("convert-2")?)?;
    check_interrupted(interrupted())?;
    let (pushed, stub) = publish(&runtime, &client, &args.dst, &source, &converted)?;

    let s = &converted.summary;
    println!("optimized {} -> {} ({})", args.src, args.dst, pushed.index_digest);
    println!(
        "  recorded {} files in {:.1} s ({}); {:.1} MB read through the lazy mount",
        recording.files.len(),
        recording.secs,
        recording.stopped,
        mb(recording.bytes_served)
    );
    print_figures(s, &pushed, args.common.chunk_size, stub.layer.len());
    println!("  time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn check_interrupted(sig: Option<Signal>) -> anyhow::Result<()> {
    match sig {
        Some(sig) => bail!("interrupted ({sig}); DST not written"),
        None => Ok(()),
    }
}

/// A pending SIGINT/SIGTERM/SIGHUP (blocked in every thread), consumed.
fn pending_signal(set: &SigSet) -> Option<Signal> {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid sigset and timespec; NULL siginfo is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (n > 0).then(|| Signal::try_from(n).ok()).flatten()
}

/// What a container of the image gets from its config.
struct ImageConfig {
    env: Vec<String>,
    cwd: String,
    user: String,
    default_cmd: Vec<String>,
}

impl ImageConfig {
    fn from_config(config: &Value) -> ImageConfig {
        let c = config.get("config").unwrap_or(&Value::Null);
        let strings = |key: &str| -> Vec<String> {
            c.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let string = |key: &str| c.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let mut default_cmd = strings("Entrypoint");
        default_cmd.extend(strings("Cmd"));
        ImageConfig { env: strings("Env"), cwd: string("WorkingDir"), user: string("User"), default_cmd }
    }
}

/// Overrides and additions (`--env`) on top of the image's Env, keeping its order.
fn merge_env(image: &[String], extra: &[String]) -> Vec<String> {
    let key = |e: &String| e.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_else(|| e.clone());
    let mut out: Vec<String> = image.iter().filter(|e| !extra.iter().any(|x| key(x) == key(e))).cloned().collect();
    out.extend(extra.iter().cloned());
    out
}

struct Recording {
    files: Vec<String>,
    stopped: String,
    secs: f64,
    bytes_served: u64,
}

/// Mounts `index` with recording, runs the workload in the sandbox, and returns the recorded
/// list. The sandbox is stopped and the mount removed before this returns, also on error.
#[allow(clippy::too_many_arguments)]
fn record(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    client: &vfs::registry::Client,
    index: &vfs::Index,
    image: &ImageConfig,
    argv: Vec<String>,
    tmp: &std::path::Path,
    stop_signals: &SigSet,
) -> anyhow::Result<Recording> {
    let deadline = Duration::from_secs(args.deadline.max(1));
    let mountpoint = tmp.join("lower");
    let scratch = tmp.join("sandbox");
    let record_path = tmp.join("record.txt");
    for d in [&mountpoint, &scratch] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The mount reads as `lazyctl mount` does.
    let builder = LazyMountBuilder::new(
        vfs::registry::ClientConfig { deadline, ..client.config().clone() },
        FetchOptions { deadline, ..FetchOptions::default() },
        Some(CacheSettings { dir: tmp.join("cache"), max_bytes: DEFAULT_MAX_BYTES, files: false, start_logs: false }),
    )?;
    let stats = builder.stats().clone();
    let source = builder.chunk_source(index, None, runtime.handle().clone())?;
    let index = Arc::new(index.clone());
    let source: Arc<dyn vfs::fetch::ChunkSource> = Arc::new(source);
    let user = image_user(&index, &source, &image.user, &tmp.join("peek"))?;
    let opts =
        MountOptions { prefetch: PrefetchMode::None, record: Some(record_path.clone()), ..MountOptions::default() };
    let mounted = vfs::fs::mount(index, source, stats, &mountpoint, opts)?;
    let mut record = RecordTail::open(&record_path)?;

    let spec = Spec {
        lower: mounted.mountpoint().to_path_buf(),
        scratch,
        argv: argv.clone(),
        env: merge_env(&image.env, &args.env),
        cwd: image.cwd.clone(),
        user,
    };
    log::info!("recording: running {:?} in a sandbox over the lazy mount", argv);
    let started = Instant::now();
    let mut sandbox = Sandbox::start(&spec, &tmp.join("sandbox.json"))?;
    let (stdout, stderr) = sandbox.take_output();
    let mut out = Output::new(stdout, false)?;
    let mut err = Output::new(stderr, true)?;
    let timeout = Duration::from_secs(args.timeout);

    let stop = loop {
        {
            let mut fds = Vec::new();
            for o in [&out, &err] {
                if let Some(f) = o.fd() {
                    fds.push(nix::poll::PollFd::new(f, nix::poll::PollFlags::POLLIN));
                }
            }
            if let Some(f) = sandbox.error_fd() {
                fds.push(nix::poll::PollFd::new(f, nix::poll::PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("waiting for the workload's output"),
            }
        }
        // The record is read BEFORE the output, so a file opened before the ready line is kept
        // (unless opened within the microseconds between the two reads); a file opened after it
        // slips in only while this thread is waking up to the line (poll wakes on it).
        record.read_new()?;
        let ready =
            [out.drain(args.wait_for.as_ref())?, err.drain(args.wait_for.as_ref())?].into_iter().flatten().next();
        if let Some(msg) = sandbox.poll_errors() {
            bail!("{msg}; DST not written");
        }
        if let Some(line) = ready {
            break Stop::Ready(line);
        }
        if let Some(status) = sandbox.try_wait()? {
            // Every open CMD made is recorded by now; take what is left of its output too.
            record.read_new()?;
            let until = Instant::now() + Duration::from_secs(2);
            let mut ready = None;
            while !(out.eof && err.eof) && Instant::now() < until {
                ready = ready.or(out.drain(args.wait_for.as_ref())?).or(err.drain(args.wait_for.as_ref())?);
                std::thread::sleep(Duration::from_millis(10));
            }
            ready = ready.or(out.finish(args.wait_for.as_ref())).or(err.finish(args.wait_for.as_ref()));
            if let Some(msg) = sandbox.poll_errors() {
                bail!("{msg}; DST not written");
            }
            break match ready {
                Some(line) => Stop::Ready(line),
                None => Stop::Exited(status),
            };
        }
        if started.elapsed() >= timeout {
            break Stop::Timeout;
        }
        if let Some(sig) = pending_signal(stop_signals) {
            bail!("interrupted ({sig}): stopped the workload and unmounted; DST not written");
        }
    };
    let secs = started.elapsed().as_secs_f64();
    sandbox.stop();
    drop(sandbox);
    let bytes_served = mounted.stats().snapshot().bytes_served;
    mounted.unmount().context("unmounting the lazy mount")?;

    let stopped = match &stop {
        Stop::Ready(line) => format!("stopped at the line {line:?}"),
        Stop::Timeout => format!("stopped after the {} s timeout", args.timeout),
        Stop::Exited(status) => format!("CMD exited with {}", describe(status)),
    };
    let failed = match (&stop, &args.wait_for) {
        (Stop::Exited(status), None) if !status.success() => Some(format!("CMD exited with {}", describe(status))),
        (Stop::Exited(status), Some(re)) => {
            Some(format!("CMD exited with {} before printing a line matching {:?}", describe(status), re.as_str()))
        }
        (Stop::Timeout, Some(re)) => {
            Some(format!("no line matching {:?} within the {} s timeout", re.as_str(), args.timeout))
        }
        _ => None,
    };
    if let Some(why) = failed {
        if !args.allow_failure {
            bail!(
                "{why}; DST not written (pass --allow-failure to publish what was recorded: {} files)",
                record.files.len()
            );
        }
        log::warn!("{why}; publishing what was recorded anyway (--allow-failure)");
    }
    log::info!("recorded {} files: {stopped}", record.files.len());
    Ok(Recording { files: record.files, stopped, secs, bytes_served })
}

/// Resolves the image config's User with the image's /etc/passwd and /etc/group, read through a
/// short-lived mount that does not record (see [`super::sandbox::resolve_user`]).
fn image_user(
    index: &Arc<vfs::Index>,
    source: &Arc<dyn vfs::fetch::ChunkSource>,
    user: &str,
    mountpoint: &std::path::Path,
) -> anyhow::Result<super::sandbox::User> {
    std::fs::create_dir(mountpoint).with_context(|| format!("creating {}", mountpoint.display()))?;
    let opts = MountOptions { prefetch: PrefetchMode::None, record: None, ..MountOptions::default() };
    let mounted = vfs::fs::mount(index.clone(), source.clone(), Arc::new(Stats::default()), mountpoint, opts)?;
    let read = |name: &str| -> anyhow::Result<String> {
        match std::fs::read(mounted.mountpoint().join(name)) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading the image's /{name}")),
        }
    };
    let (passwd, group) = (read("etc/passwd")?, read("etc/group")?);
    mounted.unmount().context("unmounting the lazy mount used to read /etc/passwd")?;
    super::sandbox::resolve_user(user, &passwd, &group).map_err(anyhow::Error::msg)
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(128..=192), _) | (_, Some(_)) => {
            let sig = status.code().map(|c| c - 128).or(status.signal()).unwrap_or(0);
            match Signal::try_from(sig) {
                Ok(s) => format!("signal {s}"),
                Err(_) => format!("signal {sig}"),
            }
        }
        (Some(code), _) => format!("status {code}"),
        _ => "an unknown status".into(),
    }
}

/// The record file the mount appends to, one line per first-read file; read as it grows.
struct RecordTail {
    file: File,
    partial: Vec<u8>,
    files: Vec<String>,
}

impl RecordTail {
    fn open(path: &std::path::Path) -> anyhow::Result<RecordTail> {
        let file = File::open(path).with_context(|| format!("opening the record file {}", path.display()))?;
        Ok(RecordTail { file, partial: Vec::new(), files: Vec::new() })
    }

    /// Appends the complete lines written since the last call.
    fn read_new(&mut self) -> anyhow::Result<()> {
        self.file.read_to_end(&mut self.partial).context("reading the record file")?;
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            let lines = std::mem::replace(&mut self.partial, rest);
            self.files.extend(
                lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| String::from_utf8_lossy(l).into_owned()),
            );
        }
        Ok(())
    }
}

/// One of CMD's output pipes: passed through to ours as it comes, and matched line by line.
struct Output {
    pipe: Option<File>,
    line: Vec<u8>,
    to_stderr: bool,
    eof: bool,
}

impl Output {
    fn new(pipe: impl Into<std::os::fd::OwnedFd>, to_stderr: bool) -> anyhow::Result<Output> {
        let pipe = File::from(pipe.into());
        let fd = pipe.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).context("F_GETFL")?;
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("F_SETFL")?;
        Ok(Output { pipe: Some(pipe), line: Vec::new(), to_stderr, eof: false })
    }

    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    /// Reads what is there, passes it through, and returns the first complete line matching `re`.
    fn drain(&mut self, re: Option<&regex::Regex>) -> anyhow::Result<Option<String>> {
        let Some(pipe) = self.pipe.as_mut() else { return Ok(None) };
        let mut buf = [0u8; 16384];
        let mut matched = None;
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    self.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the workload's output"),
            };
            let data = &buf[..n];
            // Pass-through is best effort: a closed terminal must not stop the recording.
            let _ = if self.to_stderr {
                std::io::stderr().write_all(data)
            } else {
                std::io::stdout().write_all(data).and_then(|_| std::io::stdout().flush())
            };
            for &b in data {
                if b == b'\n' {
                    let line = std::mem::take(&mut self.line);
                    if matched.is_none() {
                        matched = matching(re, &line);
                    }
                } else {
                    self.line.push(b);
                }
            }
        }
        Ok(matched)
    }

    /// The last, unterminated line, if it matches.
    fn finish(&mut self, re: Option<&regex::Regex>) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        matching(re, &line)
    }
}

fn matching(re: Option<&regex::Regex>, line: &[u8]) -> Option<String> {
    let re = re?;
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    re.is_match(text).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_keep_the_image_order() {
        let image = vec!["PATH=/usr/bin".to_string(), "LANG=C".to_string()];
        let merged = merge_env(&image, &["LANG=C.UTF-8".into(), "PYTHONUNBUFFERED=1".into()]);
        assert_eq!(merged, ["PATH=/usr/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"]);
    }

    #[test]
    fn image_config_gives_env_cwd_user_and_default_command() {
        let c = serde_json::json!({"config": {"Env": ["A=1"], "WorkingDir": "/app", "User": "app:app",
            "Entrypoint": ["python3"], "Cmd": ["-m", "http.server"]}});
        let i = ImageConfig::from_config(&c);
        assert_eq!((i.env, i.cwd.as_str(), i.user.as_str()), (vec!["A=1".to_string()], "/app", "app:app"));
        assert_eq!(i.default_cmd, ["python3", "-m", "http.server"]);
        assert!(ImageConfig::from_config(&serde_json::json!({})).default_cmd.is_empty());
    }

    #[test]
    fn record_tail_returns_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let mut w = File::create(&path).unwrap();
        let mut tail = RecordTail::open(&path).unwrap();
        w.write_all(b"/a\n/b/c").unwrap();
        tail.read_new().unwrap();
        assert_eq!(tail.files, ["/a"]);
        w.write_all(b"d\n").unwrap();
        tail.read_new().unwrap();
        assert_eq!(tail.files, ["/a", "/b/cd"]);
    }
}
