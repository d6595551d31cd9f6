//! A private containerd 1.6 for end-to-end shim tests: its own root, state and sockets under a temp
//! dir, the workspace's binary dir first on PATH (so `io.containerd.lazy.v2` finds
//! `containerd-shim-lazy-v2`), a unique namespace per instance, and a `ctr` wrapper.
//!
//! containerd still writes fixed host paths (PLATFORM.md): shim sockets under /run/containerd/s,
//! runc state under /run/containerd/runc/<ns>, cgroups /<ns>/<id>. Drop kills every shim and
//! container process of this instance, stops containerd, unmounts everything under the temp dir
//! and removes those host paths, also when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{force_unmount, mounts_under, temp_dir, ChildGuard};
use crate::images::{Entry, Image, Layer};

/// The runtime type of our shim.
pub const RUNTIME: &str = "io.containerd.lazy.v2";
const CGROUP_ROOTS: &[&str] = &["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

pub struct Containerd {
    dir: tempfile::TempDir,
    namespace: String,
    /// The `ctr` matching this containerd.
    ctr: PathBuf,
    version: Version,
    child: Option<ChildGuard>,
    /// The `containerd` binary and the PATH it was started with (for [`Containerd::kill_and_restart`]).
    launch: (PathBuf, String),
}

/// What `ctr` printed and how it exited.
#[derive(Debug)]
pub struct CtrOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtrOutput {
    fn from(out: Output) -> CtrOutput {
        CtrOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout and stderr together (what a user sees on the terminal).
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Which containerd a test runs: Debian 12's own (1.6.20, on PATH), trixie's 1.7.24 or sid's 2.1.9
/// (fetched and cached by [`crate::debs`]). Every version runs bookworm's runc (sid's does not run on
/// Debian 12); our shim comes from the workspace's target dir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    #[default]
    V1_6,
    V1_7,
    V2_1,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::V1_6, Version::V1_7, Version::V2_1];

    /// "1.6", "1.7", "2.1".
    pub fn label(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    /// containerd 2.x: config version 3, CRI plugins split into io.containerd.cri.v1.{runtime,images}.
    pub fn is_v2(self) -> bool {
        self == Version::V2_1
    }

    /// Where its `containerd`, `ctr` and `containerd-shim-runc-v2` are (None: the system's, on PATH).
    pub fn bin_dir(self) -> Result<Option<PathBuf>> {
        let suite = match self {
            Version::V1_6 => return Ok(None),
            Version::V1_7 => "trixie",
            Version::V2_1 => "sid",
        };
        let root = crate::debs::extracted(suite, "containerd")
            .with_context(|| format!("fetching containerd {} from Debian {suite}", self.label()))?;
        Ok(Some(root.join("usr/bin")))
    }
}

/// How to start containerd beyond the defaults (CRI off, a unique namespace).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Which containerd (ignored when `bin_dir` is set).
    pub version: Version,
    /// Keep the CRI plugin enabled (it is disabled by default: it needs CNI and writes host paths).
    pub cri: bool,
    /// The namespace `ctr` and the cleanup use instead of a unique one: CRI always uses `k8s.io`.
    pub namespace: Option<String>,
    /// TOML appended to the generated config (e.g. `[plugins."io.containerd.grpc.v1.cri"]` tables).
    pub extra_config: String,
    /// Directory holding the `containerd`, `ctr` and `containerd-shim-runc-v2` to run instead of
    /// those on PATH, e.g. `debs::extracted("trixie", "containerd")?.join("usr/bin")`.
    pub bin_dir: Option<PathBuf>,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with(&StartOptions::default())
    }

    /// Starts containerd with `opts` and waits until `ctr version` answers.
    pub fn start_with(opts: &StartOptions) -> Result<Containerd> {
        static N: AtomicU32 = AtomicU32::new(0);
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| format!("lt{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let dir = temp_dir("containerd");
        let d = dir.path();
        let bin_dir = match &opts.bin_dir {
            Some(d) => Some(d.clone()),
            None => opts.version.bin_dir()?,
        };
        let disabled = match (opts.cri, opts.version.is_v2()) {
            (true, _) => "",
            (false, false) => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            (false, true) => {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\", \"io.containerd.cri.v1.images\"]\n"
            }
        };
        let config = format!(
            "version = {config_version}\nroot = \"{root}\"\nstate = \"{state}\"\n{disabled}\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n{extra}",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            extra = opts.extra_config,
            config_version = if opts.version.is_v2() { 3 } else { 2 },
        );
        std::fs::write(d.join("config.toml"), config)?;
        let mut path = format!(
            "{}:{}",
            crate::bins::shim().parent().expect("bin dir").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        if let Some(dir) = &bin_dir {
            path = format!("{}:{path}", dir.display());
        }
        let bin = |name: &str| bin_dir.as_ref().map_or_else(|| PathBuf::from(name), |d| d.join(name));
        let mut c = Containerd {
            dir,
            namespace,
            ctr: bin("ctr"),
            version: opts.version,
            child: None,
            launch: (bin("containerd"), path),
        };
        c.spawn_and_wait()?;
        Ok(c)
    }

    /// Starts the containerd process on this instance's config (log appended) and waits until
    /// `ctr version` answers.
    fn spawn_and_wait(&mut self) -> Result<()> {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("containerd.log"))?;
        let child = Command::new(&self.launch.0)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", &self.launch.1)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        self.child = Some(ChildGuard::new("containerd", child));
        let start = Instant::now();
        loop {
            if self.ctr(&["version"]).code == 0 {
                return Ok(());
            }
            if !self.child.as_mut().is_some_and(|g| g.is_running()) || start.elapsed() > Duration::from_secs(20) {
                bail!("containerd did not come up; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd with SIGKILL, as a crash would (its shims and containers live on), and
    /// starts it again on the same config, root and state; waits until `ctr version` answers.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(nix::sys::signal::Signal::SIGKILL);
            if child.wait_timeout(Duration::from_secs(10)).is_none() {
                bail!("containerd (pid {:?}) did not die within 10 s of SIGKILL", child.pid());
            }
        }
        self.spawn_and_wait()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Which containerd this is.
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The bundle containerd makes for a task of ours.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join("state/io.containerd.runtime.v2.task").join(&self.namespace).join(id)
    }

    /// A scratch dir inside this instance's temp dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// The `ctr` command for this containerd and namespace (to add a pty wrapper etc.).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(self.socket()).args(["--namespace", &self.namespace]).args(args);
        cmd
    }

    /// Runs `ctr` with stdin from /dev/null and a 120 s bound.
    pub fn ctr(&self, args: &[&str]) -> CtrOutput {
        let mut cmd = self.ctr_command(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        run_bounded(cmd, Duration::from_secs(120))
    }

    /// Runs `ctr` and fails with its output unless it exits 0.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args);
        if out.code != 0 {
            bail!("ctr {} exited {}:\n{}", args.join(" "), out.code, out.all());
        }
        Ok(out.stdout)
    }

    /// Pids of our shim processes serving this containerd (found by their `-address` argument).
    pub fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket().display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let ours = args.first().is_some_and(|a| a.ends_with("containerd-shim-lazy-v2"))
                && args.iter().any(|a| a == &sock)
                && !args.iter().any(|a| a == "start" || a == "delete");
            if ours {
                pids.push(pid);
            }
        }
        pids
    }

    /// cgroup v2 directories of this namespace's containers that still exist.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in CGROUP_ROOTS {
            let ns = Path::new(root).join(&self.namespace);
            for e in std::fs::read_dir(&ns).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Mount points under this instance's temp dir (rootfs overlays, lazy FUSE mounts).
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.dir.path())
    }

    /// Pulls `reference` over plain HTTP.
    pub fn pull(&self, reference: &str) -> Result<()> {
        self.ctr_ok(&["images", "pull", "--plain-http", reference]).map(|_| ())
    }
}

