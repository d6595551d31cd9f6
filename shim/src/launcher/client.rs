//! Shim side of the launcher: spawns `/proc/self/exe init` with the container's stdio and the
//! sync socket, drives the create/exec handshake, and holds the start gate. Blocking: the service
//! calls it from `spawn_blocking`. It never waits for the helper (the shim's reaper does).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use super::error::{PlaceError, StepError};
use super::helper_log::{self, HELPER_LOG_FD};
use super::sync::{self, FromHelper, Request, ToHelper, HELPER_SYNC_FD};
use super::{helper_exe, CreateRequest, ExecRequest, LaunchError, Stdio};

/// A created container: its init is blocked right before execve until [`Created::start`].
/// Dropping it without starting closes the gate: the init then exits.
#[derive(Debug)]
pub struct Created {
    /// The container's init, in the shim's pid namespace.
    pub pid: i32,
    /// The helper process; standalone callers (tests) reap it, the shim's reaper ignores it.
    pub helper_pid: i32,
    /// The pty master when `process.terminal` is set.
    pub pty_master: Option<OwnedFd>,
    gate: Option<OwnedFd>,
}

/// A process started in a running container by [`exec`] (already exec'd on return).
#[derive(Debug)]
pub struct Execd {
    pub pid: i32,
    pub helper_pid: i32,
    pub pty_master: Option<OwnedFd>,
}

/// Sets up the container and leaves its init blocked right before execve. `place` is called with
/// the init pid before the process sets anything up (the shim puts it into its cgroup there).
pub fn create(
    req: CreateRequest<'_>,
    place: &mut dyn FnMut(i32) -> Result<(), PlaceError>,
) -> Result<Created, LaunchError> {
    let process = req.spec.process().as_ref().ok_or_else(|| LaunchError::InvalidSpec("spec has no process".into()))?;
    let terminal = process.terminal().unwrap_or(false);
    let request =
        Request::Create { id: req.id.to_string(), bundle: req.bundle.to_path_buf(), spec: Box::new(req.spec.clone()) };
    let (sock, helper_pid) = spawn_helper(request, req.stdio, terminal)?;
    let (pid, pty) = handshake(&sock, helper_pid, place)?;
    Ok(Created { pid, helper_pid, pty_master: pty, gate: Some(sock) })
}

impl Created {
    /// Opens the start gate: the init runs startContainer hooks, loads seccomp and execs. Returns
    /// once execve succeeded (the socket closes on exec) or with the error the init reported.
    pub fn start(&mut self) -> Result<(), LaunchError> {
        let sock = self
            .gate
            .take()
            .ok_or_else(|| LaunchError::Setup(StepError::Failed("start: the container was already started".into())))?;
        sync::send(sock.as_fd(), &ToHelper::Start, None)
            .map_err(|source| LaunchError::Sync { step: "send start", source })?;
        match sync::recv::<FromHelper>(sock.as_fd()) {
            Ok(None) => Ok(()),
            Ok(Some((FromHelper::Error(e), _))) => Err(e.into()),
            Ok(Some((other, _))) => Err(LaunchError::Setup(StepError::Failed(format!(
                "start: unexpected message from the container init: {other:?}"
            )))),
            Err(source) => Err(LaunchError::Sync { step: "wait for exec", source }),
        }
    }
}

/// Joins the container's namespaces, places the new process into the container's cgroup, applies
/// the process attributes and execs it. Returns once the process has exec'd.
pub fn exec(req: ExecRequest<'_>, place: &mut dyn FnMut(i32) -> Result<(), PlaceError>) -> Result<Execd, LaunchError> {
    let terminal = req.process.terminal().unwrap_or(false);
    let request = Request::Exec {
        container_pid: req.container_pid,
        spec: Box::new(req.spec.clone()),
        process: Box::new(req.process.clone()),
    };
    let (sock, helper_pid) = spawn_helper(request, req.stdio, terminal)?;
    let (pid, pty) = handshake(&sock, helper_pid, place)?;
    // After Ready the process execs at once; EOF confirms it, an Error says why it could not.
    match sync::recv::<FromHelper>(sock.as_fd()) {
        Ok(None) => Ok(Execd { pid, helper_pid, pty_master: pty }),
        Ok(Some((FromHelper::Error(e), _))) => Err(e.into()),
        Ok(Some((other, _))) => {
            Err(LaunchError::Setup(StepError::Failed(format!("exec: unexpected message from the process: {other:?}"))))
        }
        Err(source) => Err(LaunchError::Sync { step: "wait for exec", source }),
    }
}

