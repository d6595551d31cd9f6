//! A real docker-registry (distribution 2.8) on loopback, for tests.
//!
//! Clients talk to a tiny counting TCP proxy on [`Registry::port`]; the proxy forwards to the
//! registry on a private port and counts every byte sent back to clients ([`Registry::served_bytes`]),
//! which is how the laziness tests measure "the bytes the registry served" independently of
//! `lazyctl stats`. [`Registry::stop`] closes the proxy's listener and every open connection and
//! kills the registry, so clients see a refused connection exactly as with a dead registry;
//! [`Registry::restart`] brings both back on the same ports and storage.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup::{temp_dir, ChildGuard};

pub struct Registry {
    /// Holds storage/, config.yml and registry.log.
    dir: tempfile::TempDir,
    port: u16,
    backend_port: u16,
    served: Arc<AtomicU64>,
    proxy: Option<Proxy>,
    child: Option<ChildGuard>,
}

impl Registry {
    /// Starts docker-registry with filesystem storage in a fresh temp dir and waits until `/v2/`
    /// answers through the proxy.
    pub fn start() -> Result<Registry> {
        let dir = temp_dir("registry");
        std::fs::create_dir_all(dir.path().join("storage"))?;
        let mut registry = Registry {
            port: free_port()?,
            backend_port: free_port()?,
            dir,
            served: Arc::new(AtomicU64::new(0)),
            proxy: None,
            child: None,
        };
        registry.write_config()?;
        registry.restart()?;
        Ok(registry)
    }

