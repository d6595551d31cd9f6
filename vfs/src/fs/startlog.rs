//! Start logs: the names a start looked up, the symlinks it read and the directories it listed,
//! replayed by the next mount of the same image on this node before the workload asks for them.
//!
//! Every mount is a new FUSE superblock, so the kernel's dentry, symlink and directory caches start
//! empty even when all file data is on the node: a warm `import numpy, pandas` still sends ~900
//! LOOKUPs (many of them for names that do not exist: interpreters probe), ~170 READLINKs and ~170
//! READDIRPLUS, one round trip each, one after another on the workload's critical path. The answers
//! only depend on the index, so a mount records what the kernel asked for during its first
//! [`RECORD_WINDOW`] (at most [`MAX_EVENTS`] answers), writes that to `<cache>/starts/<image>` when
//! the window closes (or at unmount), and the next mount of the image replays it from a background
//! thread right after mounting: `lstat`, `readlink` and a directory listing through the mount
//! fill the kernel's caches (negative entries included: the filesystem answers "no such name" with
//! a cacheable entry) while the container is still being set up.
//!
//! The replay never reads file data, so it never fetches: it costs a few milliseconds of metadata
//! requests. It only touches paths whose every parent is a directory in the index, so nothing it
//! resolves can follow a symlink out of the mount, whatever the log file holds. The format is one
//! entry per line, `l PATH` (a name looked up, found or not), `s PATH` (a symlink read), `d PATH`
//! (a directory listed), PATH absolute and in the image; paths with a newline are not logged.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Hasher;
use crate::index::{Index, Kind};
use crate::stats::Stats;

/// How long after mounting a mount records: a workload's start, not its whole life.
pub const RECORD_WINDOW: Duration = Duration::from_secs(60);
/// Most entries a log holds (a start of ~1000 imports needs ~1300).
pub const MAX_EVENTS: usize = 50_000;
/// A log file larger than this is not read.
const MAX_LOG_BYTES: u64 = 16 << 20;

/// What the kernel asked the filesystem that a replay can ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A name looked up in a directory (index inode), whether it exists or not.
    Lookup(u32, Box<[u8]>),
    /// A symlink (index inode) read.
    ReadLink(u32),
    /// A directory (index inode) listed.
    ReadDir(u32),
}

/// The recording half, fed by the filesystem's answers. Cheap when not recording (one atomic load).
pub struct StartRecorder {
    recording: AtomicBool,
    events: Mutex<Vec<Event>>,
}

impl StartRecorder {
    fn new() -> StartRecorder {
        StartRecorder { recording: AtomicBool::new(true), events: Mutex::new(Vec::new()) }
    }

    fn push(&self, event: Event) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let mut events = self.events.lock();
        if events.len() < MAX_EVENTS {
            events.push(event);
        } else {
            self.recording.store(false, Ordering::Relaxed);
        }
    }

    pub fn lookup(&self, dir: u32, name: &[u8]) {
        if self.recording.load(Ordering::Relaxed) {
            self.push(Event::Lookup(dir, name.into()));
        }
    }

    pub fn readlink(&self, ino: u32) {
        self.push(Event::ReadLink(ino));
    }

    pub fn readdir(&self, dir: u32) {
        self.push(Event::ReadDir(dir));
    }

    /// Stops recording and hands out what was recorded.
    fn finish(&self) -> Vec<Event> {
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.events.lock())
    }
}

/// One mount's start log: replays the previous log of the image, records this start's, writes it.
pub struct StartLog {
    recorder: Arc<StartRecorder>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set when the replay is over (all zero without a previous log).
    replayed: Arc<Mutex<Option<Replayed>>>,
}

/// What one replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub lookups: u64,
    pub links: u64,
    pub dirs: u64,
    /// Entries skipped: malformed, or not (or no longer) in the index.
    pub skipped: u64,
}

impl StartLog {
    /// The recorder to give the filesystem before mounting: it records from now on.
    pub fn recorder() -> Arc<StartRecorder> {
        Arc::new(StartRecorder::new())
    }

