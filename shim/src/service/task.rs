//! The task service (containerd task API v2): one shim serves every container of its pod group.
//!
//! Owns the container table. Launching goes through the launcher (on blocking threads), limits
//! through the cgroup module; this file only sequences them, keeps process state and publishes
//! events in containerd's order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::api::{CheckpointTaskRequest, ProcessInfo};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::ExitSignal;
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;

use super::config::{self, Config, SecurityConfig};
use super::error::{Error, Result};
use super::events::{timestamp, Event, Publisher};
use super::process::{ExitInfo, Phase, ProcState, Process, DRAIN_LIMIT};
use super::profile;
use super::reaper::Reaper;
use super::rootfs::Rootfs;
use super::socket::SocketFile;
use super::stdio::{IoPaths, Pending, ProcessIo};
use crate::cgroup::{Cgroup, CgroupPolicy};
use crate::launcher;

/// How long the shim lingers after its last container was deleted (containerd sends Shutdown
/// right after Delete; a new container of the same pod may also arrive).
const LINGER: Duration = Duration::from_secs(2);

struct Container {
    bundle: PathBuf,
    spec: Arc<Spec>,
    cgroup: Option<Arc<Cgroup>>,
    rootfs: Rootfs,
    init: Process,
    execs: HashMap<String, Process>,
    /// The start gate of a created, not yet started init.
    gate: Option<launcher::Created>,
    oom_watch: Option<tokio::task::JoinHandle<()>>,
    /// The config's [security] section, applied again to every exec process.
    security: SecurityConfig,
}

impl Container {
    fn process(&self, id: &str, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::ProcessNotFound { id: id.to_string(), exec_id: exec_id.to_string() })
    }
}

/// A container table entry: a Create in progress holds its id with a placeholder, so the table
/// lock is never held across Create's slow steps (lazy mount, cgroup, helper, hooks).
enum Slot {
    Creating,
    Ready(Box<Container>),
}

/// The container table. Lookups of an id whose Create has not returned yet fail with
/// [`Error::BeingCreated`]; the placeholder also keeps the shim alive (the table is not empty).
#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
}

