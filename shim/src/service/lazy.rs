//! Lazy images inside the shim: detects a lazy stub snapshot (one holding `.lazy/index`), mounts the
//! lazy filesystem in-process at `<bundle>/lazy` and describes the overlay that puts the snapshot's
//! upper dir (writes) over it. A user reads the mount's counters with
//! `lazyctl stats <bundle>/lazy`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::api::Mount;
use vfs::cache::ChunkCache;
use vfs::fetch::{BlobLayout, RegistryChunkSource};
use vfs::fs::MountOptions;
use vfs::registry::{Client, ClientConfig, PlainHttp, Reference};
use vfs::stats::Stats;

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

/// The registry client settings for `host` from the shim config and containerd's hosts.toml
/// convention (`<hosts_dir>/<host>/hosts.toml`, else `<hosts_dir>/_default/hosts.toml`): an
/// `http://` server or host means plain HTTP, `ca` a CA bundle, `client` a certificate and key.
pub fn client_config(config: &Config, host: &str) -> Result<ClientConfig> {
    let fetch = &config.fetch;
    let mut cc = ClientConfig {
        plain_http: PlainHttp::Auto,
        docker_config: config.registry.credentials_file.clone(),
        connect_timeout: Duration::from_secs(fetch.connect_timeout_secs.max(1)),
        request_timeout: Duration::from_secs(fetch.request_timeout_secs.max(1)),
        deadline: fetch.deadline(),
        max_concurrency: RegistryChunkSource::max_requests(&fetch.options()),
        ..ClientConfig::default()
    };
    let dir = &config.registry.hosts_dir;
    let Some(path) = [dir.join(host).join("hosts.toml"), dir.join("_default").join("hosts.toml")]
        .into_iter()
        .find(|p| p.is_file())
    else {
        return Ok(cc);
    };
    let bad = |reason: String| Error::Config { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut tables = vec![&doc];
    if let Some(hosts) = doc.get("host").and_then(|h| h.as_table()) {
        for (url, t) in hosts {
            if url.starts_with("http://") {
                cc.plain_http = PlainHttp::Always;
            }
            if let Some(t) = t.as_table() {
                tables.push(t);
            }
        }
    }
    if doc.get("server").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with("http://")) {
        cc.plain_http = PlainHttp::Always;
    }
    for t in tables {
        match t.get("ca") {
            Some(toml::Value::String(s)) => cc.ca_file = Some(PathBuf::from(s)),
            Some(toml::Value::Array(a)) => cc.ca_file = a.first().and_then(|v| v.as_str()).map(PathBuf::from),
            _ => {}
        }
        let pair = |a: &Vec<toml::Value>| match (a.first().and_then(|v| v.as_str()), a.get(1).and_then(|v| v.as_str())) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            _ => None,
        };
        match t.get("client") {
            Some(toml::Value::Array(a)) if a.first().is_some_and(|v| v.is_array()) => {
                cc.client_cert = a[0].as_array().and_then(pair);
            }
            Some(toml::Value::Array(a)) => cc.client_cert = pair(a),
            _ => {}
        }
        if t.get("skip_verify").and_then(|v| v.as_bool()) == Some(true) {
            log::warn!("{}: skip_verify is not supported by the lazy fetcher; TLS is verified", path.display());
        }
    }
    Ok(cc)
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
        let repository: Reference =
            index.source.parse().map_err(|e| fail(format!("data blob repository {:?}: {e}", index.source)))?;
        let client = Client::new(client_config(config, &repository.registry)?)
            .map_err(|e| fail(format!("registry client for {}: {e}", repository.registry)))?;
        let cache_dir = &config.cache.dir;
        let cache = Arc::new(
            ChunkCache::open(cache_dir, config.cache.max_size_mb << 20)
                .map_err(|e| Error::Rootfs(format!("chunk cache {}: {e}", cache_dir.display())))?,
        );
        // The file store only makes warm reads faster: without it, files are served from chunks.
        let file_store = vfs::filestore::FileStore::open(cache.clone())
            .map_err(|e| log::warn!("file store in {}: {e}; serving files from chunks only", cache_dir.display()))
            .ok()
            .map(Arc::new);
        let stats = Arc::new(Stats::default());
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Other("lazy mount outside the shim's runtime".into()))?;
        let source = RegistryChunkSource::new(
            BlobLayout::of(&index),
            repository,
            client,
            Some(cache),
            stats.clone(),
            handle,
            config.fetch.options(),
        );
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
            prefetch: config.fetch.prefetch.into(),
            fsname: format!("lazy:{id}"),
            file_store,
            passthrough: config.fetch.passthrough,
            ..MountOptions::default()
        };
        let mounted = vfs::fs::mount(Arc::new(index), Arc::new(source), stats, &mountpoint, opts)
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

    /// Unmounts the lazy filesystem (after the overlay above it is gone).
    pub fn unmount(mut self) {
        if let Some(m) = self.mounted.take() {
            let snap = m.stats().snapshot();
            log::info!(
                "lazy filesystem {}: served {} bytes, fetched {} bytes in {} requests",
                self.mountpoint.display(),
                snap.bytes_served,
                snap.bytes_fetched,
                snap.requests
            );
            if let Err(e) = m.unmount() {
                log::warn!("unmounting {}: {e}", self.mountpoint.display());
            }
        }
        if let Err(e) = super::rootfs::unmount_all(&self.mountpoint) {
            log::warn!("{e}");
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
        let s = detect(&[m.clone()]).unwrap().unwrap();
        assert_eq!(s.stub_dir, stub);
        assert_eq!(s.upper, Some((PathBuf::from("/u"), PathBuf::from("/w"))));
        std::fs::remove_file(stub.join(INDEX_PATH)).unwrap();
        assert_eq!(detect(&[m]).unwrap(), None);
    }

    #[test]
    fn hosts_toml_plain_http_and_tls_material() {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.registry.hosts_dir = d.path().to_path_buf();
        assert_eq!(client_config(&config, "reg:5000").unwrap().plain_http, PlainHttp::Auto);
        std::fs::create_dir_all(d.path().join("reg:5000")).unwrap();
        std::fs::write(
            d.path().join("reg:5000/hosts.toml"),
            "server = \"https://reg:5000\"\n[host.\"http://mirror:5000\"]\n  ca = \"/etc/ca.pem\"\n  client = [[\"/c.pem\", \"/k.pem\"]]\n",
        )
        .unwrap();
        let cc = client_config(&config, "reg:5000").unwrap();
        assert_eq!(cc.plain_http, PlainHttp::Always);
        assert_eq!(cc.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(cc.client_cert, Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))));
        std::fs::write(d.path().join("reg:5000/hosts.toml"), "server = [").unwrap();
        let e = client_config(&config, "reg:5000").unwrap_err().to_string();
        assert!(e.contains("hosts.toml") && e.contains("fix or remove it"), "{e}");
    }
}
