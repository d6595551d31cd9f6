//! The HTTP side of the registry client: host choice and failover (hosts.toml mirrors, then the
//! server), one retry policy ([`Retry`]), re-authentication on 401 under a concurrency bound, and
//! the distribution API calls built on it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
    RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{self, Challenge};
use super::config::ClientConfig;
use super::credentials::Keychain;
use super::error::RegistryError;
use super::health::Health;
use super::hosts::{Endpoint, HostsCache, TlsSettings};
use super::image_creds::ImageCredStore;
use super::reference::Reference;
use super::retry::Retry;
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

/// Cheap to clone; clones share the connection pools, the concurrency bound, host health, tokens
/// and the statistics they report into.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// One HTTP client per distinct TLS setting and connect timeout (hosts.toml may give each host
    /// its own CA, client certificate or skip_verify).
    http: Mutex<HashMap<(TlsSettings, bool), reqwest::Client>>,
    permits: Arc<Semaphore>,
    keychain: Arc<Keychain>,
    /// `Authorization` header value per (endpoint host, scope), from a basic or bearer challenge.
    tokens: Mutex<HashMap<(String, String), String>>,
    /// One re-authentication at a time: concurrent 401s (an expired token) refresh it once.
    auth_lock: tokio::sync::Mutex<()>,
    /// What the last credential lookup for an endpoint host found, for "access denied" messages.
    last_lookup: Mutex<HashMap<String, String>>,
    hosts: HostsCache,
    health: Arc<Health>,
    /// The counters of the mount this client serves (per-host requests and bytes), if any.
    stats: Option<Arc<Stats>>,
}

/// Which hosts.toml capability a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Pull,
    Resolve,
    Push,
}

/// What one request is about, for URLs, scopes and error messages.
struct Op<'a> {
    r: &'a Reference,
    what: String,
    cap: Cap,
    /// Path below the repository (`blobs/<digest>`, `manifests/<ref>`, ...).
    tail: String,
    /// Whole-blob transfers: no total timeout (a large layer may take minutes), only the idle
    /// read timeout of the client. Small requests get a total timeout capped by the deadline.
    bulk: bool,
    /// Only this endpoint (origin), e.g. the host that opened an upload session.
    pin: Option<String>,
}

