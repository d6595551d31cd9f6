//! The state of one process (a container's init or an exec) and its lifecycle:
//! Created -> Running <-> Paused -> Stopped. An exec starts as "added" (Created, no pid yet).
//!
//! Exits arrive from the reaper on a monitor task; the state lives behind a small lock so State and
//! Wait never wait for the container table lock of a long Create.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::protos::api::Status;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::stdio::{IoPaths, ProcessIo};

/// How long output copies may still run after a process exited before TaskExit is published.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped,
}

/// Shared between the task service and the monitor task of the process.
pub struct ProcState {
    inner: Mutex<Inner>,
    exited: watch::Sender<Option<ExitInfo>>,
    /// Set once the event that must precede TaskExit (TaskStart / TaskExecStarted) is published, or
    /// when the process will never start: keeps containerd's event order.
    exit_may_publish: watch::Sender<bool>,
}

struct Inner {
    phase: Phase,
    pid: i32,
    exit: Option<ExitInfo>,
}

impl ProcState {
    pub fn new() -> Arc<ProcState> {
        Arc::new(ProcState {
            inner: Mutex::new(Inner { phase: Phase::Created, pid: 0, exit: None }),
            exited: watch::channel(None).0,
            exit_may_publish: watch::channel(false).0,
        })
    }

    pub fn pid(&self) -> i32 {
        self.inner.lock().pid
    }

    pub fn set_pid(&self, pid: i32) {
        self.inner.lock().pid = pid;
    }

    pub fn phase(&self) -> Phase {
        self.inner.lock().phase
    }

    /// Moves to `phase` unless the process already stopped (an exit may race with Start/Pause).
    pub fn set_phase(&self, phase: Phase) {
        let mut inner = self.inner.lock();
        if inner.phase != Phase::Stopped {
            inner.phase = phase;
        }
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        self.inner.lock().exit
    }

    pub fn set_exited(&self, info: ExitInfo) {
        {
            let mut inner = self.inner.lock();
            inner.phase = Phase::Stopped;
            inner.exit = Some(info);
        }
        self.exited.send_replace(Some(info));
    }

    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self, so this cannot happen while we hold &self.
                return ExitInfo { status: 255, at: SystemTime::now() };
            }
        }
    }

    pub fn allow_exit_event(&self) {
        self.exit_may_publish.send_replace(true);
    }

    pub async fn exit_event_allowed(&self) {
        let mut rx = self.exit_may_publish.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// containerd's status enum for State.
    pub fn status(&self) -> Status {
        match self.phase() {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        }
    }
}

/// One process of a container.
pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub io_paths: IoPaths,
    pub state: Arc<ProcState>,
    pub io: Arc<tokio::sync::Mutex<ProcessIo>>,
    /// The exec's process spec (from ExecProcessRequest), until it is started.
    pub exec_spec: Option<oci_spec::runtime::Process>,
}

impl Process {
    pub fn new(exec_id: &str, io_paths: IoPaths) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            io_paths,
            state: ProcState::new(),
            io: Arc::new(tokio::sync::Mutex::new(ProcessIo::default())),
            exec_spec: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_sees_exit_and_stopped_is_final() {
        let s = ProcState::new();
        s.set_phase(Phase::Running);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait().await.status });
        s.set_exited(ExitInfo { status: 3, at: SystemTime::now() });
        s.set_phase(Phase::Running);
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(s.phase(), Phase::Stopped);
        assert_eq!(s.status(), Status::STOPPED);
    }
}
