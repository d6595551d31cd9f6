//! Prerequisite checks. Outside CI a test whose prerequisites are missing prints why and returns
//! (a developer without root or FUSE still gets a green `cargo test` for what can run). With
//! `CI=true` a missing prerequisite is a failure: CI installs everything, so a skip there would
//! hide a broken environment or a broken test.

use std::path::Path;

/// containerd with `ctr` and images pushed to a loopback registry: what every test that drives
/// containerd needs (add [`Prereq::Fuse`] for lazy images, more tools as the test uses them).
pub const CONTAINERD_PREREQS: &[Prereq] = &[
    Prereq::Root,
    Prereq::Tool("containerd"),
    Prereq::Tool("ctr"),
    Prereq::Tool("docker-registry"),
    Prereq::Tool("skopeo"),
];

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prereq {
    /// Effective uid 0 (mounts, mknod, chown, security.* xattrs).
    Root,
    /// `/dev/fuse` exists and the kernel knows the `fuse` filesystem.
    Fuse,
    /// An executable of this name on `PATH`.
    Tool(&'static str),
    /// A filesystem type the kernel knows (listed in /proc/filesystems), e.g. `overlay`.
    Filesystem(&'static str),
}

impl Prereq {
    /// `None` when present; otherwise why not, phrased so the reader knows what to install or do.
    pub fn missing(self) -> Option<String> {
        match self {
            Prereq::Root => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                (euid != 0).then(|| format!("needs root (running as uid {euid}); run the tests as root"))
            }
            Prereq::Fuse => {
                let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
                if !Path::new("/dev/fuse").exists() {
                    Some("needs /dev/fuse (load the fuse module: modprobe fuse)".into())
                } else if !fs.lines().any(|l| l.split_whitespace().last() == Some("fuse")) {
                    Some("needs the kernel's fuse filesystem (not in /proc/filesystems; modprobe fuse)".into())
                } else {
                    None
                }
            }
            Prereq::Filesystem(fs) => {
                let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
                let listed = known.lines().any(|l| l.split_whitespace().last() == Some(fs));
                (!listed)
                    .then(|| format!("needs the kernel's {fs} filesystem (not in /proc/filesystems; modprobe {fs})"))
            }
            Prereq::Tool(name) => which(name)
                .is_none()
                .then(|| format!("needs `{name}` on PATH (apt-get install it; .ci/run has the package list)")),
        }
    }
}

/// Whether `CI=true` is set: then nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Returns true when every prerequisite is present. Otherwise prints `SKIP <test>: <reasons>` and
/// returns false, or panics with the same text when `CI=true`.
///
/// ```ignore
/// if !harness::prerequisites_met("vfs_fidelity", &[Prereq::Root, Prereq::Fuse]) { return; }
/// ```
pub fn prerequisites_met(test: &str, prereqs: &[Prereq]) -> bool {
    let reasons: Vec<String> = prereqs.iter().filter_map(|p| p.missing()).collect();
    if reasons.is_empty() {
        return true;
    }
    let text = format!("{test}: {}", reasons.join("; "));
    if in_ci() {
        panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
    }
    eprintln!("SKIP {text}");
    false
}

/// The first executable file called `name` on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
