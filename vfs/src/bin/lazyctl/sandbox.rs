//! The sandbox `lazyctl optimize` runs its workload in: own PID, mount, network (only `lo`), IPC
//! and UTS namespaces, root = an overlay whose lower layer is the lazy mount and whose upper layer
//! is a tmpfs, with /proc, /sys (read-only), a minimal /dev and a tmpfs /tmp.
//!
//! Why a re-exec'd helper and not `Command::pre_exec`: lazyctl is multi-threaded (tokio, FUSE
//! request threads) when it starts the workload, so between fork and exec only async-signal-safe
//! calls are allowed. A PID namespace needs one more fork after `unshare(CLONE_NEWPID)`, the
//! image's user has to be looked up in its /etc/passwd, and setup errors deserve real messages: all
//! of that allocates. So lazyctl spawns itself (`/proc/self/exe sandbox-init SPEC`) with a pre_exec
//! doing three plain syscalls, and the fresh, single-threaded helper does the rest:
//!
//! ```text
//! lazyctl (FUSE server) ── helper (host PID ns: waits, forwards SIGTERM as SIGKILL)
//!                              └── PID 1 of the new PID ns: unshare mount/net/ipc/uts, mounts,
//!                                  pivot_root, chdir, setuid, exec CMD
//! ```
//!
//! Every mount is made inside the private mount namespace, so the kernel removes all of them when
//! the namespace's last process exits; when PID 1 exits, the kernel kills the rest of its PID
//! namespace. Nothing outlives the sandbox but the lazy mount, which lazyctl owns. If lazyctl dies,
//! the helper and PID 1 die with it (PR_SET_PDEATHSIG).
//!
//! Setup errors (CMD not in the image, a failed mount) are written to fd 3, a close-on-exec pipe
//! to lazyctl: it reads EOF once CMD has been exec'd, or the error text.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

/// The helper's fd on which setup errors are reported.
const ERROR_FD: RawFd = 3;
/// Exit status of PID 1 when the sandbox could not be set up (the error is on fd 3).
const SETUP_FAILED: i32 = 125;
/// PATH when the image sets none (what containerd gives such an image).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the helper is asked to run: written as JSON by lazyctl, read by `sandbox-init`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// The lazy mount: the overlay's lower layer.
    pub lower: PathBuf,
    /// An empty directory; a tmpfs is mounted on it inside the sandbox for the overlay's upper
    /// layer and the new root.
    pub scratch: PathBuf,
    /// CMD and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs, as the image config's Env (plus `--env`).
    pub env: Vec<String>,
    /// The image config's WorkingDir (`/` when empty).
    pub cwd: String,
    /// The image config's User, resolved by [`resolve_user`].
    pub user: User,
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// JSON [`Spec`] written by `lazyctl optimize`.
    spec: PathBuf,
}

/// A running sandbox (the helper process). Dropping it kills the workload and waits for it.
pub struct Sandbox {
    child: Option<Child>,
    errors: Option<File>,
    error_text: Vec<u8>,
    errors_closed: bool,
}

