//! Lazy images inside the shim: detects a lazy stub snapshot (one holding `.lazy/index`), mounts the
//! lazy filesystem in-process at `<bundle>/lazy` and describes the overlay that puts the snapshot's
//! upper dir (writes) over it. A user reads the mount's counters with
//! `lazyctl stats <bundle>/lazy`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim::protos::api::Mount;
use vfs::builder::{CacheSettings, LazyMountBuilder};
use vfs::fs::MountOptions;
use vfs::registry::{ClientConfig, PlainHttp, ProviderSettings};

use super::config::Config;
use super::error::{Error, Result};

/// Where the lazy index is looked for in a snapshot.
pub const INDEX_PATH: &str = vfs::index::INDEX_PATH;

/// The parts of containerd's rootfs mounts a lazy image needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LazySnapshot {
    /// Directory of the unpacked stub (holds `.lazy/index`).
    pub stub_dir: PathBuf,
    /// The snapshot's writable dirs, when containerd gave an overlay with an upper dir.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// Returns the lazy snapshot when the rootfs mounts are a lazy stub, None for ordinary images.
pub fn detect(mounts: &[Mount]) -> Result<Option<LazySnapshot>> {
    let [m] = mounts else { return Ok(None) };
    let mut lowers = Vec::new();
    let mut upper = None;
    let mut work = None;
    match m.type_.as_str() {
        "overlay" => {
            for o in &m.options {
                if let Some(v) = o.strip_prefix("lowerdir=") {
                    lowers.extend(v.split(':').map(PathBuf::from));
                } else if let Some(v) = o.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(v));
                } else if let Some(v) = o.strip_prefix("workdir=") {
                    work = Some(PathBuf::from(v));
                }
            }
        }
        "bind" | "rbind" => lowers.push(PathBuf::from(&m.source)),
        _ => return Ok(None),
    }
    let Some(stub_dir) = lowers.into_iter().find(|d| d.join(INDEX_PATH).is_file()) else { return Ok(None) };
    let upper = match (upper, work) {
        (Some(u), Some(w)) => Some((u, w)),
        _ => None,
    };
    Ok(Some(LazySnapshot { stub_dir, upper }))
}

/// A mounted lazy filesystem.
pub struct LazyMount {
    mountpoint: PathBuf,
    snapshot: LazySnapshot,
    /// Upper/work dirs made in the bundle when the snapshot had none (a bind-mounted stub).
    scratch: Option<PathBuf>,
    mounted: Option<vfs::fs::Mounted>,
}

impl std::fmt::Debug for LazyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMount").field("mountpoint", &self.mountpoint).field("snapshot", &self.snapshot).finish()
    }
}

/// The registry settings of lazy mounts, from the shim config: hosts.toml directory (mirrors and
/// TLS, resolved per registry by [`vfs::registry::hosts`]), credential sources and timeouts.
pub fn client_config(config: &Config) -> ClientConfig {
    let fetch = &config.fetch;
    let registry = &config.registry;
    ClientConfig {
        plain_http: PlainHttp::Auto,
        hosts_dir: Some(registry.hosts_dir.clone()),
        docker_config: registry.credentials_file.clone(),
        credential_providers: registry
            .credential_provider_config
            .clone()
            .map(|config| ProviderSettings { config, bin_dir: registry.credential_provider_bin_dir.clone() }),
        image_credentials: Some(registry.pull_credentials_dir.clone()),
        connect_timeout: Duration::from_secs(fetch.connect_timeout_secs.max(1)),
        request_timeout: Duration::from_secs(fetch.request_timeout_secs.max(1)),
        deadline: fetch.deadline(),
        ..ClientConfig::default()
    }
}

