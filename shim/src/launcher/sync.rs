//! The small protocol between the shim (client.rs), its helper (`init`) and the container's init
//! process, over one AF_UNIX SOCK_SEQPACKET socketpair. Each message is JSON, split into datagrams
//! of at most [`CHUNK`] bytes with a one-byte "more follows"/"last" prefix so a spec carrying a
//! large seccomp profile fits; a file descriptor (the pty master) rides on the last datagram.
//!
//! This module never blocks on anything but the socket and never allocates after a fork in a
//! multi-threaded process: only the single-threaded helper and the shim use it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Fd number of the sync socket in the helper (the client dup2()s it there before exec).
pub const HELPER_SYNC_FD: RawFd = 3;

const CHUNK: usize = 32 * 1024;
const MORE: u8 = b'M';
const LAST: u8 = b'L';

/// What the shim asks the helper to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Create { id: String, bundle: std::path::PathBuf, spec: Box<oci_spec::runtime::Spec> },
    Exec { container_pid: i32, spec: Box<oci_spec::runtime::Spec>, process: Box<oci_spec::runtime::Process> },
}

/// Shim -> helper / container init.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    Request(Request),
    /// The new process is in its cgroup: carry on.
    Ack,
    /// `place` failed: kill the new process and exit.
    Abort,
    /// `Created::start`: run startContainer hooks and execve.
    Start,
}

/// Helper / container init -> shim.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// The container process exists (pid in the shim's pid namespace); place it, then Ack.
    Pid(i32),
    /// Setup done; the process waits for Start (create) or execs now (exec). `pty` says whether
    /// the pty master is attached.
    Ready { pty: bool },
    /// A step failed (typed: the shim picks its answer from the variant).
    Error(super::error::StepError),
}

/// Sends one message, attaching `fd` to its last datagram.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fd: Option<RawFd>) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    send_bytes(sock, &body, fd)
}

/// The framing half of [`send`], kept non-generic (one copy of the socket code).
fn send_bytes(sock: BorrowedFd<'_>, body: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut chunks = body.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        return Err(std::io::Error::other("empty sync message"));
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let tag = [if last { LAST } else { MORE }];
        let iov = [IoSlice::new(&tag), IoSlice::new(chunk)];
        let fds;
        let cmsgs: &[ControlMessage] = match (last, fd) {
            (true, Some(fd)) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            _ => &[],
        };
        loop {
            match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Receives one message. `Ok(None)` means the peer closed the socket (every holder exited or
/// exec'd: the socket is close-on-exec everywhere).
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> std::io::Result<Option<(T, Option<OwnedFd>)>> {
    let Some((body, fd)) = recv_bytes(sock)? else { return Ok(None) };
    let msg = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
    Ok(Some((msg, fd)))
}

/// The framing half of [`recv`]: one whole message's bytes and the fd that came with it.
fn recv_bytes(sock: BorrowedFd<'_>) -> std::io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut body = Vec::new();
    let mut fd = None;
    let mut buf = vec![0u8; CHUNK + 1];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, tag, got_fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    for c in m.cmsgs().map_err(std::io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(r) = c {
                            fds.extend(r);
                        }
                    }
                    let len = m.bytes;
                    break (len, if len > 0 { buf[0] } else { 0 }, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for raw in got_fds {
            // SAFETY: the kernel just installed this descriptor for us (SCM_RIGHTS); nothing else
            // owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            fd = Some(owned);
        }
        if len == 0 {
            if body.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "sync socket closed in the middle of a message",
            ));
        }
        body.extend_from_slice(&buf[1..len]);
        match tag {
            LAST => break,
            MORE => continue,
            other => return Err(std::io::Error::other(format!("sync message with bad tag byte {other:#x}"))),
        }
    }
    Ok(Some((body, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn large_message_and_fd_round_trip() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let big = "x".repeat(100_000);
        let file = std::fs::File::open("/dev/null").unwrap();
        let writer = std::thread::spawn(move || {
            let err = super::super::error::StepError::Setup {
                step: big,
                path: Some("/p".into()),
                errno: Some(2),
                detail: "d".into(),
            };
            send(a.as_fd(), &FromHelper::Error(err), Some(file.as_raw_fd())).unwrap();
            drop(a);
        });
        let (msg, fd) = recv::<FromHelper>(b.as_fd()).unwrap().unwrap();
        writer.join().unwrap();
        match msg {
            FromHelper::Error(e) => {
                assert_eq!(e.to_string().len(), 100_003);
                assert_eq!((e.errno(), e.path()), (Some(2), Some(std::path::Path::new("/p"))));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(fd.is_some(), "the fd must arrive with the last datagram");
        assert!(recv::<FromHelper>(b.as_fd()).unwrap().is_none(), "then EOF");
    }
}
