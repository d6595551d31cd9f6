//! Finding the host's cgroup2 mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.

use std::path::{Path, PathBuf};

use super::{fs, CgroupError};

/// Where cgroup2 is mounted and whether the host is hybrid (v1 controllers own memory, cpu, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: PathBuf,
    pub hybrid: bool,
}

impl CgroupMount {
    /// A cgroup2 root at an arbitrary path (tests use a temp dir shaped like cgroupfs).
    pub fn at(root: impl Into<PathBuf>) -> CgroupMount {
        CgroupMount { root: root.into(), hybrid: false }
    }

    pub(crate) fn hybrid_note(&self) -> &'static str {
        if self.hybrid {
            " (hybrid cgroup host)"
        } else {
            ""
        }
    }
}

/// Reads /proc/self/mountinfo and returns the cgroup2 mount the shim should use.
pub fn find_cgroup2_mount() -> Result<CgroupMount, CgroupError> {
    let text = fs::read(Path::new("/proc/self/mountinfo"))?;
    parse_mountinfo(&text).ok_or(CgroupError::NotMounted)
}

fn parse_mountinfo(text: &str) -> Option<CgroupMount> {
    let found: Vec<PathBuf> =
        vfs::mountinfo::parse(text).into_iter().filter(|m| m.fstype == "cgroup2").map(|m| m.mount_point).collect();
    let pick = |p: &str| found.iter().find(|m| m.as_path() == Path::new(p)).cloned();
    if let Some(root) = pick("/sys/fs/cgroup") {
        return Some(CgroupMount { root, hybrid: false });
    }
    if let Some(root) = pick("/sys/fs/cgroup/unified") {
        return Some(CgroupMount { root, hybrid: true });
    }
    found.into_iter().next().map(|root| CgroupMount { root, hybrid: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_unified_root_and_detects_hybrid() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let m = parse_mountinfo(hybrid).unwrap();
        assert_eq!(m.root, Path::new("/sys/fs/cgroup/unified"));
        assert!(m.hybrid);
        let unified = "30 25 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = parse_mountinfo(unified).unwrap();
        assert_eq!(m.root, Path::new("/sys/fs/cgroup"));
        assert!(!m.hybrid);
        assert!(parse_mountinfo("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").is_none());
        let escaped = "30 25 0:26 / /run/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(escaped).unwrap().root, Path::new("/run/my cg"));
    }
}
