//! OCI distribution client: manifests and blobs, HTTP Range reads, pushes, auth and retries.
//!
//! Owns every HTTP request the crate makes. Knows nothing of chunks or indexes: callers ask for
//! byte ranges of blobs by digest. Everything is async (tokio); blocking callers (FUSE threads) go
//! through a runtime handle in [`crate::fetch`].
//!
//! - [`reference`]: `host[:port]/repo[:tag][@digest]` parsing and docker.io normalisation.
//! - [`config`]: [`ClientConfig`] (plain HTTP policy, TLS, credentials, timeouts, deadline).
//! - [`auth`]: `WWW-Authenticate` challenges, the bearer token flow, docker config.json.
//! - [`credentials`]: where credentials come from (kubelet credential providers, docker
//!   credential helpers, auths), looked up again on every 401.
//! - [`image_creds`]: credentials handed over per image (imagePullSecrets via the CRI proxy).
//! - [`hosts`]: containerd's hosts.toml (mirrors, capabilities, TLS per host).
//! - [`health`]: which hosts are down, and their background re-probe.
//! - [`retry`]: the one backoff-until-deadline policy.
//! - [`client`]: [`Client`]: host choice and failover, authentication, the API calls.
//!
//! Each request goes to the registry's hosts in hosts.toml order (mirrors, then the server),
//! skipping hosts known to be down. Connection errors, timeouts, HTTP 5xx and 429 move it to the
//! next host at once; when every host failed it backs off (exponential, with jitter) and tries
//! again until [`ClientConfig::deadline`] has passed since the call began; other 4xx are final. A
//! 401 triggers (re-)authentication and one retry, so an expired token mid-mount costs one round
//! trip, not a failed read. Content from any host is verified by digest by the callers.

pub mod auth;
pub mod client;
pub mod config;
pub mod credentials;
pub mod error;
pub mod health;
pub mod hosts;
pub mod image_creds;
pub mod reference;
pub mod retry;

pub use client::{Client, Manifest, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
pub use config::{ClientConfig, PlainHttp};
pub use credentials::ProviderSettings;
pub use error::RegistryError;
pub use reference::{Reference, ReferenceError};

#[cfg(test)]
mod real_registry_tests;
