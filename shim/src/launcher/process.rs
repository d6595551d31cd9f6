//! The process attributes of `process`: rlimits, oom_score_adj, no_new_privileges, user (uid, gid,
//! additional gids, umask), the five capability sets, cwd, env, and the final execve with runc's
//! PATH lookup (done before the start gate so a missing executable fails `create`, as in runc).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{PosixRlimitType, Process};

use super::error::{Step, StepError, StepResult};

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn apply_rlimits(p: &Process) -> StepResult<()> {
    for r in p.rlimits().as_deref().unwrap_or_default() {
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: setrlimit reads the struct we pass; no memory is retained.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } != 0 {
            return Err(format!(
                "set rlimit {:?} to soft={} hard={}: {}",
                r.typ(),
                r.soft(),
                r.hard(),
                std::io::Error::last_os_error()
            )
            .into());
        }
    }
    Ok(())
}

/// As runc: written only when the spec sets it, and a failure (EPERM when lowering without
/// CAP_SYS_RESOURCE) fails the container.
pub fn apply_oom_score_adj(p: &Process) -> StepResult<()> {
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).step(|| {
            format!(
                "write oom_score_adj {adj} to /proc/self/oom_score_adj (lowering it needs \
                 CAP_SYS_RESOURCE; for CRI set restrict_oom_score_adj = true)"
            )
        })?;
    }
    Ok(())
}

pub fn set_no_new_privs(p: &Process) -> StepResult<()> {
    if p.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().step(|| "prctl(PR_SET_NO_NEW_PRIVS)".to_string())?;
    }
    Ok(())
}

/// Refuses security settings the kernel cannot honour instead of silently running without them.
pub fn check_lsm(p: &Process, mount_label: Option<&String>) -> StepResult<()> {
    if let Some(profile) = p.apparmor_profile().as_ref().filter(|s| !s.is_empty()) {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .map(|s| s.trim() == "Y")
            .unwrap_or(false);
        if !enabled {
            return Err(StepError::InvalidSpec(format!(
                "process.apparmorProfile {profile:?}: AppArmor is not enabled on this \
                 kernel; remove the profile from the spec"
            )));
        }
        return Err(StepError::InvalidSpec(format!(
            "process.apparmorProfile {profile:?}: AppArmor profiles are not supported \
             by containerd-shim-lazy yet; remove the profile or use io.containerd.runc.v2"
        )));
    }
    for (what, label) in [("process.selinuxLabel", p.selinux_label().as_ref()), ("linux.mountLabel", mount_label)] {
        if let Some(label) = label.filter(|s| !s.is_empty()) {
            return Err(StepError::InvalidSpec(format!(
                "{what} {label:?}: SELinux labels are not supported by \
                 containerd-shim-lazy (and SELinux is not enabled here); remove the label"
            )));
        }
    }
    Ok(())
}

/// Spec fields this launcher does not implement: refused with a clear error rather than ignored
/// (containerd and CRI do not set them by default).
pub fn check_unsupported(p: &Process, linux: Option<&oci_spec::runtime::Linux>) -> StepResult<()> {
    let mut fields = Vec::new();
    if p.scheduler().is_some() {
        fields.push("process.scheduler");
    }
    if p.io_priority().is_some() {
        fields.push("process.ioPriority");
    }
    if p.exec_cpu_affinity().is_some() {
        fields.push("process.execCPUAffinity");
    }
    if let Some(l) = linux {
        if l.personality().is_some() {
            fields.push("linux.personality");
        }
        if l.intel_rdt().is_some() {
            fields.push("linux.intelRdt");
        }
        if l.time_offsets().is_some() {
            fields.push("linux.timeOffsets");
        }
    }
    if fields.is_empty() {
        return Ok(());
    }
    Err(StepError::InvalidSpec(format!(
        "{} not supported by containerd-shim-lazy; remove it or use io.containerd.runc.v2",
        fields.join(", ") + if fields.len() == 1 { " is" } else { " are" }
    )))
}

