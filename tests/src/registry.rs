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
    /// Holds storage/ (unless shared), config.yml and registry.log.
    dir: tempfile::TempDir,
    storage: PathBuf,
    tls: Option<Tls>,
    port: u16,
    backend_port: u16,
    served: Arc<AtomicU64>,
    proxy: Option<Proxy>,
    child: Option<ChildGuard>,
    /// Whether `/v2/` asks for credentials (then 401 means "up").
    auth: bool,
    pull_through: Option<String>,
}

impl Registry {
    /// Starts docker-registry with filesystem storage in a fresh temp dir and waits until `/v2/`
    /// answers through the proxy.
    pub fn start() -> Result<Registry> {
        Registry::start_with(StartOptions::default())
    }

    /// Starts docker-registry as `opts` says (shared storage, HTTPS).
    pub fn start_with(opts: StartOptions) -> Result<Registry> {
        let dir = temp_dir("registry");
        let storage = opts.storage.unwrap_or_else(|| dir.path().join("storage"));
        std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
        let mut registry = Registry {
            storage,
            tls: opts.tls,
            port: free_port()?,
            backend_port: free_port()?,
            dir,
            served: Arc::new(AtomicU64::new(0)),
            proxy: None,
            child: None,
            auth: opts.auth.is_some(),
            pull_through: opts.pull_through.clone(),
        };
        // The ports are picked free but bound later, so another process (an outgoing connection's
        // ephemeral port, a parallel test) can take one in between: then start on fresh ports.
        let mut attempt = 1;
        loop {
            registry.write_config(opts.auth.as_ref())?;
            match registry.restart() {
                Ok(()) => return Ok(registry),
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => {
                    log::warn!(
                        "registry ports {}/{} taken meanwhile ({e:#}); trying fresh ones",
                        registry.port,
                        registry.backend_port
                    );
                    registry.stop();
                    registry.port = free_port()?;
                    registry.backend_port = free_port()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn write_config(&self, auth: Option<&Auth>) -> Result<()> {
        let mut extra = String::new();
        if let Some(remote) = &self.pull_through {
            extra.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        match auth {
            None => {}
            Some(Auth::Htpasswd { users }) => {
                let path = self.write_htpasswd(users)?;
                extra.push_str(&format!("auth:\n  htpasswd:\n    realm: lazy-tests\n    path: {}\n", path.display()));
            }
            Some(Auth::Token { realm, service, issuer, cert }) => {
                extra.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    cert.display()
                ));
            }
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{}\n{}{extra}",
            self.storage_dir().display(),
            self.backend_port,
            match &self.tls {
                Some(tls) =>
                    format!("  tls:\n    certificate: {}\n    key: {}\n", tls.cert.display(), tls.key.display()),
                None => String::new(),
            }
        );
        std::fs::write(self.dir.path().join("config.yml"), config).context("writing registry config.yml")
    }

    fn write_htpasswd(&self, users: &[(String, String)]) -> Result<PathBuf> {
        let path = self.dir.path().join("htpasswd");
        let mut lines = String::new();
        for (user, password) in users {
            lines.push_str(&format!("{user}:{}\n", bcrypt(password)?));
        }
        std::fs::write(&path, lines).context("writing htpasswd")?;
        Ok(path)
    }

    /// Restarts the registry (same port and storage) requiring `auth` from now on (None: open): a
    /// test publishes an image openly, then makes the registry private.
    pub fn set_auth(&mut self, auth: Option<Auth>) -> Result<()> {
        self.stop();
        self.auth = auth.is_some();
        self.write_config(auth.as_ref())?;
        self.restart()
    }

    /// Replaces the htpasswd users and restarts the registry (same port and storage; docker-registry
    /// reads the file at start): a password rotated on the registry side.
    pub fn rotate_htpasswd(&mut self, users: &[(&str, &str)]) -> Result<()> {
        if !self.auth {
            bail!("rotate_htpasswd on a registry started without auth");
        }
        self.stop();
        let users: Vec<(String, String)> = users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect();
        self.write_htpasswd(&users)?;
        self.restart()
    }

    /// `127.0.0.1:PORT`, the registry host as image references spell it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry itself, without the counting proxy in front: for benchmarks of a client's
    /// throughput on loopback, where the proxy's copies would take CPU time from the client.
    /// Stops answering when the registry is stopped; counts nothing.
    pub fn direct_host(&self) -> String {
        format!("127.0.0.1:{}", self.backend_port)
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
        self.storage.clone()
    }

    /// The TLS material when this registry serves HTTPS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The registry's log length now: pass it to [`Registry::requests_since`] later.
    pub fn log_offset(&self) -> u64 {
        std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// The requests the registry answered (from its access log) since the log had `offset` bytes.
    pub fn requests_since(&self, offset: u64) -> Result<Vec<AccessLine>> {
        use std::io::Seek;
        let path = self.log_path();
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text.lines().filter_map(AccessLine::parse).collect())
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
            if self.probe(self.backend_port).is_ok_and(|s| s == 200 || (self.auth && s == 401)) {
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
        match self.probe(self.port) {
            Ok(200) => Ok(()),
            Ok(401) if self.auth => Ok(()),
            other => bail!("registry proxy on port {} does not answer /v2/: {other:?}", self.port),
        }
    }

    /// Status of `GET /v2/` on `port` (HTTPS with the test CA when this registry serves TLS).
    fn probe(&self, port: u16) -> Result<u16> {
        let Some(tls) = &self.tls else { return http_status(port, "/v2/") };
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"])
            .arg(&tls.ca)
            .arg(format!("https://127.0.0.1:{port}/v2/"))
            .output()
            .context("running curl (apt-get install curl)")?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("curl printed no HTTP status")
    }

    /// Uploads `bytes` as a blob of `repo` with the plain distribution API (monolithic POST + PUT);
    /// returns its digest. Only for plain-HTTP registries.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        use sha2::{Digest as _, Sha256};
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let request = |head: String, body: &[u8]| -> Result<(u16, String)> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            Ok((status, response))
        };
        let host = self.host();
        let (status, response) = request(
            format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
            &[],
        )?;
        if status != 202 {
            bail!("starting a blob upload to {repo}: {response}");
        }
        let location = response
            .lines()
            .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
            .context("blob upload answer without Location")?
            .trim();
        let location = location.split_once(&host).map_or(location, |(_, path)| path);
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, response) = request(
            format!(
                "PUT {location}{sep}digest={digest} HTTP/1.0\r\nHost: {host}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            ),
            bytes,
        )?;
        if status != 201 {
            bail!("finishing the blob upload of {digest} to {repo}: {response}");
        }
        Ok(digest)
    }

    /// Path of a blob's data file in storage, e.g. to flip a byte of it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
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

/// How to start a registry beyond the defaults (fresh storage, plain HTTP).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Serve this storage root instead of a fresh one: a second docker-registry over the storage
    /// of another (e.g. one plain-HTTP and one HTTPS endpoint for the same images).
    pub storage: Option<PathBuf>,
    /// Serve HTTPS with this certificate.
    pub tls: Option<Tls>,
    /// Run as a pull-through cache of this registry URL (`proxy: remoteurl:`), as a cluster cache
    /// in front of an origin registry does.
    pub pull_through: Option<String>,
    /// Require credentials.
    pub auth: Option<Auth>,
}

/// How a test registry checks clients.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Basic auth against an htpasswd file with these users and passwords. Read at start: after
    /// changing passwords, build a new registry over the same storage or restart with new users.
    Htpasswd { users: Vec<(String, String)> },
    /// Bearer tokens from a token server ([`crate::token_server::TokenServer::registry_auth`]).
    Token { realm: String, service: String, issuer: String, cert: PathBuf },
}

/// A bcrypt hash of `password` for htpasswd, from libcrypt (what docker-registry verifies).
fn bcrypt(password: &str) -> Result<String> {
    use rand::Rng as _;
    #[link(name = "crypt")]
    extern "C" {
        fn crypt(key: *const libc::c_char, salt: *const libc::c_char) -> *mut libc::c_char;
    }
    const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    // 22 salt characters; the last one only carries 2 bits, so keep it to the characters libcrypt
    // emits there.
    let mut salt: String = (0..21).map(|_| ALPHABET[rng.gen_range(0..64)] as char).collect();
    salt.push('e');
    let setting = std::ffi::CString::new(format!("$2b$05${salt}"))?;
    let key = std::ffi::CString::new(password)?;
    // SAFETY: both arguments are valid NUL-terminated strings; crypt returns a pointer to a static
    // buffer (or NULL), which is copied out at once on this thread (tests hash from one thread).
    let out = unsafe { crypt(key.as_ptr(), setting.as_ptr()) };
    if out.is_null() {
        bail!("libcrypt cannot make a bcrypt hash: {}", std::io::Error::last_os_error());
    }
    // SAFETY: non-NULL result of crypt is a NUL-terminated string.
    let hash = unsafe { std::ffi::CStr::from_ptr(out) }.to_string_lossy().into_owned();
    if !hash.starts_with("$2b$") {
        bail!("libcrypt returned {hash:?} for a bcrypt setting: this libcrypt lacks bcrypt");
    }
    Ok(hash)
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files).
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// Generates a fresh test CA and server certificate in `dir` with the openssl command line
    /// tool (valid for 7 days; the CA key stays in `dir`).
    pub fn generate(dir: &Path) -> Result<Tls> {
        std::fs::create_dir_all(dir)?;
        self_signed(dir, "ca", "lazy-tests test CA")?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            None,
        )?;
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "7",
                "-extfile",
                "san.ext",
            ],
            None,
        )?;
        Ok(Tls { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") })
    }
}

