//! The helper (`containerd-shim-lazy-v2 init`): a fresh, single-threaded process that forks the
//! container's init (create) or a process inside a running container (exec) and drives the
//! steps described in mod.rs. Errors travel to the shim as a typed [`StepError`](super::StepError).
//!
//! Must never start a thread or an async runtime: it forks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use super::error::{Step, StepError, StepResult};
use super::hooks::{run_phase, ContainerState};
use super::sync::{self, FromHelper, Request, ToHelper, HELPER_SYNC_FD};
use super::{console, mounts, namespaces, process, seccomp};

/// Helper <-> its forked child, on a private socketpair.
#[derive(Debug, Serialize, Deserialize)]
enum Private {
    /// The shim placed the child into its cgroup: go on. Carries the child's pid as the runtime
    /// (and the hooks' state) sees it.
    Go(i32),
    /// Child -> helper: the rootfs is mounted; run prestart and createRuntime hooks now.
    RuntimeHooks,
    /// Helper -> child: those hooks succeeded.
    HooksDone,
    /// Child -> helper: setup is complete; the helper may exit.
    Done,
}

/// Entry of `containerd-shim-lazy-v2 init`. Called by main.rs before any runtime or thread.
pub fn helper_main() -> ! {
    // SAFETY: fd 3 was dup2()ed into place by the shim right before exec (client.rs) and nothing
    // else in this fresh process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_SYNC_FD) };
    if nix::fcntl::fcntl(sock.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).is_err() {
        eprintln!("containerd-shim-lazy-v2 init: no launcher sync socket on fd 3; this command is run by the shim itself, not by hand");
        std::process::exit(2);
    }
    super::helper_log::install(super::helper_log::level_from_args(std::env::args_os()));
    mark_fds_cloexec();
    reset_signals();
    let code = match run(&sock) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = sync::send(sock.as_fd(), &FromHelper::Error(msg), None);
            1
        }
    };
    std::process::exit(code)
}

/// Nothing the shim leaked (FUSE fds, sockets) may reach hooks or the container.
fn mark_fds_cloexec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a stale one (the read_dir fd) just fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Signals the shim ignores stay ignored across exec; the container must start with defaults
/// (and an empty mask, which std's spawn already gave us). SIGPIPE stays ignored while the helper
/// works (a hook that exits without reading its stdin must not kill us); process::execve
/// restores it right before the container's execve.
fn reset_signals() {
    for sig in nix::sys::signal::Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGPIPE) {
            continue;
        }
        // SAFETY: installing SIG_DFL has no memory-safety preconditions; nothing in this fresh
        // single-threaded process relies on a handler.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
}

fn run(sock: &OwnedFd) -> StepResult<()> {
    let request = match sync::recv::<ToHelper>(sock.as_fd()).step(|| "read the launch request".to_string())? {
        Some((ToHelper::Request(r), _)) => r,
        Some((other, _)) => return Err(format!("launcher protocol: expected a request, got {other:?}").into()),
        None => std::process::exit(1),
    };
    match request {
        Request::Create { id, bundle, spec } => create(sock, &id, &bundle, &spec),
        Request::Exec { container_pid, spec, process } => exec(sock, container_pid, &spec, &process),
    }
}

fn private_pair() -> StepResult<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .step(|| "socketpair for the container init".to_string())
}

fn recv_private(fd: BorrowedFd<'_>) -> Option<Private> {
    sync::recv::<Private>(fd).ok().flatten().map(|(m, _)| m)
}

