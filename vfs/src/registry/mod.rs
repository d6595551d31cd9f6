//! OCI distribution client: manifests and blobs, HTTP Range reads, pushes, auth and retries.
//!
//! Owns every HTTP request the crate makes. Knows nothing of chunks or indexes: callers ask for
//! byte ranges of blobs by digest. Everything is async (tokio); blocking callers (FUSE threads) go
//! through a runtime handle in [`crate::fetch`].
//!
//! - [`reference`]: `host[:port]/repo[:tag][@digest]` parsing and docker.io normalisation.
//! - [`config`]: [`ClientConfig`] (plain HTTP policy, TLS, credentials, timeouts, deadline).
//! - [`auth`]: `WWW-Authenticate` challenges, the bearer token flow, docker config.json.
//! - [`client`]: [`Client`], the retry loop and the API calls.
//!
//! Retries: connection errors, timeouts, HTTP 5xx and 429 are retried with exponential backoff and
//! jitter until [`ClientConfig::deadline`] has passed since the call began; other 4xx are final. A
//! 401 triggers (re-)authentication and one retry, so an expired token mid-mount costs one round
//! trip, not a failed read.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod reference;

pub use client::{Client, Manifest, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
pub use config::{ClientConfig, PlainHttp};
pub use error::RegistryError;
pub use reference::{Reference, ReferenceError};

#[cfg(test)]
mod real_registry_tests;
