//! cgroup v2 for containers: create the container's cgroup from `linux.cgroupsPath`, apply every field of
//! `linux.resources` (one file per controller behind [`controller::Controller`], composed by [`manager::Manager`]),
//! update in place, report io.containerd.cgroups.v2.Metrics, pause/resume, kill-all and delete.
//!
//! This module owns files under the cgroup2 mount and the BPF device programs attached to the container's
//! cgroup. It never changes the host's cgroup mounts, and it never writes a limit it cannot enforce without
//! saying so: a requested hard limit the host cannot enforce fails [`Cgroup::create`] (naming the controller and
//! the fix) unless [`CgroupPolicy::allow_unenforced_limits`] is set, and then it logs a warning per container.
//! Everything below takes the cgroupfs root as a parameter so unit tests run against a temp dir.

mod controller;
mod cpu;
mod cpuset;
pub mod devices;
mod error;
mod freezer;
mod fs;
mod hugetlb;
mod io;
pub mod manager;
mod memory;
mod mount;
mod pids;
mod stats;
mod unified;

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{Linux, LinuxResources};

pub use error::CgroupError;
pub use manager::Manager;
pub use mount::{find_cgroup2_mount, CgroupMount};
pub use stats::METRICS_TYPE_URL;

/// How strict the shim is about limits the host cannot enforce (from the shim config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    /// Run containers whose hard limits (memory, cpu quota, cpuset, pids, io.max, hugetlb, devices) cannot be
    /// enforced on this host, with a warning per container, instead of failing Create.
    pub allow_unenforced_limits: bool,
}

/// A container's cgroup in the host's cgroup2 hierarchy.
#[derive(Debug)]
pub struct Cgroup {
    manager: Manager,
}

impl Cgroup {
    /// Resolves `linux.cgroupsPath` (cgroupfs path; `/<namespace>/<id>` when empty; systemd `slice:prefix:name`
    /// is rejected), creates the cgroup under the host's cgroup2 mount, enables controllers in the parents and
    /// applies `linux.resources`. Removes the cgroup again when applying fails.
    pub fn create(
        linux: Option<&Linux>,
        namespace: &str,
        id: &str,
        policy: &CgroupPolicy,
    ) -> Result<Cgroup, CgroupError> {
        let mount = find_cgroup2_mount()?;
        let rel = manager::resolve_cgroups_path(linux, namespace, id)?;
        let resources = linux.and_then(|l| l.resources().as_ref());
        let manager = Manager::create(mount, &rel, id, resources, policy)?;
        Ok(Cgroup { manager })
    }

    /// Finds the cgroup a previous shim created for this container (cleanup after a shim crash).
    pub fn open_existing(linux: Option<&Linux>, namespace: &str, id: &str) -> Result<Option<Cgroup>, CgroupError> {
        let mount = find_cgroup2_mount()?;
        let rel = manager::resolve_cgroups_path(linux, namespace, id)?;
        Ok(Manager::open(mount, &rel, id).map(|manager| Cgroup { manager }))
    }

    /// Wraps a manager built elsewhere (tests with a fake root).
    pub fn from_manager(manager: Manager) -> Cgroup {
        Cgroup { manager }
    }

    /// Moves `pid` into the cgroup (the launcher's `place` callback, before the process sets anything up).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager.add_pid(pid)
    }

    /// Applies new resources in place (task Update; Kubernetes in-place resize), with the create-time policy.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.manager.apply(resources)
    }

    /// io.containerd.cgroups.v2.Metrics packed in an Any, as containerd's Stats expects.
    pub fn stats(&self) -> Result<Any, CgroupError> {
        stats::metrics_any(self.manager.path())
    }

    /// Freezes every process (cgroup.freeze) and waits until cgroup.events reports `frozen 1`.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        freezer::freeze(self.manager.path())
    }

    /// Thaws the cgroup and waits until cgroup.events reports `frozen 0`.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        freezer::thaw(self.manager.path())
    }

    /// Sends `signal` to every process; SIGKILL uses cgroup.kill where the kernel has it and waits until empty.
    pub fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        freezer::kill_all(self.manager.path(), signal)
    }

    /// Processes in the cgroup (cgroup.procs).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        freezer::pids(self.manager.path())
    }

    /// The memory.events `oom_kill` counter (0 without the memory controller).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        stats::oom_kills(self.manager.path())
    }

    /// memory.events, for an inotify/poll watcher that publishes TaskOOM when `oom_kill` grows.
    pub fn events_path(&self) -> PathBuf {
        self.manager.path().join("memory.events")
    }

    /// Removes the cgroup (and any child cgroups the container made), retrying while it drains. Takes
    /// `&self`: other holders of the cgroup (an exit monitor, a Stats call in flight) must not keep it alive.
    pub fn delete(&self) -> Result<(), CgroupError> {
        self.manager.delete()
    }

    /// Absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        self.manager.path()
    }
}
