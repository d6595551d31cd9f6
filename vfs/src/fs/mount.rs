//! The public mount API: what the shim embeds and `lazyctl mount` drives.
//!
//! ```ignore
//! let mounted = vfs::fs::mount(index, source, stats, Path::new("/run/x/rootfs"), MountOptions::default())?;
//! // ... the container runs ...
//! mounted.unmount()?; // or drop it: Drop unmounts too
//! ```
//!
//! A [`Mounted`] never leaks its mount: unmount (explicit or on drop) stops the prefetcher, unmounts,
//! and joins the FUSE threads; if the mount is busy (a process still has a file open, or an overlay
//! uses it as a lower layer) it is detached lazily (`MNT_DETACH`), and the request threads keep
//! serving the remaining users until the kernel lets go of the filesystem.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::AsFd;

use fuser::{BackgroundSession, MountOption, SessionACL};
use nix::errno::Errno;

use crate::fetch::ChunkSource;
use crate::filestore::FileStore;
use crate::index::Index;
use crate::stats::{Snapshot, Stats, STATS_IOCTL, STATS_MAX};

use super::core::LazyFs;
use super::fuse::FuseAdapter;
use super::prefetch::{PrefetchMode, Prefetcher};
use super::record::Recorder;
use super::startlog::{Replayed, StartLog};
use super::uring::{Rings, Uring};
use super::FsError;

/// How long unmount waits for a prefetch batch in flight before leaving it behind.
const PREFETCH_STOP_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// What to fetch in the background after mounting.
    pub prefetch: PrefetchMode,
    /// Write the order in which files are first read to this file (see [`super::record`]).
    pub record: Option<PathBuf>,
    /// FUSE request threads: reads waiting on the network must not block metadata requests. Over
    /// io_uring, the workers that serve reads (one thread per CPU answers everything else).
    pub threads: usize,
    /// Source name shown in /proc/mounts (`lazy` by default; the shim may put the image name here).
    pub fsname: String,
    /// Kernel readahead for the mount in KiB. The kernel starts FUSE mounts at 128 KiB, which cuts a
    /// sequential read into 8 requests per 1 MiB chunk. Requests are capped at 1 MiB (FUSE max_pages),
    /// so 4 MiB lets a sequential reader have ~4 chunk fetches in flight on different request threads
    /// (cold 256 MiB read: 166 MiB/s at 1 MiB, 197 MiB/s at 4 MiB here). Readahead only grows for
    /// sequential access, so random readers do not over-fetch. 0 leaves the kernel default.
    pub readahead_kb: u32,
    /// Whole verified files beside the chunk cache ([`crate::filestore`]): with `passthrough` on
    /// (and available), fully cached files are written there in the background and later opens
    /// pass through to them. `None`: every read goes through the chunk path.
    pub file_store: Option<Arc<FileStore>>,
    /// Serve stored files with FUSE passthrough (the kernel reads the stored file directly) when the
    /// kernel supports it (Linux 6.9+) and the process has CAP_SYS_ADMIN; falls back by itself.
    pub passthrough: bool,
    /// The image's start log ([`super::startlog`]): replayed after mounting if it exists, and
    /// rewritten with what this start looked up. `None`: neither.
    pub start_log: Option<PathBuf>,
    /// Serve requests through FUSE over io_uring ([`super::uring`]) when the kernel offers it;
    /// /dev/fuse otherwise.
    pub io_uring: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            prefetch: PrefetchMode::Prioritized,
            record: None,
            threads: 8,
            fsname: "lazy".to_string(),
            readahead_kb: 4096,
            file_store: None,
            passthrough: true,
            start_log: None,
            io_uring: true,
        }
    }
}

/// A mounted lazy filesystem. Unmounts on drop.
pub struct Mounted {
    mountpoint: PathBuf,
    fs: Arc<LazyFs>,
    session: Option<BackgroundSession>,
    uring: Option<Uring>,
    prefetcher: Option<Prefetcher>,
    start_log: Option<StartLog>,
}

