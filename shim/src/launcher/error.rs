//! The launcher's error type. Messages are shown to containerd users (ctr prints them), so each
//! one names the step and the path that failed and, where there is one, the fix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// A step of the container setup failed inside the helper or the container's init process
    /// (or a spec check there refused the spec: then it is [`StepError::InvalidSpec`]).
    #[error("{0}")]
    Setup(StepError),
    /// The shim's `place` callback (cgroup placement) failed for the new process.
    #[error("place pid {pid} into the container's cgroup: {source}")]
    Place {
        pid: i32,
        #[source]
        source: PlaceError,
    },
    /// An OCI hook failed, timed out or could not be run.
    #[error("{phase} hook {path}: {detail}")]
    Hook { phase: &'static str, path: PathBuf, detail: String },
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
        matches!(
            self,
            LaunchError::InvalidSpec(_)
                | LaunchError::Setup(StepError::InvalidSpec(_))
                | LaunchError::Setup(StepError::Executable { .. })
        )
    }
}

impl From<StepError> for LaunchError {
    fn from(e: StepError) -> LaunchError {
        match e {
            StepError::InvalidSpec(what) => LaunchError::InvalidSpec(what),
            other => LaunchError::Setup(other),
        }
    }
}

/// Why the caller's `place` callback could not put a new process where it belongs.
pub type PlaceError = Box<dyn std::error::Error + Send + Sync>;

/// Why a step inside the helper or the container's init failed. It crosses the sync socket as
/// it is (serialized), so the shim chooses the ttrpc code from the variant, never from the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StepError {
    /// The spec asks for something this launcher refuses up front (unsupported or malformed).
    #[error("invalid OCI spec: {0}")]
    InvalidSpec(String),
    /// The process's executable is missing or not runnable; runc's wording, e.g.
    /// `exec: "foo": executable file not found in $PATH`.
    #[error("exec: \"{name}\": {detail}")]
    Executable { name: String, detail: String },
    /// A named setup step failed, e.g. `mount proc on /proc: EPERM: Operation not permitted`.
    /// `step` names the step and its path; `errno` is the OS error when there was one.
    #[error("{step}: {detail}")]
    Setup { step: String, path: Option<PathBuf>, errno: Option<i32>, detail: String },
    /// A failure without an OS error (the launcher protocol, a hook's exit status); the text says
    /// what failed.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for StepError {
    fn from(text: String) -> StepError {
        StepError::Failed(text)
    }
}

impl From<&str> for StepError {
    fn from(text: &str) -> StepError {
        StepError::Failed(text.to_string())
    }
}

impl StepError {
    /// The OS error of a failed setup step, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            StepError::Setup { errno, .. } => *errno,
            _ => None,
        }
    }

    /// The same failure as part of a larger step: `outer` goes in front of the step's name.
    pub fn within(self, outer: impl std::fmt::Display) -> StepError {
        match self {
            StepError::Setup { step, path, errno, detail } => {
                StepError::Setup { step: format!("{outer}: {step}"), path, errno, detail }
            }
            StepError::Failed(text) => StepError::Failed(format!("{outer}: {text}")),
            other => other,
        }
    }

    /// The path a failed setup step worked on, when the step recorded it.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StepError::Setup { path, .. } => path.as_deref(),
            _ => None,
        }
    }
}

/// Errors inside the helper and the container's init.
pub(crate) type StepResult<T> = Result<T, StepError>;

/// What a failed call reports: its text and, for OS errors, the errno.
pub(crate) trait Cause: std::fmt::Display {
    fn errno(&self) -> Option<i32> {
        None
    }
}

impl Cause for nix::errno::Errno {
    fn errno(&self) -> Option<i32> {
        Some(*self as i32)
    }
}

impl Cause for std::io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl Cause for caps::errors::CapsError {}
impl Cause for String {}
impl Cause for serde_json::Error {}

/// Names the step (and its path) of a failed call, the way every helper-side error is reported.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> StepResult<T>;
    /// As [`Step::step`], recording the path the step worked on.
    fn step_at(self, path: &Path, what: impl FnOnce() -> String) -> StepResult<T>;
}

impl<T, E: Cause> Step<T> for Result<T, E> {
    fn step(self, what: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| StepError::Setup { step: what(), path: None, errno: e.errno(), detail: e.to_string() })
    }

    fn step_at(self, path: &Path, what: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| StepError::Setup {
            step: what(),
            path: Some(path.to_path_buf()),
            errno: e.errno(),
            detail: e.to_string(),
        })
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