impl<'a> Op<'a> {
    fn new(r: &'a Reference, what: String, cap: Cap, tail: String) -> Op<'a> {
        Op { r, what, cap, tail, bulk: false, pin: None }
    }
}

/// A response and what it holds: the concurrency permit, and which endpoint answered.
struct Sent {
    resp: Response,
    permit: OwnedSemaphorePermit,
    host: String,
    origin: String,
}

/// How one attempt on one endpoint ended.
enum Attempt {
    Answer(Sent),
    /// Connection error, timeout, 5xx or 429: the host is (for now) unavailable.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// This host cannot serve the request (authentication failed): try the next.
    Skip(RegistryError),
}

/// Builds the request for one attempt from the HTTP client of the chosen endpoint and the object's
/// URL on it.
type MakeRequest<'a> =
    dyn Fn(&reqwest::Client, reqwest::Url) -> Result<RequestBuilder, RegistryError> + Send + Sync + 'a;

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        Client::build(config, None)
    }

    /// A client that reports per-host requests and bytes into `stats` (the mount's counters).
    pub fn with_stats(config: ClientConfig, stats: Arc<Stats>) -> Result<Client, RegistryError> {
        Client::build(config, Some(stats))
    }

    fn build(config: ClientConfig, stats: Option<Arc<Stats>>) -> Result<Client, RegistryError> {
        let keychain = Arc::new(
            Keychain::new(
                config.credentials.clone(),
                config.docker_config.clone(),
                config.credential_providers.clone(),
            )
            .with_image_credentials(config.image_credentials.clone().map(ImageCredStore::new)),
        );
        let permits = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        let client = Client {
            inner: Arc::new(Inner {
                config,
                http: Mutex::new(HashMap::new()),
                permits,
                keychain,
                tokens: Mutex::new(HashMap::new()),
                auth_lock: tokio::sync::Mutex::new(()),
                last_lookup: Mutex::new(HashMap::new()),
                hosts: HostsCache::default(),
                health: Arc::new(Health::default()),
                stats,
            }),
        };
        // Validate the configured TLS material now, not at the first request.
        client.http_for(&TlsSettings::default(), false)?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The HTTP client for a TLS setting; `fast_connect` caps the connect timeout at
    /// [`ClientConfig::failover_connect_timeout`] (hosts with another host after them).
    fn http_for(&self, tls: &TlsSettings, fast_connect: bool) -> Result<reqwest::Client, RegistryError> {
        let key = (tls.clone(), fast_connect);
        if let Some(c) = self.inner.http.lock().get(&key) {
            return Ok(c.clone());
        }
        let config = &self.inner.config;
        let connect = if fast_connect {
            config.connect_timeout.min(config.failover_connect_timeout)
        } else {
            config.connect_timeout
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(connect)
            // Idle bound for every read, including bulk transfers that have no total timeout.
            .read_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("containerd-shim-lazy/", env!("CARGO_PKG_VERSION")));
        let cas = config.ca_file.iter().chain(tls.ca.iter());
        for ca in cas {
            let pem = std::fs::read(ca).map_err(|e| RegistryError::Io { path: ca.clone(), source: e })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!("CA file {}: not a PEM certificate bundle: {e}", ca.display()))
            })?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!("CA file {}: holds no PEM certificate", ca.display())));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = tls.client.as_ref().or(config.client_cert.as_ref()) {
            let mut pem = std::fs::read(cert).map_err(|e| RegistryError::Io { path: cert.clone(), source: e })?;
            if key != cert {
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| RegistryError::Io { path: key.clone(), source: e })?);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "client certificate {} / key {}: not a usable PEM certificate and private key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(id);
        }
        if tls.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| RegistryError::Config(format!("cannot build HTTP client: {e}")))?;
        self.inner.http.lock().insert(key, http.clone());
        Ok(http)
    }

    /// The endpoints of a registry in the order to try them (hosts.toml mirrors, then the server).
    pub fn endpoints(&self, r: &Reference) -> Result<Arc<Vec<Endpoint>>, RegistryError> {
        let c = &self.inner.config;
        self.inner.hosts.get(c.hosts_dir.as_deref(), r, c.plain_http)
    }

    fn scope(op: &Op<'_>) -> String {
        format!("repository:{}:{}", op.r.repository, if op.cap == Cap::Push { "pull,push" } else { "pull" })
    }

    fn count(&self, host: &str, requests: u64, bytes: u64, failures: u64) {
        if let Some(s) = &self.inner.stats {
            s.add_host(host, requests, bytes, failures);
        }
    }

    /// Answers a 401 challenge from `ep`: looks credentials up again (a rotated secret is picked up
    /// here) and stores the `Authorization` value for this host and scope. `used` is the value the
    /// refused request carried: if another request refreshed it meanwhile, that one is used.
    async fn authenticate(
        &self,
        op: &Op<'_>,
        ep: &Endpoint,
        challenge: Option<&str>,
        used: Option<&str>,
    ) -> Result<(), RegistryError> {
        let _one_at_a_time = self.inner.auth_lock.lock().await;
        let host = ep.host().to_string();
        let scope = Self::scope(op);
        let key = (host.clone(), scope.clone());
        if let Some(current) = self.inner.tokens.lock().get(&key) {
            if Some(current.as_str()) != used {
                return Ok(());
            }
        }
        let keychain = self.inner.keychain.clone();
        let image = format!("{}/{}", op.r.registry, op.r.repository);
        let h = host.clone();
        let lookup = tokio::task::spawn_blocking(move || keychain.lookup(&h, &image))
            .await
            .map_err(|e| RegistryError::Config(format!("credential lookup for {host} panicked: {e}")))??;
        let described = lookup.describe();
        self.inner.last_lookup.lock().insert(host.clone(), described.clone());
        let creds = lookup.credential.as_ref().map(|c| (c.username.clone(), c.secret.clone()));
        let header = match challenge.and_then(Challenge::parse) {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let timeout = self.inner.config.request_timeout.min(self.inner.config.deadline);
                let http = self.http_for(&ep.tls, false)?;
                auth::fetch_token(&http, &host, &realm, service.as_deref(), &scope, creds.as_ref(), timeout).await.map_err(|e| {
                    if lookup.credential.is_some() {
                        self.inner.keychain.forget_cached();
                    }
                    match e {
                        RegistryError::Auth { registry, reason } => RegistryError::Auth { registry, reason: format!("{reason} ({described})") },
                        e => e,
                    }
                })?
            }
            Some(Challenge::Basic) | None => match &creds {
                Some((u, p)) => auth::basic_header(u, p),
                None => {
                    return Err(RegistryError::Unauthorized {
                        registry: host,
                        repository: op.r.repository.clone(),
                        what: op.what.clone(),
                        status: 401,
                        hint: format!("; {described}: configure credentials (docker login, a credential helper or a kubelet credential provider)"),
                    })
                }
            },
        };
        log::debug!("registry {host}: authenticated for {scope} with {described}");
        self.inner.tokens.lock().insert(key, header);
        Ok(())
    }

    /// Sends a request to the registry's hosts in order (mirrors, then the server), skipping hosts
    /// known to be down, failing over at once on connection errors, timeouts, 5xx and 429, and on
    /// 404/401/403 from a host that is not the last. When every host failed, backs off and tries
    /// again until the retry deadline. On 401 authenticates and retries the host once. Returns the
    /// first other response, whatever its status, with the concurrency permit it holds.
    async fn send(&self, op: &Op<'_>, retry: &mut Retry, make: &MakeRequest<'_>) -> Result<Sent, RegistryError> {
        let all = self.endpoints(op.r)?;
        let eligible: Vec<&Endpoint> = all
            .iter()
            .filter(|e| match &op.pin {
                Some(origin) => e.origin == *origin,
                None => match op.cap {
                    Cap::Pull => e.capabilities.pull,
                    Cap::Resolve => e.capabilities.resolve,
                    Cap::Push => e.capabilities.push,
                },
            })
            .collect();
        if eligible.is_empty() {
            return Err(RegistryError::Config(format!("registry {}: no host may serve {}", op.r.registry, op.what)));
        }
        let failover = eligible.len() > 1;
        loop {
            let up: Vec<&Endpoint> =
                eligible.iter().copied().filter(|e| !failover || !self.inner.health.is_down(&e.origin)).collect();
            let order = if up.is_empty() { eligible.clone() } else { up };
            let mut reasons = Vec::new();
            let mut retry_after = None;
            let mut skipped: Option<RegistryError> = None;
            for (i, ep) in order.iter().enumerate() {
                let last = i + 1 == order.len();
                // Hosts with another host after them get a short connect timeout: a dead mirror
                // must cost at most about a second.
                match self.attempt(op, ep, retry, make, failover && !last).await? {
                    Attempt::Answer(sent) => {
                        if failover {
                            if let Some(down) = self.inner.health.mark_up(&ep.origin) {
                                log::info!(
                                    "registry host {} answers again after {down:.1?}; using it again",
                                    ep.origin
                                );
                            }
                        }
                        let status = sent.resp.status();
                        let refused =
                            matches!(status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
                        if refused && !last {
                            log::debug!(
                                "registry host {}: {}: HTTP {status}; trying the next host",
                                ep.origin,
                                op.what
                            );
                            continue;
                        }
                        return Ok(sent);
                    }
                    Attempt::Skip(e) => {
                        if last {
                            return Err(e);
                        }
                        log::debug!("registry host {}: {e}; trying the next host", ep.origin);
                        skipped = Some(e);
                    }
                    Attempt::Unavailable { reason, retry_after: ra } => {
                        self.count(ep.host(), 0, 0, 1);
                        if failover && self.inner.health.mark_down(&ep.origin, &reason) {
                            log::warn!(
                                "registry {}: host {} unavailable ({reason}); using the next host until it answers again",
                                op.r.registry,
                                ep.origin
                            );
                            self.spawn_prober(ep);
                        }
                        reasons.push(if failover { format!("{}: {reason}", ep.origin) } else { reason });
                        retry_after = retry_after.max(ra);
                    }
                }
            }
            if reasons.is_empty() {
                if let Some(e) = skipped {
                    return Err(e);
                }
            }
            let reason = reasons.join("; ");
            if !retry.pause(retry_after).await {
                return Err(RegistryError::Unreachable {
                    registry: op.r.registry.clone(),
                    what: op.what.clone(),
                    reason,
                    deadline: retry.budget(),
                });
            }
            log::debug!("registry {}: {}: {reason}; retrying", op.r.registry, op.what);
        }
    }

    /// One request to one endpoint (two with a 401 answered by authentication).
    async fn attempt(
        &self,
        op: &Op<'_>,
        ep: &Endpoint,
        retry: &Retry,
        make: &MakeRequest<'_>,
        fast_connect: bool,
    ) -> Result<Attempt, RegistryError> {
        let cfg = &self.inner.config;
        let scope = Self::scope(op);
        let http = self.http_for(&ep.tls, fast_connect)?;
        let url = ep.url(&op.r.registry, &op.r.repository, &op.tail)?;
        let mut reauthed = false;
        loop {
            let permit = match tokio::time::timeout(retry.remaining(), self.inner.permits.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(RegistryError::Config("client shut down".into())),
                Err(_) => {
                    return Err(RegistryError::Unreachable {
                        registry: op.r.registry.clone(),
                        what: op.what.clone(),
                        reason: format!("{} requests already in flight never finished", cfg.max_concurrency),
                        deadline: retry.budget(),
                    })
                }
            };
            let mut req = make(&http, url.clone())?;
            if !op.bulk {
                req = req.timeout(cfg.request_timeout.min(retry.remaining().max(Duration::from_secs(1))));
            }
            for (name, value) in &ep.headers {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                    req = req.header(n, v);
                }
            }
            let auth = self.inner.tokens.lock().get(&(ep.host().to_string(), scope.clone())).cloned();
            if let Some(h) = &auth {
                req = req.header(AUTHORIZATION, h);
            }
            self.count(ep.host(), 1, 0, 0);
            let answer = if fast_connect {
                // Another host follows: a host that connects but does not answer must not hold the
                // request (nor use up the retry deadline) for the whole request timeout.
                let limit = cfg.failover_answer_timeout + cfg.connect_timeout.min(cfg.failover_connect_timeout);
                match tokio::time::timeout(limit, req.send()).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Ok(Attempt::Unavailable {
                            reason: format!("no answer within {limit:?}"),
                            retry_after: None,
                        })
                    }
                }
            } else {
                req.send().await
            };
            return Ok(match answer {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    let challenge =
                        resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
                    drop(permit);
                    match self.authenticate(op, ep, challenge.as_deref(), auth.as_deref()).await {
                        Ok(()) => continue,
                        Err(e) => Attempt::Skip(e),
                    }
                }
                Ok(resp) if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let status = resp.status();
                    // An overloaded registry may say when to come back (seconds form only).
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = resp.text().await.unwrap_or_default();
                    Attempt::Unavailable { reason: format!("HTTP {status}: {}", auth::truncate(&body)), retry_after }
                }
                Ok(resp) => {
                    Attempt::Answer(Sent { resp, permit, host: ep.host().to_string(), origin: ep.origin.clone() })
                }
                Err(e) if e.is_builder() => return Err(RegistryError::Config(format!("{}: {e}", op.what))),
                Err(e) => Attempt::Unavailable { reason: describe(&e), retry_after: None },
            });
        }
    }

    /// Re-probes a host that went down, in the background, until it answers (any status below 500).
    fn spawn_prober(&self, ep: &Endpoint) {
        let (Ok(http), Ok(url)) = (self.http_for(&ep.tls, true), ep.ping_url()) else { return };
        let timeout =
            self.inner.config.connect_timeout.min(self.inner.config.failover_connect_timeout) + Duration::from_secs(2);
        self.inner.health.spawn_prober(ep.origin.clone(), move || {
            let (http, url) = (http.clone(), url.clone());
            async move { matches!(http.get(url).timeout(timeout).send().await, Ok(r) if !r.status().is_server_error()) }
        });
    }

    /// Maps a final non-success status to an error naming the object.
    async fn fail(&self, op: &Op<'_>, sent: Sent) -> RegistryError {
        let resp = sent.resp;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let (registry, repository, what) = (sent.host.clone(), op.r.repository.clone(), op.what.clone());
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound { registry, repository, what },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let hint = match self.inner.last_lookup.lock().get(&sent.host) {
                    Some(d) if d.starts_with("credentials from") => {
                        self.inner.keychain.forget_cached();
                        format!("; {d} were refused: check that they are valid and may access this repository")
                    }
                    Some(d) => format!("; {d}: configure credentials (docker login, a credential helper or a kubelet credential provider)"),
                    None => "; the registry asked for no credentials".to_string(),
                };
                RegistryError::Unauthorized { registry, repository, what, status: status.as_u16(), hint }
            }
            _ => RegistryError::Status {
                registry,
                repository,
                what,
                status: status.as_u16(),
                body: auth::truncate(&body),
            },
        }
    }

    /// Sends and reads the whole body, retrying a body cut off mid-way until the deadline.
    async fn fetch(
        &self,
        op: &Op<'_>,
        deadline: Duration,
        max_len: usize,
        make: &MakeRequest<'_>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), RegistryError> {
        let mut retry = self.retry(deadline);
        loop {
            let sent = self.send(op, &mut retry, make).await?;
            let status = sent.resp.status();
            if !status.is_success() {
                return Err(self.fail(op, sent).await);
            }
            if sent.resp.content_length().is_some_and(|n| n > max_len as u64) {
                return Err(self.bad(
                    op,
                    format!(
                        "body of {} bytes exceeds the {max_len}-byte limit",
                        sent.resp.content_length().unwrap_or(0)
                    ),
                ));
            }
            let headers = sent.resp.headers().clone();
            let (host, permit) = (sent.host, sent.permit);
            let body = sent.resp.bytes().await;
            drop(permit);
            match body {
                Ok(b) => {
                    self.count(&host, 0, b.len() as u64, 0);
                    return Ok((status, headers, b));
                }
                Err(e) => {
                    self.count(&host, 0, 0, 1);
                    if !retry.pause(None).await {
                        return Err(RegistryError::Unreachable {
                            registry: op.r.registry.clone(),
                            what: op.what.clone(),
                            reason: format!("body cut off: {}", describe(&e)),
                            deadline: retry.budget(),
                        });
                    }
                }
            }
        }
    }

    fn retry(&self, budget: Duration) -> Retry {
        let c = &self.inner.config;
        Retry::new(budget, c.initial_backoff, c.max_backoff)
    }

    fn bad(&self, op: &Op<'_>, reason: String) -> RegistryError {
        RegistryError::BadResponse {
            registry: op.r.registry.clone(),
            repository: op.r.repository.clone(),
            what: op.what.clone(),
            reason,
        }
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
        let cap = if r.digest.is_some() { Cap::Pull } else { Cap::Resolve };
        let op = Op::new(r, format!("manifest {reference}"), cap, format!("manifests/{reference}"));
        let accept = [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST].join(", ");
        let make = |h: &reqwest::Client, url| Ok(h.get(url).header(ACCEPT, accept.as_str()));
        let (_, headers, bytes) = self.fetch(&op, self.inner.config.deadline, MAX_MANIFEST_BYTES, &make).await?;
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
        let op = Op::new(r, "tag list".into(), Cap::Resolve, "tags/list".into());
        let make = |h: &reqwest::Client, url| Ok(h.get(url));
        let bytes = match self.fetch(&op, self.inner.config.deadline, MAX_MANIFEST_BYTES, &make).await {
            Ok((_, _, bytes)) => bytes,
            Err(RegistryError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let tags =
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| self.bad(&op, format!("not JSON: {e}")))?;
        Ok(tags
            .get("tags")
            .and_then(|t| t.as_array())
            .map(|t| t.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Fetches a whole blob into memory and verifies its digest. For small blobs (configs, indexes).
    pub async fn get_blob(&self, r: &Reference, digest: &Digest) -> Result<Bytes, RegistryError> {
        let mut op = Op::new(r, format!("blob {digest}"), Cap::Pull, format!("blobs/{digest}"));
        op.bulk = true;
        let make = |h: &reqwest::Client, url| Ok(h.get(url));
        let (_, _, bytes) = self.fetch(&op, self.inner.config.deadline, usize::MAX, &make).await?;
        self.verify(&op, digest, Digest::of(&bytes))?;
        Ok(bytes)
    }

    /// Streams a blob to `dest` (created or truncated), verifying its digest; returns its size. On a
    /// mismatch `dest` is removed. A download cut off mid-way resumes with a Range request from
    /// where it stopped (on whichever host answers); it gives up when no progress was made for the
    /// deadline.
    pub async fn get_blob_to_file(&self, r: &Reference, digest: &Digest, dest: &Path) -> Result<u64, RegistryError> {
        let mut op = Op::new(r, format!("blob {digest}"), Cap::Pull, format!("blobs/{digest}"));
        op.bulk = true;
        let io = |e| RegistryError::Io { path: dest.to_path_buf(), source: e };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Hasher::new();
        let mut n = 0u64;
        let mut body = BlobStream::new(self, op, self.inner.config.deadline, 0, None);
        let result: Result<(), RegistryError> = async {
            while let Some(chunk) = body.next().await? {
                hasher.update(&chunk);
                n += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io)?;
            }
            Ok(())
        }
        .await;
        let op = body.op;
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
    pub async fn get_blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
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
        let mut body = self.stream_blob_range(r, digest, range.clone(), deadline);
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        while let Some(chunk) = body.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// `range` of a blob, handed out as it arrives ([`BlobStream`]).
    pub fn stream_blob_range<'a>(
        &'a self,
        r: &'a Reference,
        digest: &Digest,
        range: Range<u64>,
        deadline: Duration,
    ) -> BlobStream<'a> {
        let what = format!("blob {digest} bytes {}..{}", range.start, range.end);
        let op = Op::new(r, what, Cap::Pull, format!("blobs/{digest}"));
        BlobStream::new(self, op, deadline, range.start, Some(range.end))
    }

    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        self.blob_exists_op(r, digest, Cap::Pull).await
    }

    async fn blob_exists_op(&self, r: &Reference, digest: &Digest, cap: Cap) -> Result<bool, RegistryError> {
        let op = Op::new(r, format!("blob {digest}"), cap, format!("blobs/{digest}"));
        let make = |h: &reqwest::Client, url| Ok(h.head(url));
        let sent = self.send(&op, &mut self.retry(self.inner.config.deadline), &make).await?;
        match sent.resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&op, sent).await),
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
        if self.blob_exists_op(r, digest, Cap::Push).await? {
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
                    if self.blob_exists_op(r, digest, Cap::Push).await? {
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
        let mut op = Op::new(r, format!("upload of blob {digest}"), Cap::Push, "blobs/uploads/".into());
        op.bulk = true;
        let make = |h: &reqwest::Client, url| Ok(h.post(url).header(CONTENT_LENGTH, "0"));
        let sent = self.send(&op, &mut self.retry(self.inner.config.deadline), &make).await?;
        if sent.resp.status() != StatusCode::ACCEPTED && !sent.resp.status().is_success() {
            return Err(self.fail(&op, sent).await);
        }
        let location = sent
            .resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.bad(&op, "upload session answer has no Location header".into()))?
            .to_string();
        let Sent { resp, permit, origin, .. } = sent;
        drop(permit);
        let mut put_url =
            resp.url().join(&location).map_err(|e| self.bad(&op, format!("bad upload Location {location:?}: {e}")))?;
        put_url.query_pairs_mut().append_pair("digest", &digest.to_string());
        // The session lives on the host that opened it.
        op.pin = Some(origin);
        let make = |h: &reqwest::Client, _| {
            Ok(h.request(Method::PUT, put_url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(body()?))
        };
        let sent = self.send(&op, &mut self.retry(self.inner.config.deadline), &make).await?;
        if !sent.resp.status().is_success() {
            return Err(self.fail(&op, sent).await);
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
        let op = Op::new(r, format!("manifest {reference}"), Cap::Push, format!("manifests/{reference}"));
        let make = |h: &reqwest::Client, url| Ok(h.put(url).header(CONTENT_TYPE, media_type).body(bytes.clone()));
        let sent = self.send(&op, &mut self.retry(self.inner.config.deadline), &make).await?;
        if !sent.resp.status().is_success() {
            return Err(self.fail(&op, sent).await);
        }
        if let Some(got) = sent.resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if got != digest.to_string() {
                return Err(
                    self.bad(&op, format!("registry stored the manifest as {got}, but its bytes hash to {digest}"))
                );
            }
        }
        Ok(digest)
    }
}

