//! The shim server's log: containerd's `log` FIFO in the bundle, at containerd's level (`-debug`
//! or `RUST_LOG`, else info), without the FUSE library's line per request.
//!
//! fuser logs every FUSE request it dispatches at debug level. Under a containerd that runs at
//! debug level (and so starts its shims with `-debug`), that is one formatted FIFO write per
//! lookup, open and read, which containerd then parses and logs again: a warm
//! `import numpy, pandas` start spent most of its time there. Those lines stay available at
//! trace level.

use containerd_shim::logger::{FifoLogger, LOG_ENV};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Installs the logger; false when there is no `log` FIFO in the working directory (the server
/// was run by hand), and then nothing is logged.
pub fn init(debug: bool) -> bool {
    let Ok(fifo) = FifoLogger::new("", "") else { return false };
    if log::set_boxed_logger(Box::new(ShimLogger(fifo))).is_err() {
        return false;
    }
    log::set_max_level(level(std::env::var(LOG_ENV).ok().as_deref(), debug));
    true
}

/// `RUST_LOG` if it names a level (else info), raised to debug by containerd's `-debug`.
fn level(env: Option<&str>, debug: bool) -> LevelFilter {
    let level = env.and_then(|l| l.parse().ok()).unwrap_or(LevelFilter::Info);
    if debug {
        level.max(LevelFilter::Debug)
    } else {
        level
    }
}

struct ShimLogger(FifoLogger);

impl Log for ShimLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        wanted(metadata, log::max_level())
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether a record at `metadata` is logged at `max`: fuser's debug lines only at trace.
fn wanted(metadata: &Metadata, max: LevelFilter) -> bool {
    let fuser = metadata.target() == "fuser" || metadata.target().starts_with("fuser::");
    metadata.level() <= max && !(fuser && metadata.level() == Level::Debug && max < LevelFilter::Trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(target: &str, level: Level) -> Metadata<'_> {
        Metadata::builder().target(target).level(level).build()
    }

    #[test]
    fn fuser_request_lines_only_at_trace() {
        assert!(!wanted(&meta("fuser::request", Level::Debug), LevelFilter::Debug));
        assert!(wanted(&meta("fuser::request", Level::Debug), LevelFilter::Trace));
        assert!(wanted(&meta("fuser::session", Level::Warn), LevelFilter::Info));
        assert!(wanted(&meta("vfs::fetch", Level::Debug), LevelFilter::Debug));
        assert!(!wanted(&meta("vfs::fetch", Level::Debug), LevelFilter::Info));
        assert!(wanted(&meta("fuserfoo", Level::Debug), LevelFilter::Debug), "only the fuser crate");
    }

    #[test]
    fn level_follows_rust_log_and_debug_flag() {
        assert_eq!(level(None, false), LevelFilter::Info);
        assert_eq!(level(None, true), LevelFilter::Debug);
        assert_eq!(level(Some("warn"), false), LevelFilter::Warn);
        assert_eq!(level(Some("trace"), true), LevelFilter::Trace);
        assert_eq!(level(Some("nonsense"), false), LevelFilter::Info);
    }
}