    /// Starts the background thread of a mounted filesystem: replays `log` (if it exists) through
    /// `mountpoint`, then writes what `recorder` saw to `log` once [`RECORD_WINDOW`] has passed or
    /// the mount stops, whichever comes first. `paths` names index inodes; `stats` gets the replay's
    /// count.
    pub fn start(
        log: PathBuf,
        mountpoint: PathBuf,
        index: Arc<Index>,
        paths: Arc<[Box<str>]>,
        recorder: Arc<StartRecorder>,
        stats: Arc<Stats>,
    ) -> StartLog {
        let (stop, stopped) = mpsc::channel::<()>();
        let replayed = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let thread = {
            let (recorder, replayed) = (recorder.clone(), replayed.clone());
            std::thread::Builder::new().name("lazy-startlog".into()).spawn(move || {
                // A stop asked for during the replay also ends the recording window.
                let mut stop_asked = false;
                let mut stop_now = || {
                    stop_asked =
                        stop_asked || matches!(stopped.try_recv(), Ok(()) | Err(mpsc::TryRecvError::Disconnected));
                    stop_asked
                };
                let r = match read_log(&log) {
                    Ok(Some(text)) => {
                        let t0 = Instant::now();
                        let r = replay(&text, &mountpoint, &index, &mut stop_now);
                        log::info!(
                            "lazy filesystem {}: replayed the image's start log ({} lookups, {} links, {} directories, \
                             {} skipped) in {} ms",
                            mountpoint.display(),
                            r.lookups,
                            r.links,
                            r.dirs,
                            r.skipped,
                            t0.elapsed().as_millis()
                        );
                        r
                    }
                    Ok(None) => Replayed::default(),
                    Err(e) => {
                        log::warn!("start log {}: {e}; not replaying it", log.display());
                        Replayed::default()
                    }
                };
                stats.start_log_replayed.store(r.lookups + r.links + r.dirs, Ordering::Relaxed);
                *replayed.lock() = Some(r);
                let wait = RECORD_WINDOW.saturating_sub(started.elapsed());
                if !stop_asked && stopped.recv_timeout(wait) == Err(RecvTimeoutError::Timeout) {
                    log::debug!("start log {}: recording window closed", log.display());
                }
                let events = recorder.finish();
                if let Err(e) = write_log(&log, &events, &paths) {
                    log::warn!("start log {}: {e}; the next start of this image is not warmed", log.display());
                }
            })
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("start log: cannot start its thread: {e}");
                recorder.finish();
                None
            }
        };
        StartLog { recorder, stop: Some(stop), thread, replayed }
    }

    /// What the replay did, once it is over (all zero without a previous log).
    pub fn replayed(&self) -> Option<Replayed> {
        *self.replayed.lock()
    }

    /// Stops a replay in progress, writes the log and joins the thread. Call before unmounting:
    /// the replay must not hold the mount busy.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.recorder.finish();
    }
}

