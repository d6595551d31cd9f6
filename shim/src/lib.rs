//! `containerd-shim-lazy-v2`: a containerd runtime shim (task API v2) that launches containers itself
//! and serves lazy images from an in-process filesystem.
//!
//! - [`service`]: the shim process: start/delete actions, the task service, stdio, events, config,
//!   rootfs assembly (including the lazy filesystem mount).
//! - [`launcher`]: the single-threaded helper the shim execs (`containerd-shim-lazy-v2 init`) to set
//!   up a container from its OCI spec, and the shim-side client that drives it.
//! - [`cgroup`]: cgroup v2: one file per controller behind a small trait, and a manager.
//! - [`mount_options`]: the one parser of mount(8)-style option lists (rootfs and spec mounts).
//! - [`criproxy`]: `containerd-shim-lazy-v2 cri-proxy`, the CRI image-service proxy that hands
//!   imagePullSecrets to lazy mounts.

pub mod cgroup;
pub mod criproxy;
pub mod launcher;
pub mod mount_options;
pub mod service;
