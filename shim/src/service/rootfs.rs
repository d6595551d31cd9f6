//! The container's root filesystem: mounts what containerd hands over in CreateTaskRequest.rootfs
//! (overlay or bind of a snapshot) at `<bundle>/rootfs`, and unmounts it on Delete.
//!
//! Lazy images: when the snapshot holds a lazy index (`.lazy/index`), the lazy filesystem is
//! mounted in-process at `<bundle>/lazy` and the overlay at `<bundle>/rootfs` uses it as its lower
//! layer (see [`super::lazy`]). This module never touches anything outside the bundle.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::error::{Error, Result};

/// Mounts of one container, unmounted in reverse order.
#[derive(Debug, Default)]
pub struct Rootfs {
    mounted: Vec<PathBuf>,
    /// The in-process lazy filesystem, when the image is lazy.
    pub lazy: Option<super::lazy::LazyMount>,
}

/// Splits mount(8)-style options into flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "defaults" | "async" | "atime" => (MsFlags::empty(), MsFlags::empty()),
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data)
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fstype = if m.type_ == "bind" { None } else { Some(m.type_.as_str()) };
    let data = data.join(",");
    let what = format!("mounting {} {:?} at {} (options {:?})", m.type_, m.source, target.display(), m.options);
    // A read-only bind needs a second, remounting call: MS_RDONLY is ignored on the first.
    let first = if flags.contains(MsFlags::MS_BIND) { flags - MsFlags::MS_RDONLY } else { flags };
    mount(Some(m.source.as_str()), target, fstype, first, Some(data.as_str()).filter(|d| !d.is_empty()))
        .map_err(|e| Error::Rootfs(format!("{what}: {e}")))?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(None::<&str>, target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(|e| Error::Rootfs(format!("{what}: remount read-only: {e}")))?;
    }
    Ok(())
}

/// Unmounts everything stacked at `path` (lazily: a process that still holds a file there must not
/// make Delete fail). Missing or unmounted paths are fine.
pub fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::Rootfs(format!("unmounting {}: {e}", path.display()))),
        }
    }
    Ok(())
}

impl Rootfs {
    /// Mounts `mounts` at `<bundle>/rootfs`. Empty `mounts` means containerd already prepared the
    /// rootfs in the bundle (nothing to do, nothing to undo).
    pub fn mount(bundle: &Path, mounts: &[Mount], config: &super::config::Config, id: &str) -> Result<Rootfs> {
        let mut rootfs = Rootfs::default();
        if mounts.is_empty() {
            return Ok(rootfs);
        }
        let target = bundle.join("rootfs");
        std::fs::create_dir_all(&target).map_err(Error::io(format!("creating {}", target.display())))?;
        let result = (|| {
            if let Some(lazy_mounts) = super::lazy::detect(mounts)? {
                let lazy = super::lazy::LazyMount::mount(bundle, &lazy_mounts, config, id)?;
                let overlay = lazy.overlay_mount();
                rootfs.lazy = Some(lazy);
                mount_one(&overlay, &target)?;
                rootfs.mounted.push(target.clone());
                return Ok(());
            }
            for m in mounts {
                mount_one(m, &target)?;
                rootfs.mounted.push(target.clone());
            }
            Ok(())
        })();
        if let Err(e) = result {
            rootfs.unmount();
            return Err(e);
        }
        Ok(rootfs)
    }

    /// Unmounts the rootfs and then the lazy filesystem. Errors are logged: Delete must go on.
    pub fn unmount(&mut self) {
        while let Some(p) = self.mounted.pop() {
            if let Err(e) = unmount_all(&p) {
                log::warn!("{e}");
            }
        }
        if let Some(lazy) = self.lazy.take() {
            lazy.unmount();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split() {
        let (f, d) = parse_options(&["ro".into(), "rbind".into(), "lowerdir=/a:/b".into(), "index=off".into()]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(d, vec!["lowerdir=/a:/b", "index=off"]);
        let (f, _) = parse_options(&["ro".into(), "rw".into()]);
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }
}
