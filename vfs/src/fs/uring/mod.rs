//! FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, enabled by the fuse module's
//! `enable_uring` parameter).
//!
//! Over /dev/fuse, a request wakes one of the server's threads wherever it sleeps, and the reply
//! wakes the requester back: two cross-CPU wakeups per request, which on a VM whose idle vCPUs halt
//! cost ~30 us each, and a warm start that opens a thousand files pays them a thousand times.
//! With io_uring the kernel keeps one request queue per CPU and queues each request on the queue
//! of the CPU its caller runs on; here one thread per CPU, pinned to it, serves that queue. The
//! caller sleeps, its own CPU switches to the server thread, which answers and commits the reply
//! in the same system call that fetches the next request: no IPI, no halted CPU to wake.
//!
//! The queue threads run SCHED_IDLE while their CPUs have time to spare ([`sched`]): the caller
//! then stays on its CPU when the reply wakes it.
//!
//! Each queue has [`QUEUE_DEPTH`] entries (a header buffer and a payload buffer the kernel fills
//! with a request and we overwrite with the reply). Reads can wait on the network, so they go to
//! a worker pool, which hands the entry back through a channel and an eventfd; everything else
//! (metadata and opens, answered from memory) is answered on the queue thread.
//!
//! Setup order matters: once init grants io_uring, the kernel holds every new request until each
//! queue has an entry registered. So the rings are created before mounting (no io_uring, no ask),
//! registered right after the handshake, and a registration that fails makes the kernel fall back
//! to /dev/fuse for the whole connection (fuser's threads keep serving it). FORGET and INTERRUPT
//! always come through /dev/fuse. When the connection ends (unmount, abort) the kernel completes
//! every entry with an error and the threads exit.

mod abi;
mod answer;
mod sched;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use self::answer::{Answerer, Entry};
use super::core::LazyFs;
use super::fuse::Negotiated;

/// Entries per CPU queue: requests one CPU's callers can have in the server at once (reads waiting
/// on the network included).
const QUEUE_DEPTH: usize = 8;
/// Payload bytes an entry keeps resident after a reply: a READ writes up to 1 MiB into it, and
/// 8 entries per CPU holding that would add megabytes to every shim for the container's life.
const KEEP_RESIDENT: usize = 32 << 10;
/// How long a queue waits for requests before it trims the payloads of its large replies. Not
/// after each reply: a stream of large reads would fault the same pages in again for every read
/// (a cold 1 GiB read spent 0.45 s of CPU in those page faults).
const TRIM_WHEN_IDLE: Duration = Duration::from_millis(100);
/// User data of the eventfd read that wakes a queue thread.
const WAKE: u64 = u64::MAX;
/// Requests never carry more than this, and replies never exceed the kernel's max_pages
/// (256 pages unless /proc/sys/fs/fuse/max_pages_limit says otherwise) or the max_write we set.
const MIN_PAYLOAD: usize = 1 << 20;

const PAGE: usize = 4096;

/// The fuse module's switch: the kernel offers io_uring only to connections made while it is on.
pub const KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Rings made before mounting, one per online CPU.
pub struct Rings {
    rings: Vec<(usize, Ring)>,
    /// Queues the kernel has: one per possible CPU.
    queues: usize,
}

impl Rings {
    /// One io_uring per online CPU, or why not (the kernel lacks it, or it is disabled).
    pub fn prepare() -> Result<Rings, String> {
        match std::fs::read_to_string(KNOB) {
            Ok(v) if v.trim() == "Y" => {}
            Ok(_) => return Err(format!("{KNOB} is off")),
            Err(_) => return Err("the kernel has none (Linux 6.14+ with CONFIG_FUSE_IO_URING)".to_string()),
        }
        let online = cpu_list("/sys/devices/system/cpu/online")?;
        let queues = cpu_list("/sys/devices/system/cpu/possible")?.len();
        let mut rings = Vec::new();
        for cpu in online {
            let ring = Ring::builder().build(2 * QUEUE_DEPTH as u32).map_err(|e| format!("io_uring_setup: {e}"))?;
            rings.push((cpu, ring));
        }
        Ok(Rings { rings, queues })
    }