/// Forks; the child runs `child` and reports its error itself. Returns the child's pid and the
/// helper's end of the private channel.
fn fork_child(
    sock: &OwnedFd,
    child: impl FnOnce(BorrowedFd<'_>) -> StepResult<std::convert::Infallible>,
) -> StepResult<(Pid, OwnedFd)> {
    let (ours, theirs) = private_pair()?;
    // SAFETY: this helper is single-threaded (a fresh exec of the shim binary that started no
    // threads), so the child may allocate and run arbitrary code after fork.
    match unsafe { fork() }.step(|| "fork the container process".to_string())? {
        ForkResult::Child => {
            drop(ours);
            let Err(msg) = child(theirs.as_fd());
            let _ = sync::send(sock.as_fd(), &FromHelper::Error(msg), None);
            // Never run the helper's remaining code (or atexit handlers twice).
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => Ok((child, ours)),
    }
}

/// Pid -> wait for the shim's Ack -> Go. On Abort or a vanished shim, kill the child and exit.
fn place_child(sock: &OwnedFd, pid: Pid, private: &OwnedFd) -> StepResult<()> {
    let fail = |msg: Option<String>| -> StepResult<()> {
        let _ = kill(pid, Signal::SIGKILL);
        match msg {
            Some(m) => Err(m.into()),
            None => std::process::exit(1),
        }
    };
    if let Err(e) = sync::send(sock.as_fd(), &FromHelper::Pid(pid.as_raw()), None) {
        return fail(Some(format!("report pid to the shim: {e}")));
    }
    match sync::recv::<ToHelper>(sock.as_fd()) {
        Ok(Some((ToHelper::Ack, _))) => {}
        Ok(Some((ToHelper::Abort, _))) | Ok(None) => return fail(None),
        Ok(Some((other, _))) => return fail(Some(format!("launcher protocol: expected ack, got {other:?}"))),
        Err(e) => return fail(Some(format!("wait for the shim's ack: {e}"))),
    }
    if let Err(e) = sync::send(private.as_fd(), &Private::Go(pid.as_raw()), None) {
        return fail(Some(format!("release the container process: {e}")));
    }
    Ok(())
}

fn create(sock: &OwnedFd, id: &str, bundle: &Path, spec: &Spec) -> StepResult<()> {
    let plan = namespaces::plan(spec)?;
    namespaces::check_sysctls(spec, &plan)?;
    let process = spec.process().clone().ok_or_else(|| StepError::InvalidSpec("spec has no process".into()))?;
    let mount_label = spec.linux().as_ref().and_then(|l| l.mount_label().clone());
    process::check_lsm(&process, mount_label.as_ref())?;
    process::check_unsupported(&process, spec.linux().as_ref())?;
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        // Fail a bad profile at create time, before anything is forked.
        seccomp::build(s)?;
    }
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root.is_absolute() { root } else { bundle.join(root) };
    let rootfs = std::fs::canonicalize(&rootfs).step_at(&rootfs, || format!("rootfs {}", rootfs.display()))?;
    let hooks = spec.hooks().clone().unwrap_or_default();

    namespaces::enter_pid_namespace(&plan)?;
    let (pid, private) =
        fork_child(sock, |private| container_init(sock, private, &plan, spec, &process, &rootfs, id, bundle))?;
    place_child(sock, pid, &private)?;

    // Serve the child's request for the runtime-namespace hooks, then wait until it is done.
    loop {
        match recv_private(private.as_fd()) {
            Some(Private::RuntimeHooks) => {
                let state = ContainerState::new(spec, id, bundle, "creating", pid.as_raw());
                #[allow(deprecated)]
                let prestart = hooks.prestart().as_ref();
                let res = run_phase("prestart", prestart, &state)
                    .and_then(|_| run_phase("createRuntime", hooks.create_runtime().as_ref(), &state));
                if let Err(e) = res {
                    let _ = kill(pid, Signal::SIGKILL);
                    return Err(e);
                }
                let _ = sync::send(private.as_fd(), &Private::HooksDone, None);
            }
            // Done, or the child exited / reported its own error to the shim.
            _ => return Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn container_init(
    sock: &OwnedFd,
    private: BorrowedFd<'_>,
    plan: &namespaces::Plan,
    spec: &Spec,
    process: &Process,
    rootfs: &Path,
    id: &str,
    bundle: &Path,
) -> StepResult<std::convert::Infallible> {
    let pid = match recv_private(private) {
        Some(Private::Go(pid)) => pid,
        // The shim aborted (cgroup placement failed) or went away: nothing to report.
        _ => unsafe_exit(1),
    };
    nix::unistd::setsid().step(|| "setsid".to_string())?;
    let cgroups = mounts::collect_cgroup_v1();
    namespaces::enter_in_init(plan)?;
    if plan.new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).step(|| "unshare cgroup namespace".to_string())?;
    }
    process::apply_oom_score_adj(process)?;
    process::apply_rlimits(process)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    let rootfs_state = mounts::prepare_rootfs(spec, rootfs, &cgroups)?;
    sync::send(private, &Private::RuntimeHooks, None).step(|| "ask for runtime hooks".to_string())?;
    match recv_private(private) {
        Some(Private::HooksDone) => {}
        // The helper reported the hook failure to the shim itself.
        _ => unsafe_exit(1),
    }
    let hooks = spec.hooks().clone().unwrap_or_default();
    let mut state = ContainerState::new(spec, id, bundle, "created", pid);
    run_phase("createContainer", hooks.create_container().as_ref(), &state)?;
    mounts::pivot_root(rootfs)?;

    let pty =
        if process.terminal().unwrap_or(false) { Some(console::setup(process.console_size(), true)?) } else { None };
    mounts::finalize_rootfs(spec, &rootfs_state)?;
    process::apply_umask(process);
    apply_container_settings(spec, plan)?;

    let nnp = process.no_new_privileges().unwrap_or(false);
    let seccomp_spec = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    process::set_no_new_privs(process)?;
    if !nnp {
        seccomp::load(seccomp_spec)?;
    }
    process::finalize_user_and_caps(process)?;
    process::chdir_cwd(process)?;
    let prepared = process::prepare_exec(process)?;

    let _ = sync::send(private, &Private::Done, None);
    sync::send(sock.as_fd(), &FromHelper::Ready { pty: pty.is_some() }, pty.as_ref().map(|p| p.as_raw_fd()))
        .step(|| "report ready to the shim".to_string())?;
    drop(pty);
    match sync::recv::<ToHelper>(sock.as_fd()) {
        Ok(Some((ToHelper::Start, _))) => {}
        // The shim dropped the container (delete before start) or went away.
        _ => unsafe_exit(0),
    }
    state.status = "created".into();
    run_phase("startContainer", hooks.start_container().as_ref(), &state)?;
    if nnp {
        seccomp::load(seccomp_spec)?;
    }
    Err(process::execve(&prepared))
}

/// hostname, domainname, sysctls, readonly paths and masked paths (after pivot_root).
fn apply_container_settings(spec: &Spec, plan: &namespaces::Plan) -> StepResult<()> {
    for (what, value) in [("hostname", spec.hostname()), ("domainname", spec.domainname())] {
        let Some(value) = value.as_ref().filter(|v| !v.is_empty()) else { continue };
        if !plan.own_uts {
            return Err(StepError::InvalidSpec(format!(
                "{what} {value:?} needs a private UTS namespace; add {{\"type\": \"uts\"}} to linux.namespaces"
            )));
        }
        if what == "hostname" {
            nix::unistd::sethostname(value).step(|| format!("sethostname {value:?}"))?;
        } else {
            // SAFETY: setdomainname reads `len` bytes from a live buffer.
            if unsafe { libc::setdomainname(value.as_ptr().cast(), value.len()) } != 0 {
                return Err(format!("setdomainname {value:?}: {}", std::io::Error::last_os_error()).into());
            }
        }
    }
    let Some(linux) = spec.linux().as_ref() else { return Ok(()) };
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).step(|| format!("sysctl {key}={value} ({})", path.display()))?;
    }
    for p in linux.readonly_paths().as_deref().unwrap_or_default() {
        mounts::readonly_path(p)?;
    }
    for p in linux.masked_paths().as_deref().unwrap_or_default() {
        mounts::mask_path(p)?;
    }
    Ok(())
}