/// A blob's bytes from `start` to `end` (or the blob's end), handed out as they arrive. A body cut
/// off mid-way resumes with a Range request from where it stopped (on whichever host answers); it
/// gives up when no progress was made for the deadline. A 206 must carry the matching
/// `Content-Range`; a registry that ignores ranges and sends the whole blob (200) is skipped into.
pub struct BlobStream<'a> {
    client: &'a Client,
    op: Op<'a>,
    retry: Retry,
    start: u64,
    end: Option<u64>,
    /// Bytes handed out so far.
    n: u64,
    body: Option<Body>,
}

/// The answer being read.
struct Body {
    resp: Response,
    _permit: OwnedSemaphorePermit,
    host: String,
    /// Bytes before the wanted ones (a 200 answer to a Range request).
    skip: u64,
}

impl<'a> BlobStream<'a> {
    fn new(client: &'a Client, op: Op<'a>, deadline: Duration, start: u64, end: Option<u64>) -> BlobStream<'a> {
        BlobStream { client, op, retry: client.retry(deadline), start, end, n: 0, body: None }
    }

    /// The next piece of the body, `None` after its last.
    pub async fn next(&mut self) -> Result<Option<Bytes>, RegistryError> {
        loop {
            let at = self.start + self.n;
            if self.end.is_some_and(|end| at >= end) {
                self.body = None;
                return Ok(None);
            }
            if self.body.is_none() {
                self.body = Some(self.open().await?);
            }
            let Some(body) = &mut self.body else { continue };
            let cut = match body.resp.chunk().await {
                Ok(Some(mut chunk)) => {
                    self.client.count(&body.host, 0, chunk.len() as u64, 0);
                    let skip = body.skip.min(chunk.len() as u64);
                    body.skip -= skip;
                    chunk = chunk.slice(skip as usize..);
                    if let Some(end) = self.end {
                        chunk.truncate(chunk.len().min((end - at) as usize));
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.n += chunk.len() as u64;
                    self.retry.progressed();
                    return Ok(Some(chunk));
                }
                Ok(None) if self.end.is_none() => {
                    self.body = None;
                    return Ok(None);
                }
                Ok(None) => format!("the answer ended at byte {at}"),
                Err(e) => {
                    self.client.count(&body.host, 0, 0, 1);
                    describe(&e)
                }
            };
            let host = self.body.take().map(|b| b.host).unwrap_or_default();
            if !self.retry.pause(None).await {
                return Err(RegistryError::Unreachable {
                    registry: self.op.r.registry.clone(),
                    what: self.op.what.clone(),
                    reason: format!("cut off after {} bytes: {cut}", self.n),
                    deadline: self.retry.budget(),
                });
            }
            log::debug!("registry {host}: {}: cut off after {} bytes ({cut}); resuming", self.op.what, self.n);
        }
    }

    /// Sends the request for what is still wanted.
    async fn open(&mut self) -> Result<Body, RegistryError> {
        let from = self.start + self.n;
        let range = match self.end {
            Some(end) => Some(format!("bytes={from}-{}", end - 1)),
            None => (from > 0).then(|| format!("bytes={from}-")),
        };
        let make = |h: &reqwest::Client, url| {
            let req = h.get(url);
            Ok(match &range {
                Some(range) => req.header(RANGE, range.as_str()),
                None => req,
            })
        };
        let sent = match self.client.send(&self.op, &mut self.retry, &make).await? {
            sent if sent.resp.status() == StatusCode::RANGE_NOT_SATISFIABLE => {
                // A range is asked for by a lazy image's index; a whole download only resumes.
                let why = if self.end.is_some() { "the index does not match the blob" } else { "the blob changed" };
                return Err(self
                    .client
                    .bad(&self.op, format!("bytes from {from} lie beyond the end of the blob (HTTP 416); {why}")));
            }
            sent if !sent.resp.status().is_success() => return Err(self.client.fail(&self.op, sent).await),
            sent => sent,
        };
        let Sent { resp, permit, host, .. } = sent;
        let mut skip = 0;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match parse_content_range(cr) {
                Some((s, e)) if s == from && self.end.is_none_or(|end| e + 1 == end) => {}
                _ => {
                    return Err(self.client.bad(
                        &self.op,
                        format!("206 answer with Content-Range {cr:?} does not match the request ({range:?})"),
                    ))
                }
            }
        } else if range.is_some() {
            // The whole blob despite the Range header.
            if let (Some(len), Some(end)) = (resp.content_length(), self.end) {
                if len < end {
                    return Err(self.client.bad(&self.op, format!("blob is only {len} bytes long")));
                }
            }
            log::debug!("registry {host}: {}: range ignored, skipping {from} bytes of the whole blob", self.op.what);
            skip = from;
        }
        Ok(Body { resp, _permit: permit, host, skip })
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