    /// Registers every queue's entries on the FUSE connection `dev` (whose init granted io_uring)
    /// and starts serving. On error the kernel has been told to fall back to /dev/fuse.
    pub fn start(
        self,
        dev: BorrowedFd<'_>,
        fs: Arc<LazyFs>,
        negotiated: Negotiated,
        workers: usize,
    ) -> Result<Uring, String> {
        let Rings { mut rings, queues } = self;
        let dev = match dev.try_clone_to_owned() {
            Ok(d) => Arc::new(d),
            Err(e) => {
                abandon(&mut rings[0].1, dev);
                return Err(format!("duplicating /dev/fuse: {e}"));
            }
        };
        let answerer = Arc::new(Answerer::new(fs, negotiated, dev.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (answerer, jobs) = (answerer.clone(), jobs_rx.clone());
            match std::thread::Builder::new().name(format!("lazy-uring-w{i}")).spawn(move || worker(&answerer, &jobs)) {
                Ok(t) => threads.push(t),
                // Fewer workers, or none: the queue threads answer reads themselves then.
                Err(e) => log::warn!("FUSE over io_uring: starting read worker {i}: {e}"),
            }
        }
        // The queues of CPUs that are not online go with the first online CPU's thread.
        let online: Vec<usize> = rings.iter().map(|(cpu, _)| *cpu).collect();
        let mut spare: Vec<u16> = (0..queues).filter(|q| !online.contains(q)).map(|q| q as u16).collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut started = 0;
        let mut wakes = Vec::new();
        let mut tids = Vec::new();
        let mut error = None;
        for (cpu, ring) in rings {
            let mut qids = vec![cpu as u16];
            qids.append(&mut spare);
            let wake = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC) {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    error = Some(format!("eventfd: {e}"));
                    break;
                }
            };
            let queue = Queue {
                cpu,
                payload_size: payload_size(),
                trim: Vec::new(),
                tid: Arc::new(AtomicI32::new(0)),
                qids,
                ring,
                dev: dev.clone(),
                answerer: answerer.clone(),
                jobs: jobs_tx.clone(),
                wake,
                stop: stop.clone(),
            };
            wakes.push(queue.wake.clone());
            tids.push(queue.tid.clone());
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new().name(format!("lazy-uring-q{cpu}")).spawn(move || queue.run(&ready));
            match t {
                Ok(t) => {
                    threads.push(t);
                    started += 1;
                }
                Err(e) => {
                    error = Some(format!("starting a queue thread: {e}"));
                    break;
                }
            }
        }
        // Only the threads hold senders now: one that dies before reporting ends the wait below.
        drop((jobs_tx, ready_tx));
        for _ in 0..started {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error = error.or(Some(e)),
                Err(_) => error = error.or(Some("a queue thread died".to_string())),
            }
        }
        let server = Uring { threads, tids, stop, wakes, dev };
        match error {
            None => Ok(server),
            Some(e) => {
                // A queue without entries keeps the kernel waiting: make it give up on io_uring.
                if let Ok(mut ring) = Ring::builder().build(2) {
                    abandon(&mut ring, server.dev.as_fd());
                }
                server.stop_and_join();
                Err(e)
            }
        }
    }
}

/// A running io_uring transport. Its threads end when the connection does.
pub struct Uring {
    threads: Vec<JoinHandle<()>>,
    /// The queue threads' ids (0 until a thread started).
    tids: Vec<Arc<AtomicI32>>,
    stop: Arc<AtomicBool>,
    /// Each queue thread's eventfd.
    wakes: Vec<Arc<EventFd>>,
    dev: Arc<OwnedFd>,
}

impl Uring {
    /// Call before unmounting: the kernel's unmount waits for the queue threads to take their
    /// entries back, so they must not wait for the CPU as SCHED_IDLE threads behind busy tasks.
    pub fn unmounting(&self) {
        for tid in &self.tids {
            sched::set_other(tid.load(Ordering::Relaxed));
        }
    }

    /// Waits for the threads; call once the connection has ended (after unmounting).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    fn stop_and_join(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakes {
            let _ = w.write(1);
        }
        self.join();
    }
}

/// A read handed to a worker.
struct Job {
    entry: Box<Entry>,
    back: Sender<Box<Entry>>,
    wake: Arc<EventFd>,
}

fn worker(answerer: &Answerer, jobs: &Mutex<Receiver<Job>>) {
    loop {
        let Ok(mut job) = jobs.lock().recv() else { return };
        answerer.answer(&mut job.entry);
        if job.back.send(job.entry).is_ok() {
            let _ = job.wake.write(1);
        }
    }
}