impl Drop for StartLog {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The log's file name for an image: a digest over what identifies its content (data blobs, tree
/// size, first names), so an image converted again with other contents gets another log.
pub fn log_name(index: &Index) -> String {
    let mut h = Hasher::new();
    for b in &index.blobs {
        h.update(b.digest.hex().as_bytes());
        h.update(&b.size.to_le_bytes());
    }
    h.update(&(index.inodes.len() as u64).to_le_bytes());
    if let Some(Kind::Dir { entries }) = index.inodes.first().map(|i| &i.kind) {
        for e in entries {
            h.update(&e.name);
            h.update(&e.ino.to_le_bytes());
        }
    }
    h.finish().hex()
}

fn read_log(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_LOG_BYTES => {
            Err(std::io::Error::other(format!("{} bytes, more than a log can hold", m.len())))
        }
        Ok(_) => std::fs::read(path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `events` as log lines (each entry once, in first-seen order), atomically (temp + rename).
fn write_log(path: &Path, events: &[Event], paths: &[Box<str>]) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let text = render(events, paths);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&text)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn render(events: &[Event], paths: &[Box<str>]) -> Vec<u8> {
    let path_of = |ino: u32| paths.get(ino as usize).map(|p| p.as_bytes());
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for event in events {
        let mut line = Vec::new();
        match event {
            Event::Lookup(dir, name) => {
                let Some(dir) = path_of(*dir) else { continue };
                line.extend_from_slice(b"l ");
                line.extend_from_slice(dir);
                if dir != b"/" {
                    line.push(b'/');
                }
                line.extend_from_slice(name);
            }
            Event::ReadLink(ino) | Event::ReadDir(ino) => {
                let Some(p) = path_of(*ino) else { continue };
                line.extend_from_slice(if matches!(event, Event::ReadLink(_)) { b"s " } else { b"d " });
                line.extend_from_slice(p);
            }
        }
        if line.contains(&b'\n') || !seen.insert(line.clone()) {
            continue;
        }
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out
}

/// What a log line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lookup,
    ReadLink,
    ReadDir,
}

/// Parses one line and checks it against the index: every parent directory must be a directory
/// of the index (so resolving the path never follows a symlink); a `s` entry must be a symlink and
/// a `d` entry a directory. Returns the step and the path; `None`: skip the line.
fn resolve<'a>(line: &'a [u8], index: &Index) -> Option<(Step, &'a [u8])> {
    let (kind, path) = (line.first()?, line.get(2..)?);
    if line.get(1) != Some(&b' ') || path.first() != Some(&b'/') {
        return None;
    }
    let names: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let (last, parents) = names.split_last()?;
    let mut dir = 0u32;
    for name in parents {
        dir = index.lookup(dir, valid_name(name)?)?;
        if !index.inode(dir)?.is_dir() {
            return None;
        }
    }
    let last = valid_name(last);
    match kind {
        b'l' => last.map(|_| (Step::Lookup, path)),
        b's' => {
            let ino = index.lookup(dir, last?)?;
            matches!(index.inode(ino)?.kind, Kind::Symlink { .. }).then_some((Step::ReadLink, path))
        }
        b'd' => match last {
            // The root directory itself: "d /".
            None if path == b"/" => Some((Step::ReadDir, path)),
            None => None,
            Some(name) => index.inode(index.lookup(dir, name)?)?.is_dir().then_some((Step::ReadDir, path)),
        },
        _ => None,
    }
}

fn valid_name(name: &[u8]) -> Option<&[u8]> {
    (!name.is_empty() && name != b"." && name != b"..").then_some(name)
}

/// Replays `text` through the filesystem mounted at `mountpoint`, in log order, until `stop`.
fn replay(text: &[u8], mountpoint: &Path, index: &Index, stop: &mut dyn FnMut() -> bool) -> Replayed {
    let mut r = Replayed::default();
    let root = mountpoint.as_os_str().as_bytes();
    let mut full = Vec::with_capacity(root.len() + 256);
    for (n, line) in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        if n % 64 == 0 && stop() {
            break;
        }
        let Some((step, path)) = resolve(line, index) else {
            r.skipped += 1;
            continue;
        };
        full.clear();
        full.extend_from_slice(root);
        if path != b"/" {
            full.extend_from_slice(path);
        }
        let full = Path::new(OsStr::from_bytes(&full));
        // Errors are answers too (a missing name is what a negative lookup caches); nothing to report.
        match step {
            Step::Lookup => {
                let _ = std::fs::symlink_metadata(full);
                r.lookups += 1;
            }
            Step::ReadLink => {
                let _ = std::fs::read_link(full);
                r.links += 1;
            }
            Step::ReadDir => {
                if let Ok(entries) = std::fs::read_dir(full) {
                    entries.for_each(drop);
                }
                r.dirs += 1;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testutil::fixture;

    fn paths_of(index: &Index) -> Arc<[Box<str>]> {
        let mut paths: Vec<Box<str>> = vec![Box::from("?"); index.inodes.len()];
        for (p, ino) in crate::fs::core::paths_in_order(index) {
            paths[ino as usize] = String::from_utf8_lossy(&p).into();
        }
        paths.into()
    }

    fn ino(index: &Index, path: &str) -> u32 {
        let mut dir = 0;
        for name in path.trim_start_matches('/').split('/').filter(|n| !n.is_empty()) {
            dir = index.lookup(dir, name.as_bytes()).unwrap();
        }
        dir
    }

    #[test]
    fn a_log_names_each_answer_once_in_first_seen_order() {
        let (index, _) = fixture();
        let paths = paths_of(&index);
        let rec = StartRecorder::new();
        rec.lookup(0, b"bin");
        rec.lookup(ino(&index, "/bin"), b"missing");
        rec.readdir(ino(&index, "/bin"));
        rec.readlink(ino(&index, "/link"));
        rec.lookup(0, b"bin");
        rec.readdir(0);
        rec.lookup(0, b"bad\nname");
        let text = render(&rec.finish(), &paths);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "l /bin\nl /bin/missing\nd /bin\ns /link\nd /\n",
            "each entry once, in the order the kernel asked; a name with a newline cannot be logged"
        );
        // Finished: nothing more is recorded.
        rec.lookup(0, b"late");
        assert!(rec.finish().is_empty());
    }

    #[test]
    fn recording_stops_at_the_cap() {
        let rec = StartRecorder::new();
        for i in 0..MAX_EVENTS + 10 {
            rec.lookup(0, format!("n{i}").as_bytes());
        }
        assert_eq!(rec.finish().len(), MAX_EVENTS);
    }

    #[test]
    fn only_lines_whose_parents_are_index_directories_are_replayed() {
        let (index, _) = fixture();
        let ok = |line: &str| resolve(line.as_bytes(), &index).is_some();
        assert!(ok("l /bin"));
        assert!(ok("l /bin/sh"));
        assert!(ok("l /bin/not-there"), "negative lookups are replayed: the kernel caches them too");
        assert!(ok("d /"));
        assert!(ok("d /dev"));
        assert!(ok("s /abs"));
        assert!(!ok("l /abs/x"), "a symlink as a parent could lead out of the mount");
        assert!(!ok("l /data/x"), "a file as a parent");
        assert!(!ok("l /nope/x"), "a parent that is not in the index");
        assert!(!ok("l /bin/../bin"), "no dot-dot");
        assert!(!ok("l /bin//sh"), "no empty names");
        assert!(!ok("l bin"), "relative");
        assert!(!ok("s /bin"), "not a symlink");
        assert!(!ok("d /link"), "not a directory");
        assert!(!ok("x /bin"), "unknown kind");
        assert!(!ok("l"));
        assert!(!ok(""));
    }

    #[test]
    fn log_names_differ_between_images_and_agree_for_one() {
        let (a, _) = fixture();
        assert_eq!(log_name(&a), log_name(&fixture().0));
        let mut b = (*a).clone();
        b.blobs[0].size += 1;
        assert_ne!(log_name(&a), log_name(&b));
        assert_eq!(log_name(&a).len(), 64);
    }
}