impl LazyMount {
    /// Loads the index from the stub snapshot and mounts the lazy filesystem at `<bundle>/lazy`.
    /// Blocks (FUSE handshake); call from a blocking thread inside the shim's tokio runtime.
    pub fn mount(bundle: &Path, snapshot: &LazySnapshot, config: &Config, id: &str) -> Result<LazyMount> {
        let index_path = snapshot.stub_dir.join(INDEX_PATH);
        let fail = |what: String| Error::Rootfs(format!("lazy image index {}: {what}", index_path.display()));
        let index = vfs::stub::read_index_from_dir(&snapshot.stub_dir)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("disappeared".into()))?;
        let cache = CacheSettings {
            dir: config.cache.dir.clone(),
            max_bytes: config.cache.max_size_mb << 20,
            // Stored files serve passthrough opens only.
            files: config.fetch.passthrough,
            start_logs: config.fetch.start_logs,
        };
        let builder = LazyMountBuilder::new(client_config(config), config.fetch.options(), Some(cache))
            .map_err(|e| Error::Rootfs(format!("lazy image in {}: {e}", snapshot.stub_dir.display())))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Other("lazy mount outside the shim's runtime".into()))?;
        let mountpoint = bundle.join("lazy");
        std::fs::create_dir_all(&mountpoint).map_err(Error::io(format!("creating {}", mountpoint.display())))?;
        let scratch = if snapshot.upper.is_none() {
            let s = bundle.join("lazy-rw");
            for d in ["upper", "work"] {
                std::fs::create_dir_all(s.join(d)).map_err(Error::io(format!("creating {}", s.join(d).display())))?;
            }
            Some(s)
        } else {
            None
        };
        let opts = MountOptions {
            prefetch: config.fetch.prefetch,
            fsname: format!("lazy:{id}"),
            passthrough: config.fetch.passthrough,
            io_uring: config.fetch.io_uring,
            ..MountOptions::default()
        };
        let mounted = builder
            .mount(index, None, handle, &mountpoint, opts)
            .map_err(|e| fail(format!("mounting at {}: {e}", mountpoint.display())))?;
        log::info!("container {id}: lazy filesystem mounted at {}", mountpoint.display());
        Ok(LazyMount { mountpoint, snapshot: snapshot.clone(), scratch, mounted: Some(mounted) })
    }

    /// The overlay for `<bundle>/rootfs`: the lazy filesystem below, the snapshot's upper dir on top.
    pub fn overlay_mount(&self) -> Mount {
        let (upper, work) = match (&self.snapshot.upper, &self.scratch) {
            (Some((u, w)), _) => (u.clone(), w.clone()),
            (None, Some(s)) => (s.join("upper"), s.join("work")),
            (None, None) => unreachable!("mount() makes scratch dirs when the snapshot has no upper dir"),
        };
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", self.mountpoint.display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
            ..Default::default()
        }
    }

    /// Where the lazy filesystem is mounted (`<bundle>/lazy`).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts the lazy filesystem (after the overlay above it is gone) and removes the scratch
    /// dirs. The caller then clears anything still stacked at [`Self::mountpoint`].
    pub fn unmount(mut self) {
        if let Some(m) = self.mounted.take() {
            let snap = m.stats().snapshot();
            log::info!(
                "lazy filesystem {}: served {} bytes through FUSE reads and {} opens by passthrough, \
                 fetched {} bytes in {} requests, stored {} files",
                self.mountpoint.display(),
                snap.bytes_served,
                snap.passthrough_opens,
                snap.bytes_fetched,
                snap.requests,
                snap.files_stored
            );
            if let Err(e) = m.unmount() {
                log::warn!("unmounting {}: {e}", self.mountpoint.display());
            }
        }
        if let Some(s) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_index_in_a_lower_dir() {
        let d = tempfile::tempdir().unwrap();
        let stub = d.path().join("l2");
        std::fs::create_dir_all(stub.join(".lazy")).unwrap();
        std::fs::write(stub.join(INDEX_PATH), b"x").unwrap();
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}:{}", d.path().join("l1").display(), stub.display()),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        let s = detect(std::slice::from_ref(&m)).unwrap().unwrap();
        assert_eq!(s.stub_dir, stub);
        assert_eq!(s.upper, Some((PathBuf::from("/u"), PathBuf::from("/w"))));
        std::fs::remove_file(stub.join(INDEX_PATH)).unwrap();
        assert_eq!(detect(&[m]).unwrap(), None);
    }

    #[test]
    fn registry_settings_come_from_the_shim_config() {
        let mut config = Config::default();
        config.registry.hosts_dir = PathBuf::from("/etc/hosts.d");
        config.registry.credential_provider_config = Some(PathBuf::from("/etc/kp.yaml"));
        config.fetch.deadline_secs = 7;
        let cc = client_config(&config);
        assert_eq!(cc.hosts_dir, Some(PathBuf::from("/etc/hosts.d")));
        assert_eq!(cc.deadline, Duration::from_secs(7));
        let p = cc.credential_providers.unwrap();
        assert_eq!(p.config, PathBuf::from("/etc/kp.yaml"));
        assert_eq!(p.bin_dir, PathBuf::from(super::super::config::DEFAULT_PROVIDER_BIN_DIR));
    }
}