impl Sandbox {
    /// Starts the helper with `spec` (written to `spec_path`). Its stdin is /dev/null, its stdout
    /// and stderr are pipes ([`Sandbox::take_output`]).
    pub fn start(spec: &Spec, spec_path: &Path) -> anyhow::Result<Sandbox> {
        std::fs::write(spec_path, serde_json::to_vec(spec)?)
            .with_context(|| format!("writing {}", spec_path.display()))?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the error pipe")?;
        let write_fd = write.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("lazyctl")
            .arg("sandbox-init")
            .arg(spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec in the child of a multi-threaded process:
        // it only makes async-signal-safe system calls (setpgid, prctl, dup2, fcntl) on values prepared
        // before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Own process group: a terminal's Ctrl-C goes to lazyctl, which stops the sandbox
                // and unmounts in order, not to the workload directly.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with lazyctl's main thread (it spawns the sandbox and outlives it).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 clears close-on-exec on the copy: the helper gets the pipe as fd 3. If the
                // pipe already is fd 3, dup2 does nothing, so clear the flag by hand.
                let r = if write_fd == ERROR_FD {
                    libc::fcntl(ERROR_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(write_fd, ERROR_FD)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting the sandbox helper (/proc/self/exe sandbox-init)")?;
        drop(write);
        let errors = File::from(read);
        set_nonblocking(errors.as_raw_fd())?;
        Ok(Sandbox { child: Some(child), errors: Some(errors), error_text: Vec::new(), errors_closed: false })
    }

    pub fn take_output(&mut self) -> (std::process::ChildStdout, std::process::ChildStderr) {
        let child = self.child.as_mut().expect("running");
        (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"))
    }

    /// The error pipe's fd, to poll on.
    pub fn error_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.errors.as_ref().map(|f| f.as_fd())
    }

    /// Reads what is available on the error pipe. Returns the setup error once the pipe is
    /// closed with text in it.
    pub fn poll_errors(&mut self) -> Option<String> {
        if let Some(f) = self.errors.as_mut() {
            let mut buf = [0u8; 4096];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => {
                        self.errors = None;
                        self.errors_closed = true;
                        break;
                    }
                    Ok(n) => self.error_text.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        (self.errors_closed && !self.error_text.is_empty())
            .then(|| String::from_utf8_lossy(&self.error_text).trim().to_string())
    }

    /// The helper's exit status, if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.child.as_mut().expect("running").try_wait().context("waiting for the sandbox")
    }

    /// Kills the workload and everything in its PID namespace, and waits for it: SIGTERM to the
    /// helper (it SIGKILLs PID 1 and waits until the namespace is gone), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("sandbox helper {pid} did not stop within 5 s of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_nonblocking(fd: RawFd) -> anyhow::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL")?;
    fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK)).context("F_SETFL")?;
    Ok(())
}

// ---- the helper (`lazyctl sandbox-init SPEC`): single-threaded from here on ----

/// Entry point of the helper. Never returns: exits with the workload's status (128 + signal if
/// it was killed), or [`SETUP_FAILED`] with the reason on fd 3.
pub fn init(args: InitArgs) -> ! {
    // SAFETY: fd 3 is the error pipe lazyctl passed (or not open, and then fcntl fails harmlessly).
    unsafe { libc::fcntl(ERROR_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let spec: Spec = match std::fs::read(&args.spec)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(&format!("sandbox spec {}: {e}", args.spec.display())),
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        fail(&format!("unshare(CLONE_NEWPID): {e} (lazyctl optimize must run as root)"));
    }
    // Closed by the kernel when this process dies: PID 1 checks it after arming PDEATHSIG, so it
    // cannot miss a parent that died before.
    let (alive_r, alive_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&format!("pipe: {e}")),
    };
    // SAFETY: this process is single-threaded (a fresh exec of lazyctl that started no threads),
    // so the child may do anything after fork.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(alive_w);
            let err = match pid1(&spec, alive_r) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            fail(&err)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            // SAFETY: closing our copy of fd 3: only PID 1 reports on it now, so lazyctl sees EOF
            // once PID 1 has exec'd CMD.
            unsafe { libc::close(ERROR_FD) };
            std::process::exit(supervise(child))
        }
    }
}

/// Writes `msg` to the error pipe and exits.
fn fail(msg: &str) -> ! {
    // SAFETY: fd 3 is owned by this process until exit; ManuallyDrop keeps it open for exit.
    let mut f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(ERROR_FD) });
    if f.write_all(msg.as_bytes()).is_err() {
        eprintln!("lazyctl sandbox: {msg}");
    }
    std::process::exit(SETUP_FAILED)
}

/// The helper's parent half: waits for PID 1; SIGTERM, SIGINT or SIGHUP kill it (and with it
/// its whole PID namespace). Returns the exit status to pass on.
fn supervise(child: Pid) -> i32 {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 50_000_000 };
        // SAFETY: valid sigset and timespec; NULL siginfo is allowed.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
        if sig > 0 {
            let _ = kill(child, Signal::SIGKILL);
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("lazyctl sandbox: waitpid: {e}");
                return SETUP_FAILED;
            }
        }
    }
}

fn cstr(s: impl AsRef<OsStr>) -> Result<CString, String> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| format!("{:?} contains a NUL byte", s.as_ref()))
}

