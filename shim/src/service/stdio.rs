//! A process's stdio as containerd hands it over: FIFO paths (ctr, CRI), a terminal (the launcher
//! makes the pty inside the container and gives us its master), or a log URI (nerdctl):
//! `file:///path` appends stdout and stderr to a file, `binary:///path?k=v` starts a logging binary
//! that reads the streams from fds 3 and 4 and closes fd 5 when ready (containerd's convention).
//!
//! Output goes through pipes copied by dedicated threads, so the process never blocks on a FIFO
//! nobody opened yet; [`ProcessIo::drain`] waits for those copies before the exit is published, so
//! output of a process that exits at once is never lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::error::{Error, Result};
use crate::launcher::Stdio;

/// The stdio fields of a Create or Exec request.
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's stdio, alive as long as the process record.
#[derive(Default)]
pub struct ProcessIo {
    copies: Vec<oneshot::Receiver<()>>,
    stdin: Option<Arc<Mutex<Option<File>>>>,
    console: Option<OwnedFd>,
}

/// Stdio prepared before launch; [`Pending::attach`] completes it once the pty master is known.
pub struct Pending {
    paths: IoPaths,
    io: ProcessIo,
}

fn pipe() -> Result<(File, File)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("creating a stdio pipe")(e.into()))?;
    Ok((File::from(r), File::from(w)))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = OpenOptions::new().read(!write).write(write).open("/dev/null").map_err(Error::io("opening /dev/null"))?;
    Ok(f.into())
}

/// Copies `src` to `dst` on a thread; the receiver resolves when the source reaches EOF.
fn spawn_copy(
    name: &str,
    mut src: File,
    dst: impl FnOnce() -> std::io::Result<File> + Send + 'static,
) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut dst = match dst() {
            Ok(d) => d,
            Err(e) => {
                log::warn!("{name}: cannot open: {e}; discarding output");
                let _ = std::io::copy(&mut src, &mut std::io::sink());
                let _ = tx.send(());
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = dst.write_all(&buf[..n]) {
                        log::debug!("{name}: write: {e}; discarding the rest");
                        let _ = std::io::copy(&mut src, &mut std::io::sink());
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: the pty's last slave closed.
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    rx
}

fn open_fifo_write(path: String) -> impl FnOnce() -> std::io::Result<File> + Send + 'static {
    move || OpenOptions::new().write(true).open(&path)
}

/// Copies the stdin FIFO into `sink` until EOF or CloseIO.
fn spawn_stdin(path: String, sink: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || {
        let mut fifo = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("stdin {path}: {e}");
                sink.lock().take();
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match fifo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = sink.lock();
            let Some(w) = guard.as_mut() else { return };
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        sink.lock().take();
    });
}