    fn write_config(&self) -> Result<()> {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{}\n",
            self.storage_dir().display(),
            self.backend_port
        );
        std::fs::write(self.dir.path().join("config.yml"), config).context("writing registry config.yml")
    }

    /// `127.0.0.1:PORT`, the registry host as image references spell it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<repo_tag>`, e.g. `reference("app:v1")`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Root of the filesystem storage driver (`docker/registry/v2/...` lives below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's own log (its stderr): useful in failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Bytes sent to clients through the proxy since start (headers included), across restarts.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops serving: closes the listener and every open client connection, kills the registry.
    /// Storage is kept.
    pub fn stop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(5));
        }
    }

    /// Starts (again) on the same ports and storage; waits until `/v2/` answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let mut child = ChildGuard::new("docker-registry", child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_status() {
                bail!(
                    "docker-registry exited with {status} before answering; its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if http_status(self.backend_port, "/v2/").is_ok_and(|s| s == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry on 127.0.0.1:{} did not answer /v2/ within 20 s; its log:\n{}",
                    self.backend_port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        self.proxy = Some(Proxy::start(self.port, self.backend_port, self.served.clone())?);
        match http_status(self.port, "/v2/") {
            Ok(200) => Ok(()),
            other => bail!("registry proxy on port {} does not answer /v2/: {other:?}", self.port),
        }
    }

    /// Path of a blob's data file in storage, e.g. to flip a byte of it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Reads a blob straight from storage (no HTTP, so it does not count as served).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).with_context(|| format!("reading blob {digest} at {}", path.display()))
    }

    /// Digest of what `repo:tag` points at, from storage.
    pub fn tag_digest(&self, repo: &str, tag: &str) -> Result<String> {
        let link = self
            .storage_dir()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link");
        let digest = std::fs::read_to_string(&link)
            .with_context(|| format!("{repo}:{tag} is not in the registry ({} missing)", link.display()))?;
        Ok(digest.trim().to_string())
    }

    /// Parses the JSON blob `digest` (a manifest, index or config) from storage.
    pub fn json_blob(&self, digest: &str) -> Result<serde_json::Value> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).with_context(|| format!("blob {digest} is not JSON"))
    }

    /// The data blobs (digest, size) of a converted lazy image `repo:tag`: the layers (or
    /// `blobs`) of the artifact manifest with platform unknown/unknown in its OCI image index.
    pub fn lazy_data_blobs(&self, repo: &str, tag: &str) -> Result<Vec<(String, u64)>> {
        let index_digest = self.tag_digest(repo, tag)?;
        let index = self.json_blob(&index_digest)?;
        let manifests = index["manifests"]
            .as_array()
            .with_context(|| format!("{repo}:{tag} ({index_digest}) is not an image index: {index}"))?;
        let artifact = manifests
            .iter()
            .find(|m| m["platform"]["os"] == "unknown" && m["platform"]["architecture"] == "unknown")
            .with_context(|| format!("{repo}:{tag}: no manifest with platform unknown/unknown in {index}"))?;
        let digest = artifact["digest"].as_str().context("artifact manifest descriptor without digest")?;
        let manifest = self.json_blob(digest)?;
        let list = manifest["layers"].as_array().or_else(|| manifest["blobs"].as_array());
        let list = list.with_context(|| format!("artifact manifest {digest} lists no layers/blobs: {manifest}"))?;
        list.iter()
            .map(|d| {
                let digest = d["digest"].as_str().context("data blob descriptor without digest")?;
                let size = d["size"].as_u64().context("data blob descriptor without size")?;
                Ok((digest.to_string(), size))
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (bind to :0, read, close).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Minimal HTTP/1.0 GET on loopback returning the status code.
pub fn http_status(port: u16, path: &str) -> Result<u16> {
    let (status, _) = http_get(port, path)?;
    Ok(status)
}

/// Minimal HTTP/1.0 GET on loopback: status code and body. Enough for `/v2/` probes and small
/// manifests; not a general client.
pub fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line: {head}"))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// The counting TCP proxy in front of the registry.
struct Proxy {
    port: u16,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(port: u16, backend: u16, served: Arc<AtomicU64>) -> Result<Proxy> {
        // std sets SO_REUSEADDR on Unix listeners, so a restart can rebind while old connections
        // sit in TIME_WAIT.
        let listener = retry_bind(port)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let stopping = stopping.clone();
            let connections = connections.clone();
            std::thread::Builder::new().name(format!("proxy-{port}")).spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut open = connections.lock().unwrap();
                        open.retain(|s| s.peer_addr().is_ok());
                        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                            open.push(c);
                            open.push(s);
                        }
                    }
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                    let no_count = Arc::new(AtomicU64::new(0));
                    std::thread::spawn(move || pump(c2, s2, &no_count));
                    let served = served.clone();
                    std::thread::spawn(move || pump(server, client, &served));
                }
            })?
        };
        Ok(Proxy { port, stopping, connections, acceptor: Some(acceptor) })
    }

    fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stopping.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }
}

fn retry_bind(port: u16) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("binding registry proxy port 127.0.0.1:{port}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Copies `from` to `to` until EOF or error, counting bytes; then shuts both down so the peer
/// sees the close.
fn pump(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Flips one bit of the byte at `offset` of the file at `path` (for integrity tests).
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to corrupt it", path.display()))?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 0x01;
    file.write_all_at(&byte, offset)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prereq::{prerequisites_met, Prereq};

    /// The harness's own guarantees: bytes served are counted, stop refuses connections, restart
    /// serves the same storage on the same port.
    #[test]
    fn registry_counts_stops_and_restarts() {
        if !prerequisites_met("registry self-test", &[Prereq::Tool("docker-registry")]) {
            return;
        }
        let mut registry = Registry::start().unwrap();
        let port = registry.port();
        let before = registry.served_bytes();
        assert_eq!(http_status(port, "/v2/").unwrap(), 200);
        assert!(registry.served_bytes() > before, "the proxy counts response bytes");
        registry.stop();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped registry must refuse connections");
        registry.restart().unwrap();
        assert_eq!(registry.port(), port);
        assert_eq!(http_status(port, "/v2/_catalog").unwrap(), 200);
    }
}