fn cap_mask(set: Option<&oci_spec::runtime::Capabilities>) -> StepResult<(u64, Vec<caps::Capability>)> {
    let mut mask = 0u64;
    let mut list = Vec::new();
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        match caps::Capability::from_str(&name) {
            Ok(cap) => {
                mask |= cap.bitmask();
                list.push(cap);
            }
            Err(_) => log::warn!("capability {name} unknown to this build; ignored"),
        }
    }
    Ok((mask, list))
}

/// Drops the bounding set, switches to the spec's user keeping capabilities across setuid, then
/// sets effective/permitted/inheritable in one capset and raises the ambient ones. Order as runc.
pub fn finalize_user_and_caps(p: &Process) -> StepResult<()> {
    let c = p.capabilities().as_ref();
    let (_, bounding) = cap_mask(c.and_then(|c| c.bounding().as_ref()))?;
    let (eff, _) = cap_mask(c.and_then(|c| c.effective().as_ref()))?;
    let (perm, _) = cap_mask(c.and_then(|c| c.permitted().as_ref()))?;
    let (inh, _) = cap_mask(c.and_then(|c| c.inheritable().as_ref()))?;
    let (_, ambient) = cap_mask(c.and_then(|c| c.ambient().as_ref()))?;
    let keep: HashSet<caps::Capability> = bounding.into_iter().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, caps::CapSet::Bounding, cap).step(|| format!("drop {cap} from the bounding set"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).step(|| "prctl(PR_SET_KEEPCAPS)".to_string())?;
    let user = p.user();
    fix_stdio_permissions(user.uid())?;
    let groups: Vec<nix::unistd::Gid> =
        user.additional_gids().as_deref().unwrap_or_default().iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).step(|| format!("setgroups {:?}", user.additional_gids()))?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).step(|| format!("setgid {}", user.gid()))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).step(|| format!("setuid {}", user.uid()))?;
    nix::sys::prctl::set_keepcaps(false).step(|| "prctl(PR_SET_KEEPCAPS, 0)".to_string())?;
    capset(eff, perm, inh)?;
    let _ = caps::clear(None, caps::CapSet::Ambient);
    for cap in ambient {
        // runc only warns here: raising fails when the cap is not both permitted and inheritable.
        if let Err(e) = caps::raise(None, caps::CapSet::Ambient, cap) {
            log::warn!("raise ambient capability {cap}: {e}");
        }
    }
    Ok(())
}

/// runc's fixStdioPermissions: the container user owns its stdio (a pty, pipes), so a non-root
/// process can use its console; /dev/null is left alone, and EINVAL/EPERM are ignored.
fn fix_stdio_permissions(uid: u32) -> StepResult<()> {
    let null = nix::sys::stat::stat("/dev/null").step(|| "stat /dev/null".to_string())?;
    for fd in 0..=2 {
        let Ok(st) = nix::sys::stat::fstat(fd) else { continue };
        if st.st_rdev == null.st_rdev || st.st_uid == uid {
            continue;
        }
        // SAFETY: fchown on one of our own stdio descriptors.
        if unsafe { libc::fchown(fd, uid, st.st_gid) } != 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) {
                return Err(format!("chown stdio fd {fd} to uid {uid}: {e}").into());
            }
        }
    }
    Ok(())
}