/// One CPU's queue (plus the queues of CPUs that are not online) and its ring.
struct Queue {
    cpu: usize,
    payload_size: usize,
    /// Entries whose last reply was larger than [`KEEP_RESIDENT`], to trim once the queue is idle.
    trim: Vec<usize>,
    /// This thread's id, for [`Uring::unmounting`].
    tid: Arc<AtomicI32>,
    qids: Vec<u16>,
    ring: Ring,
    dev: Arc<OwnedFd>,
    answerer: Arc<Answerer>,
    jobs: Sender<Job>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl Queue {
    fn run(mut self, ready: &Sender<Result<(), String>>) {
        self.tid.store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
        pin_to(self.cpu);
        let payload_size = self.payload_size;
        // The first qid gets the full depth; spare queues (CPUs not online) one entry each.
        let mut entries: Vec<Option<Box<Entry>>> = Vec::new();
        for (i, &qid) in self.qids.iter().enumerate() {
            for _ in 0..if i == 0 { QUEUE_DEPTH } else { 1 } {
                let slot = entries.len();
                entries.push(Some(Box::new(Entry {
                    header: abi::RingHeader::new(),
                    payload: vec![0; payload_size],
                    slot,
                    qid,
                })));
            }
        }
        let dev = types::Fd(self.dev.as_raw_fd());
        for e in entries.iter_mut().flatten() {
            let iov = [
                libc::iovec {
                    iov_base: (&mut *e.header as *mut abi::RingHeader).cast(),
                    iov_len: size_of::<abi::RingHeader>(),
                },
                libc::iovec { iov_base: e.payload.as_mut_ptr().cast(), iov_len: e.payload.len() },
            ];
            let sqe = register_sqe(dev, e.qid, &iov, e.slot as u64);
            // SAFETY: the kernel copies the iovecs when the SQE is submitted, right here; the buffers
            // they point to are boxed and live until this thread ends, and its ring with them.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() || self.ring.submit().is_err() {
                let _ = ready.send(Err("submitting a FUSE ring registration".to_string()));
                return;
            }
        }
        let mut wake_buf = [0u8; 8];
        let arm_wake = |ring: &mut Ring, buf: &mut [u8; 8], wake: &EventFd| {
            let sqe =
                opcode::Read::new(types::Fd(wake.as_fd().as_raw_fd()), buf.as_mut_ptr(), 8).build().user_data(WAKE);
            // SAFETY: `buf` lives as long as the ring (both are this thread's until it ends).
            unsafe { ring.submission().push(&sqe.into()) }.is_ok()
        };
        let _ = arm_wake(&mut self.ring, &mut wake_buf, &self.wake);
        let _ = self.ring.submit();
        let mut live = entries.len();
        let mut pending: Vec<cqueue::Entry> = self.ring.completion().collect();
        // Registrations that failed complete at once; the others complete with a request.
        if let Some(c) = pending.iter().find(|c| c.user_data() != WAKE && c.result() < 0) {
            let e = std::io::Error::from_raw_os_error(-c.result());
            let _ = ready.send(Err(format!("registering FUSE ring entries on CPU {}: {e}", self.cpu)));
            return;
        }
        let _ = ready.send(Ok(()));
        let mut policy = sched::Policy::start();
        let (back_tx, back_rx) = mpsc::channel::<Box<Entry>>();
        loop {
            for c in pending.drain(..) {
                let slot = c.user_data();
                if slot == WAKE {
                    let _ = arm_wake(&mut self.ring, &mut wake_buf, &self.wake);
                    continue;
                }
                if c.result() < 0 {
                    // The connection ended (ENOTCONN), or the kernel refused a commit.
                    if c.result() != -libc::ENOTCONN {
                        let e = std::io::Error::from_raw_os_error(-c.result());
                        log::debug!("FUSE ring on CPU {}: entry {slot}: {e}", self.cpu);
                    }
                    live -= 1;
                    continue;
                }
                let Some(mut entry) = entries[slot as usize].take() else { continue };
                if Answerer::may_block(&entry) {
                    let job = Job { entry, back: back_tx.clone(), wake: self.wake.clone() };
                    if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
                        entry = job.entry;
                        self.answerer.answer(&mut entry);
                        self.commit(dev, &mut entries, entry);
                    }
                    continue;
                }
                self.answerer.answer(&mut entry);
                self.commit(dev, &mut entries, entry);
            }
            while let Ok(entry) = back_rx.try_recv() {
                self.commit(dev, &mut entries, entry);
            }
            if live == 0 || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let measured = policy.measures_next();
            if measured {
                // Replies first: the callers they wake may run before this thread waits.
                let _ = self.ring.submit();
                policy.waiting();
            }
            let waited = if self.trim.is_empty() {
                self.ring.submit_and_wait(1)
            } else {
                let idle = types::Timespec::from(TRIM_WHEN_IDLE);
                self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&idle))
            };
            match waited {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => self.trim_payloads(&mut entries),
                Err(e) => {
                    log::error!("FUSE ring on CPU {}: {e}; its requests wait for the connection to end", self.cpu);
                    return;
                }
            }
            pending.extend(self.ring.completion());
            if measured {
                let callers_wait = pending.iter().all(|c| {
                    let entry = entries.get(c.user_data() as usize).and_then(Option::as_ref);
                    c.result() >= 0 && entry.is_some_and(|e| !Answerer::is_async(e))
                });
                policy.woken(callers_wait && !pending.is_empty());
            }
        }
    }

    /// Gives the pages of large replies back (the queue was idle, so the kernel has copied them:
    /// every commit was submitted): requests never reach that far into the payload buffer.
    fn trim_payloads(&mut self, entries: &mut [Option<Box<Entry>>]) {
        if !self.ring.submission().is_empty() {
            return;
        }
        for slot in self.trim.drain(..) {
            let Some(entry) = entries[slot].as_mut() else { continue };
            let range = entry.payload.as_mut_ptr_range();
            let start = (range.start as usize + KEEP_RESIDENT).next_multiple_of(PAGE);
            let end = range.end as usize / PAGE * PAGE;
            if end > start {
                // SAFETY: a page-aligned range inside the entry's own buffer, which nothing reads
                // before writing it again (we, or the kernel with the next request).
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
        }
    }

    /// Sends the reply in `entry` and asks for the next request in it.
    fn commit(&mut self, dev: types::Fd, entries: &mut [Option<Box<Entry>>], entry: Box<Entry>) {
        let cmd = abi::cmd_req(entry.header.commit_id(), entry.qid);
        let sqe = opcode::UringCmd80::new(dev, abi::CMD_COMMIT_AND_FETCH).cmd(cmd).build().user_data(entry.slot as u64);
        let slot = entry.slot;
        if entry.header.payload_len() > KEEP_RESIDENT {
            self.trim.push(slot);
        }
        entries[slot] = Some(entry);
        // SAFETY: the SQE points at no memory of ours (the entry's buffers were registered).
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            let _ = self.ring.submit();
        }
    }
}