/// PID 1 of the new PID namespace: builds the root, enters it, becomes CMD.
fn pid1(spec: &Spec, alive: OwnedFd) -> Result<std::convert::Infallible, String> {
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error()));
    }
    exit_if_orphaned(&alive);
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare(mount, network, IPC, UTS namespaces): {e}"))?;
    // Nothing mounted below propagates back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("making / private in the new mount namespace: {e}"))?;
    let root = build_root(spec)?;
    loopback_up().map_err(|e| format!("bringing up lo in the sandbox's network namespace: {e}"))?;
    let _ = nix::unistd::sethostname("lazyctl-optimize");
    enter_root(&root)?;

    let user = &spec.user;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() };
    // As containerd does: a missing WorkingDir is created.
    std::fs::create_dir_all(cwd).map_err(|e| format!("working directory {cwd}: {e}"))?;
    nix::unistd::chdir(cwd).map_err(|e| format!("working directory {cwd}: {e}"))?;
    let path_var = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH).to_string();
    let program = find_program(&spec.argv[0], &path_var)?;

    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups({:?}): {e}", user.groups))?;
    nix::unistd::setgid(Gid::from_raw(user.gid)).map_err(|e| format!("setgid({}): {e}", user.gid))?;
    nix::unistd::setuid(Uid::from_raw(user.uid)).map_err(|e| format!("setuid({}): {e}", user.uid))?;
    // A credential change clears the parent-death signal: arm it again.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    exit_if_orphaned(&alive);

    // Rust ignores SIGPIPE in this process; an exec'd program inherits that unless it is reset.
    // SAFETY: restoring a default disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let argv: Vec<CString> = spec.argv.iter().map(cstr).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(cstr).collect::<Result<_, _>>()?;
    let err = nix::unistd::execve(&cstr(program.as_os_str())?, &argv, &envp).unwrap_err();
    Err(format!("CMD {}: exec {}: {err}", spec.argv[0], program.display()))
}

/// Exits if the helper (our parent) is gone: its end of the `alive` pipe is then closed.
fn exit_if_orphaned(alive: &OwnedFd) {
    use std::os::fd::AsFd as _;
    let mut fds = [nix::poll::PollFd::new(alive.as_fd(), nix::poll::PollFlags::POLLIN)];
    if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0) {
        std::process::exit(SETUP_FAILED);
    }
}

fn mount_err(what: &str, target: &Path, e: nix::errno::Errno) -> String {
    format!("mounting {what} on {}: {e}", target.display())
}

/// Mounts the tmpfs, the overlay and the API filesystems; returns the new root.
fn build_root(spec: &Spec) -> Result<PathBuf, String> {
    let scratch = &spec.scratch;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), scratch, Some("tmpfs"), nosuid_nodev, Some("mode=0755"))
        .map_err(|e| mount_err("tmpfs", scratch, e))?;
    let (upper, work, root) = (scratch.join("upper"), scratch.join("work"), scratch.join("root"));
    for d in [&upper, &work, &root] {
        std::fs::create_dir(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    for p in [&spec.lower, &upper, &work] {
        if p.as_os_str().as_bytes().iter().any(|b| matches!(b, b',' | b':')) {
            return Err(format!("{}: overlay paths cannot contain ',' or ':'", p.display()));
        }
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", spec.lower.display(), upper.display(), work.display());
    mount(Some("overlay"), &root, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| mount_err(&format!("an overlay over the lazy mount {}", spec.lower.display()), &root, e))?;

    let proc = mount_point(&root, "proc", 0o555)?;
    mount(Some("proc"), &proc, Some("proc"), nosuid_nodev | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(|e| mount_err("proc", &proc, e))?;
    let sys = mount_point(&root, "sys", 0o555)?;
    mount(Some("sysfs"), &sys, Some("sysfs"), nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY, None::<&str>)
        .map_err(|e| mount_err("sysfs", &sys, e))?;
    let tmp = mount_point(&root, "tmp", 0o1777)?;
    mount(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_nodev, Some("mode=1777"))
        .map_err(|e| mount_err("tmpfs", &tmp, e))?;
    build_dev(&mount_point(&root, "dev", 0o755)?)?;
    Ok(root)
}

/// `root/name` as a directory to mount on: created (in the overlay's upper layer) if the image
/// lacks it.
fn mount_point(root: &Path, name: &str, mode: u32) -> Result<PathBuf, String> {
    let p = root.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(format!("the image's /{name} is not a directory, so nothing can be mounted there")),
        Err(_) => {
            std::fs::create_dir(&p).map_err(|e| format!("creating /{name} in the sandbox: {e}"))?;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
            Ok(p)
        }
    }
}

/// A tmpfs /dev with the standard character devices (bind mounts of the host's), a private
/// devpts, /dev/shm and the usual symlinks.
fn build_dev(dev: &Path) -> Result<(), String> {
    mount(Some("tmpfs"), dev, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755"))
        .map_err(|e| mount_err("tmpfs", dev, e))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue; // e.g. no /dev/tty in a minimal host container: the workload does without
        }
        let target = dev.join(name);
        File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        mount(Some(&host), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| mount_err(&format!("the host's {}", host.display()), &target, e))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| format!("creating {}: {e}", pts.display()))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| mount_err("devpts", &pts, e))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
    mount(Some("tmpfs"), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))
        .map_err(|e| mount_err("tmpfs", &shm, e))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    Ok(())
}

