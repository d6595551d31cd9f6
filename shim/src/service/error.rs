//! The shim service's error type and its ONE mapping to ttrpc status codes.
//!
//! containerd shows these messages to users verbatim (`ctr: ...`), so every variant names the thing
//! that failed and, where there is one, what to do about it.

use containerd_shim::protos::ttrpc::{self, Code};

use crate::cgroup::CgroupError;
use crate::launcher::LaunchError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found in this shim")]
    NotFound(String),
    #[error("process {exec_id} of container {id} not found")]
    ProcessNotFound { id: String, exec_id: String },
    #[error("{0} already exists in this shim: pick another id or delete the old one first")]
    AlreadyExists(String),
    #[error("container {0} is still being created in this shim: retry once its Create has returned")]
    BeingCreated(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported by containerd-shim-lazy-v2")]
    Unimplemented(String),
    #[error("config {path}: {reason}: fix or remove it")]
    Config { path: String, reason: String },
    #[error("launching the container failed: {0}")]
    Launch(#[from] LaunchError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        let code = match &e {
            Error::NotFound(_) | Error::ProcessNotFound { .. } => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) | Error::Config { .. } => Code::INVALID_ARGUMENT,
            Error::Launch(l) if l.is_user_error() => Code::INVALID_ARGUMENT,
            Error::Cgroup(c) if c.is_invalid_argument() => Code::INVALID_ARGUMENT,
            Error::Cgroup(c) if c.is_failed_precondition() => Code::FAILED_PRECONDITION,
            Error::FailedPrecondition(_) | Error::BeingCreated(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Launch(_) | Error::Cgroup(_) | Error::Rootfs(_) | Error::Io { .. } | Error::Other(_) => {
                Code::UNKNOWN
            }
        };
        log::debug!("request failed ({code:?}): {e}");
        ttrpc::error::get_rpc_status(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::StepError;

    fn code(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn launch_errors_get_their_code_from_the_variant_not_the_text() {
        let missing = StepError::Executable { name: "foo".into(), detail: "executable file not found in $PATH".into() };
        assert_eq!(code(Error::Launch(missing.into())), Code::INVALID_ARGUMENT);
        assert_eq!(code(Error::Launch(StepError::InvalidSpec("x".into()).into())), Code::INVALID_ARGUMENT);
        // A setup step whose text happens to look like a user error is still a setup failure.
        let step = StepError::Setup {
            step: "exec: join the container's mnt namespace".into(),
            path: None,
            errno: Some(libc::EPERM),
            detail: "EPERM".into(),
        };
        assert_eq!(code(Error::Launch(step.into())), Code::UNKNOWN);
        assert_eq!(code(Error::Launch(StepError::Failed("invalid spec: x".into()).into())), Code::UNKNOWN);
    }
}