impl Table {
    fn get(&self, id: &str) -> Result<&Container> {
        match self.slots.get(id) {
            Some(Slot::Ready(c)) => Ok(c),
            Some(Slot::Creating) => Err(Error::BeingCreated(id.to_string())),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Container> {
        match self.slots.get_mut(id) {
            Some(Slot::Ready(c)) => Ok(c),
            Some(Slot::Creating) => Err(Error::BeingCreated(id.to_string())),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

pub struct Shared {
    namespace: String,
    containers: Mutex<Table>,
    publisher: Publisher,
    reaper: Arc<Reaper>,
    exit: Arc<ExitSignal>,
    socket: Arc<SocketFile>,
}

#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        publisher: Publisher,
        reaper: Arc<Reaper>,
        exit: Arc<ExitSignal>,
        socket: Arc<SocketFile>,
    ) -> TaskService {
        TaskService {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                containers: Mutex::new(Table::default()),
                publisher,
                reaper,
                exit,
                socket,
            }),
        }
    }
}

fn place_in(cgroup: Option<Arc<Cgroup>>) -> impl FnMut(i32) -> Result<(), launcher::PlaceError> {
    move |pid| {
        if let Some(cg) = &cgroup {
            cg.add_pid(pid).map_err(|e| format!("putting pid {pid} into cgroup {}: {e}", cg.path().display()))?;
        }
        Ok(())
    }
}

/// The config's log level, unless containerd runs the shim with -debug (then debug stays on).
fn apply_log_level(level: &str) {
    if log::max_level() >= log::LevelFilter::Debug {
        return;
    }
    match level.parse::<log::LevelFilter>() {
        Ok(l) => log::set_max_level(l),
        Err(_) => log::warn!("config log_level {level:?} is not one of error, warn, info, debug, trace; keeping info"),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Other(format!("internal task failed: {e}")))
}

fn delete_cgroup(cgroup: Option<Arc<Cgroup>>) {
    // Not conditional on being the last holder of the Arc: the exit monitor and the OOM poller may still
    // hold clones for a moment after the init exited, and skipping the removal then left the directory
    // (with its BPF device program attached) behind.
    let Some(cg) = cgroup else { return };
    if let Err(e) = cg.kill_all(libc::SIGKILL) {
        log::warn!("killing the rest of cgroup {}: {e}", cg.path().display());
    }
    if let Err(e) = cg.delete() {
        log::warn!("removing cgroup {}: {e}", cg.path().display());
    }
}

/// Owns what a Create has set up so far (rootfs mounts, cgroup, the created init) and the id's
/// placeholder in the table. Every failure path ends in [`CreateGuard::undo`], which takes down
/// exactly what was set up, in reverse order, and only then frees the id: a retried Create of the
/// same id never races the cleanup of its bundle. Dropped without commit or undo (a panic), it
/// undoes in the background.
struct CreateGuard {
    shared: Arc<Shared>,
    id: String,
    rootfs: Option<Rootfs>,
    cgroup: Option<Arc<Cgroup>>,
    /// The init, blocked before execve (its helper has exited once this is set).
    created: Option<launcher::Created>,
    finished: bool,
}

impl CreateGuard {
    /// Puts a placeholder for `id` into the table, or fails when the id is taken or being created.
    async fn claim(shared: &Arc<Shared>, id: &str) -> Result<CreateGuard> {
        let mut table = shared.containers.lock().await;
        match table.slots.get(id) {
            Some(Slot::Creating) => return Err(Error::BeingCreated(id.to_string())),
            Some(Slot::Ready(_)) => return Err(Error::AlreadyExists(format!("container {id}"))),
            None => {}
        }
        table.slots.insert(id.to_string(), Slot::Creating);
        Ok(CreateGuard {
            shared: shared.clone(),
            id: id.to_string(),
            rootfs: None,
            cgroup: None,
            created: None,
            finished: false,
        })
    }

    /// The container takes over everything the guard owns; the placeholder becomes the container.
    async fn commit(&mut self, mut container: Container) {
        let mut table = self.shared.containers.lock().await;
        container.rootfs = self.rootfs.take().unwrap_or_default();
        container.cgroup = self.cgroup.take();
        container.gate = self.created.take();
        table.slots.insert(self.id.clone(), Slot::Ready(Box::new(container)));
        self.finished = true;
    }

    /// The teardown of what was set up, last step first; blocking.
    fn teardown(&mut self) -> impl FnOnce() + Send + 'static {
        let (created, cgroup, rootfs) = (self.created.take(), self.cgroup.take(), self.rootfs.take());
        move || {
            if let Some(created) = created {
                // Never started: dropping the gate ends it, SIGKILL makes sure.
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(created.pid), nix::sys::signal::Signal::SIGKILL);
                drop(created);
            }
            delete_cgroup(cgroup);
            if let Some(mut rootfs) = rootfs {
                rootfs.unmount();
            }
        }
    }

    async fn undo(mut self) {
        self.finished = true;
        let teardown = self.teardown();
        if let Err(e) = blocking(teardown).await {
            log::warn!("create {}: undoing its steps: {e}", self.id);
        }
        self.shared.remove_placeholder(&self.id).await;
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        log::warn!("create {}: abandoned half-way; undoing what it set up", self.id);
        let teardown = self.teardown();
        let (shared, id) = (self.shared.clone(), self.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = tokio::task::spawn_blocking(teardown).await;
                    shared.remove_placeholder(&id).await;
                });
            }
            Err(_) => {
                teardown();
                if let Ok(mut table) = shared.containers.try_lock() {
                    if matches!(table.slots.get(&id), Some(Slot::Creating)) {
                        table.slots.remove(&id);
                    }
                }
            }
        }
    }
}

/// Whether every process of the container must be killed when its init exits: as the runc shim does
/// when the container has no pid namespace of its own (the host's, or one it joined by path), because
/// then the kernel does not kill the rest for us and they would hold the container's output open.
fn kill_all_on_init_exit(spec: &Spec) -> bool {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    !namespaces.iter().any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && ns.path().is_none())
}