/// A REGISTER command: `sqe->addr` points at the entry's two iovecs, `sqe->len` is their count.
fn register_sqe(dev: types::Fd, qid: u16, iov: &[libc::iovec; 2], user_data: u64) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(dev, abi::CMD_REGISTER)
        .cmd(abi::cmd_req(0, qid))
        .addr(Some(iov.as_ptr() as u64))
        .build()
        .user_data(user_data);
    // io-uring's UringCmd80 has no setter for `len` (bytes 24..28 of the SQE).
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is a repr(C) 128-byte io_uring_sqe plus its command area; any bytes are a
    // valid value of it.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute(raw) }
}

/// Makes the kernel give up on io_uring for the connection (a registration it must refuse: a queue
/// id past the last), so the requests it holds go to /dev/fuse.
fn abandon(ring: &mut Ring, dev: BorrowedFd<'_>) {
    let mut header = abi::RingHeader::new();
    let mut payload = vec![0u8; 8192];
    let iov = [
        libc::iovec { iov_base: (&mut *header as *mut abi::RingHeader).cast(), iov_len: size_of::<abi::RingHeader>() },
        libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
    ];
    let sqe = register_sqe(types::Fd(dev.as_raw_fd()), u16::MAX, &iov, 0);
    // SAFETY: the buffers outlive the call; the kernel refuses the registration before keeping them.
    if unsafe { ring.submission().push(&sqe) }.is_ok() {
        let _ = ring.submit_and_wait(1);
    }
}

#[cfg(test)]
thread_local! {
    /// Payload buffer size for rings started by this thread (tests: a size the kernel refuses).
    pub static PAYLOAD_SIZE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The payload buffer size the kernel requires: max(max_write, max_pages pages).
fn payload_size() -> usize {
    #[cfg(test)]
    if let Some(size) = PAYLOAD_SIZE.get() {
        return size;
    }
    let limit = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(256);
    // fuser asks for max(max_write, readahead) in pages: 1024 (4 MiB readahead); the kernel caps it.
    MIN_PAYLOAD.max(limit.min(1024) * 4096)
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            // E.g. a cpuset that excludes this CPU: still correct, only not local.
            log::debug!("FUSE ring thread for CPU {cpu}: cannot pin it there: {e}");
        }
    }
}

/// Parses a kernel CPU list (`0-3,5`).
fn cpu_list(path: &str) -> Result<Vec<usize>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("{path}: cannot parse {:?}", text.trim());
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (a.parse::<usize>().map_err(|_| bad())?, b.parse::<usize>().map_err(|_| bad())?);
        cpus.extend(a..=b);
    }
    if cpus.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(cpus)
}
