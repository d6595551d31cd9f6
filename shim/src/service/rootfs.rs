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
use crate::mount_options::{parse_options, ParsedOptions};

/// Mounts of one container, unmounted in reverse order.
#[derive(Debug, Default)]
pub struct Rootfs {
    mounted: Vec<PathBuf>,
    /// The in-process lazy filesystem, when the image is lazy.
    pub lazy: Option<super::lazy::LazyMount>,
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let ParsedOptions { flags, propagation, data } = parse_options(&m.options);
    let fstype = if m.type_ == "bind" { None } else { Some(m.type_.as_str()) };
    let what = format!("mounting {} {:?} at {} (options {:?})", m.type_, m.source, target.display(), m.options);
    // A read-only bind needs a second, remounting call: MS_RDONLY is ignored on the first.
    let first = if flags.contains(MsFlags::MS_BIND) { flags - MsFlags::MS_RDONLY } else { flags };
    mount(Some(m.source.as_str()), target, fstype, first, Some(data.as_str()).filter(|d| !d.is_empty()))
        .map_err(|e| Error::Rootfs(format!("{what}: {e}")))?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(None::<&str>, target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(|e| Error::Rootfs(format!("{what}: remount read-only: {e}")))?;
    }
    // As containerd's mount: propagation options are their own calls after the mount.
    for p in propagation {
        mount(None::<&str>, target, None::<&str>, p, None::<&str>)
            .map_err(|e| Error::Rootfs(format!("{what}: set propagation {p:?}: {e}")))?;
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
            let mountpoint = lazy.mountpoint().to_path_buf();
            lazy.unmount();
            // Whatever is still stacked there (a mount the session no longer owns).
            if let Err(e) = unmount_all(&mountpoint) {
                log::warn!("{e}");
            }
        }
    }
}