fn unsafe_exit(code: i32) -> ! {
    // SAFETY: _exit is always safe; the forked child must not run the helper's exit path.
    unsafe { libc::_exit(code) }
}

fn exec(sock: &OwnedFd, container_pid: i32, spec: &Spec, process: &Process) -> StepResult<()> {
    process::check_lsm(process, None)?;
    process::check_unsupported(process, None)?;
    let seccomp_spec = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    if let Some(s) = &seccomp_spec {
        seccomp::build(s)?;
    }
    namespaces::join_container(container_pid)?;
    let (pid, private) = fork_child(sock, |private| {
        match recv_private(private) {
            Some(Private::Go(_)) => {}
            _ => unsafe_exit(1),
        }
        nix::unistd::setsid().step(|| "setsid".to_string())?;
        let pty = if process.terminal().unwrap_or(false) {
            Some(console::setup(process.console_size(), false)?)
        } else {
            None
        };
        process::apply_oom_score_adj(process)?;
        process::apply_rlimits(process)?;
        process::apply_umask(process);
        let nnp = process.no_new_privileges().unwrap_or(false);
        process::set_no_new_privs(process)?;
        if !nnp {
            seccomp::load(seccomp_spec.as_ref())?;
        }
        process::finalize_user_and_caps(process)?;
        process::chdir_cwd(process)?;
        let prepared = process::prepare_exec(process)?;
        if nnp {
            seccomp::load(seccomp_spec.as_ref())?;
        }
        sync::send(sock.as_fd(), &FromHelper::Ready { pty: pty.is_some() }, pty.as_ref().map(|p| p.as_raw_fd()))
            .step(|| "report ready to the shim".to_string())?;
        drop(pty);
        Err(process::execve(&prepared))
    })?;
    place_child(sock, pid, &private)?;
    // Wait until the child exec'd or failed (it closes its end either way), then exit.
    let _ = recv_private(private.as_fd());
    Ok(())
}
