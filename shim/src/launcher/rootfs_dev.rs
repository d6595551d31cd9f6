//! /dev inside the container when it is not bind-mounted from the host (runc's setupDev): the
//! default devices (null zero full random urandom tty, 0666 root:root) plus `linux.devices`,
//! /dev/ptmx -> pts/ptmx, and the /dev/{fd,stdin,stdout,stderr,core} symlinks. Device nodes are
//! made with mknod; where that is not permitted the host node is bind-mounted instead.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::error::{Step, StepError, StepResult};
use super::paths::{mkdir_all, secure_join};

struct Dev {
    path: String,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn defaults() -> Vec<Dev> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| Dev {
        path: path.into(),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

pub fn create_devices(spec: &Spec, rootfs: &Path) -> StepResult<()> {
    let mut devs = defaults();
    for d in spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(StepError::InvalidSpec(format!(
                    "linux.devices {}: type \"a\" is only valid in cgroup device rules",
                    d.path().display()
                )))
            }
        };
        let path = d.path().to_string_lossy().into_owned();
        devs.retain(|x| x.path != path);
        devs.push(Dev {
            path,
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    for d in &devs {
        let dest = secure_join(rootfs, Path::new(&d.path))?;
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        match mknod(&dest, d.kind, Mode::from_bits_truncate(d.mode), makedev(d.major, d.minor)) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(nix::errno::Errno::EPERM) => {
                // No CAP_MKNOD (or a user namespace): bind the host's node, as runc does.
                std::fs::File::create(&dest).step(|| format!("create {}", dest.display()))?;
                nix::mount::mount(Some(Path::new(&d.path)), &dest, Some("bind"), MsFlags::MS_BIND, None::<&str>)
                    .step(|| format!("bind mount device {} from the host", d.path))?;
                continue;
            }
            Err(e) => return Err(format!("mknod {} ({}:{}): {e}", d.path, d.major, d.minor).into()),
        }
        // mknod applies the umask; set the exact mode the spec asks for.
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(d.mode))
            .step(|| format!("chmod {}", dest.display()))?;
        nix::unistd::chown(&dest, Some(d.uid.into()), Some(d.gid.into()))
            .step(|| format!("chown {} to {}:{}", d.path, d.uid, d.gid))?;
    }
    Ok(())
}

pub fn setup_ptmx(rootfs: &Path) -> StepResult<()> {
    let ptmx = rootfs.join("dev/ptmx");
    match std::fs::remove_file(&ptmx) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", ptmx.display()).into()),
    }
    std::os::unix::fs::symlink("pts/ptmx", &ptmx).step(|| format!("symlink {} -> pts/ptmx", ptmx.display()))
}

pub fn dev_symlinks(rootfs: &Path) -> StepResult<()> {
    let mut links = vec![
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "dev/core"));
    }
    for (target, link) in links {
        let dst = rootfs.join(link);
        match std::os::unix::fs::symlink(target, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("symlink {} -> {target}: {e}", dst.display()).into()),
        }
    }
    Ok(())
}