/// A self-signed certificate `NAME.pem` with its key `NAME.key` in `dir`, for subject `/CN=CN`
/// (RSA 2048, valid for 7 days): a test CA, or a token issuer's signing certificate.
pub(crate) fn self_signed(dir: &Path, name: &str, cn: &str) -> Result<()> {
    let (key, cert, subject) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-days", "7", "-subj",
            &subject,
        ],
        None,
    )?;
    Ok(())
}

/// Runs the openssl command line tool in `dir` with `input` on stdin; its stdout.
pub(crate) fn openssl(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl (apt-get install openssl)")?;
    let mut stdin = child.stdin.take().context("openssl stdin")?;
    stdin.write_all(input.unwrap_or_default())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// One line of docker-registry's access log: `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 206 26000 ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Response body bytes.
    pub bytes: u64,
    /// The client's User-Agent (`containerd-shim-lazy/...` for our client).
    pub user_agent: String,
}

impl AccessLine {
    fn parse(line: &str) -> Option<AccessLine> {
        if line.starts_with("time=") {
            return None;
        }
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split_whitespace();
        let method = request.next()?.to_string();
        let uri = request.next()?.to_string();
        let mut rest = rest.split_whitespace();
        let status = rest.next()?.parse().ok()?;
        let bytes = rest.next()?.parse().unwrap_or(0);
        // ... 206 26000 "referer" "user agent"
        let quoted: Vec<&str> = line.rsplit('"').collect();
        let user_agent = if quoted.len() >= 3 { quoted[1].to_string() } else { String::new() };
        Some(AccessLine { method, uri, status, bytes, user_agent })
    }