fn spawn_helper(request: Request, stdio: Stdio, terminal: bool) -> Result<(OwnedFd, i32), LaunchError> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| LaunchError::Sync { step: "socketpair", source: e.into() })?;
    // Above the fds dup2()ed into place below, so neither dup2 can clobber the other's source.
    let theirs = high_fd(theirs, "sync socket")?;
    let (log_r, log_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Sync { step: "log pipe", source: e.into() })?;
    let log_w = high_fd(log_w, "log pipe")?;
    let exe = helper_exe();
    let mut cmd = Command::new(&exe);
    cmd.arg("init").arg(format!("--log-level={}", log::max_level()));
    let to_stdio = |fd: Option<OwnedFd>| match fd {
        Some(fd) if !terminal => std::process::Stdio::from(fd),
        _ => std::process::Stdio::null(),
    };
    cmd.stdin(to_stdio(stdio.stdin)).stdout(to_stdio(stdio.stdout)).stderr(to_stdio(stdio.stderr));
    let (raw, log_raw) = (theirs.as_raw_fd(), log_w.as_raw_fd());
    // SAFETY: the closure runs between fork and exec in the child and only calls dup2, which is
    // async-signal-safe; it touches no memory shared with other threads. Both sources are above
    // fd 4 (high_fd), and dup2 clears close-on-exec on the copies.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(raw, HELPER_SYNC_FD), (log_raw, HELPER_LOG_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LaunchError::SpawnHelper { path: exe.clone(), source })?;
    drop(log_w);
    helper_log::forward(log_r, child.id() as i32);
    drop(theirs);
    let helper_pid = child.id() as i32;
    // The helper is reaped by the shim's reaper (or by a standalone caller): never wait here.
    drop(child);
    if let Err(source) = sync::send(ours.as_fd(), &ToHelper::Request(request), None) {
        let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
        return Err(LaunchError::Sync { step: "send request", source });
    }
    Ok((ours, helper_pid))
}

/// `fd` moved to a number above [`HELPER_LOG_FD`] (close-on-exec).
fn high_fd(fd: OwnedFd, what: &'static str) -> Result<OwnedFd, LaunchError> {
    if fd.as_raw_fd() > HELPER_LOG_FD {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HELPER_LOG_FD + 1))
        .map_err(|e| LaunchError::Sync { step: what, source: e.into() })?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Pid -> place -> Ack -> Ready (with the pty master) or Error.
fn handshake(
    sock: &OwnedFd,
    helper_pid: i32,
    place: &mut dyn FnMut(i32) -> Result<(), PlaceError>,
) -> Result<(i32, Option<OwnedFd>), LaunchError> {
    let kill_all = |pid: Option<i32>| {
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
    };
    let mut pid = None;
    loop {
        let msg = match sync::recv::<FromHelper>(sock.as_fd()) {
            Ok(Some(m)) => m,
            // EOF: every holder of the socket exited; there is nothing left to kill.
            Ok(None) => {
                return Err(LaunchError::HelperDied(if pid.is_some() { "container setup" } else { "launcher helper" }));
            }
            Err(source) => {
                kill_all(pid);
                return Err(LaunchError::Sync { step: "wait for the helper", source });
            }
        };
        match msg {
            (FromHelper::Pid(p), _) if pid.is_none() => {
                pid = Some(p);
                if let Err(source) = place(p) {
                    let _ = sync::send(sock.as_fd(), &ToHelper::Abort, None);
                    kill_all(pid);
                    return Err(LaunchError::Place { pid: p, source });
                }
                sync::send(sock.as_fd(), &ToHelper::Ack, None).map_err(|source| {
                    kill_all(pid);
                    LaunchError::Sync { step: "send ack", source }
                })?;
            }
            (FromHelper::Ready { pty }, fd) if pid.is_some() => {
                if pty && fd.is_none() {
                    kill_all(pid);
                    return Err(LaunchError::Setup(StepError::Failed(
                        "console: the container init did not send the pty master".into(),
                    )));
                }
                return Ok((pid.unwrap_or_default(), fd));
            }
            // The sender kills what it started and exits by itself.
            (FromHelper::Error(e), _) => return Err(e.into()),
            (other, _) => {
                kill_all(pid);
                return Err(LaunchError::Setup(StepError::Failed(format!(
                    "launcher protocol: unexpected message {other:?}"
                ))));
            }
        }
    }
}