impl Shared {
    /// Frees the id of a Create that failed (never a container that took its place).
    async fn remove_placeholder(&self, id: &str) {
        let mut table = self.containers.lock().await;
        if matches!(table.slots.get(id), Some(Slot::Creating)) {
            table.slots.remove(id);
        }
    }

    /// Waits for `pid`'s exit, drains its output, publishes TaskExit (after the start event) and
    /// only then marks it stopped, so Wait returns after TaskExit is queued. For an init, `oom` is its
    /// cgroup and OOM counter: an OOM kill that the 500 ms poller has not seen yet is published BEFORE
    /// TaskExit, because `ctr run --rm` deletes the task (stopping the poller) within ~50 ms of the exit.
    fn monitor(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        pid: i32,
        process: &Process,
        oom: Option<(Arc<Cgroup>, Arc<AtomicU64>)>,
        kill_rest: Option<Arc<Cgroup>>,
    ) {
        let exit_rx = self.reaper.subscribe(pid);
        let (state, io) = (process.state.clone(), process.io.clone());
        let shared = self.clone();
        let id = id.to_string();
        let exec_id = if exec_id.is_empty() { id.clone() } else { exec_id.to_string() };
        tokio::spawn(async move {
            let exit = match exit_rx.await {
                Ok(e) => ExitInfo { status: e.status as u32, at: e.at },
                Err(_) => ExitInfo { status: 255, at: SystemTime::now() },
            };
            if let Some(cg) = kill_rest {
                // Before draining: the remaining processes may hold the init's stdout open.
                match tokio::task::spawn_blocking(move || cg.kill_all(libc::SIGKILL)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("container {id}: killing the rest after its init exited: {e}"),
                    Err(e) => log::warn!("container {id}: killing the rest after its init exited: {e}"),
                }
            }
            io.lock().await.drain(DRAIN_LIMIT).await;
            state.exit_event_allowed().await;
            if let Some((cgroup, seen)) = oom {
                shared.publish_new_ooms(&id, &cgroup, &seen).await;
            }
            shared
                .publisher
                .publish(Event::Exit { id, exec_id, pid: pid as u32, status: exit.status, at: exit.at })
                .await;
            state.set_exited(exit);
        });
    }

    /// Publishes TaskOOM when `cgroup`'s oom_kill count grew past `seen`, which the poller and the init's
    /// exit path share so that each kill is reported once.
    async fn publish_new_ooms(&self, id: &str, cgroup: &Cgroup, seen: &AtomicU64) {
        let Ok(now) = cgroup.oom_kills() else { return };
        if seen.fetch_max(now, Ordering::SeqCst) < now {
            log::info!("container {id}: OOM kill");
            self.publisher.publish(Event::Oom { id: id.to_string() }).await;
        }
    }

