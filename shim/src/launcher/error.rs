//! The launcher's error type. Messages are shown to containerd users (ctr prints them), so each
//! one names the step and the path that failed and, where there is one, the fix.

use std::path::PathBuf;

/// Why creating, starting or exec'ing a container process failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The helper binary (`/proc/self/exe init`) could not be started.
    #[error("start the launcher helper {path}: {source}")]
    SpawnHelper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec asks for something this launcher refuses up front (unsupported or malformed).
    #[error("invalid OCI spec: {0}")]
    InvalidSpec(String),
    /// A step of the container setup failed inside the helper or the container's init process.
    /// The text is "step: detail", e.g. `mount proc on /proc: EPERM`, or runc's
    /// `exec: "foo": executable file not found in $PATH`.
    #[error("{0}")]
    Setup(String),
    /// The shim's `place` callback (cgroup placement) failed for the new process.
    #[error("place pid {pid} into the container's cgroup: {source:#}")]
    Place {
        pid: i32,
        #[source]
        source: anyhow::Error,
    },
    /// An OCI hook failed, timed out or could not be run.
    #[error("{phase} hook {path}: {detail}")]
    Hook {
        phase: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The helper or the container process went away without saying why (killed, crashed).
    #[error("{0}: the launcher helper exited without reporting a result (see the shim log)")]
    HelperDied(&'static str),
    /// The private socket between the shim and its helper failed.
    #[error("launcher sync socket ({step}): {source}")]
    Sync {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl LaunchError {
    /// True when the error comes from the request itself (bad spec, missing executable), so the
    /// service can answer InvalidArgument/NotFound instead of Internal.
    pub fn is_user_error(&self) -> bool {
        match self {
            LaunchError::InvalidSpec(_) => true,
            LaunchError::Setup(msg) => msg.starts_with("exec: "),
            _ => false,
        }
    }
}

/// Errors inside the helper and the container's init are plain text ("step: detail"): they
/// cross the sync socket to the shim, which wraps them in [`LaunchError::Setup`].
pub(crate) type StepResult<T> = Result<T, String>;

/// Adds the step (and path) to an error, the way every helper-side error is reported.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> StepResult<T>;
}

impl<T, E: std::fmt::Display> Step<T> for Result<T, E> {
    fn step(self, what: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// An I/O error as Go (runc) prints it: "no such file or directory", so our messages read like
/// the ones users know from runc.
pub(crate) fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => desc.to_string(),
            }
        }
        None => e.to_string(),
    }
}