/// Mounts `index` read-only at `mountpoint`, serving file contents from `source`. Returns once the
/// kernel has completed the FUSE handshake, so the mount is usable immediately. Starts prefetch.
pub fn mount(
    index: Arc<Index>,
    source: Arc<dyn ChunkSource>,
    stats: Arc<Stats>,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mounted, FsError> {
    let mountpoint =
        mountpoint.canonicalize().map_err(|source| FsError::Mountpoint { path: mountpoint.to_path_buf(), source })?;
    let recorder = match &opts.record {
        Some(path) => Some(Recorder::create(path, index.inodes.len())?),
        None => None,
    };
    let passthrough = opts.passthrough && opts.file_store.is_some() && has_cap_sys_admin();
    if opts.passthrough && opts.file_store.is_some() && !passthrough {
        log::info!("FUSE passthrough needs CAP_SYS_ADMIN, which this process lacks: every read goes through FUSE");
    }
    let mut fs = LazyFs::new(index, source, stats, recorder).with_linker();
    let start_recorder = opts.start_log.as_ref().map(|_| StartLog::recorder());
    if let Some(r) = &start_recorder {
        fs = fs.with_start_recorder(r.clone());
    }
    // Stored files only serve passthrough opens: without passthrough they would only take disk space.
    if let Some(store) = opts.file_store.as_ref().filter(|_| passthrough) {
        fs = fs.with_file_store(store.clone());
    }
    let fs = Arc::new(fs);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        // fuser's own mount code passes Subtype only to fusermount; the kernel takes it as an option,
        // so /proc/mounts shows the type as `fuse.lazy`.
        MountOption::CUSTOM("subtype=lazy".to_string()),
        MountOption::RO,
        // The kernel checks modes and owners itself: the index has them, and it is faster.
        MountOption::DefaultPermissions,
        // A container root filesystem needs its device nodes and setuid binaries to work.
        MountOption::Dev,
        MountOption::Suid,
        MountOption::Exec,
    ];
    // allow_other: without it the kernel refuses every user but the mounter, and container
    // processes (directly or through the overlay above) run as other users.
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    // Rings exist before the handshake asks for io_uring: once granted, the kernel holds every
    // request until they are registered.
    let rings = match opts.io_uring {
        true => Rings::prepare().map_err(|why| uring_unavailable(&why)).ok(),
        false => None,
    };
    let adapter = FuseAdapter::new(fs.clone(), passthrough, rings.is_some());
    let negotiated = adapter.negotiated();
    let mount_err = |source| FsError::Mount { path: mountpoint.clone(), source };
    let session = fuser::Session::new(adapter, &mountpoint, &config).map_err(mount_err)?;
    let uring = match (rings, negotiated.get()) {
        (Some(rings), Some(n)) if n.uring => match rings.start(session.as_fd(), fs.clone(), *n, opts.threads) {
            Ok(uring) => Some(uring),
            Err(e) => {
                log::warn!("FUSE over io_uring: {e}; serving requests through /dev/fuse");
                None
            }
        },
        _ => None,
    };
    let session = session.spawn().map_err(mount_err)?;
    if opts.readahead_kb > 0 {
        set_readahead(&mountpoint, opts.readahead_kb);
    }
    log::debug!(
        "lazy filesystem mounted at {} ({} inodes, requests through {})",
        mountpoint.display(),
        fs.index().inodes.len(),
        if uring.is_some() { "io_uring" } else { "/dev/fuse" }
    );
    let start_log = opts.start_log.zip(start_recorder).map(|(log, recorder)| {
        StartLog::start(log, mountpoint.clone(), fs.index().clone(), fs.paths().clone(), recorder, fs.stats().clone())
    });
    let prefetcher = Prefetcher::start(fs.clone(), opts.prefetch);
    Ok(Mounted { mountpoint, fs, session: Some(session), uring, prefetcher, start_log })
}

/// Says once per process why mounts use /dev/fuse although io_uring was asked for.
fn uring_unavailable(why: &str) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| log::info!("FUSE over io_uring unavailable: {why}; FUSE requests go through /dev/fuse"));
}

/// linux/capability.h
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the effective capabilities include CAP_SYS_ADMIN (registering a FUSE backing file needs it).
fn has_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Sets the mount's readahead through its backing device info (/sys/class/bdi/MAJOR:MINOR): FUSE
/// caps what the filesystem may ask for in init at the kernel's current (small) value, but the
/// sysfs knob may raise it. Failure only costs speed, so it is logged, not returned.
fn set_readahead(mountpoint: &Path, kb: u32) {
    let dev = match nix::sys::stat::stat(mountpoint) {
        Ok(st) => st.st_dev,
        Err(err) => return log::debug!("readahead of {}: stat: {err}", mountpoint.display()),
    };
    let knob = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    if let Err(err) = std::fs::write(&knob, kb.to_string()) {
        log::debug!("readahead of {}: {knob}: {err}; keeping the kernel default", mountpoint.display());
    }
}

