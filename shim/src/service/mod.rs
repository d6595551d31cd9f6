//! The shim process: the `start` and `delete` actions containerd runs, and the ttrpc server with
//! the task service.
//!
//! - [`start`]: `start` action (pod grouping, prints only the address, detaches the server).
//! - [`delete`]: `delete` action after a shim crash (processes, cgroup, mounts).
//! - [`task`]: the Task service; [`process`]: process state; [`stdio`]: FIFOs, terminal, log URIs.
//! - [`reaper`]: subreaper + SIGCHLD loop; [`events`]: ordered task events.
//! - [`config`]: the TOML config; [`rootfs`] and [`lazy`]: the container's root filesystem.
//! - [`error`]: the one mapping from our errors to ttrpc codes.
//! - [`bootstrap`]: `start`'s stdin (BootstrapParams or options) and ShimCgroup; [`info`]: `-info`.
//! - [`socket`]: the server's socket file, removed before the last Delete/Shutdown replies.
//! - [`logging`]: the server's log (containerd's FIFO).

pub mod bootstrap;
pub mod config;
pub mod delete;
pub mod error;
pub mod events;
pub mod info;
pub mod lazy;
pub mod logging;
pub mod process;
pub mod profile;
pub mod reaper;
pub mod rootfs;
pub mod socket;
pub mod start;
pub mod stdio;
pub mod task;

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::Context;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;

/// Entry of every invocation except `init`: parses containerd's flags and runs the action.
pub fn main() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    // containerd 2.x runs `<shim> -info` (a flag, not an action) with nothing else on the command line.
    if args[1..].iter().any(|a| a == "-info" || a == "--info") {
        return match info::run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("containerd-shim-lazy-v2: {e:#}");
                1
            }
        };
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-lazy-v2: {e}");
            return 2;
        }
    };
    if flags.version {
        println!("containerd-shim-lazy-v2 version {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let result = match flags.action.as_str() {
        "start" => start::run(&flags),
        "delete" => delete::run(&flags),
        "" => serve(&flags),
        other => Err(anyhow::anyhow!("unknown action {other:?} (containerd runs `start`, `delete` or the server)")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-lazy-v2: {e:#}");
            1
        }
    }
}

fn serve(flags: &containerd_shim::Flags) -> anyhow::Result<()> {
    start::check_socket_flag(flags)?;
    // The log FIFO in the bundle is read by containerd; without it (run by hand) log to stderr.
    if !logging::init(flags.debug) {
        eprintln!("containerd-shim-lazy-v2: no `log` FIFO in the working directory; logging is off");
    }
    fix_mmap_threshold();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let result = rt.block_on(serve_async(flags));
    if let Err(e) = &result {
        // containerd sees a dead socket and runs `delete`; do not leave the socket file behind.
        log::error!("shim server failed: {e:#}");
        socket::SocketFile::new(flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket)).remove();
    }
    result
}

/// Large allocations (each lazy mount's FUSE request buffers are 16 MiB, fetch spans a few MiB) must
/// go straight to mmap and back to the kernel when freed. glibc raises its mmap threshold to the
/// size of the largest mmapped block freed so far (up to 32 MiB); after that, every 16 MiB FUSE
/// buffer comes from a malloc arena and calloc must zero it, so each mount cost ~38 MiB of RSS while
/// idle (10 containers in one pod shim: 384 MiB; with the threshold fixed: 12 MiB). Setting the
/// threshold explicitly turns that adjustment off.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before any other thread exists.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
        if ok != 1 {
            log::warn!("mallopt(M_MMAP_THRESHOLD) failed; lazy mounts may hold more memory than needed");
        }
    }
}

fn listener(flags: &containerd_shim::Flags) -> anyhow::Result<UnixListener> {
    if let Some(fd) = std::env::var(start::LISTEN_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) {
        std::env::remove_var(start::LISTEN_FD_ENV);
        // SAFETY: `start` bound this socket and passed its fd number; nothing else in this process
        // owns it.
        let l = unsafe { UnixListener::from_raw_fd(fd) };
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .context("setting FD_CLOEXEC on the listener")?;
        return Ok(l);
    }
    let path = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket);
    UnixListener::bind(path).with_context(|| format!("binding {path}"))
}

async fn serve_async(flags: &containerd_shim::Flags) -> anyhow::Result<()> {
    let reaper = reaper::Reaper::install().context("becoming a child subreaper")?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let remote = RemotePublisher::new(&ttrpc_address)
        .await
        .with_context(|| format!("connecting to containerd's events at {ttrpc_address}"))?;
    let exit = Arc::new(ExitSignal::default());
    let unix_listener = listener(flags)?;
    let socket = Arc::new(socket::SocketFile::new(flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket)));
    let publisher = events::Publisher::new(remote, &flags.namespace);
    let service = task::TaskService::new(&flags.namespace, publisher, reaper, exit.clone(), socket.clone());
    let listener = Listener::try_from(unix_listener).context("ttrpc listener")?;
    let mut server = Server::new().add_listener(listener).register_service(create_task(Arc::new(service)));
    server.start().await.context("starting the ttrpc server")?;
    log::info!("containerd-shim-lazy-v2 serving on {}", flags.socket);
    exit.wait().await;
    // Let the reply to Shutdown/Delete reach containerd before the connection goes away.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let _ = server.shutdown().await;
    socket.remove();
    Ok(())
}
