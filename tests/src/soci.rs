//! The SOCI snapshotter (Debian sid's `soci-snapshotter` 0.4.1, see [`crate::debs`]) as the peer a
//! benchmark compares against: its daemon with a private config, root and socket, registered with
//! a [`Containerd`] as the proxy snapshotter `soci`, and the `soci` command line (`create`, `push`,
//! `image rpull`) pointed at that containerd.
//!
//! SOCI 0.4.1 fetches its index and zTOCs only over HTTPS (falling back to a full pull silently
//! when that fails), so every registry it talks to must serve TLS; the test CA reaches its Go code
//! through `SSL_CERT_FILE`. It keeps its content store in the hard-coded [`CONTENT_STORE`]
//! whatever `-root` says: [`Soci::reset`] and `Drop` remove it, so do not run this next to a SOCI
//! installation you care about. It indexes only layers of at least 10 MiB by default.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{force_unmount, temp_dir, ChildGuard};
use crate::containerd::Containerd;

/// The content store path SOCI 0.4.1 uses regardless of its `-root`.
pub const CONTENT_STORE: &str = "/var/lib/soci-snapshotter-grpc";
/// The Debian suite and package it comes from.
pub const SUITE: &str = "sid";
pub const PACKAGE: &str = "soci-snapshotter";
/// The snapshotter's name in containerd's config (`ctr run --snapshotter soci`).
pub const SNAPSHOTTER: &str = "soci";

/// A running soci-snapshotter-grpc daemon of this process.
pub struct Soci {
    bin: PathBuf,
    /// config.toml, root/, soci.sock, soci.log.
    dir: tempfile::TempDir,
    ca: PathBuf,
    child: Option<ChildGuard>,
}

impl Soci {
    /// Fetches the package (cached), starts the daemon trusting the CA at `ca`, and waits for its
    /// socket.
    pub fn start(ca: &Path) -> Result<Soci> {
        let root = crate::debs::extracted(SUITE, PACKAGE)?;
        let dir = temp_dir("soci");
        std::fs::write(dir.path().join("config.toml"), "")?;
        let mut soci = Soci { bin: root.join("usr/bin"), dir, ca: ca.to_path_buf(), child: None };
        soci.start_daemon()?;
        Ok(soci)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("soci.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("soci.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The containerd config that registers this daemon as the proxy snapshotter `soci`.
    pub fn containerd_config(&self) -> String {
        format!(
            "[proxy_plugins]\n  [proxy_plugins.{SNAPSHOTTER}]\n    type = \"snapshot\"\n    address = \"{}\"\n",
            self.socket().display()
        )
    }

    fn start_daemon(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.root())?;
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(self.bin.join("soci-snapshotter-grpc"))
            .arg("-address")
            .arg(self.socket())
            .arg("-config")
            .arg(self.dir.path().join("config.toml"))
            .arg("-root")
            .arg(self.root())
            // RUST_LOG=debug (the harness's own switch) also makes SOCI log every fetch.
            .args(["-log-level", if std::env::var("RUST_LOG").is_ok_and(|v| v == "debug") { "debug" } else { "info" }])
            .env("SSL_CERT_FILE", &self.ca)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting soci-snapshotter-grpc")?;
        let mut child = ChildGuard::new("soci-snapshotter-grpc", child);
        let start = Instant::now();
        while !self.socket().exists() {
            if let Some(status) = child.try_status() {
                bail!("soci-snapshotter-grpc exited with {status} before listening; its log:\n{}", self.log());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "soci-snapshotter-grpc did not create {} within 20 s; its log:\n{}",
                    self.socket().display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the daemon, unmounts its FUSE mounts, removes its state and [`CONTENT_STORE`].
    fn stop_and_wipe(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(10));
        }
        let mut mounts = crate::cleanup::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            if let Err(e) = force_unmount(&m) {
                log::error!("cleanup: {e}");
            }
        }
        for dir in [self.root(), PathBuf::from(CONTENT_STORE)] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::error!("cleanup: removing {}: {e}", dir.display());
                }
            }
        }
    }

    /// An empty node for SOCI: daemon restarted with no state, content store removed. Call it
    /// while no containerd uses the snapshotter (containerd keeps snapshot records of it).
    pub fn reset(&mut self) -> Result<()> {
        self.stop_and_wipe();
        self.start_daemon()
    }

    /// `soci --address <containerd> --namespace <ns> ARGS...` trusting the test CA.
    pub fn command(&self, ctrd: &Containerd, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join("soci"));
        cmd.arg("--address")
            .arg(ctrd.socket())
            .args(["--namespace", ctrd.namespace()])
            .args(args)
            .env("SSL_CERT_FILE", &self.ca)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `soci ARGS` (see [`Soci::command`]); its stdout, or an error with both outputs.
    pub fn run(&self, ctrd: &Containerd, args: &[&str]) -> Result<String> {
        let out = self.command(ctrd, args).output().context("running soci")?;
        if !out.status.success() {
            bail!(
                "soci {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The daemon log's length now: pass it to [`Soci::layers_since`] later.
    pub fn log_offset(&self) -> u64 {
        std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// Layers the daemon prepared since the log had `offset` bytes: (lazily, as remote
    /// snapshots; fully downloaded, as local snapshots). SOCI falls back to local silently when it
    /// cannot use its index; a benchmark must say so.
    pub fn layers_since(&self, offset: u64) -> (usize, usize) {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
        let remote = text.matches("remote snapshot successfully prepared").count();
        let local = text.matches("local snapshot successfully prepared").count();
        (remote, local)
    }

    /// Indexes `image` (pulled into `ctrd` first, over HTTPS) and pushes the index next to it.
    pub fn create_and_push(&self, ctrd: &Containerd, image: &str) -> Result<()> {
        let ca = self.ca.display().to_string();
        ctrd.ctr_ok(&["images", "pull", "--tlscacert", &ca, image])?;
        self.run(ctrd, &["create", image])?;
        self.run(ctrd, &["push", "--tlscacert", &ca, image])?;
        Ok(())
    }

    /// The `soci image rpull` arguments that pull `image` lazily through this snapshotter.
    pub fn rpull_args(&self, image: &str) -> Vec<String> {
        ["image", "rpull", "--snapshotter", SNAPSHOTTER, "--tlscacert"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.ca.display().to_string(), image.to_string()])
            .collect()
    }
}

impl Drop for Soci {
    fn drop(&mut self) {
        self.stop_and_wipe();
    }
}
