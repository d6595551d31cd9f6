//! The HTTP side of the registry client: one retry loop (deadline, backoff with jitter, re-auth on
//! 401) under a concurrency bound, and the distribution API calls built on it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng as _;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{self, Challenge, DockerConfig};
use super::config::{ClientConfig, PlainHttp};
use super::error::RegistryError;
use super::reference::Reference;
use crate::digest::{Digest, Hasher};
use crate::stats::Stats;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Manifests above this size are refused: real ones are a few KiB, and the body is held in memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A manifest or index as the registry returned it: the exact bytes (their digest is the manifest
/// digest) and the media type from `Content-Type` (or the document's `mediaType`).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// Cheap to clone; clones share the connection pool, the concurrency bound, tokens and counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    permits: Arc<Semaphore>,
    docker: DockerConfig,
    /// `Authorization` header value per (registry, scope), from a basic or bearer challenge.
    tokens: Mutex<HashMap<(String, String), String>>,
    stats: Arc<Stats>,
}

/// What one request is about, for URLs, scopes and error messages.
struct Op<'a> {
    r: &'a Reference,
    what: String,
    push: bool,
    /// Whole-blob transfers: no total timeout (a large layer may take minutes), only the idle
    /// read timeout of the client. Small requests get a total timeout capped by the deadline.
    bulk: bool,
    /// Overrides [`ClientConfig::deadline`] for this call.
    deadline: Option<Duration>,
}