fn run_bounded(mut cmd: Command, limit: Duration) -> CtrOutput {
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return CtrOutput { code: -1, stdout: String::new(), stderr: format!("spawning ctr: {e}") },
    };
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => CtrOutput::from(out),
        Ok(Err(e)) => CtrOutput { code: -1, stdout: String::new(), stderr: format!("waiting for ctr: {e}") },
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv().ok().and_then(|r| r.ok());
            let mut o = out.map(CtrOutput::from).unwrap_or(CtrOutput {
                code: -1,
                stdout: String::new(),
                stderr: String::new(),
            });
            o.code = -1;
            o.stderr.push_str(&format!("\n(ctr killed after {limit:?})"));
            o
        }
    }
}

pub fn kill_cgroup(dir: &Path) {
    // Children first (a container may have made sub-cgroups).
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            kill_cgroup(&e.path());
        }
    }
    if dir.join("cgroup.kill").exists() {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

impl Containerd {
    /// cgroup directories of this namespace whose container has no task any more (deleted, or whose
    /// Create failed): the shim must have removed them. Empty when containerd does not answer.
    pub fn cgroups_of_deleted_containers(&self) -> Vec<PathBuf> {
        let out = self.ctr(&["task", "ls", "-q"]);
        if out.code != 0 {
            return Vec::new();
        }
        let live: Vec<&str> = out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        self.leftover_cgroups()
            .into_iter()
            .filter(|p| !p.file_name().is_some_and(|n| live.iter().any(|l| n == *l)))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Checked after EVERY test that used this containerd (not only where a test asks): the shared
        // teardown is the one place no test can forget. Reported after the cleanup below.
        let leaked = if std::thread::panicking() { Vec::new() } else { self.cgroups_of_deleted_containers() };
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        // Remove shim sockets (named in each bundle's `address` file) before the bundles go.
        let tasks = self.dir.path().join("state/io.containerd.runtime.v2.task").join(&self.namespace);
        for e in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            if let Ok(a) = std::fs::read_to_string(e.path().join("address")) {
                let _ = std::fs::remove_file(a.trim().trim_start_matches("unix://"));
            }
        }
        // Every cgroup controller hierarchy (v1 for runc on hybrid hosts, v2 for our shim).
        for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let ns = e.path().join(&self.namespace);
            if ns.is_dir() {
                kill_cgroup(&ns);
            }
        }
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10));
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            if let Err(e) = force_unmount(&m) {
                log::error!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        if !leaked.is_empty() {
            panic!("cgroups of deleted containers were left behind (the shim must remove them on Delete): {leaked:?}");
        }
    }
}

