//! How the client talks to registries: plain HTTP policy, TLS material, credentials, timeouts,
//! the retry deadline and the concurrency bound.

use std::path::PathBuf;
use std::time::Duration;

use super::credentials::ProviderSettings;

/// Whether to speak plain HTTP instead of HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    Always,
    Never,
    /// Plain HTTP for loopback registries (127.0.0.0/8, localhost, ::1), HTTPS otherwise: what
    /// containerd does, so a local test registry works without flags.
    #[default]
    Auto,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub plain_http: PlainHttp,
    /// PEM bundle of extra trusted CA certificates (private registries).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for registries that require mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Username and password (or token) for every registry; else the sources of
    /// [`super::credentials`] (kubelet credential providers, docker credential helpers, auths).
    pub credentials: Option<(String, String)>,
    /// Explicit docker config.json; else `$DOCKER_CONFIG/config.json`, `$HOME/.docker/config.json`,
    /// `/root/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Kubelet credential provider plugins, asked before docker's config.
    pub credential_providers: Option<ProviderSettings>,
    /// Directory of credentials handed over per image ([`super::image_creds`]: what the shim's CRI
    /// proxy records from PullImage), asked first.
    pub image_credentials: Option<PathBuf>,
    /// containerd's hosts directory (`/etc/containerd/certs.d`): `<dir>/<registry>/hosts.toml`
    /// names mirrors and TLS settings ([`super::hosts`]). None: every registry is its own host.
    pub hosts_dir: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Connect timeout for a host that has another host after it (a mirror): a dead mirror costs
    /// at most this, once, before requests fail over to the next host.
    pub failover_connect_timeout: Duration,
    /// For a host that has another host after it: the longest wait for the answer's headers once
    /// connected. A mirror that accepts connections but does not answer (a cache still starting,
    /// hung) is then skipped after this long, once, instead of holding the read for the whole
    /// request timeout (and using up its retry deadline before the next host is tried).
    pub failover_answer_timeout: Duration,
    /// Bound on one small HTTP exchange including its body (manifests, range reads; further capped by
    /// the deadline): a stalled connection is retried, not waited on. Whole-blob downloads and
    /// uploads have no total bound (a layer may take minutes); for them this is the idle timeout,
    /// the longest wait for the next bytes.
    pub request_timeout: Duration,
    /// Give up retrying a request after this long. A read of the lazy filesystem fails (EIO) after at
    /// most about this long when the registry is down.
    pub deadline: Duration,
    /// Requests in flight at once, across all registries this client talks to.
    pub max_concurrency: usize,
    /// First retry delay; doubles each attempt (with jitter) up to [`ClientConfig::max_backoff`].
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            plain_http: PlainHttp::Auto,
            ca_file: None,
            client_cert: None,
            credentials: None,
            docker_config: None,
            credential_providers: None,
            image_credentials: None,
            hosts_dir: None,
            connect_timeout: Duration::from_secs(5),
            failover_connect_timeout: Duration::from_secs(1),
            failover_answer_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(30),
            max_concurrency: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}
