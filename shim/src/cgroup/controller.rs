//! The tiny trait every controller implements: turn `linux.resources` into file writes, and say which of them
//! are hard limits (must be enforced or refused) and which are priorities (applied where possible).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::CgroupError;

/// How much a write matters when its controller is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Enforcement {
    /// A hard limit: refuse (or warn under `allow_unenforced_limits`) when the controller is not available.
    /// The text says what was asked, e.g. "memory limit".
    Limit(String),
    /// A relative weight: write it where the controller exists, skip with a debug log where not.
    Priority,
    /// Write only if the file exists (io.bfq.weight, memory.swap.max = max, cpu.max.burst).
    IfPresent,
    /// A `unified` map entry: like a limit, and a missing file is the user's typo, not the host's fault.
    Unified,
}

/// One planned write of `value` to the cgroup file `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    pub file: String,
    pub value: String,
    pub enforcement: Enforcement,
}

impl Setting {
    pub fn limit(file: impl Into<String>, value: impl Into<String>, what: impl Into<String>) -> Setting {
        Setting { file: file.into(), value: value.into(), enforcement: Enforcement::Limit(what.into()) }
    }

    pub fn priority(file: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting { file: file.into(), value: value.into(), enforcement: Enforcement::Priority }
    }

    pub fn if_present(file: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting { file: file.into(), value: value.into(), enforcement: Enforcement::IfPresent }
    }

    /// The controller owning the file ("memory" for memory.max).
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or("")
    }
}

/// One cgroup v2 controller (youki libcgroups v2 style).
pub(crate) trait Controller {
    /// Plans the writes for `res`. `dir` is the container's cgroup directory, for probing optional files.
    fn plan(res: &LinuxResources, dir: &Path) -> Result<Vec<Setting>, CgroupError>;
}
