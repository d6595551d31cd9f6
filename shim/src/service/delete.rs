//! The `delete` action containerd runs when a shim died (or failed to start): with the bundle as
//! the working directory, remove what the dead shim left: the container's processes (through its
//! cgroup), the cgroup, the rootfs overlay and the lazy FUSE mount. Prints a DeleteResponse.

use std::path::Path;

use anyhow::Context;
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::Flags;

use super::events::timestamp;
use super::rootfs::unmount_all;
use crate::cgroup::Cgroup;

pub fn run(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("delete: current directory (the bundle)")?
    } else {
        flags.bundle.clone().into()
    };
    cleanup(&bundle, &flags.namespace, &flags.id);
    let resp = DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().context("delete: encoding the response")?;
    use std::io::Write;
    std::io::stdout().write_all(&bytes).context("delete: writing the response")?;
    Ok(())
}

/// Best effort: every step runs even when an earlier one failed; failures go to stderr, which
/// containerd logs.
pub fn cleanup(bundle: &Path, namespace: &str, id: &str) {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    let linux = spec.as_ref().and_then(|s| s.linux().clone());
    match Cgroup::open_existing(linux.as_ref(), namespace, id) {
        Ok(Some(cg)) => {
            if let Err(e) = cg.kill_all(libc::SIGKILL) {
                eprintln!("delete {id}: killing processes of cgroup {}: {e}", cg.path().display());
            }
            let path = cg.path().to_path_buf();
            if let Err(e) = cg.delete() {
                eprintln!("delete {id}: removing cgroup {}: {e}", path.display());
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("delete {id}: finding its cgroup: {e}"),
    }
    for dir in ["rootfs", "lazy"] {
        if let Err(e) = unmount_all(&bundle.join(dir)) {
            eprintln!("delete {id}: {e}");
        }
    }
    // The dead server's socket (as the runc shim does). A live server of the same pod group still
    // answers on it: then it stays.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = address.trim().trim_start_matches("unix://");
        if !path.is_empty() && std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}