impl Mounted {
    /// The canonical mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.fs.stats()
    }

    /// Files waiting for the background file-store writer.
    pub fn store_backlog(&self) -> usize {
        self.fs.store_backlog()
    }

    /// False once the filesystem was unmounted from outside (e.g. `umount`): its request threads ended.
    pub fn is_alive(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.guard.is_finished())
    }

    /// Whether requests are served through FUSE over io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.uring.is_some()
    }

    /// True while prefetch workers are still running.
    pub fn prefetching(&self) -> bool {
        self.prefetcher.as_ref().is_some_and(|p| !p.is_finished())
    }

    /// What the replay of the image's start log did, once it is over ([`super::startlog`]);
    /// `None` while it runs or when the mount keeps no start log.
    pub fn start_log_replayed(&self) -> Option<Replayed> {
        self.start_log.as_ref()?.replayed()
    }

    /// Unmounts now. A busy mount is detached lazily (and this still returns `Ok`, with a warning).
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), FsError> {
        // First: a replay in progress holds directories of the mount open.
        if let Some(l) = self.start_log.take() {
            l.stop();
        }
        if let Some(p) = self.prefetcher.take() {
            p.stop(PREFETCH_STOP_WAIT);
        }
        let Some(session) = self.session.take() else { return Ok(()) };
        if let Some(uring) = &self.uring {
            uring.unmounting();
        }
        // fuser unmounts (plain umount(2), so a busy mount is refused, not yanked away from users)
        // and joins the request threads, which end when the kernel closes the connection.
        let err = match session.umount_and_join() {
            Ok(()) => {
                // The connection is gone: the kernel has completed every ring entry.
                if let Some(uring) = self.uring.take() {
                    uring.join();
                }
                return Ok(());
            }
            Err(err) => err,
        };
        match err.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EBUSY) => {
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|source| FsError::Unmount { path: self.mountpoint.clone(), source })?;
                // The request threads keep serving the open files and exit by themselves when the
                // kernel releases the connection; the session no longer owns the mount, so nothing
                // will unmount this path again (it may hold another mount by then).
                log::warn!(
                    "lazy filesystem at {} was busy: detached it; it keeps serving open files until they are closed",
                    self.mountpoint.display()
                );
                Ok(())
            }
            // Not mounted any more (someone ran umount): the request threads end on their own.
            Some(Errno::EINVAL) => Ok(()),
            _ if !crate::mountinfo::is_mount_point(&self.mountpoint) => {
                log::warn!("lazy filesystem at {}: request threads ended with: {err}", self.mountpoint.display());
                Ok(())
            }
            _ => Err(FsError::Unmount {
                path: self.mountpoint.clone(),
                source: err.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO),
            }),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_inner() {
            log::error!("{err}");
        }
    }
}

/// Reads the counters of the lazy filesystem mounted at `mountpoint` (the [`STATS_IOCTL`] of its root).
pub fn read_stats(mountpoint: &Path) -> Result<Snapshot, FsError> {
    use std::os::fd::AsRawFd as _;
    let err = |reason: String| FsError::Stats { path: mountpoint.to_path_buf(), reason };
    let root = std::fs::File::open(mountpoint).map_err(|e| err(format!("opening it: {e}")))?;
    let mut buf = vec![0u8; STATS_MAX];
    // SAFETY: the ioctl writes at most STATS_MAX bytes (its size field) into `buf`, which holds that many.
    let n = unsafe { libc::ioctl(root.as_raw_fd(), STATS_IOCTL as _, buf.as_mut_ptr()) };
    if n < 0 {
        return Err(match Errno::last() {
            Errno::ENOTTY | Errno::ENOSYS | Errno::EINVAL | Errno::ENOTSUP => {
                err("not a lazy filesystem mount (its root does not answer the stats ioctl)".to_string())
            }
            e => err(format!("stats ioctl: {e}")),
        });
    }
    buf.truncate(n as usize);
    serde_json::from_slice(&buf).map_err(|e| err(format!("bad stats JSON: {e}")))
}
