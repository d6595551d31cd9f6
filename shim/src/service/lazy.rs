//! Lazy images inside the shim: detects a lazy stub snapshot (one holding `.lazy/index`), mounts the
//! lazy filesystem in-process at `<bundle>/lazy` and describes the overlay that puts the snapshot's
//! upper dir (writes) over it. A user reads the mount's counters with
//! `lazyctl stats <bundle>/lazy`.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;

use super::config::Config;
use super::error::{Error, Result};

/// Where the lazy index is looked for in a snapshot.
pub const INDEX_PATH: &str = vfs::index::INDEX_PATH;

/// The parts of containerd's rootfs mounts a lazy image needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LazySnapshot {
    /// Directory of the unpacked stub (holds `.lazy/index`).
    pub stub_dir: PathBuf,
    /// The snapshot's writable dirs, when containerd gave an overlay with an upper dir.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// Returns the lazy snapshot when the rootfs mounts are a lazy stub, None for ordinary images.
pub fn detect(mounts: &[Mount]) -> Result<Option<LazySnapshot>> {
    let [m] = mounts else { return Ok(None) };
    let mut lowers = Vec::new();
    let mut upper = None;
    let mut work = None;
    match m.type_.as_str() {
        "overlay" => {
            for o in &m.options {
                if let Some(v) = o.strip_prefix("lowerdir=") {
                    lowers.extend(v.split(':').map(PathBuf::from));
                } else if let Some(v) = o.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(v));
                } else if let Some(v) = o.strip_prefix("workdir=") {
                    work = Some(PathBuf::from(v));
                }
            }
        }
        "bind" | "rbind" => lowers.push(PathBuf::from(&m.source)),
        _ => return Ok(None),
    }
    let Some(stub_dir) = lowers.into_iter().find(|d| d.join(INDEX_PATH).is_file()) else { return Ok(None) };
    let upper = match (upper, work) {
        (Some(u), Some(w)) => Some((u, w)),
        _ => None,
    };
    Ok(Some(LazySnapshot { stub_dir, upper }))
}

/// A mounted lazy filesystem.
#[derive(Debug)]
pub struct LazyMount {
    mountpoint: PathBuf,
    snapshot: LazySnapshot,
    scratch: Option<PathBuf>,
}

impl LazyMount {
    pub fn mount(bundle: &Path, snapshot: &LazySnapshot, _config: &Config, _id: &str) -> Result<LazyMount> {
        let _mountpoint = bundle.join("lazy");
        Err(Error::Rootfs(format!(
            "{} holds a lazy image index, but this build of containerd-shim-lazy-v2 cannot mount lazy images yet; \
             run the original (non-lazy) image instead",
            snapshot.stub_dir.join(INDEX_PATH).display()
        )))
    }

    /// The overlay for `<bundle>/rootfs`: the lazy filesystem below, the snapshot's upper dir on top.
    pub fn overlay_mount(&self) -> Mount {
        let (upper, work) = match (&self.snapshot.upper, &self.scratch) {
            (Some((u, w)), _) => (u.clone(), w.clone()),
            (None, Some(s)) => (s.join("upper"), s.join("work")),
            (None, None) => (self.mountpoint.clone(), self.mountpoint.clone()),
        };
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", self.mountpoint.display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
            ..Default::default()
        }
    }

    pub fn unmount(self) {
        if let Err(e) = super::rootfs::unmount_all(&self.mountpoint) {
            log::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_index_in_a_lower_dir() {
        let d = tempfile::tempdir().unwrap();
        let stub = d.path().join("l2");
        std::fs::create_dir_all(stub.join(".lazy")).unwrap();
        std::fs::write(stub.join(INDEX_PATH), b"x").unwrap();
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}:{}", d.path().join("l1").display(), stub.display()),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        let s = detect(&[m.clone()]).unwrap().unwrap();
        assert_eq!(s.stub_dir, stub);
        assert_eq!(s.upper, Some((PathBuf::from("/u"), PathBuf::from("/w"))));
        std::fs::remove_file(stub.join(INDEX_PATH)).unwrap();
        assert_eq!(detect(&[m]).unwrap(), None);
    }
}
