//! Freezer, kill and process-list helpers. These use only cgroup2 core files (cgroup.freeze, cgroup.events,
//! cgroup.kill, cgroup.procs), so they work on a hybrid host's unified hierarchy without any controller.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{fs, CgroupError};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

fn wait_frozen(dir: &Path, want: u64) -> Result<(), CgroupError> {
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        if fs::keyed_value(&fs::read(&events)?, "frozen") == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Timeout {
                path: dir.to_path_buf(),
                what: if want == 1 { "cgroup.events frozen 1" } else { "cgroup.events frozen 0" },
                secs: FREEZE_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn freeze(dir: &Path) -> Result<(), CgroupError> {
    fs::write(&dir.join("cgroup.freeze"), "1")?;
    wait_frozen(dir, 1)
}

pub(crate) fn thaw(dir: &Path) -> Result<(), CgroupError> {
    fs::write(&dir.join("cgroup.freeze"), "0")?;
    wait_frozen(dir, 0)
}

/// Pids in this cgroup and its descendants.
pub(crate) fn pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut out = Vec::new();
    collect_pids(dir, &mut out)?;
    Ok(out)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let Some(text) = fs::read_opt(&dir.join("cgroup.procs"))? else {
        return Ok(());
    };
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out)?;
            }
        }
    }
    Ok(())
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a pid that already exited gives ESRCH, ignored.
    let _ = unsafe { libc::kill(pid, sig) };
}

/// Signals every process. For SIGKILL: cgroup.kill (Linux 5.14+) or, without it, freeze/kill/thaw rounds so
/// forks cannot escape; then waits until cgroup.procs is empty.
pub(crate) fn kill_all(dir: &Path, sig: i32) -> Result<(), CgroupError> {
    if sig != libc::SIGKILL {
        for pid in pids(dir)? {
            signal(pid, sig);
        }
        return Ok(());
    }
    let kill_file = dir.join("cgroup.kill");
    let deadline = Instant::now() + KILL_TIMEOUT;
    if kill_file.exists() {
        fs::write(&kill_file, "1")?;
    }
    loop {
        let left = pids(dir)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Timeout {
                path: dir.to_path_buf(),
                what: "every process to exit after SIGKILL",
                secs: KILL_TIMEOUT.as_secs(),
            });
        }
        if !kill_file.exists() {
            let frozen = freeze(dir).is_ok();
            for pid in &left {
                signal(*pid, sig);
            }
            if frozen {
                let _ = fs::write(&dir.join("cgroup.freeze"), "0");
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
