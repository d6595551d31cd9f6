//! The filesystem: logic over an index and a chunk source (plain Rust, testable without a mount),
//! plus the two FUSE transports, the only code in the crate that touches /dev/fuse.
//!
//! - [`core`]: [`LazyFs`], every answer the filesystem gives (lookup, getattr, readdir, read, xattrs).
//! - [`fuse`]: the fuser adapter over [`LazyFs`] (/dev/fuse, and the FUSE handshake).
//! - [`uring`]: FUSE over io_uring: per-CPU request queues, answered from [`LazyFs`] too.
//! - [`opens`]: how each inode's open handles read (passthrough or cached), for both transports.
//! - [`prefetch`]: background fetching of prioritized (or all) files after mounting.
//! - [`storer`]: writes fully cached files into the verified file store (for passthrough).
//! - [`linker`] (with [`elf`]): fetches the libraries a program being loaded needs, ahead of the loader.
//! - [`record`]: `--record FILE`, the order in which files are first read.
//! - [`startlog`]: what a start asked of the metadata, replayed by the next mount of the image.
//! - [`mount`]: the public API the shim and `lazyctl mount` use: [`mount()`], [`Mounted`], [`read_stats`].

pub mod core;
pub mod elf;
pub mod fuse;
pub mod linker;
pub mod mount;
pub mod opens;
pub mod prefetch;
pub mod record;
pub mod startlog;
pub mod storer;
pub mod uring;

#[cfg(test)]
mod mount_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use self::core::LazyFs;
pub use self::mount::{mount, read_stats, MountOptions, Mounted};
pub use self::prefetch::PrefetchMode;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("mountpoint {}: {source}{hint}", path.display(), hint = mountpoint_hint(source))]
    Mountpoint { path: PathBuf, source: std::io::Error },
    #[error("cannot mount the lazy filesystem at {}: {source} (mounting needs root and /dev/fuse)", path.display())]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("cannot unmount the lazy filesystem at {}: {source}", path.display())]
    Unmount { path: PathBuf, source: nix::errno::Errno },
    #[error("record file {}: {source}", path.display())]
    Record { path: PathBuf, source: std::io::Error },
    #[error("lazy stats of {}: {reason}", path.display())]
    Stats { path: PathBuf, reason: String },
}

fn mountpoint_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOTCONN) => " (a previous lazy mount died here: run `umount -l` on it first)",
        Some(libc::ENOENT) => " (create the directory first)",
        _ => "",
    }
}