fn capset(eff: u64, perm: u64, inh: u64) -> StepResult<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        Data { effective: lo(eff), permitted: lo(perm), inheritable: lo(inh) },
        Data { effective: hi(eff), permitted: hi(perm), inheritable: hi(inh) },
    ];
    // SAFETY: capset(2) with a v3 header and two data structs, both live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    if rc != 0 {
        return Err(format!(
            "capset effective={eff:#x} permitted={perm:#x} inheritable={inh:#x}: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

pub fn apply_umask(p: &Process) {
    let mask = p.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

pub fn chdir_cwd(p: &Process) -> StepResult<()> {
    let cwd = p.cwd();
    if cwd.as_os_str().is_empty() {
        return Ok(());
    }
    nix::unistd::chdir(cwd).step(|| format!("chdir to cwd {}", cwd.display()))
}

/// Everything execve needs, prepared before the start gate so that nothing is left to fail but
/// the exec itself.
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstring(s: &[u8], what: &str) -> StepResult<CString> {
    CString::new(s).map_err(|_| StepError::InvalidSpec(format!("{what} contains a NUL byte")))
}

/// Resolves the executable like runc (Go's exec.LookPath with the container's PATH) and builds
/// the environment, adding HOME from the container's /etc/passwd when the spec has none.
pub fn prepare_exec(p: &Process) -> StepResult<Prepared> {
    let args = p.args().clone().unwrap_or_default();
    let Some(name) = args.first() else {
        return Err(StepError::InvalidSpec("process.args must not be empty".into()));
    };
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    let path_var = env.iter().rev().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or("");
    let path = look_path(name, path_var)?;
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(p.user().uid())));
    }
    Ok(Prepared {
        path: cstring(path.as_os_str().as_bytes(), "process.args[0]")?,
        argv: args.iter().map(|a| cstring(a.as_bytes(), "process.args")).collect::<StepResult<_>>()?,
        envp: env.iter().map(|e| cstring(e.as_bytes(), "process.env")).collect::<StepResult<_>>()?,
    })
}

fn is_executable(p: &Path) -> std::io::Result<()> {
    let m = std::fs::metadata(p)?;
    if !m.is_dir() && m.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EACCES))
    }
}

fn look_path(name: &str, path_var: &str) -> StepResult<PathBuf> {
    if name.contains('/') {
        return match is_executable(Path::new(name)) {
            Ok(()) => Ok(PathBuf::from(name)),
            Err(e) => Err(StepError::Executable {
                name: name.to_string(),
                detail: format!("stat {name}: {}", super::error::errno_text(&e)),
            }),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(StepError::Executable { name: name.to_string(), detail: "executable file not found in $PATH".into() })
}

/// Home directory of `uid` from the container's /etc/passwd, "/" when absent (runc's default).
fn home_of(uid: u32) -> String {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return "/".into();
    };
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .next()
        .unwrap_or_else(|| "/".into())
}

/// Replaces the process image. Returns only on failure, with the error text.
pub fn execve(prep: &Prepared) -> StepError {
    let mut argv: Vec<*const libc::c_char> = prep.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prep.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // The helper ignores SIGPIPE (Rust's default); an ignored signal survives execve, and the
    // container must start with the default action, as under runc.
    // SAFETY: installing SIG_DFL for SIGPIPE; we are about to exec.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
    // SAFETY: all pointers point into CStrings owned by `prep`, NULL-terminated arrays, alive for
    // the call; execve does not return on success.
    unsafe { libc::execve(prep.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(prep.path.as_bytes()));
    let failed: Result<(), _> = Err(std::io::Error::last_os_error());
    match failed.step_at(&path, || format!("exec {}", path.display())) {
        Err(e) => e,
        Ok(()) => unreachable!("built from an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_path_matches_runc_messages() {
        assert_eq!(look_path("sh", "/nonexistent:/bin").unwrap(), PathBuf::from("/bin/sh"));
        let missing = look_path("no-such-tool", "/bin:/usr/bin").unwrap_err();
        assert!(matches!(&missing, StepError::Executable { name, .. } if name == "no-such-tool"), "{missing:?}");
        assert_eq!(missing.to_string(), "exec: \"no-such-tool\": executable file not found in $PATH");
        assert_eq!(
            look_path("/no/such", "/bin").unwrap_err().to_string(),
            "exec: \"/no/such\": stat /no/such: no such file or directory"
        );
    }
}