/// Sets IFF_UP on `lo` (a new network namespace starts with it down).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid socket owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq, which `ifr` is.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `root` the root directory and drops every reference to the host's tree.
fn enter_root(root: &Path) -> Result<(), String> {
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // pivot_root(".", "."): the old root ends up on top of the new one; detaching it leaves only
    // the new root (no directory for the old root needed in the image).
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root into {}: {e}", root.display()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host's root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Who CMD runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the groups /etc/group lists the user in.
    pub groups: Vec<u32>,
    /// HOME when the image's Env sets none.
    pub home: String,
}

/// Resolves the image config's User against the image's /etc/passwd and /etc/group texts, as a
/// container runtime does: `name` or `uid`, optionally `:group` or `:gid`; empty means root; a
/// numeric uid without a passwd entry gets gid 0 and HOME /.
///
/// lazyctl reads the two files through a mount that does not record, before the sandbox starts:
/// read through the recording mount, they would head the prefetch list although CMD may never
/// open them (and, recorded once, would not show where CMD does).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let (uid, mut gid, name, home) = match (&entry, u.parse::<u32>()) {
        (Some(f), _) => {
            let uid = f[2].parse::<u32>().map_err(|_| format!("/etc/passwd: bad uid for {}", f[0]))?;
            let gid = f[3].parse::<u32>().map_err(|_| format!("/etc/passwd: bad gid for {}", f[0]))?;
            (uid, gid, Some(f[0].to_string()), f[5].to_string())
        }
        (None, Ok(uid)) => (uid, 0, None, "/".to_string()),
        (None, Err(_)) => {
            return Err(format!("user {u:?} (the image config's User) is not in the image's /etc/passwd"))
        }
    };
    let groups_db: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_db
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} (the image config's User) is not in the image's /etc/group"))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for f in &groups_db {
            if let Ok(n) = f[2].parse::<u32>() {
                if f[3].split(',').any(|m| m == name) && !groups.contains(&n) {
                    groups.push(n);
                }
            }
        }
    }
    Ok(User { uid, gid, groups, home })
}

/// Finds CMD as execvp would: a name with a `/` is taken as is, others are looked up in PATH.
fn find_program(name: &str, path: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => Err(format!("CMD {name} is not a regular file in the image")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("CMD {name} not found in the image")),
            Err(e) => Err(format!("CMD {name}: {e}")),
        };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
        .ok_or_else(|| format!("CMD {name} not found in the image (PATH={path})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\naudio:x:29:app,other\nvideo:x:44:other\n";

    #[test]
    fn resolves_users_as_a_container_runtime_does() {
        let root = User { uid: 0, gid: 0, groups: vec![0], home: "/root".into() };
        assert_eq!(resolve_user("", PASSWD, GROUP), Ok(root));
        let app = resolve_user("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid, app.groups, app.home.as_str()), (1000, 1000, vec![1000, 29], "/home/app"));
        assert_eq!(resolve_user("1000:audio", PASSWD, GROUP).unwrap().groups, vec![29]);
        let nobody = resolve_user("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((nobody.uid, nobody.gid, nobody.groups, nobody.home.as_str()), (4242, 7, vec![7], "/"));
        assert_eq!(resolve_user("4242", "", "").unwrap().gid, 0);
        let err = resolve_user("ghost", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("\"ghost\"") && err.contains("/etc/passwd"), "{err}");
        assert!(resolve_user("app:nogroup", PASSWD, GROUP).unwrap_err().contains("/etc/group"));
    }
}
