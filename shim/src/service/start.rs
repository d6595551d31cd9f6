//! The `start` action: find or start the shim server for this container's pod group and print ONLY
//! its address (containerd 1.6 reads the combined stdout+stderr as the address).
//!
//! Our own implementation, not containerd-shim's `spawn()`: stdin may carry containerd 2.3's
//! BootstrapParams, runtime options, or nothing ([`super::bootstrap`]); only a `ShimCgroup` in runc
//! options is used (the new server joins that cgroup, as the runc shim does). Containers with the same
//! `io.kubernetes.cri.sandbox-id` annotation share one shim: the socket address is derived from the
//! sandbox id, and a live server there is reused. Otherwise the listening socket is bound HERE and
//! handed to a detached server process, so the address works the moment it is printed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context};
use containerd_shim::Flags;

/// Environment variable carrying the inherited listening socket's fd number to the server.
pub const LISTEN_FD_ENV: &str = "LAZY_SHIM_LISTEN_FD";
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The pod group of a bundle: the sandbox id annotation, else the container id.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    spec.as_ref()
        .and_then(|s| s.get("annotations")?.get(SANDBOX_ID_ANNOTATION)?.as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

pub fn run(flags: &Flags) -> anyhow::Result<()> {
    // Drain stdin whatever it holds (BootstrapParams, Options, nothing).
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let input = super::bootstrap::decode_start_input(&input, &flags.id, &flags.namespace);
    let shim_cgroup = input.options.iter().find_map(super::bootstrap::shim_cgroup);

    let bundle = std::env::current_dir().context("start: current directory (the bundle)")?;
    let group = grouping(&bundle, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address).to_string();

    // Starts of one pod group run concurrently (CRI and `ctr run` start a pod's containers in
    // parallel) and must agree on one server. Unserialized, a second start could find no server
    // yet, unlink the socket the first had just bound and spawn a second server: containers then
    // split between two servers, and a server that never gets a task never exits (seen as a
    // leftover shim in the load tests). Holding a lock on the socket directory from the connect to
    // the bind makes the later start see the earlier one's listening socket.
    let dir = Path::new(&path).parent().context("start: the socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("start: creating {}", dir.display()))?;
    let dir_file = std::fs::File::open(dir).with_context(|| format!("start: opening {}", dir.display()))?;
    let _group_lock = nix::fcntl::Flock::lock(dir_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("start: locking {} against concurrent starts", dir.display()))?;
    if UnixStream::connect(&path).is_ok() {
        // An existing server of this pod group: reuse it.
        std::fs::write("address", &address).context("start: writing the address file")?;
        print_address(&address)?;
        return Ok(());
    }
    let _ = std::fs::remove_file(&path); // a stale socket of a dead server
    let listener = UnixListener::bind(&path).with_context(|| format!("start: binding {path}"))?;
    let fd = listener.as_raw_fd();
    // The server inherits the listener: clear close-on-exec on it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .context("start: clearing FD_CLOEXEC on the listener")?;

    let exe = std::env::current_exe().context("start: locating the shim binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address])
        .args(["-publish-binary", &flags.publish_binary, "-socket", &address])
        .current_dir(&bundle)
        .env(LISTEN_FD_ENV, fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    // SAFETY: setsid is async-signal-safe; it detaches the server from containerd's session so
    // signals to containerd's process group do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start: spawning the shim server")?;
    if let Some(cg) = &shim_cgroup {
        if let Err(e) = super::bootstrap::join_shim_cgroup(cg, child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            bail!("start: {e}");
        }
    }
    adjust_oom_score(child.id());
    std::fs::write("address", &address).context("start: writing the address file")?;
    print_address(&address)?;
    drop(listener);
    Ok(())
}

fn print_address(address: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes()).context("start: writing the address")?;
    out.flush().context("start: writing the address")?;
    Ok(())
}

/// As the runc shim does: the shim gets containerd's oom_score_adj + 1, so under memory pressure
/// the shim goes before containerd. Raising the score needs no privilege.
fn adjust_oom_score(pid: u32) {
    let parent = nix::unistd::getppid();
    let Ok(s) = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) else { return };
    let Ok(v) = s.trim().parse::<i32>() else { return };
    let v = (v + 1).min(1000);
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), v.to_string());
}

pub fn check_socket_flag(flags: &Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        bail!("the shim server needs -socket (containerd starts it through the `start` action)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_by_sandbox_annotation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(grouping(d.path(), "c1"), "c1");
        std::fs::write(d.path().join("config.json"), r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod7"}}"#)
            .unwrap();
        assert_eq!(grouping(d.path(), "c1"), "pod7");
    }
}
