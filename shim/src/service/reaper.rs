//! Subreaper and the SIGCHLD loop: the shim reaps EVERY child (launcher helpers, container inits
//! re-parented to it, exec'd processes, log binaries) and hands exits to whoever subscribed to a pid.
//!
//! An exit may be reaped before anyone subscribes (a container that exits at once): it is kept as
//! unclaimed for a while so a later subscribe still sees it. Nothing else in the shim may call
//! wait*(): a second waiter would steal exits from this loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// How long an exit nobody asked for is kept (helper exits are never claimed).
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: i32,
    /// Exit code, or 128 + signal number for a process killed by a signal (what shells report).
    pub status: i32,
    pub at: SystemTime,
}

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
    /// Held while someone else waits for its own child (OCI poststart/poststop hooks run with
    /// std::process): the loop does not reap meanwhile, so it cannot steal that exit.
    exclusive: Mutex<()>,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, Vec<oneshot::Sender<Exit>>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

impl Reaper {
    /// Makes this process a child subreaper (so container processes whose helper exited become our
    /// children) and starts the SIGCHLD loop. Call inside the tokio runtime before spawning children.
    pub fn install() -> std::io::Result<Arc<Reaper>> {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers and only changes this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                let r2 = r.clone();
                let _ = tokio::task::spawn_blocking(move || r2.reap_all()).await;
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Resolves when `pid` exits (at once if it already did).
    pub fn subscribe(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if let Some((exit, _)) = inner.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            inner.waiters.entry(pid).or_default().push(tx);
        }
        rx
    }

    /// Runs `f` (which spawns and waits for its own children) while the loop does not reap.
    pub fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.exclusive.lock();
        f()
    }

    fn reap_all(&self) {
        let _guard = self.exclusive.lock();
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => Exit { pid: pid.as_raw(), status: code, at: SystemTime::now() },
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    Exit { pid: pid.as_raw(), status: 128 + sig as i32, at: SystemTime::now() }
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
            };
            log::debug!("reaped pid {} (status {})", exit.pid, exit.status);
            self.deliver(exit);
        }
    }

    fn deliver(&self, exit: Exit) {
        let mut inner = self.inner.lock();
        match inner.waiters.remove(&exit.pid) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(exit);
                }
            }
            None => {
                let now = Instant::now();
                inner.unclaimed.retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
                inner.unclaimed.insert(exit.pid, (exit, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_subscribe_is_kept() {
        let r = Reaper::default();
        r.deliver(Exit { pid: 42, status: 3, at: SystemTime::now() });
        let mut rx = r.subscribe(42);
        assert_eq!(rx.try_recv().unwrap().status, 3);
    }

    #[test]
    fn subscribe_then_exit() {
        let r = Reaper::default();
        let mut rx1 = r.subscribe(7);
        let mut rx2 = r.subscribe(7);
        r.deliver(Exit { pid: 7, status: 137, at: SystemTime::now() });
        assert_eq!(rx1.try_recv().unwrap().status, 137);
        assert_eq!(rx2.try_recv().unwrap().status, 137);
    }
}
