//! Shared end-to-end harness: start a docker-registry, a containerd, build and push images, boot
//! the cgroup v2 VM, and clean up everything each test created, also when it fails.
//!
//! Every resource a test creates is owned by a guard whose `Drop` releases it (processes are
//! killed and reaped, mounts unmounted, temp dirs removed), so a failing assertion never leaves a
//! registry listening or a FUSE mount behind for the next test.
//!
//! - [`prereq`]: decide whether a test can run here; skip with a reason, or FAIL when `CI=true`.
//! - [`bins`]: where the workspace's binaries (`lazyctl`, the shim) are.
//! - [`cleanup`]: drop guards for child processes and mounts.
//! - [`registry`]: a docker-registry on loopback that counts the bytes it serves and can be
//!   stopped and restarted on the same port and storage.
//! - [`debs`]: Debian packages of newer suites (containerd 1.7/2.x, soci-snapshotter), extracted and
//!   cached without touching the system's apt sources.
//! - [`images`]: build OCI image layouts in Rust (any tar feature a test needs) and push them.
//! - [`lazyctl`]: drive `lazyctl convert/mount/stats/inspect` exactly as a user would.
//! - [`scenario`]: steps the vfs tests share (publish + convert, read with errno).
//! - [`load`]: many lazy containers of one image started at once; shim RSS sampling.
//! - [`machine`]: what about the machine skews benchmark figures.
//! - [`tree`]: snapshot a directory tree's metadata and contents to compare two trees.

pub mod bins;
pub mod cleanup;
pub mod coldstart;
pub mod containerd;
pub mod cri;
pub mod debs;
pub mod images;
pub mod lazyctl;
pub mod link;
pub mod load;
pub mod machine;
pub mod prereq;
pub mod registry;
pub mod scenario;
pub mod shim_direct;
pub mod soci;
pub mod token_server;
pub mod tree;
pub mod vm;

pub use prereq::{prerequisites_met, Prereq};

/// One mebibyte, for file sizes and byte budgets in tests.
pub const MIB: u64 = 1 << 20;

/// Polls `cond` every 100 ms until it returns true or `limit` passes; returns whether it held.
pub fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// As [`wait_until`], failing the test with "timed out after .. waiting until `what`".
#[track_caller]
pub fn wait_for(what: &str, limit: std::time::Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(limit, cond), "timed out after {limit:?} waiting until {what}");
}

/// Makes `log` output of the harness visible in test output (`RUST_LOG` applies). Idempotent.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        struct Stderr;
        impl log::Log for Stderr {
            fn enabled(&self, m: &log::Metadata<'_>) -> bool {
                m.level() <= log::max_level()
            }
            fn log(&self, r: &log::Record<'_>) {
                eprintln!("[harness {}] {}", r.level(), r.args());
            }
            fn flush(&self) {}
        }
        static LOGGER: Stderr = Stderr;
        if log::set_logger(&LOGGER).is_ok() {
            let level = match std::env::var("RUST_LOG").as_deref() {
                Ok("debug") | Ok("trace") => log::LevelFilter::Debug,
                _ => log::LevelFilter::Info,
            };
            log::set_max_level(level);
        }
    });
}