/// A busybox image (busybox-static with a symlink per applet) with `/etc/passwd` and `/etc/group`
/// so `id` names users as it would in a real image.
pub fn busybox_image() -> Result<Image> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (apt-get install busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list").output().context("busybox --list")?;
    let mut layer = Layer::new()
        .add(Entry::dir("bin"))
        .add(Entry::dir("etc"))
        .add(Entry::dir("tmp").mode(0o1777))
        .add(Entry::dir("root").mode(0o700))
        .add(Entry::dir("proc"))
        .add(Entry::dir("sys"))
        .add(Entry::dir("dev"))
        .add(Entry::file("bin/busybox", busybox).mode(0o755))
        .add(Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
        .add(Entry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            layer.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
        }
    }
    let mut image = Image::new(vec![layer]);
    image.env = vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()];
    Ok(image)
}

/// Builds the busybox image and pushes it to `registry` as `busybox:1`; returns the reference.
pub fn push_busybox(registry: &crate::registry::Registry) -> Result<String> {
    let dir = temp_dir("busybox-layout");
    busybox_image()?.write_layout(dir.path(), "1")?;
    let reference = registry.reference("busybox:1");
    crate::images::push(dir.path(), "1", &reference)?;
    Ok(reference)
}

/// Where big, slow-to-build test inputs are kept between runs (`LAZY_TEST_CACHE`, default
/// /var/cache/lazy-tests).
pub fn test_cache_dir() -> PathBuf {
    std::env::var_os("LAZY_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/lazy-tests"))
}

/// A Debian bookworm root filesystem with python3, numpy and pandas (~650 MB unpacked) as a tar,
/// built once with mmdebstrap from the Debian mirror (~3 minutes) and cached.
pub fn python_rootfs_tar() -> Result<PathBuf> {
    debian_rootfs_tar("python-rootfs", &["python3", "python3-numpy", "python3-pandas"])
}

