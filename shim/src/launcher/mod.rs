//! Launcher: turns an OCI runtime spec into a running container process.
//!
//! The shim is multi-threaded (tokio, FUSE), and forking such a process is the classic trap (a
//! lock held by another thread stays locked forever in the child). So the shim never forks to
//! set up a container: it re-executes itself as a fresh, single-threaded helper
//! (`containerd-shim-lazy-v2 init`, see [`helper_main`]) and talks to it over a SOCK_SEQPACKET
//! socketpair ([`sync`]). The helper forks the container's init (PID 1 of a new pid namespace),
//! which sets up namespaces, mounts, /dev, pivot_root, the process attributes and seccomp, and
//! then blocks on a start gate until [`Created::start`].
//!
//! Flow of `create` (shim side in client.rs, helper side in helper.rs):
//! 1. shim spawns the helper with the container's stdio as fds 0-2 and the sync socket as fd 3,
//!    and sends the spec;
//! 2. helper enters/creates the pid namespace and forks the init; it reports the pid; the shim
//!    calls `place(pid)` (cgroup) and acks; nothing has been set up by the init before this;
//! 3. init: namespaces, rootfs mounts, /dev; asks the helper to run prestart/createRuntime hooks
//!    (in the runtime namespaces); runs createContainer hooks; pivot_root; console; hostname,
//!    sysctls, readonly and masked paths; user, capabilities; checks the executable; "Ready";
//! 4. `Created::start` sends Start: init runs startContainer hooks, loads seccomp (when
//!    noNewPrivileges), execve()s. The shim sees EOF on the socket (close-on-exec) = success.
//!
//! This module must never fork the shim process itself nor wait for the helper: the shim is a
//! subreaper and its SIGCHLD loop reaps the helper (and later the container's init).

mod client;
mod console;
mod error;
mod helper;
mod helper_log;
mod hooks;
mod mounts;
mod namespaces;
mod paths;
mod process;
mod rootfs_dev;
mod seccomp;
pub mod sync;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use client::{create, exec, Created, Execd};
pub use error::{LaunchError, PlaceError, StepError};
pub use helper::helper_main;
pub use hooks::{run_hooks, ContainerState};

/// The container's stdio as handed over by the service (FIFOs or pipes). `None` means /dev/null.
/// Ignored when the process asks for a terminal: then a pty is made in the container.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// What the service passes to [`create`].
pub struct CreateRequest<'a> {
    pub id: &'a str,
    /// Holds config.json; the rootfs is ALREADY mounted at `spec.root.path` (relative to here).
    pub bundle: &'a Path,
    pub spec: &'a oci_spec::runtime::Spec,
    pub stdio: Stdio,
}

/// What the service passes to [`exec`].
pub struct ExecRequest<'a> {
    /// Pid (in the shim's pid namespace) of the container's init, whose namespaces are joined.
    pub container_pid: i32,
    /// The container's spec (for seccomp, masked paths and rlimits defaults).
    pub spec: &'a oci_spec::runtime::Spec,
    pub process: &'a oci_spec::runtime::Process,
    pub stdio: Stdio,
}

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Overrides the helper binary (default `/proc/self/exe`, i.e. the shim itself). Tests that call
/// the launcher from a test binary point this at the built `containerd-shim-lazy-v2`. Only the
/// first call takes effect.
pub fn set_helper_exe(path: PathBuf) {
    let _ = HELPER_EXE.set(path);
}

fn helper_exe() -> PathBuf {
    HELPER_EXE.get().cloned().unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}
