//! The cgroup module's error type: every variant names the file, field or controller and says what to do.

use std::path::PathBuf;

/// Errors from the cgroup module. containerd shows these messages to users.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup2 mount found at /sys/fs/cgroup or /sys/fs/cgroup/unified (checked /proc/self/mountinfo): \
         mount cgroup2 (`mount -t cgroup2 none /sys/fs/cgroup`) or boot with systemd.unified_cgroup_hierarchy=1"
    )]
    NotMounted,
    /// `linux.cgroupsPath` cannot be used.
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// A resource value is out of range or inconsistent.
    #[error("linux.resources.{field}: {reason}")]
    InvalidResource { field: String, reason: String },
    /// A hard limit was requested that this host cannot enforce.
    #[error(
        "{what} requested but the {controller} is not available in cgroup v2 at {mount}{hybrid}: \
         {fix} or set allow_unenforced_limits = true in the shim config"
    )]
    Unenforceable {
        what: String,
        /// "memory controller", or "memory controller's memory.swap.max" for a missing knob.
        controller: String,
        mount: PathBuf,
        /// " (hybrid cgroup host)" or empty.
        hybrid: &'static str,
        fix: String,
    },
    /// Reading or writing a cgroup file failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Loading or attaching the device-rules BPF program failed.
    #[error("device rules for cgroup {path}: {op} failed: {source}{hint}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    /// The kernel did not reach the expected state in time.
    #[error("cgroup {path}: timed out after {secs} s waiting for {what}")]
    Timeout { path: PathBuf, what: &'static str, secs: u64 },
}

impl CgroupError {
    /// True when the request itself is wrong (maps to InvalidArgument), not the host.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, CgroupError::InvalidPath { .. } | CgroupError::InvalidResource { .. })
    }

    /// True when the host cannot do what was asked (maps to FailedPrecondition).
    pub fn is_failed_precondition(&self) -> bool {
        matches!(self, CgroupError::Unenforceable { .. } | CgroupError::NotMounted)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CgroupError::Io { op, path: path.into(), source }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CgroupError::InvalidResource { field: field.into(), reason: reason.into() }
    }
}
