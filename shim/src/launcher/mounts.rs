//! The container's mount namespace, following runc 1.1 (libcontainer/rootfs_linux.go): root
//! propagation, the rootfs bound onto itself, every `mounts` entry (proc, sysfs, tmpfs, devpts,
//! mqueue, cgroup, bind mounts with their options and propagation), pivot_root, then the readonly
//! rootfs, readonly paths and masked paths. Destinations are resolved inside the rootfs without
//! following symlinks out of it. Runs only in the container's init, never in the shim.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{Mount, Spec};

use super::error::{Step, StepError, StepResult};
use super::paths::{mkdir_all, secure_join};
use crate::mount_options::{parse_options, propagation, ParsedOptions};

fn do_mount(src: Option<&str>, dest: &Path, fstype: Option<&str>, flags: MsFlags, data: &str) -> StepResult<()> {
    let data = (!data.is_empty()).then_some(data);
    mount(src, dest, fstype, flags, data).step_at(dest, || {
        format!(
            "mount {} on {} (type {}, flags {:?}{})",
            src.unwrap_or("none"),
            dest.display(),
            fstype.unwrap_or("none"),
            flags,
            data.map(|d| format!(", data {d}")).unwrap_or_default()
        )
    })
}

/// One v1 hierarchy of the host for the cgroup mount on a v1/hybrid host: the host directory of
/// the container's own cgroup in it, and the name under /sys/fs/cgroup.
#[derive(Debug, Clone)]
pub struct CgroupV1Bind {
    pub source: PathBuf,
    pub name: String,
}

/// True when /sys/fs/cgroup is a pure cgroup2 mount.
fn host_is_cgroup2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Reads the host's v1 hierarchies and the calling process's place in each. Called before a new
/// cgroup namespace hides the paths.
pub fn collect_cgroup_v1() -> Vec<CgroupV1Bind> {
    if host_is_cgroup2() {
        return Vec::new();
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for m in vfs::mountinfo::read().unwrap_or_default() {
        if m.fstype != "cgroup" {
            continue;
        }
        let supers = &m.super_options;
        // /proc/self/cgroup: "N:cpu,cpuacct:/path" or "N:name=systemd:/path".
        let path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let ctrls: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
            (!ctrls.is_empty() && ctrls.iter().all(|c| supers.iter().any(|s| s == c))).then(|| path.to_string())
        });
        let Some(path) = path else { continue };
        let rel = Path::new(&path).strip_prefix(&m.root).map(Path::to_path_buf).unwrap_or_default();
        let name = m.mount_point.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push(CgroupV1Bind { source: m.mount_point.join(rel), name });
    }
    out
}

/// What [`prepare_rootfs`] leaves for after pivot_root.
#[derive(Debug, Default)]
pub struct RootfsState {
    /// /dev was asked read-only (with these flags): mounted rw for the device nodes, remounted
    /// read-only at the end.
    pub dev_readonly: Option<MsFlags>,
}

/// Everything before pivot_root: root propagation, the rootfs bind, the spec's mounts and /dev.
pub fn prepare_rootfs(spec: &Spec, rootfs: &Path, cgroups: &[CgroupV1Bind]) -> StepResult<RootfsState> {
    let linux = spec.linux().as_ref();
    let root_prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => propagation(p).ok_or_else(|| {
            StepError::InvalidSpec(format!("linux.rootfsPropagation {p:?}: use private, rprivate, shared, rshared, slave, rslave, unbindable or runbindable"))
        })?,
    };
    do_mount(None, Path::new("/"), None, root_prop, "")?;
    make_parent_private(rootfs)?;
    let rootfs_str = rootfs.to_string_lossy().into_owned();
    do_mount(Some(&rootfs_str), rootfs, Some("bind"), MsFlags::MS_BIND | MsFlags::MS_REC, "")?;

    let mut state = RootfsState::default();
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        if clean(m.destination()) == Path::new("/dev") {
            let flags = parse_options(m.options().as_deref().unwrap_or_default()).flags;
            state.dev_readonly = flags.contains(MsFlags::MS_RDONLY).then_some(flags);
        }
        mount_one(m, rootfs, cgroups)?;
    }
    let dev_is_bind = mounts.iter().any(|m| {
        clean(m.destination()) == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || parse_options(m.options().as_deref().unwrap_or_default()).flags.contains(MsFlags::MS_BIND))
    });
    if !dev_is_bind {
        super::rootfs_dev::create_devices(spec, rootfs)?;
        super::rootfs_dev::setup_ptmx(rootfs)?;
        super::rootfs_dev::dev_symlinks(rootfs)?;
    }
    Ok(state)
}

fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// pivot_root fails when the rootfs's parent mount is shared: make it private (runc does the same).
fn make_parent_private(rootfs: &Path) -> StepResult<()> {
    let info = Path::new(vfs::mountinfo::SELF_MOUNTINFO);
    let table = vfs::mountinfo::read().step_at(info, || format!("read {}", info.display()))?;
    let mut best: Option<(PathBuf, bool)> = None;
    for m in table {
        let len = m.mount_point.as_os_str().len();
        if rootfs.starts_with(&m.mount_point) && best.as_ref().is_none_or(|(b, _)| len >= b.as_os_str().len()) {
            let shared = m.is_shared();
            best = Some((m.mount_point, shared));
        }
    }
    if let Some((mp, true)) = best {
        do_mount(None, &mp, None, MsFlags::MS_PRIVATE, "")?;
    }
    Ok(())
}

fn mount_one(m: &Mount, rootfs: &Path, cgroups: &[CgroupV1Bind]) -> StepResult<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().clone().unwrap_or_default();
    let dest = secure_join(rootfs, m.destination())?;
    let source = m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| typ.clone());
    let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    if is_bind {
        return bind_mount(m, &source, &dest, &opts);
    }
    match typ.as_str() {
        "cgroup" | "cgroup2" => return mount_cgroup(m, rootfs, &dest, &opts, cgroups),
        "proc" | "sysfs" => {
            if let Ok(md) = std::fs::symlink_metadata(&dest) {
                if !md.is_dir() {
                    return Err(format!(
                        "mount {typ} on {}: the destination in the rootfs is not a directory",
                        m.destination().display()
                    )
                    .into());
                }
            }
            mkdir_all(&dest)?;
        }
        "tmpfs" => {
            let existing = std::fs::metadata(&dest).ok();
            if existing.is_none() {
                mkdir_all(&dest)?;
            }
            mount_propagate(m, &source, &dest, &typ, &opts)?;
            // runc keeps the mode the directory had in the image on the tmpfs root.
            if let Some(md) = existing {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(md.permissions().mode() & 0o7777))
                    .step(|| format!("chmod tmpfs {}", dest.display()))?;
            }
            return Ok(());
        }
        _ => mkdir_all(&dest)?,
    }
    mount_propagate(m, &source, &dest, &typ, &opts)
}

fn mount_propagate(m: &Mount, source: &str, dest: &Path, typ: &str, opts: &ParsedOptions) -> StepResult<()> {
    let mut flags = opts.flags;
    // /dev is mounted writable for the device nodes, and remounted read-only after pivot_root.
    if clean(m.destination()) == Path::new("/dev") {
        flags &= !MsFlags::MS_RDONLY;
    }
    do_mount(Some(source), dest, Some(typ), flags, &opts.data)?;
    for p in &opts.propagation {
        do_mount(None, dest, None, *p, "")?;
    }
    Ok(())
}

fn bind_mount(m: &Mount, source: &str, dest: &Path, opts: &ParsedOptions) -> StepResult<()> {
    let md =
        std::fs::metadata(source).step(|| format!("bind mount {source} on {}: source", m.destination().display()))?;
    if md.is_dir() {
        mkdir_all(dest)?;
    } else if std::fs::symlink_metadata(dest).is_err() {
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dest)
            .step(|| format!("create bind mount target {}", dest.display()))?;
    }
    let bind = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC) | MsFlags::MS_BIND;
    do_mount(Some(source), dest, Some("bind"), bind, &opts.data)?;
    let rest = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !rest.is_empty() {
        do_mount(Some(source), dest, None, opts.flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT, "")?;
    }
    for p in &opts.propagation {
        do_mount(None, dest, None, *p, "")?;
    }
    Ok(())
}

