//! Drop guards for what tests create: child processes, mounts, temp dirs. Each guard releases its
//! resource in `Drop`, so it is released when the test panics too. Guards never panic in `Drop`
//! (a panic while unwinding aborts the whole test binary); they log what they could not undo.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process that is sent SIGTERM (then SIGKILL after a grace period) and reaped on drop.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// `name` is used in logs and errors ("docker-registry", "lazyctl mount").
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self { name: name.into(), child: Some(child) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the child's piped stdout (None when not piped or already taken).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (not yet exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` to the process (no-op when it has already been reaped).
    pub fn signal(&mut self, signal: Signal) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(child.id() as i32), signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether it exited
    /// within the grace period (false means it had to be killed).
    pub fn terminate(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        let Some(child) = self.child.as_mut() else { return (None, true) };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return (Some(status), true);
        }
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            self.child = None;
            return (Some(status), true);
        }
        log::warn!("{} (pid {:?}) ignored SIGTERM for {grace:?}; killing it", self.name, self.pid());
        let mut child = self.child.take().expect("checked above");
        let _ = child.kill();
        (child.wait().ok(), false)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// Whether `path` is a mount point (canonicalised first, as /proc/self/mountinfo lists real paths).
pub fn is_mounted(path: &Path) -> bool {
    vfs::mountinfo::is_mount_point(&path.canonicalize().unwrap_or_else(|_| path.to_path_buf()))
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    vfs::mountinfo::mounts_under(&dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
}

/// Detaches the mount at `path` (MNT_DETACH, so a busy mount still goes). Ok when not mounted.
pub fn force_unmount(path: &Path) -> std::io::Result<()> {
    if !is_mounted(path) {
        return Ok(());
    }
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| std::io::Error::other(format!("umount -l {}: {e}", path.display())))
}

/// Unmounts a mount point on drop if something is still mounted there.
pub struct MountGuard {
    path: PathBuf,
}

impl MountGuard {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(err) = force_unmount(&self.path) {
            log::error!("cleanup: {err}");
        }
    }
}

/// A fresh temp dir under the system temp dir (ext4 on the CI machines, so user.* xattrs,
/// device nodes and fifos work there), removed on drop.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lazy-{prefix}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir for {prefix} under {}: {e}", std::env::temp_dir().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_mounted() {
        assert!(is_mounted(Path::new("/")));
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        drop(ChildGuard::new("sleep", child));
        // Reaped: the pid no longer exists (or was reused, which a few ms later is unlikely).
        assert!(kill(Pid::from_raw(pid), None).is_err());
    }
}