    /// A blob GET (layers, configs, lazy data), as opposed to manifests, tags and `/v2/`.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.uri.contains("/blobs/sha256:")
    }

    /// Sent by this project's registry client (lazyctl, the shim), not by another registry.
    pub fn is_ours(&self) -> bool {
        self.user_agent.starts_with("containerd-shim-lazy/")
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
    let head_end =
        response.windows(4).position(|w| w == b"\r\n\r\n").context("HTTP response without end of headers")?;
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

    #[test]
    fn access_log_lines_parse() {
        let l = AccessLine::parse(r#"127.0.0.1 - - [03/Dec/2026:16:32:52 +0000] "GET /v2/x/blobs/sha256:00 HTTP/1.1" 206 157 "" "curl/7.88.1""#)
            .unwrap();
        assert_eq!((l.method.as_str(), l.uri.as_str(), l.status, l.bytes), ("GET", "/v2/x/blobs/sha256:00", 206, 157));
        assert!(l.is_blob_get());
        assert_eq!(l.user_agent, "curl/7.88.1");
        assert!(!l.is_ours());
        assert_eq!(AccessLine::parse(r#"time="2026" level=info msg="response completed" http.request.uri=/v2/"#), None);
    }

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

    /// A second registry serving the first one's storage over HTTPS with a generated test CA:
    /// a blob pushed over plain HTTP is served over TLS, and the access log counts the request.
    #[test]
    fn tls_sibling_serves_the_same_storage() {
        let prereqs = [Prereq::Tool("docker-registry"), Prereq::Tool("openssl"), Prereq::Tool("curl")];
        if !prerequisites_met("registry TLS self-test", &prereqs) {
            return;
        }
        let plain = Registry::start().unwrap();
        let digest = plain.push_blob("t/blob", b"hello over tls").unwrap();
        let certs = temp_dir("tls");
        let tls = Tls::generate(certs.path()).unwrap();
        let secure = Registry::start_with(StartOptions {
            storage: Some(plain.storage_dir()),
            tls: Some(tls.clone()),
            ..Default::default()
        })
        .unwrap();
        let offset = secure.log_offset();
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&tls.ca)
            .arg(format!("https://{}/v2/t/blob/blobs/{digest}", secure.host()))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl over TLS: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"hello over tls");
        // Without the CA the certificate is refused.
        let untrusted = Command::new("curl").args(["-sf", &format!("https://{}/v2/", secure.host())]).status().unwrap();
        assert!(!untrusted.success(), "curl trusted the test certificate without --cacert");
        std::thread::sleep(Duration::from_millis(200));
        let requests = secure.requests_since(offset).unwrap();
        assert!(requests.iter().any(|r| r.is_blob_get() && r.status == 200 && r.bytes == 14), "{requests:?}");
    }
}