/// A `cgroup` mount. Pure v2 host: cgroup2 (scoped by the cgroup namespace when the spec has one).
/// v1/hybrid host: as runc, a tmpfs with each v1 hierarchy of the container bound inside, and
/// symlinks for co-mounted controllers. Like runc on such a host, the cgroup2 "unified" mount is
/// not shown in the container.
fn mount_cgroup(
    m: &Mount,
    rootfs: &Path,
    dest: &Path,
    opts: &ParsedOptions,
    cgroups: &[CgroupV1Bind],
) -> StepResult<()> {
    mkdir_all(dest)?;
    if host_is_cgroup2() {
        return mount_propagate(m, "cgroup", dest, "cgroup2", opts);
    }
    let tmpfs_flags = MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    do_mount(Some("tmpfs"), dest, Some("tmpfs"), tmpfs_flags, "mode=755")?;
    let bind_flags = MsFlags::MS_BIND | MsFlags::MS_REC | (opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC));
    for cg in cgroups {
        let target = secure_join(rootfs, &m.destination().join(&cg.name))?;
        mkdir_all(&target)?;
        let src = cg.source.to_string_lossy().into_owned();
        do_mount(Some(&src), &target, Some("bind"), MsFlags::MS_BIND | MsFlags::MS_REC, "")?;
        if bind_flags.contains(MsFlags::MS_RDONLY)
            || !(bind_flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)).is_empty()
        {
            do_mount(Some(&src), &target, None, bind_flags | MsFlags::MS_REMOUNT, "")?;
        }
        if cg.name.contains(',') {
            for part in cg.name.split(',') {
                let link = dest.join(part.trim_start_matches("name="));
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(&cg.name, &link).step(|| format!("symlink {}", link.display()))?;
                }
            }
        }
    }
    // runc 1.1 leaves the tmpfs itself writable (only the hierarchies inside are read-only).
    for p in &opts.propagation {
        do_mount(None, dest, None, *p, "")?;
    }
    Ok(())
}

/// runc's pivotRoot: pivot_root(".", ".") with the old root stacked under the new one, then
/// detached.
pub fn pivot_root(rootfs: &Path) -> StepResult<()> {
    let open_dir = |p: &Path| -> StepResult<OwnedFd> {
        let fd = nix::fcntl::open(p, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .step(|| format!("pivot_root: open {}", p.display()))?;
        // SAFETY: open just returned this fd; we are its only owner.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let old = open_dir(Path::new("/"))?;
    let new = open_dir(rootfs)?;
    nix::unistd::fchdir(new.as_raw_fd()).step(|| format!("pivot_root: chdir {}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").step(|| format!("pivot_root into {}", rootfs.display()))?;
    nix::unistd::fchdir(old.as_raw_fd()).step(|| "pivot_root: chdir to the old root".to_string())?;
    do_mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, "")?;
    umount2(".", MntFlags::MNT_DETACH).step(|| "pivot_root: detach the old root".to_string())?;
    nix::unistd::chdir("/").step(|| "chdir /".to_string())
}

/// nosuid/nodev/noexec of the mount at `path` (they must be repeated on a bind remount, and runc
/// keeps them on read-only paths).
fn locked_flags(path: &Path) -> StepResult<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path).step(|| format!("statvfs {}", path.display()))?;
    let mut flags = MsFlags::empty();
    for (ff, mf) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if st.flags().contains(ff) {
            flags |= mf;
        }
    }
    Ok(flags)
}

/// runc's setReadonly for the rootfs: a plain read-only bind remount, repeated with the locked
/// flags when the kernel insists.
fn remount_rootfs_ro() -> StepResult<()> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if mount(None::<&str>, "/", None::<&str>, base, None::<&str>).is_ok() {
        return Ok(());
    }
    do_mount(None, Path::new("/"), None, base | locked_flags(Path::new("/"))?, "")
}

/// After pivot_root: /dev read-only if asked, the read-only rootfs.
pub fn finalize_rootfs(spec: &Spec, state: &RootfsState) -> StepResult<()> {
    if let Some(flags) = state.dev_readonly {
        // runc's remountReadonly: the /dev mount's own flags plus read-only.
        let flags = flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        do_mount(None, Path::new("/dev"), None, flags, "")?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        remount_rootfs_ro()?;
    }
    Ok(())
}

/// runc's readonlyPath: bind the path onto itself and remount it read-only; missing paths are
/// skipped.
pub fn readonly_path(path: &str) -> StepResult<()> {
    let p = Path::new(path);
    match mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("readonly path {path}: bind mount: {e}").into()),
    }
    let flags = locked_flags(p)? | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    do_mount(None, p, None, flags, "").map_err(|e| e.within(format!("readonly path {path}")))
}

/// runc's maskPath: the container's own /dev/null over a file, a read-only empty tmpfs over a
/// directory; missing paths are skipped.
pub fn mask_path(path: &str) -> StepResult<()> {
    let p = Path::new(path);
    match mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::ENOTDIR) => do_mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, "")
            .map_err(|e| e.within(format!("masked path {path}"))),
        Err(e) => Err(format!("masked path {path}: bind /dev/null: {e}").into()),
    }
}