    fn watch_oom(self: &Arc<Self>, id: &str, cgroup: Arc<Cgroup>, seen: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                shared.publish_new_ooms(&id, &cgroup, &seen).await;
            }
        })
    }

    /// Create runs as a task of its own: a request cancelled half-way must not stop it between a step
    /// and the guard recording that step. The table lock is held only to claim and to commit the id.
    async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let shared = self.clone();
        let id = req.id.clone();
        tokio::spawn(async move {
            let mut guard = CreateGuard::claim(&shared, &req.id).await?;
            match shared.create_steps(&req, &mut guard).await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    log::warn!("create {}: {e}", req.id);
                    guard.undo().await;
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| Error::Other(format!("create {id}: internal task failed: {e}")))?
    }

    /// Create's steps; each one hands what it set up to `guard` before the next may fail.
    async fn create_steps(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        guard: &mut CreateGuard,
    ) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restoring from a checkpoint".into()));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let spec = Spec::load(&spec_path)
            .map_err(|e| Error::InvalidArgument(format!("OCI spec {}: {e}", spec_path.display())))?;
        let mut spec = spec;
        let opts = config::runtime_options(req.options.as_ref())?;
        let config = Config::resolve(&opts)?;
        apply_log_level(&config.log_level);
        if let Some(cg) = req.options.as_ref().and_then(super::bootstrap::shim_cgroup) {
            // Normally done by `start` already (the options are on its stdin too); joining again is a no-op.
            let joined = super::bootstrap::join_shim_cgroup(&cg, std::process::id()).map_err(Error::InvalidArgument)?;
            log::debug!("shim joined its cgroup {cg}: {joined:?}");
        }
        log::info!("creating container {id} in {}", bundle.display());
        // The profile's [security] section, before the cgroup and the launcher read the spec.
        let changed = profile::apply(&config.security, &mut spec)?;
        if !changed.is_empty() {
            log::debug!("container {id}: [security] changed the spec: {}", changed.join("; "));
        }
        let spec = Arc::new(spec);

        let (b, mounts, c, i) = (bundle.clone(), req.rootfs.clone(), config.clone(), id.clone());
        guard.rootfs = Some(blocking(move || Rootfs::mount(&b, &mounts, &c, &i)).await??);

        let policy = CgroupPolicy { allow_unenforced_limits: config.cgroup.allow_unenforced_limits };
        let (sp, ns, i) = (spec.clone(), self.namespace.clone(), id.clone());
        let cgroup = Arc::new(blocking(move || Cgroup::create(sp.linux().as_ref(), &ns, &i, &policy)).await??);
        guard.cgroup = Some(cgroup.clone());
        let cgroup = Some(cgroup);

        let paths = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (stdio, pending) = Pending::prepare(&paths, &id, &self.namespace)?;
        let (sp, b, i, cg) = (spec.clone(), bundle.clone(), id.clone(), cgroup.clone());
        let mut created = blocking(move || {
            let req = launcher::CreateRequest { id: &i, bundle: &b, spec: &sp, stdio };
            launcher::create(req, &mut place_in(cg))
        })
        .await??;
        let pty_master = created.pty_master.take();
        let pid = created.pid;
        guard.created = Some(created);
        let io = pending.attach(pty_master)?;

        let init = Process::new("", paths.clone());
        init.state.set_pid(pid);
        *init.io.lock().await = io;
        let oom = cgroup.clone().map(|cg| {
            let seen = Arc::new(AtomicU64::new(cg.oom_kills().unwrap_or(0)));
            (cg, seen)
        });
        let kill_rest = cgroup.clone().filter(|_| kill_all_on_init_exit(&spec));
        self.monitor(&id, "", pid, &init, oom.clone(), kill_rest);
        let oom_watch = oom.map(|(cg, seen)| self.watch_oom(&id, cg, seen));
        self.publisher
            .publish(Event::Create {
                id: id.clone(),
                bundle: req.bundle.clone(),
                pid: pid as u32,
                stdin: paths.stdin,
                stdout: paths.stdout,
                stderr: paths.stderr,
                terminal: paths.terminal,
            })
            .await;
        let container = Container {
            bundle,
            spec,
            cgroup: None,
            rootfs: Rootfs::default(),
            init,
            execs: HashMap::new(),
            gate: None,
            oom_watch,
            security: config.security.clone(),
        };
        guard.commit(container).await;
        Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    async fn start(self: &Arc<Self>, req: StartRequest) -> Result<StartResponse> {
        let mut containers = self.containers.lock().await;
        let c = containers.get_mut(&req.id)?;
        if req.exec_id.is_empty() {
            let mut created = c
                .gate
                .take()
                .ok_or_else(|| Error::FailedPrecondition(format!("container {} was already started", req.id)))?;
            let (r, created) = blocking(move || (created.start(), created)).await?;
            drop(created);
            let pid = c.init.state.pid();
            if let Err(e) = r {
                c.init.state.allow_exit_event();
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                return Err(Error::Launch(e));
            }
            c.init.state.set_phase(Phase::Running);
            self.publisher.publish(Event::Start { id: req.id.clone(), pid: pid as u32 }).await;
            c.init.state.allow_exit_event();
            self.run_hooks(&req.id, c, "running", pid).await;
            return Ok(StartResponse { pid: pid as u32, ..Default::default() });
        }

        let container_pid = c.init.state.pid();
        if c.init.state.phase() == Phase::Stopped {
            return Err(Error::FailedPrecondition(format!("container {} is not running", req.id)));
        }
        let spec = c.spec.clone();
        let cgroup = c.cgroup.clone();
        let p = c
            .execs
            .get_mut(&req.exec_id)
            .ok_or_else(|| Error::ProcessNotFound { id: req.id.clone(), exec_id: req.exec_id.clone() })?;
        let process = p.exec_spec.take().ok_or_else(|| {
            Error::FailedPrecondition(format!("exec {} of {} was already started", req.exec_id, req.id))
        })?;
        let (stdio, pending) = Pending::prepare(&p.io_paths, &req.id, &self.namespace)?;
        let execd = blocking(move || {
            let r = launcher::ExecRequest { container_pid, spec: &spec, process: &process, stdio };
            launcher::exec(r, &mut place_in(cgroup))
        })
        .await?;
        let mut execd = match execd {
            Ok(e) => e,
            Err(e) => {
                p.state.set_exited(ExitInfo { status: 255, at: SystemTime::now() });
                return Err(Error::Launch(e));
            }
        };
        *p.io.lock().await = pending.attach(execd.pty_master.take())?;
        p.state.set_pid(execd.pid);
        p.state.set_phase(Phase::Running);
        self.monitor(&req.id, &req.exec_id, execd.pid, p, None, None);
        self.publisher
            .publish(Event::ExecStarted { id: req.id.clone(), exec_id: req.exec_id.clone(), pid: execd.pid as u32 })
            .await;
        p.state.allow_exit_event();
        Ok(StartResponse { pid: execd.pid as u32, ..Default::default() })
    }

    async fn delete(self: &Arc<Self>, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut containers = self.containers.lock().await;
        let c = containers.get_mut(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.id, &req.exec_id)?;
            let exit = match p.state.phase() {
                Phase::Stopped => p.state.exit(),
                Phase::Created if p.state.pid() == 0 => None,
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "exec {} of {} is still running: kill it first",
                        req.exec_id, req.id
                    )))
                }
            };
            let pid = p.state.pid() as u32;
            c.execs.remove(&req.exec_id);
            let exit = exit.unwrap_or(ExitInfo { status: 0, at: SystemTime::now() });
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            });
        }

        match c.init.state.phase() {
            Phase::Running | Phase::Paused => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is still running: kill it first (ctr task kill, or delete --force)",
                    req.id
                )))
            }
            Phase::Created => {
                // Never started: the init is blocked before execve; closing the gate ends it.
                c.gate.take();
                let pid = c.init.state.pid();
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                c.init.state.allow_exit_event();
            }
            Phase::Stopped => {}
        }
        let exit = match tokio::time::timeout(Duration::from_secs(10), c.init.state.wait()).await {
            Ok(e) => e,
            Err(_) => ExitInfo { status: 255, at: SystemTime::now() },
        };
        for p in c.execs.values() {
            if p.state.phase() != Phase::Stopped && p.state.pid() > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.state.pid()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let Some(Slot::Ready(mut c)) = containers.slots.remove(&req.id) else { unreachable!("checked above") };
        if let Some(w) = c.oom_watch.take() {
            w.abort();
        }
        let pid = c.init.state.pid() as u32;
        let cgroup = c.cgroup.take();
        let mut rootfs = std::mem::take(&mut c.rootfs);
        blocking(move || {
            delete_cgroup(cgroup);
            rootfs.unmount();
        })
        .await?;
        self.run_hooks(&req.id, &c, "stopped", pid as i32).await;
        log::info!("deleted container {} (bundle {})", req.id, c.bundle.display());
        self.publisher.publish(Event::Delete { id: req.id.clone(), pid, status: exit.status, at: exit.at }).await;
        if containers.is_empty() {
            // Gone before this reply: containerd must not find (and reuse) the socket of a shim with
            // nothing left to serve. A new container of the pod starts a new server.
            self.socket.remove();
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(LINGER).await;
                if shared.containers.lock().await.is_empty() {
                    log::info!("last container deleted; shim exits");
                    shared.exit.signal();
                }
            });
        }
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    /// OCI poststart ("running") and poststop ("stopped") hooks: a failure is logged, as the
    /// runtime spec says it must not fail the operation.
    async fn run_hooks(&self, id: &str, c: &Container, status: &str, pid: i32) {
        let hooks = c.spec.hooks().as_ref().and_then(|h| match status {
            "running" => h.poststart().clone(),
            _ => h.poststop().clone(),
        });
        let Some(hooks) = hooks.filter(|h| !h.is_empty()) else { return };
        let state = launcher::ContainerState::new(&c.spec, id, &c.bundle, status, pid);
        let reaper = self.reaper.clone();
        match blocking(move || reaper.exclusive(|| launcher::run_hooks(&hooks, &state))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("container {id}: {e}"),
            Err(e) => log::warn!("container {id}: hooks: {e}"),
        }
    }

    async fn kill(&self, req: KillRequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id)?;
        let sig = req.signal as i32;
        if req.exec_id.is_empty() && req.all {
            if let Some(cg) = c.cgroup.clone() {
                if c.init.state.phase() == Phase::Created {
                    // A never-started init dies from this too: its TaskExit (and Wait) must not wait for a
                    // Start that will never come.
                    c.init.state.allow_exit_event();
                }
                blocking(move || cg.kill_all(sig)).await??;
                return Ok(());
            }
        }
        let p = c.process(&req.id, &req.exec_id)?;
        let pid = p.state.pid();
        if p.state.phase() == Phase::Stopped || pid <= 0 {
            return Err(Error::NotFound(format!("process {} of {}: already finished", req.exec_id, req.id)));
        }
        if p.state.phase() == Phase::Created {
            p.state.allow_exit_event();
        }
        let signal = nix::sys::signal::Signal::try_from(sig)
            .map_err(|_| Error::InvalidArgument(format!("signal {sig} is not a valid signal number")))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => {
                Err(Error::NotFound(format!("process {} of {}: already finished", req.exec_id, req.id)))
            }
            Err(e) => Err(Error::Other(format!("sending {signal} to pid {pid}: {e}"))),
        }
    }

    async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        let mut containers = self.containers.lock().await;
        let c = containers.get_mut(&req.id)?;
        if c.execs.contains_key(&req.exec_id) || req.exec_id.is_empty() {
            return Err(Error::AlreadyExists(format!("exec id {:?} in container {}", req.exec_id, req.id)));
        }
        if c.init.state.phase() == Phase::Stopped {
            return Err(Error::FailedPrecondition(format!("container {} is not running", req.id)));
        }
        let any = req.spec.as_ref().ok_or_else(|| Error::InvalidArgument("exec: no process spec".into()))?;
        let mut process: oci_spec::runtime::Process = serde_json::from_slice(&any.value).map_err(|e| {
            Error::InvalidArgument(format!("exec {}: process spec ({}): {e}", req.exec_id, any.type_url))
        })?;
        let changed = profile::apply_process(&c.security, &mut process)?;
        if !changed.is_empty() {
            log::debug!("exec {} in {}: [security] changed the process: {}", req.exec_id, req.id, changed.join("; "));
        }
        let mut p = Process::new(
            &req.exec_id,
            IoPaths { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        );
        p.exec_spec = Some(process);
        c.execs.insert(req.exec_id.clone(), p);
        self.publisher.publish(Event::ExecAdded { id: req.id.clone(), exec_id: req.exec_id.clone() }).await;
        Ok(())
    }

    async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id)?;
        let p = c.process(&req.id, &req.exec_id)?;
        let exit = p.state.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.state.pid().max(0) as u32,
            status: p.state.status().into(),
            stdin: p.io_paths.stdin.clone(),
            stdout: p.io_paths.stdout.clone(),
            stderr: p.io_paths.stderr.clone(),
            terminal: p.io_paths.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let state = {
            let containers = self.containers.lock().await;
            let c = containers.get(&req.id)?;
            c.process(&req.id, &req.exec_id)?.state.clone()
        };
        let exit = state.wait().await;
        Ok(WaitResponse { exit_status: exit.status, exited_at: Some(timestamp(exit.at)).into(), ..Default::default() })
    }

    async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id)?;
        let mut pids = match &c.cgroup {
            Some(cg) => cg.pids().unwrap_or_default(),
            None => Vec::new(),
        };
        if pids.is_empty() && c.init.state.phase() != Phase::Stopped {
            pids.push(c.init.state.pid());
        }
        let processes = pids.into_iter().map(|pid| ProcessInfo { pid: pid as u32, ..Default::default() }).collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    async fn cgroup_of(&self, id: &str) -> Result<(Arc<Cgroup>, Arc<ProcState>)> {
        let containers = self.containers.lock().await;
        let c = containers.get(id)?;
        let cg = c.cgroup.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!("container {id} has no cgroup (the host has no cgroup v2 hierarchy)"))
        })?;
        Ok((cg, c.init.state.clone()))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let (cg, state) = self.cgroup_of(id).await?;
        if state.phase() != Phase::Running {
            return Err(Error::FailedPrecondition(format!("container {id} is not running")));
        }
        blocking(move || cg.freeze()).await??;
        state.set_phase(Phase::Paused);
        self.publisher.publish(Event::Paused { id: id.to_string() }).await;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let (cg, state) = self.cgroup_of(id).await?;
        if state.phase() != Phase::Paused {
            return Err(Error::FailedPrecondition(format!("container {id} is not paused")));
        }
        blocking(move || cg.thaw()).await??;
        state.set_phase(Phase::Running);
        self.publisher.publish(Event::Resumed { id: id.to_string() }).await;
        Ok(())
    }

    async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        let (cg, _) = self.cgroup_of(&req.id).await?;
        let any = req.resources.as_ref().ok_or_else(|| Error::InvalidArgument("update: no resources".into()))?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("update {}: resources ({}): {e}", req.id, any.type_url)))?;
        blocking(move || cg.update(&resources)).await??;
        Ok(())
    }

    async fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let (cg, _) = self.cgroup_of(&req.id).await?;
        let stats = blocking(move || cg.stats()).await??;
        Ok(StatsResponse { stats: Some(stats).into(), ..Default::default() })
    }

    async fn process_io(&self, id: &str, exec_id: &str) -> Result<Arc<Mutex<ProcessIo>>> {
        let containers = self.containers.lock().await;
        let c = containers.get(id)?;
        Ok(c.process(id, exec_id)?.io.clone())
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.shared.state(req).await?)
    }

    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        Ok(self.shared.create(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        Ok(self.shared.start(req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        Ok(self.shared.delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.shared.pids(req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.shared.pause(&req.id).await?;
        Ok(Empty::default())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.shared.resume(&req.id).await?;
        Ok(Empty::default())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(Error::Unimplemented("checkpoint (CRIU)".into()).into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.shared.kill(req).await?;
        Ok(Empty::default())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.shared.exec(req).await?;
        Ok(Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let io = self.shared.process_io(&req.id, &req.exec_id).await?;
        let r = io.lock().await.resize(req.width, req.height);
        r?;
        Ok(Empty::default())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let io = self.shared.process_io(&req.id, &req.exec_id).await?;
        io.lock().await.close_stdin();
        Ok(Empty::default())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.shared.update(req).await?;
        Ok(Empty::default())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        Ok(self.shared.wait(req).await?)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.shared.stats(req).await?)
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let containers = self.shared.containers.lock().await;
        let task_pid = containers.get(&req.id).ok().map(|c| c.init.state.pid().max(0) as u32).unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid, ..Default::default() })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.shared.containers.lock().await.is_empty() {
            log::info!("shutdown: no containers left; shim exits");
            self.shared.socket.remove();
            self.shared.exit.signal();
        }
        Ok(Empty::default())
    }
}
