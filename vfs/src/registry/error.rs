//! Errors of the registry client. Every message names the registry, the repository and the object
//! (manifest reference or blob digest), and says what the user can do about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidReference(#[from] super::reference::ReferenceError),

    #[error("registry client configuration: {0}")]
    Config(String),

    #[error("registry {registry}: {what}: {reason}; is it running and reachable? (gave up within the {deadline:?} retry deadline)")]
    Unreachable { registry: String, what: String, reason: String, deadline: Duration },

    #[error("registry {registry}: repository {repository}: {what}: not found (HTTP 404); check the reference and that the image was pushed")]
    NotFound { registry: String, repository: String, what: String },

    #[error("registry {registry}: repository {repository}: {what}: access denied (HTTP {status}){hint}")]
    Unauthorized { registry: String, repository: String, what: String, status: u16, hint: String },

    #[error("registry {registry}: repository {repository}: {what}: unexpected HTTP {status}: {body}")]
    Status { registry: String, repository: String, what: String, status: u16, body: String },

    #[error("registry {registry}: repository {repository}: {what}: bad response: {reason}")]
    BadResponse { registry: String, repository: String, what: String, reason: String },

    #[error("registry {registry}: repository {repository}: {what}: digest mismatch (want {want}, got {got}); the registry storage is corrupt or a proxy altered the data")]
    DigestMismatch { registry: String, repository: String, what: String, want: String, got: String },

    #[error("registry {registry}: authentication: {reason}")]
    Auth { registry: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl RegistryError {
    /// True when retrying later may succeed (the registry is down or overloaded), as opposed to the
    /// request being wrong (404, 401, bad digest).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