/// A parsed `binary://` or `file://` URI, or a plain FIFO path.
enum Target {
    None,
    Fifo(String),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_target(s: &str) -> Result<Target> {
    if s.is_empty() {
        return Ok(Target::None);
    }
    let Some((scheme, rest)) = s.split_once("://") else { return Ok(Target::Fifo(s.to_string())) };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = PathBuf::from(percent_decode(path));
    match scheme {
        "fifo" => Ok(Target::Fifo(path.display().to_string())),
        "file" => Ok(Target::File(path)),
        "binary" => {
            let mut args = Vec::new();
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            Ok(Target::Binary { path, args })
        }
        other => Err(Error::InvalidArgument(format!(
            "stdio URI {s:?}: scheme {other:?} is not supported (use a FIFO path, file:// or binary://)"
        ))),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Pending {
    /// Makes the fds the process will get. For a terminal, no fds are made: the launcher creates
    /// the pty and hands back its master.
    pub fn prepare(paths: &IoPaths, id: &str, namespace: &str) -> Result<(Stdio, Pending)> {
        let mut io = ProcessIo::default();
        if paths.terminal {
            return Ok((Stdio { stdin: None, stdout: None, stderr: None }, Pending { paths: paths.clone(), io }));
        }
        let stdin = if paths.stdin.is_empty() {
            Some(dev_null(false)?)
        } else {
            let (r, w) = pipe()?;
            let sink = Arc::new(Mutex::new(Some(w)));
            spawn_stdin(paths.stdin.clone(), sink.clone());
            io.stdin = Some(sink);
            Some(r.into())
        };
        let out = parse_target(&paths.stdout)?;
        let err = parse_target(&paths.stderr)?;
        let (stdout, stderr): (OwnedFd, OwnedFd) = match (out, err) {
            (Target::File(path), _) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(Error::io(format!("log file {}", path.display())))?;
                let f2 = f.try_clone().map_err(Error::io("dup log file"))?;
                (f.into(), f2.into())
            }
            (Target::Binary { path, args }, _) => start_log_binary(&path, &args, id, namespace)?,
            (out, err) => (output_fd(out, "stdout", &mut io)?, output_fd(err, "stderr", &mut io)?),
        };
        Ok((Stdio { stdin, stdout: Some(stdout), stderr: Some(stderr) }, Pending { paths: paths.clone(), io }))
    }

    /// Wires the pty master (terminal mode) to the FIFOs.
    pub fn attach(self, pty_master: Option<OwnedFd>) -> Result<ProcessIo> {
        let Pending { paths, mut io } = self;
        if let Some(master) = pty_master {
            let reader = File::from(master.try_clone().map_err(Error::io("dup pty master"))?);
            if !paths.stdout.is_empty() {
                io.copies.push(spawn_copy("terminal output", reader, open_fifo_write(paths.stdout.clone())));
            }
            if !paths.stdin.is_empty() {
                let writer = File::from(master.try_clone().map_err(Error::io("dup pty master"))?);
                let sink = Arc::new(Mutex::new(Some(writer)));
                spawn_stdin(paths.stdin.clone(), sink.clone());
                io.stdin = Some(sink);
            }
            io.console = Some(master);
        } else if paths.terminal {
            return Err(Error::Other("terminal requested but the launcher returned no pty".into()));
        }
        Ok(io)
    }
}

fn output_fd(t: Target, name: &str, io: &mut ProcessIo) -> Result<OwnedFd> {
    match t {
        Target::None => dev_null(true),
        Target::Fifo(path) => {
            let (r, w) = pipe()?;
            io.copies.push(spawn_copy(&format!("{name} {path}"), r, open_fifo_write(path.clone())));
            Ok(w.into())
        }
        Target::File(_) | Target::Binary { .. } => Err(Error::InvalidArgument(format!(
            "{name}: a log URI must be given for stdout (containerd sends the same URI for both)"
        ))),
    }
}

/// Starts a `binary://` logging driver: fd 3 = stdout, fd 4 = stderr, fd 5 closed when ready.
fn start_log_binary(path: &std::path::Path, args: &[String], id: &str, namespace: &str) -> Result<(OwnedFd, OwnedFd)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (mut ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec; the fds are valid here.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The child is reaped by the shim's SIGCHLD loop; dropping `Child` does not wait.
    cmd.spawn().map_err(Error::io(format!("starting log binary {}", path.display())))?;
    drop((out_r, err_r, ready_w));
    // Wait until the binary says it is ready (closes or writes fd 5), bounded so a broken driver
    // does not hang Create.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = ready_r.read(&mut b);
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        log::warn!("log binary {} did not signal readiness within 10s; continuing", path.display());
    }
    Ok((out_w.into(), err_w.into()))
}

impl ProcessIo {
    /// Waits for output copies to reach EOF (bounded: a daemon the process left behind may hold
    /// the pipe open forever).
    pub async fn drain(&mut self, limit: Duration) {
        let copies = std::mem::take(&mut self.copies);
        let all = futures::future::join_all(copies);
        if tokio::time::timeout(limit, all).await.is_err() {
            log::warn!(
                "process output still open {limit:?} after exit (a child keeps it?); publishing the exit anyway"
            );
        }
    }

    /// CloseIO: the process sees EOF on stdin.
    pub fn close_stdin(&self) {
        if let Some(s) = &self.stdin {
            s.lock().take();
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        // As the runc shim: resizing a process without a terminal is a no-op, not an error (containerd's
        // Go client and nerdctl send ResizePty whenever their own stdin is a terminal).
        let Some(console) = &self.console else {
            log::debug!("resize {width}x{height}: the process has no terminal; nothing to do");
            return Ok(());
        };
        let ws = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the duration of the call; the fd is a
        // pty master we own.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(Error::io("resizing the terminal")(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert!(matches!(parse_target("").unwrap(), Target::None));
        assert!(matches!(parse_target("/run/x/stdout").unwrap(), Target::Fifo(p) if p == "/run/x/stdout"));
        assert!(
            matches!(parse_target("file:///var/log/a%20b.log").unwrap(), Target::File(p) if p == std::path::Path::new("/var/log/a b.log"))
        );
        match parse_target("binary:///usr/bin/logger?id=x&debug").unwrap() {
            Target::Binary { path, args } => {
                assert_eq!(path, PathBuf::from("/usr/bin/logger"));
                assert_eq!(args, vec!["id", "x", "debug"]);
            }
            _ => panic!(),
        }
        let e = parse_target("tcp://x").err().unwrap().to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[tokio::test]
    async fn fifo_output_is_drained_after_writer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The reader (containerd's side) opens first, as ctr does.
        let f2 = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read_to_string(f2).unwrap());
        let paths = IoPaths { stdout: fifo.display().to_string(), ..Default::default() };
        let (stdio, pending) = Pending::prepare(&paths, "c", "ns").unwrap();
        let mut io = pending.attach(None).unwrap();
        let mut w = File::from(stdio.stdout.unwrap());
        w.write_all(b"hi\n").unwrap();
        drop(w);
        drop(stdio.stderr);
        io.drain(Duration::from_secs(5)).await;
        assert_eq!(reader.join().unwrap(), "hi\n");
    }
}
