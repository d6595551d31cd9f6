//! The helper's log channel: the helper (and the container's init until its execve) writes its
//! log lines to a pipe on fd [`HELPER_LOG_FD`]; the shim forwards each line into its own log, so
//! a helper's warnings (an ignored seccomp flag, an unknown capability) reach containerd's log.
//! Its stderr cannot carry them: that is the container's stderr.
//!
//! Helper side: one write(2) per line, no thread, no lock beyond the call: it runs across fork.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::str::FromStr;

/// Fd number of the log pipe in the helper (the client dup2()s it there before exec).
pub const HELPER_LOG_FD: RawFd = 4;

/// The `log` facade backend of the helper: "LEVEL message\n" lines on [`HELPER_LOG_FD`].
struct PipeLogger;

impl log::Log for PipeLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string().replace('\n', " ");
        let line = format!("{} {text}\n", record.level());
        // SAFETY: writes a live buffer to a descriptor number; a closed fd just fails (EBADF).
        // One write of a line shorter than PIPE_BUF is atomic, so processes sharing the pipe
        // never interleave inside a line.
        let _ = unsafe { libc::write(HELPER_LOG_FD, line.as_ptr().cast(), line.len()) };
    }

    fn flush(&self) {}
}

/// Installs the pipe logger in the helper at `level` (the shim's level, from the command line),
/// when the shim gave it a log pipe. Without one (an old shim, a test), logging stays off.
pub fn install(level: log::LevelFilter) {
    if nix::fcntl::fcntl(HELPER_LOG_FD, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return;
    }
    static LOGGER: PipeLogger = PipeLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// The `--log-level=LEVEL` argument of `init`, if present and valid.
pub fn level_from_args(args: impl Iterator<Item = std::ffi::OsString>) -> log::LevelFilter {
    args.filter_map(|a| a.into_string().ok())
        .find_map(|a| a.strip_prefix("--log-level=").and_then(|l| log::LevelFilter::from_str(l).ok()))
        .unwrap_or(log::LevelFilter::Info)
}

/// Shim side: forwards the lines of the helper `helper_pid` from `reader` into the shim's log
/// until every writer closed the pipe (the helper exited, the container init exec'd).
pub fn forward(reader: OwnedFd, helper_pid: i32) {
    let fd = reader.as_raw_fd();
    let spawned = std::thread::Builder::new().name(format!("helper-log-{helper_pid}")).spawn(move || {
        for line in BufReader::new(std::fs::File::from(reader)).lines() {
            let Ok(line) = line else { break };
            let (level, text) = parse_line(&line);
            log::log!(target: "launcher::helper", level, "launcher helper {helper_pid}: {text}");
        }
    });
    if let Err(e) = spawned {
        log::warn!("launcher helper {helper_pid}: cannot start the thread reading its log (fd {fd}): {e}");
    }
}

/// "LEVEL text" -> (level, text); a line without a level is kept whole at info.
fn parse_line(line: &str) -> (log::Level, &str) {
    match line.split_once(' ') {
        Some((l, text)) => match log::Level::from_str(l) {
            Ok(level) => (level, text),
            Err(_) => (log::Level::Info, line),
        },
        None => (log::Level::Info, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_level() {
        assert_eq!(
            parse_line("WARN seccomp flag X is not supported"),
            (log::Level::Warn, "seccomp flag X is not supported")
        );
        assert_eq!(parse_line("DEBUG a b"), (log::Level::Debug, "a b"));
        assert_eq!(parse_line("no level here"), (log::Level::Info, "no level here"));
        let args = ["init", "--log-level=DEBUG"].map(std::ffi::OsString::from);
        assert_eq!(level_from_args(args.into_iter()), log::LevelFilter::Debug);
        assert_eq!(level_from_args(std::iter::empty()), log::LevelFilter::Info);
    }
}
