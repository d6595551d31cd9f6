//! `--record FILE`: the order in which files are first read, one absolute path per line. The list is
//! the input of `lazyctl convert --prefetch-list`, so an image can be re-converted with what a real
//! start read first.
//!
//! Every line is written with one write(2) as it happens (no buffering), so a mount that is killed
//! still leaves a usable list. Paths containing a newline cannot be expressed in the format and are
//! skipped with a warning.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::FsError;

pub struct Recorder {
    path: PathBuf,
    file: Mutex<File>,
    /// One flag per index inode: hardlinks share an inode, so a file is recorded once.
    seen: Vec<AtomicBool>,
}

impl Recorder {
    /// Creates (truncates) the record file for an index of `inodes` inodes.
    pub fn create(path: &Path, inodes: usize) -> Result<Recorder, FsError> {
        let file = File::create(path).map_err(|source| FsError::Record { path: path.to_path_buf(), source })?;
        Ok(Recorder {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            seen: (0..inodes).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// Records `path` if inode `ino` was not read before. Cheap after the first time (one atomic load).
    pub fn note(&self, ino: u32, path: &str) {
        let Some(flag) = self.seen.get(ino as usize) else { return };
        if flag.load(Ordering::Relaxed) || flag.swap(true, Ordering::Relaxed) {
            return;
        }
        if path.contains('\n') {
            log::warn!("record {}: skipping {path:?}: a path with a newline cannot be listed", self.path.display());
            return;
        }
        let mut line = String::with_capacity(path.len() + 1);
        line.push_str(path);
        line.push('\n');
        // Lock so lines from concurrent readers never interleave.
        if let Err(err) = self.file.lock().write_all(line.as_bytes()) {
            log::warn!("record {}: cannot write {path}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_inode_once_in_first_read_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.txt");
        let rec = Recorder::create(&path, 4).unwrap();
        rec.note(2, "/b");
        rec.note(1, "/a");
        rec.note(2, "/b-hardlink");
        rec.note(3, "/bad\nname");
        rec.note(9, "/out-of-range");
        // Written as it goes: readable before the recorder is dropped.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "/b\n/a\n");
        drop(rec);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "/b\n/a\n");
    }
}
