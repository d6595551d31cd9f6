//! The queue threads' scheduling policy: SCHED_IDLE while their CPUs have time to spare,
//! SCHED_OTHER while they do not.
//!
//! When a queue thread commits a reply, the kernel wakes the caller while that thread is still
//! running on the caller's CPU. The scheduler then sees the CPU busy and, if another CPU is idle,
//! moves the caller there: on a VM that means waking a halted vCPU (tens of microseconds), and the
//! caller's next request lands on that CPU's queue, whose reply may move it back. A CPU running
//! only SCHED_IDLE tasks counts as idle for that choice, so as SCHED_IDLE the queue thread keeps
//! the caller on its CPU and yields to it at once (a warm `import numpy, pandas`: 0.48 -> 0.41 s
//! here, with 1.1 thousand opens). But a SCHED_IDLE thread only gets the CPU time the CPU's other
//! tasks (in its cgroup) leave. So every [`SAMPLE_EVERY`]th time a thread goes to wait for
//! requests, it measures how long it then waited for the CPU once woken (its `run_delay` in
//! /proc/thread-self/schedstat, before and after the wait), counting only wakes by requests whose
//! callers wait for the answer: their callers sleep, so a wait for the CPU means other tasks want
//! it (a RELEASE or a readahead READ waits for the still-running caller, which is the point). It
//! goes back to SCHED_OTHER while that averages more than [`BUSY_NS`], for at least [`HOLD`], and
//! to SCHED_IDLE again once it is below [`QUIET_NS`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Waits measured: one in this many.
pub const SAMPLE_EVERY: u32 = 4;
/// Average wait for the CPU (ns) above which the thread stops being SCHED_IDLE.
const BUSY_NS: f64 = 100_000.0;
/// ... and below which it becomes SCHED_IDLE again.
const QUIET_NS: f64 = 20_000.0;
/// Weight of the newest sample in the average.
const NEWEST: f64 = 0.25;
/// Shortest stay as SCHED_OTHER: a busy CPU that lets a woken SCHED_OTHER thread run at once
/// would otherwise flip it back to SCHED_IDLE after every few samples.
const HOLD: Duration = Duration::from_secs(1);

/// One queue thread's policy and what it decides from.
pub struct Policy {
    schedstat: Option<File>,
    idle: bool,
    waits: u32,
    /// Run delay when the measured wait began.
    before: Option<u64>,
    /// Average wait for the CPU after a wake, in nanoseconds.
    average: f64,
    /// When the thread last became SCHED_OTHER.
    other_since: Instant,
}

impl Policy {
    /// Starts the calling thread as SCHED_IDLE if its run delay can be watched; SCHED_OTHER
    /// (what it has) otherwise.
    pub fn start() -> Policy {
        let schedstat = File::open("/proc/thread-self/schedstat").ok();
        let mut p =
            Policy { schedstat, idle: false, waits: 0, before: None, average: 0.0, other_since: Instant::now() };
        if p.run_delay().is_some() {
            p.set(true);
        }
        p
    }

    /// Whether the coming wait is measured; if so, call [`Policy::waiting`] right before it (once
    /// replies are submitted) and [`Policy::woken`] right after.
    pub fn measures_next(&mut self) -> bool {
        self.waits = self.waits.wrapping_add(1);
        self.schedstat.is_some() && self.waits % SAMPLE_EVERY == 0
    }

    pub fn waiting(&mut self) {
        self.before = self.run_delay();
    }

    /// After the wait; `callers_wait`: every request that ended it has a caller waiting for
    /// the answer (otherwise the sample is dropped).
    pub fn woken(&mut self, callers_wait: bool) {
        let Some(before) = self.before.take() else { return };
        let Some(after) = self.run_delay().filter(|_| callers_wait) else { return };
        self.average = (1.0 - NEWEST) * self.average + NEWEST * after.saturating_sub(before) as f64;
        match decide(self.idle, self.average) {
            Some(false) => {
                self.set(false);
                self.other_since = Instant::now();
            }
            Some(true) if self.other_since.elapsed() >= HOLD => self.set(true),
            _ => {}
        }
    }

    /// The thread's total time waiting on a run queue, in nanoseconds.
    fn run_delay(&self) -> Option<u64> {
        let mut buf = [0u8; 96];
        let n = self.schedstat.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
    }

    fn set(&mut self, idle: bool) {
        match set_policy(0, idle) {
            Ok(()) => {
                log::debug!(
                    "FUSE ring thread: {} (waits {:.0} us for its CPU after a wake)",
                    if idle { "SCHED_IDLE" } else { "SCHED_OTHER" },
                    self.average / 1000.0
                );
                self.idle = idle;
            }
            Err(e) => log::debug!("FUSE ring thread: sched_setscheduler: {e}"),
        }
    }
}

/// Makes thread `tid` (of this process) SCHED_OTHER; 0 (not started yet) is ignored. The
/// thread's own [`Policy`] is not told: if it had made the thread SCHED_IDLE, it now never
/// switches it back (it only leaves SCHED_IDLE); if SCHED_OTHER, it may after quiet wakes, as before.
pub fn set_other(tid: i32) {
    if tid == 0 {
        return;
    }
    if let Err(e) = set_policy(tid, false) {
        log::debug!("FUSE ring thread {tid}: sched_setscheduler: {e}");
    }
}

/// Sets thread `tid` of this process (0: the calling thread) to SCHED_IDLE or SCHED_OTHER.
fn set_policy(tid: i32, idle: bool) -> std::io::Result<()> {
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on a thread id with a valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The new policy (`Some(idle)`) when the thread waits `average_ns` for its CPU after a wake, or
/// `None` to keep it.
fn decide(idle: bool, average_ns: f64) -> Option<bool> {
    match idle {
        true if average_ns > BUSY_NS => Some(false),
        false if average_ns < QUIET_NS => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_waits_for_its_cpu_stops_being_idle_and_returns_once_it_is_quiet() {
        assert_eq!(decide(true, 5_000.0), None);
        assert_eq!(decide(true, 2_000_000.0), Some(false), "busy CPU: back to SCHED_OTHER");
        assert_eq!(decide(false, 50_000.0), None, "between the thresholds: kept");
        assert_eq!(decide(false, 3_000.0), Some(true), "quiet again: SCHED_IDLE");
    }

    #[test]
    fn the_policy_follows_what_the_kernel_reports() {
        let mut p = Policy::start();
        if p.schedstat.is_none() {
            eprintln!("SKIP: no /proc/thread-self/schedstat");
            return;
        }
        // SAFETY: plain syscall.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
        assert!(p.run_delay().is_some());
        p.set(false);
        // SAFETY: plain syscall.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