type MakeRequest<'a> = dyn Fn(&reqwest::Client) -> Result<RequestBuilder, RegistryError> + Send + Sync + 'a;

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            // Idle bound for every read, including bulk transfers that have no total timeout.
            .read_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("containerd-shim-lazy/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| RegistryError::Io { path: ca.clone(), source: e })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("CA file {}: not a PEM certificate bundle: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!("CA file {}: holds no PEM certificate", ca.display())));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = std::fs::read(cert).map_err(|e| RegistryError::Io { path: cert.clone(), source: e })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| RegistryError::Io { path: key.clone(), source: e })?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "client certificate {} / key {}: not a usable PEM certificate and private key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(id);
        }
        let http = builder.build().map_err(|e| RegistryError::Config(format!("cannot build HTTP client: {e}")))?;
        let docker = if config.credentials.is_some() {
            DockerConfig::default()
        } else {
            DockerConfig::load(config.docker_config.as_deref()).unwrap_or_else(|e| {
                log::warn!("ignoring docker credentials: {e}");
                DockerConfig::default()
            })
        };
        let permits = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        Ok(Client {
            inner: Arc::new(Inner { http, config, permits, docker, tokens: Mutex::new(HashMap::new()), stats: Arc::default() }),
        })
    }

    /// Requests sent and bytes received by this client (and its clones), over all registries.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn scheme(&self, r: &Reference) -> &'static str {
        match self.inner.config.plain_http {
            PlainHttp::Always => "http",
            PlainHttp::Never => "https",
            PlainHttp::Auto if r.is_loopback() => "http",
            PlainHttp::Auto => "https",
        }
    }

    fn url(&self, r: &Reference, tail: &str) -> Result<reqwest::Url, RegistryError> {
        let s = format!("{}://{}/v2/{}/{tail}", self.scheme(r), r.api_host(), r.repository);
        reqwest::Url::parse(&s).map_err(|e| RegistryError::Config(format!("bad registry URL {s:?}: {e}")))
    }

    fn credentials(&self, registry: &str) -> Option<(String, String)> {
        self.inner.config.credentials.clone().or_else(|| self.inner.docker.credentials(registry))
    }

    fn scope(op: &Op<'_>) -> String {
        format!("repository:{}:{}", op.r.repository, if op.push { "pull,push" } else { "pull" })
    }

    /// Answers a 401 challenge: stores the `Authorization` value to use for this registry and scope.
    async fn authenticate(&self, op: &Op<'_>, challenge: Option<&str>) -> Result<(), RegistryError> {
        let registry = &op.r.registry;
        let scope = Self::scope(op);
        let creds = self.credentials(registry);
        let header = match challenge.and_then(Challenge::parse) {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let timeout = self.inner.config.request_timeout.min(self.inner.config.deadline);
                auth::fetch_token(&self.inner.http, registry, &realm, service.as_deref(), &scope, creds.as_ref(), timeout).await?
            }
            Some(Challenge::Basic) | None => match &creds {
                Some((u, p)) => auth::basic_header(u, p),
                None => {
                    return Err(RegistryError::Unauthorized {
                        registry: registry.clone(),
                        repository: op.r.repository.clone(),
                        what: op.what.clone(),
                        status: 401,
                        hint: "; no credentials configured: run `docker login` (config.json) or pass credentials".into(),
                    })
                }
            },
        };
        log::debug!("registry {registry}: authenticated for {scope}");
        self.inner.tokens.lock().insert((registry.clone(), scope), header);
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let base = c.initial_backoff.saturating_mul(1u32 << attempt.min(16)).min(c.max_backoff);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
    }

    /// Sends a request, retrying connection errors, timeouts, 5xx and 429 with exponential backoff
    /// and jitter until `start + deadline`; on 401 authenticates and retries once. Returns the first
    /// other response, whatever its status, with the concurrency permit it holds.
    async fn send(&self, op: &Op<'_>, start: Instant, make: &MakeRequest<'_>) -> Result<(Response, OwnedSemaphorePermit), RegistryError> {
        let cfg = &self.inner.config;
        let budget = op.deadline.unwrap_or(cfg.deadline);
        let deadline = start + budget;
        let scope = Self::scope(op);
        let unreachable = |reason: String| RegistryError::Unreachable {
            registry: op.r.registry.clone(),
            what: op.what.clone(),
            reason,
            deadline: budget,
        };
        let mut reauthed = false;
        let mut attempt = 0u32;
        let mut retry_after: Option<Duration> = None;
        loop {
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            let permit = match tokio::time::timeout(remaining, self.inner.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(RegistryError::Config("client shut down".into())),
                Err(_) => return Err(unreachable(format!("{} requests already in flight never finished", cfg.max_concurrency))),
            };
            let mut req = make(&self.inner.http)?;
            if !op.bulk {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
                req = req.timeout(cfg.request_timeout.min(left));
            }
            let auth = self.inner.tokens.lock().get(&(op.r.registry.clone(), scope.clone())).cloned();
            if let Some(h) = auth {
                req = req.header(AUTHORIZATION, h);
            }
            Stats::add(&self.inner.stats.requests, 1);
            let reason = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
                    drop(permit);
                    self.authenticate(op, challenge.as_deref()).await?;
                    continue;
                }
                Ok(resp) if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let status = resp.status();
                    // An overloaded registry may say when to come back (seconds form only).
                    retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = resp.text().await.unwrap_or_default();
                    format!("HTTP {status}: {}", auth::truncate(&body))
                }
                Ok(resp) => return Ok((resp, permit)),
                Err(e) if e.is_builder() => return Err(RegistryError::Config(format!("{}: {e}", op.what))),
                Err(e) => describe(&e),
            };
            drop(permit);
            attempt += 1;
            let delay = self.backoff(attempt).max(retry_after.take().unwrap_or_default());
            if Instant::now() + delay >= deadline {
                return Err(unreachable(reason));
            }
            log::debug!("registry {}: {}: {reason}; retrying in {delay:?}", op.r.registry, op.what);
            tokio::time::sleep(delay).await;
        }
    }

    /// Maps a final non-success status to an error naming the object.
    async fn fail(&self, op: &Op<'_>, resp: Response) -> RegistryError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let (registry, repository, what) = (op.r.registry.clone(), op.r.repository.clone(), op.what.clone());
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound { registry, repository, what },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let hint = if self.credentials(&op.r.registry).is_some() {
                    "; check that the credentials may access this repository".to_string()
                } else {
                    "; no credentials configured: run `docker login` (config.json) or pass credentials".to_string()
                };
                RegistryError::Unauthorized { registry, repository, what, status: status.as_u16(), hint }
            }
            _ => RegistryError::Status { registry, repository, what, status: status.as_u16(), body: auth::truncate(&body) },
        }
    }

    /// Sends and reads the whole body, retrying a body cut off mid-way until the deadline.
    async fn fetch(&self, op: &Op<'_>, max_len: usize, make: &MakeRequest<'_>) -> Result<(StatusCode, HeaderMap, Bytes), RegistryError> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let (resp, permit) = self.send(op, start, make).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(self.fail(op, resp).await);
            }
            if resp.content_length().is_some_and(|n| n > max_len as u64) {
                return Err(self.bad(op, format!("body of {} bytes exceeds the {max_len}-byte limit", resp.content_length().unwrap_or(0))));
            }
            let headers = resp.headers().clone();
            let body = resp.bytes().await;
            drop(permit);
            match body {
                Ok(b) => {
                    Stats::add(&self.inner.stats.bytes_fetched, b.len() as u64);
                    return Ok((status, headers, b));
                }
                Err(e) => {
                    attempt += 1;
                    let delay = self.backoff(attempt);
                    let budget = op.deadline.unwrap_or(self.inner.config.deadline);
                    if start.elapsed() + delay >= budget {
                        return Err(RegistryError::Unreachable {
                            registry: op.r.registry.clone(),
                            what: op.what.clone(),
                            reason: format!("body cut off: {}", describe(&e)),
                            deadline: budget,
                        });
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn bad(&self, op: &Op<'_>, reason: String) -> RegistryError {
        RegistryError::BadResponse { registry: op.r.registry.clone(), repository: op.r.repository.clone(), what: op.what.clone(), reason }
    }

    fn verify(&self, op: &Op<'_>, want: &Digest, got: Digest) -> Result<(), RegistryError> {
        if *want == got {
            return Ok(());
        }
        Err(RegistryError::DigestMismatch {
            registry: op.r.registry.clone(),
            repository: op.r.repository.clone(),
            what: op.what.clone(),
            want: want.to_string(),
            got: got.to_string(),
        })
    }

    /// Fetches a manifest or index by the reference's digest (verified) or tag.
    pub async fn get_manifest(&self, r: &Reference) -> Result<Manifest, RegistryError> {
        let reference = r.manifest_ref();
        let op = Op { r, what: format!("manifest {reference}"), push: false, bulk: false, deadline: None };
        let url = self.url(r, &format!("manifests/{reference}"))?;
        let accept = [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST].join(", ");
        let make = |h: &reqwest::Client| Ok(h.get(url.clone()).header(ACCEPT, accept.as_str()));
        let (_, headers, bytes) = self.fetch(&op, MAX_MANIFEST_BYTES, &make).await?;
        let digest = Digest::of(&bytes);
        if let Some(want) = &r.digest {
            self.verify(&op, want, digest)?;
        }
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .filter(|v| v.starts_with("application/vnd."))
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
            })
            .ok_or_else(|| self.bad(&op, "no media type in Content-Type or the document".into()))?;
        Ok(Manifest { media_type, digest, bytes })
    }

    /// Lists the repository's tags (`GET /v2/<repo>/tags/list`, first page): the converter looks
    /// for earlier lazy images whose chunks it can reuse. A missing repository has no tags.
    pub async fn list_tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        let op = Op { r, what: "tag list".into(), push: false, bulk: false, deadline: None };
        let url = self.url(r, "tags/list")?;
        let make = |h: &reqwest::Client| Ok(h.get(url.clone()));
        let bytes = match self.fetch(&op, MAX_MANIFEST_BYTES, &make).await {
            Ok((_, _, bytes)) => bytes,
            Err(RegistryError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let tags = serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| self.bad(&op, format!("not JSON: {e}")))?;
        Ok(tags
            .get("tags")
            .and_then(|t| t.as_array())
            .map(|t| t.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Fetches a whole blob into memory and verifies its digest. For small blobs (configs, indexes).
    pub async fn get_blob(&self, r: &Reference, digest: &Digest) -> Result<Bytes, RegistryError> {
        let op = Op { r, what: format!("blob {digest}"), push: false, bulk: true, deadline: None };
        let url = self.url(r, &format!("blobs/{digest}"))?;
        let make = |h: &reqwest::Client| Ok(h.get(url.clone()));
        let (_, _, bytes) = self.fetch(&op, usize::MAX, &make).await?;
        self.verify(&op, digest, Digest::of(&bytes))?;
        Ok(bytes)
    }

    /// Streams a blob to `dest` (created or truncated), verifying its digest; returns its size. On a
    /// mismatch `dest` is removed. A download cut off mid-way resumes with a Range request from
    /// where it stopped; it gives up when no progress was made for the deadline.
    pub async fn get_blob_to_file(&self, r: &Reference, digest: &Digest, dest: &Path) -> Result<u64, RegistryError> {
        let op = Op { r, what: format!("blob {digest}"), push: false, bulk: true, deadline: None };
        let url = self.url(r, &format!("blobs/{digest}"))?;
        let resume_at = std::sync::atomic::AtomicU64::new(0);
        let make = |h: &reqwest::Client| {
            let from = resume_at.load(std::sync::atomic::Ordering::Relaxed);
            let req = h.get(url.clone());
            Ok(if from > 0 { req.header(RANGE, format!("bytes={from}-")) } else { req })
        };
        let io = |e| RegistryError::Io { path: dest.to_path_buf(), source: e };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Hasher::new();
        let mut n = 0u64;
        let mut stalled_since: Option<Instant> = None;
        let mut attempt = 0;
        let result: Result<(), RegistryError> = 'download: loop {
            resume_at.store(n, std::sync::atomic::Ordering::Relaxed);
            let (mut resp, permit) = match self.send(&op, stalled_since.unwrap_or_else(Instant::now), &make).await {
                Ok(x) => x,
                Err(e) => break 'download Err(e),
            };
            if !resp.status().is_success() {
                break 'download Err(self.fail(&op, resp).await);
            }
            // Resuming: a 206 must start where we stopped; a 200 repeats the whole blob (skip what we have).
            let mut skip = 0u64;
            if n > 0 {
                if resp.status() == StatusCode::PARTIAL_CONTENT {
                    let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    if parse_content_range(&cr).map(|(s, _)| s) != Some(n) {
                        break 'download Err(self.bad(&op, format!("resume at byte {n} answered with Content-Range {cr:?}")));
                    }
                } else {
                    skip = n;
                }
            }
            let cut = loop {
                match resp.chunk().await {
                    Ok(Some(mut chunk)) => {
                        Stats::add(&self.inner.stats.bytes_fetched, chunk.len() as u64);
                        if skip > 0 {
                            let k = skip.min(chunk.len() as u64);
                            chunk = chunk.slice(k as usize..);
                            skip -= k;
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        hasher.update(&chunk);
                        n += chunk.len() as u64;
                        stalled_since = None;
                        if let Err(e) = file.write_all(&chunk).await {
                            break 'download Err(io(e));
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(describe(&e)),
                }
            };
            drop(permit);
            let Some(reason) = cut else { break 'download Ok(()) };
            let since = *stalled_since.get_or_insert_with(Instant::now);
            attempt += 1;
            let delay = self.backoff(attempt);
            if since.elapsed() + delay >= self.inner.config.deadline {
                break 'download Err(RegistryError::Unreachable {
                    registry: r.registry.clone(),
                    what: op.what.clone(),
                    reason: format!("download cut off after {n} bytes: {reason}"),
                    deadline: self.inner.config.deadline,
                });
            }
            log::debug!("registry {}: {}: cut off after {n} bytes ({reason}); resuming", r.registry, op.what);
            tokio::time::sleep(delay).await;
        };
        let result = match result {
            Ok(()) => file.flush().await.map_err(io).and_then(|()| self.verify(&op, digest, hasher.finish())),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(e);
        }
        Ok(n)
    }

    /// Reads `range` of a blob with an HTTP Range request. A 206 must carry the matching
    /// `Content-Range`; a registry that ignores ranges and sends the whole blob (200) is sliced.
    pub async fn get_blob_range(&self, r: &Reference, digest: &Digest, range: Range<u64>) -> Result<Bytes, RegistryError> {
        self.get_blob_range_within(r, digest, range, self.inner.config.deadline).await
    }

    /// [`Client::get_blob_range`] with its own retry deadline instead of the configured one (the
    /// chunk source probes briefly while it knows the registry is down).
    pub async fn get_blob_range_within(
        &self,
        r: &Reference,
        digest: &Digest,
        range: Range<u64>,
        deadline: Duration,
    ) -> Result<Bytes, RegistryError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let what = format!("blob {digest} bytes {}..{}", range.start, range.end);
        let op = Op { r, what, push: false, bulk: false, deadline: Some(deadline) };
        let url = self.url(r, &format!("blobs/{digest}"))?;
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let make = |h: &reqwest::Client| Ok(h.get(url.clone()).header(RANGE, header.as_str()));
        let want = (range.end - range.start) as usize;
        let (status, headers, body) = match self.fetch(&op, usize::MAX, &make).await {
            Err(RegistryError::Status { status: 416, .. }) => {
                return Err(self.bad(&op, "range lies beyond the end of the blob (HTTP 416); the index does not match the blob".into()))
            }
            other => other?,
        };
        if status == StatusCode::PARTIAL_CONTENT {
            let cr = headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match parse_content_range(cr) {
                Some((s, e)) if s == range.start && e + 1 == range.end => {}
                _ => return Err(self.bad(&op, format!("206 answer with Content-Range {cr:?} does not match the request"))),
            }
            if body.len() != want {
                return Err(self.bad(&op, format!("206 answer has {} bytes, expected {want}", body.len())));
            }
            Ok(body)
        } else {
            // Whole blob despite the Range header.
            if (body.len() as u64) < range.end {
                return Err(self.bad(&op, format!("blob is only {} bytes long", body.len())));
            }
            log::debug!("registry {}: {}: range ignored, slicing a {}-byte answer", r.registry, op.what, body.len());
            Ok(body.slice(range.start as usize..range.end as usize))
        }
    }

    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        self.blob_exists_op(r, digest, false).await
    }

    async fn blob_exists_op(&self, r: &Reference, digest: &Digest, push: bool) -> Result<bool, RegistryError> {
        let op = Op { r, what: format!("blob {digest}"), push, bulk: false, deadline: None };
        let url = self.url(r, &format!("blobs/{digest}"))?;
        let make = |h: &reqwest::Client| Ok(h.head(url.clone()));
        let (resp, _permit) = self.send(&op, Instant::now(), &make).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&op, resp).await),
        }
    }

    /// Pushes a blob held in memory (skipped when the registry already has it).
    pub async fn push_blob(&self, r: &Reference, digest: &Digest, data: Bytes) -> Result<(), RegistryError> {
        let len = data.len() as u64;
        self.push(r, digest, len, &move || Ok(reqwest::Body::from(data.clone()))).await
    }

    /// Pushes a blob from a file, streaming it (skipped when the registry already has it).
    pub async fn push_blob_file(&self, r: &Reference, digest: &Digest, path: &Path) -> Result<(), RegistryError> {
        let len = std::fs::metadata(path).map_err(|e| RegistryError::Io { path: path.to_path_buf(), source: e })?.len();
        let path = path.to_path_buf();
        let body = move || {
            let file = std::fs::File::open(&path).map_err(|e| RegistryError::Io { path: path.clone(), source: e })?;
            let file = tokio::fs::File::from_std(file);
            let stream = futures::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = vec![0u8; 256 << 10];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            });
            Ok(reqwest::Body::wrap_stream(stream))
        };
        self.push(r, digest, len, &body).await
    }

    /// Monolithic upload: POST an upload session, then PUT the whole body with `?digest=`.
    async fn push(
        &self,
        r: &Reference,
        digest: &Digest,
        len: u64,
        body: &(dyn Fn() -> Result<reqwest::Body, RegistryError> + Send + Sync),
    ) -> Result<(), RegistryError> {
        if self.blob_exists_op(r, digest, true).await? {
            log::debug!("registry {}: {}: blob {digest} already present", r.registry, r.repository);
            return Ok(());
        }
        let mut restarts = 0;
        loop {
            match self.upload_once(r, digest, len, body).await {
                Ok(()) => return Ok(()),
                // A retried PUT can find its upload session gone (the registry dropped it with the
                // failed attempt), or the first PUT may have landed although its answer was lost.
                Err(e @ RegistryError::NotFound { .. }) => {
                    if self.blob_exists_op(r, digest, true).await? {
                        return Ok(());
                    }
                    restarts += 1;
                    if restarts > 2 {
                        return Err(e);
                    }
                    log::debug!("registry {}: {e}; starting a new upload session", r.registry);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn upload_once(
        &self,
        r: &Reference,
        digest: &Digest,
        len: u64,
        body: &(dyn Fn() -> Result<reqwest::Body, RegistryError> + Send + Sync),
    ) -> Result<(), RegistryError> {
        let op = Op { r, what: format!("upload of blob {digest}"), push: true, bulk: true, deadline: None };
        let start_url = self.url(r, "blobs/uploads/")?;
        let make = |h: &reqwest::Client| Ok(h.post(start_url.clone()).header(CONTENT_LENGTH, "0"));
        let (resp, permit) = self.send(&op, Instant::now(), &make).await?;
        if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
            return Err(self.fail(&op, resp).await);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.bad(&op, "upload session answer has no Location header".into()))?
            .to_string();
        drop(permit);
        let mut put_url = resp.url().join(&location).map_err(|e| self.bad(&op, format!("bad upload Location {location:?}: {e}")))?;
        put_url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let make = |h: &reqwest::Client| {
            Ok(h.request(Method::PUT, put_url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(body()?))
        };
        let (resp, _permit) = self.send(&op, Instant::now(), &make).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&op, resp).await);
        }
        Ok(())
    }

    /// Pushes a manifest under the reference's tag (or digest); returns the manifest's digest.
    pub async fn push_manifest(&self, r: &Reference, media_type: &str, bytes: Bytes) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&bytes);
        let reference = match (&r.tag, &r.digest) {
            (Some(t), _) => t.clone(),
            _ => digest.to_string(),
        };
        let op = Op { r, what: format!("manifest {reference}"), push: true, bulk: false, deadline: None };
        let url = self.url(r, &format!("manifests/{reference}"))?;
        let make = |h: &reqwest::Client| Ok(h.put(url.clone()).header(CONTENT_TYPE, media_type).body(bytes.clone()));
        let (resp, _permit) = self.send(&op, Instant::now(), &make).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&op, resp).await);
        }
        if let Some(got) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if got != digest.to_string() {
                return Err(self.bad(&op, format!("registry stored the manifest as {got}, but its bytes hash to {digest}")));
            }
        }
        Ok(digest)
    }
}

/// `bytes 10-19/100` (or `bytes 10-19/*`) -> (10, 19).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim().strip_prefix("bytes")?.trim();
    let (range, _total) = v.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    (s <= e).then_some((s, e))
}

/// A reqwest error phrased for a user: "cannot connect: Connection refused (os error 111)" beats
/// "error sending request for url (...): client error (Connect)".
fn describe(e: &reqwest::Error) -> String {
    let mut io: Option<&std::io::Error> = None;
    let mut src = std::error::Error::source(e);
    let mut chain = Vec::new();
    while let Some(s) = src {
        if let Some(x) = s.downcast_ref::<std::io::Error>() {
            io = Some(x);
        }
        chain.push(s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        return "timed out (no complete answer within the request timeout)".to_string();
    }
    if e.is_connect() {
        return match io {
            Some(io) => format!("cannot connect: {io}"),
            None => format!("cannot connect: {}", chain.last().map_or("unknown error", String::as_str)),
        };
    }
    let mut out = e.to_string();
    if let Some(url) = e.url() {
        out = out.replace(&format!(" for url ({url})"), "");
    }
    for text in chain {
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
