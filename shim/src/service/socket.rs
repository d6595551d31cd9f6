//! The shim server's socket file. It is removed BEFORE the reply to the last Delete (or to Shutdown) is
//! sent: containerd (and the 2.0/2.1 sandbox bridge) treat an existing socket as a live shim and may try
//! to reuse it. Removal checks that the path still names the file this server bound: after it is gone, a
//! new `start` of the same pod group binds a fresh socket at the same path, which a lingering old server
//! must not delete.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the socket file when the server started.
    identity: Option<(u64, u64)>,
}

impl SocketFile {
    /// Remembers which file `path` is now (call once the listener is bound).
    pub fn new(path: impl Into<PathBuf>) -> SocketFile {
        let path = path.into();
        let identity = std::fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        SocketFile { path, identity }
    }

    /// Unlinks the socket file if it is still ours. Accepted connections keep working; new connects fail.
    pub fn remove(&self) {
        let now = std::fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.identity {
            match std::fs::remove_file(&self.path) {
                Ok(()) => log::debug!("removed socket {}", self.path.display()),
                Err(e) => log::warn!("removing socket {}: {e}", self.path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_the_file_it_saw() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let ours = SocketFile::new(&p);
        // Another server re-bound the path meanwhile: leave it alone.
        std::fs::remove_file(&p).unwrap();
        let _l2 = std::os::unix::net::UnixListener::bind(&p).unwrap();
        ours.remove();
        assert!(p.exists());
        let theirs = SocketFile::new(&p);
        theirs.remove();
        assert!(!p.exists());
        theirs.remove(); // already gone: fine
    }
}