/// A minimal Debian bookworm root filesystem with `packages` as a tar named `<name>.tar` in the
/// test cache, built once with mmdebstrap from the Debian mirror and cached.
pub fn debian_rootfs_tar(name: &str, packages: &[&str]) -> Result<PathBuf> {
    let dir = test_cache_dir();
    let tar = dir.join(format!("{name}.tar"));
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // mmdebstrap picks its output format from the name: it must end in .tar.
    let tmp = dir.join(format!("{name}.{}.tmp.tar", std::process::id()));
    log::info!("building {} with mmdebstrap (a few minutes, cached afterwards)", tar.display());
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", &format!("--include={}", packages.join(",")), "bookworm"])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .output()
        .context("running mmdebstrap (apt-get install mmdebstrap)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("mmdebstrap failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&tmp, &tar)?;
    Ok(tar)
}

/// Writes an OCI layout at `dir` whose single gzip layer (at [`crate::images::LAYER_GZIP`]) is the
/// root filesystem tar `rootfs_tar`; returns the layer's compressed size.
pub fn layout_from_rootfs_tar(rootfs_tar: &Path, dir: &Path, tag: &str, cmd: &[&str]) -> Result<u64> {
    use sha2::{Digest as _, Sha256};
    use std::io::Write;
    struct Hashing<W> {
        inner: W,
        hash: Sha256,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.hash.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let tmp = dir.join("layer.tmp");
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let gz = flate2::write::GzEncoder::new(Hashing { inner: file, hash: Sha256::new() }, crate::images::LAYER_GZIP);
    let mut plain = Hashing { inner: gz, hash: Sha256::new() };
    std::io::copy(&mut std::fs::File::open(rootfs_tar)?, &mut plain)?;
    let diff_id = hex::encode(plain.hash.finalize());
    let gz_out = plain.inner.finish()?;
    let mut file = gz_out.inner;
    file.flush()?;
    let digest = hex::encode(gz_out.hash.finalize());
    let size = std::fs::metadata(&tmp)?.len();
    std::fs::rename(&tmp, blobs.join(&digest))?;
    let json_blob = |v: serde_json::Value, media: &str| -> Result<serde_json::Value> {
        let bytes = serde_json::to_vec(&v)?;
        let d = hex::encode(Sha256::digest(&bytes));
        std::fs::write(blobs.join(&d), &bytes)?;
        Ok(serde_json::json!({"mediaType": media, "digest": format!("sha256:{d}"), "size": bytes.len()}))
    };
    let config = json_blob(
        serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        }),
        "application/vnd.oci.image.config.v1+json",
    )?;
    let mut manifest = json_blob(
        serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config,
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{digest}"), "size": size}],
        }),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    manifest["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    manifest["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [manifest]}))?,
    )?;
    Ok(size)
}

/// What most shim tests start from: a registry holding a plain busybox image and a private
/// containerd that has pulled it. Fields drop in declaration order: containerd (and its shims)
/// first, the registry last.
pub struct BusyboxEnv {
    pub ctrd: Containerd,
    pub image: String,
    pub registry: crate::registry::Registry,
}

/// Starts [`BusyboxEnv`], or returns None (after printing why) when a prerequisite is missing
/// outside CI; under CI=true a missing prerequisite fails the test.
pub fn busybox_env(test: &str) -> Option<BusyboxEnv> {
    busybox_env_on(test, Version::V1_6)
}

/// [`busybox_env`] on containerd `version` (fetching it from Debian's newer suites when needed).
pub fn busybox_env_on(test: &str, version: Version) -> Option<BusyboxEnv> {
    use crate::prereq::{prerequisites_met, CONTAINERD_PREREQS};
    if !prerequisites_met(test, CONTAINERD_PREREQS) {
        return None;
    }
    crate::init_logging();
    let registry = crate::registry::Registry::start().expect("starting docker-registry");
    let image = push_busybox(&registry).expect("pushing the busybox image");
    let ctrd = Containerd::start_with(&StartOptions { version, ..StartOptions::default() })
        .unwrap_or_else(|e| panic!("starting containerd {}: {e:#}", version.label()));
    ctrd.pull(&image).expect("pulling the busybox image");
    Some(BusyboxEnv { ctrd, image, registry })
}
