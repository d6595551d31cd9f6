//! What containerd hands the shim besides the bundle: the bytes on `start`'s stdin and the runc-style
//! options of CreateTaskRequest, as far as the shim acts on them (today: `ShimCgroup`).
//!
//! `start`'s stdin is, depending on the containerd version:
//! - nothing (no runtime options),
//! - a protobuf `google.protobuf.Any` holding the runtime options (containerd 1.x - 2.2),
//! - a protobuf `containerd.runtime.bootstrap.v1.BootstrapParams` (containerd >= 2.3), whose
//!   `extensions` carry the runtime options as `Any`s. Its `instance_id` and `namespace` equal the
//!   `-id` and `-namespace` flags; that is how it is told apart from an `Any` (both parse as either).
//!
//! containerd 2.3 reads the reply of `start` as a protobuf `BootstrapResult` first and, when that does
//! not parse, as a legacy JSON `{version, address, protocol}` or a plain address. The shim prints the
//! plain address for every version (containerd 1.6 requires it; no `unix://...` address parses as a
//! protobuf message because `/` is an invalid wire type).
//!
//! This module never touches anything but the shim's own cgroup membership.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};

/// Type names (the last segment of the Any's type URL) of the option messages that carry ShimCgroup.
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const LINUX_RUNC_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";

/// `start`'s stdin, decoded.
#[derive(Debug, Default, PartialEq)]
pub struct StartInput {
    /// Whether the bytes were a BootstrapParams message (containerd >= 2.3).
    pub bootstrap: bool,
    /// The runtime options (a bare Any, or each Any among BootstrapParams' extensions).
    pub options: Vec<Any>,
}

type PResult<T> = Result<T, containerd_shim::protos::protobuf::Error>;

fn skip(input: &mut CodedInputStream<'_>, tag: u32) -> PResult<()> {
    let wire = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
        .ok_or_else(|| containerd_shim::protos::protobuf::Error::from(std::io::Error::other("bad wire type")))?;
    input.skip_field(wire)
}

/// BootstrapParams: 1 instance_id, 2 namespace, 8 repeated Extension { 1 Any value }.
fn parse_bootstrap(bytes: &[u8]) -> PResult<(String, String, Vec<Any>)> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut id, mut ns, mut exts) = (String::new(), String::new(), Vec::new());
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            0x0a => id = input.read_string()?,
            0x12 => ns = input.read_string()?,
            0x42 => {
                let ext = input.read_bytes()?;
                let mut e = CodedInputStream::from_bytes(&ext);
                while let Some(t) = e.read_raw_tag_or_eof()? {
                    if t == 0x0a {
                        exts.push(Any::parse_from_bytes(&e.read_bytes()?)?);
                    } else {
                        skip(&mut e, t)?;
                    }
                }
            }
            other => skip(&mut input, other)?,
        }
    }
    Ok((id, ns, exts))
}

/// Decodes `start`'s stdin for the container `id` in `namespace`. Anything unrecognised is ignored
/// (with a debug log): older and newer containerds must both keep working.
pub fn decode_start_input(bytes: &[u8], id: &str, namespace: &str) -> StartInput {
    if bytes.is_empty() {
        return StartInput::default();
    }
    if let Ok((bid, bns, options)) = parse_bootstrap(bytes) {
        if bid == id && bns == namespace {
            return StartInput { bootstrap: true, options };
        }
    }
    match Any::parse_from_bytes(bytes) {
        Ok(any) if !any.type_url.is_empty() => StartInput { bootstrap: false, options: vec![any] },
        _ => {
            log::debug!("start: ignoring {} bytes on stdin that are neither BootstrapParams nor options", bytes.len());
            StartInput::default()
        }
    }
}

/// The `ShimCgroup` of runc-style options (containerd.runc.v1.Options field 3,
/// containerd.linux.runc.CreateOptions field 9); None for other types or when empty.
pub fn shim_cgroup(any: &Any) -> Option<String> {
    let field = match any.type_url.rsplit('/').next().unwrap_or_default() {
        RUNC_OPTIONS => 3,
        LINUX_RUNC_CREATE_OPTIONS => 9,
        _ => return None,
    };
    let want = (field << 3) | 2;
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut found = None;
    loop {
        match input.read_raw_tag_or_eof() {
            Ok(Some(tag)) if tag == want => found = input.read_string().ok(),
            Ok(Some(tag)) => {
                if skip(&mut input, tag).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    found.filter(|s| !s.is_empty())
}

/// cgroup hierarchies to join, as `(mount point, is cgroup2)`: the cgroup2 mount and, on hybrid hosts,
/// every cgroup v1 hierarchy (what the runc shim joins there).
fn hierarchies(table: Vec<vfs::mountinfo::MountEntry>) -> Vec<(PathBuf, bool)> {
    table
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| {
            let v2 = m.fstype == "cgroup2";
            (m.mount_point, v2)
        })
        .collect()
}

/// Moves `pid` into the cgroup `path` (a cgroupfs path such as `/pods/shims`) in every hierarchy where
/// that directory exists. As with the runc shim the cgroup must exist already; none found is an error.
pub fn join_shim_cgroup(path: &str, pid: u32) -> Result<Vec<PathBuf>, String> {
    let table = vfs::mountinfo::read().map_err(|e| format!("reading {}: {e}", vfs::mountinfo::SELF_MOUNTINFO))?;
    join_in(&hierarchies(table), path, pid)
}

fn join_in(hierarchies: &[(PathBuf, bool)], path: &str, pid: u32) -> Result<Vec<PathBuf>, String> {
    let rel = Path::new(path.trim_start_matches('/'));
    if path.contains(':') || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("shim cgroup {path:?}: expected a cgroupfs path like /pods/shims"));
    }
    let mut joined = Vec::new();
    for (mount, _) in hierarchies {
        let dir = mount.join(rel);
        if !dir.is_dir() {
            continue;
        }
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| format!("shim cgroup {path}: writing {pid} to {}: {e}", procs.display()))?;
        joined.push(dir);
    }
    if joined.is_empty() {
        let mounts: Vec<String> = hierarchies.iter().map(|(m, _)| m.display().to_string()).collect();
        return Err(format!(
            "shim cgroup {path}: no such cgroup under {} (create it before starting the container)",
            mounts.join(", ")
        ));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedOutputStream;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any { type_url: type_url.into(), value, ..Default::default() }
    }

    fn string_field(field: u32, v: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut o = CodedOutputStream::vec(&mut out);
        o.write_string(field, v).unwrap();
        o.flush().unwrap();
        drop(o);
        out
    }

    fn bootstrap(id: &str, ns: &str, exts: &[Any]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut o = CodedOutputStream::vec(&mut out);
        o.write_string(1, id).unwrap();
        o.write_string(2, ns).unwrap();
        o.write_int32(3, -4).unwrap(); // log_level DEBUG
        o.write_string(4, "2.3.0").unwrap();
        for e in exts {
            let mut ext = Vec::new();
            let mut eo = CodedOutputStream::vec(&mut ext);
            eo.write_bytes(1, &e.write_to_bytes().unwrap()).unwrap();
            eo.flush().unwrap();
            drop(eo);
            o.write_bytes(8, &ext).unwrap();
        }
        o.flush().unwrap();
        drop(o);
        out
    }

    #[test]
    fn runc_options_and_legacy_create_options_carry_shim_cgroup() {
        let o = any("types.containerd.io/containerd.runc.v1.Options", string_field(3, "/pods/shim"));
        assert_eq!(shim_cgroup(&o).as_deref(), Some("/pods/shim"));
        let o = any("containerd.linux.runc.CreateOptions", string_field(9, "/x"));
        assert_eq!(shim_cgroup(&o).as_deref(), Some("/x"));
        let o = any("runtimeoptions.v1.Options", string_field(3, "/x"));
        assert_eq!(shim_cgroup(&o), None);
    }

    #[test]
    fn start_input_kinds() {
        assert_eq!(decode_start_input(b"", "c1", "ns"), StartInput::default());
        let opts = any("containerd.runc.v1.Options", string_field(3, "/s"));
        let bare = decode_start_input(&opts.write_to_bytes().unwrap(), "c1", "ns");
        assert_eq!(bare, StartInput { bootstrap: false, options: vec![opts.clone()] });
        let b = decode_start_input(&bootstrap("c1", "ns", std::slice::from_ref(&opts)), "c1", "ns");
        assert_eq!(b, StartInput { bootstrap: true, options: vec![opts] });
        // A BootstrapParams for another container is not ours: not taken as bootstrap.
        assert!(!decode_start_input(&bootstrap("c2", "ns", &[]), "c1", "ns").bootstrap);
        assert_eq!(decode_start_input(b"{\"json\": true}", "c1", "ns"), StartInput::default());
    }

    #[test]
    fn joining_writes_cgroup_procs_where_the_directory_exists() {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("unified");
        let v1 = d.path().join("cpu");
        std::fs::create_dir_all(v2.join("pods/shim")).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        let h = vec![(v2.clone(), true), (v1, false)];
        let joined = join_in(&h, "/pods/shim", 42).unwrap();
        assert_eq!(joined, vec![v2.join("pods/shim")]);
        assert_eq!(std::fs::read_to_string(v2.join("pods/shim/cgroup.procs")).unwrap(), "42");
        let e = join_in(&h, "/nope", 42).unwrap_err();
        assert!(e.contains("/nope") && e.contains("no such cgroup"), "{e}");
        assert!(join_in(&h, "/a/../b", 1).is_err());
        assert!(join_in(&h, "system.slice:x:y", 1).is_err());
    }

    #[test]
    fn a_plain_address_is_not_a_protobuf_message() {
        // containerd 2.3 tries the reply as a protobuf BootstrapResult first.
        let addr = b"unix:///run/containerd/s/0123456789abcdef";
        assert!(containerd_shim::protos::protobuf::well_known_types::empty::Empty::parse_from_bytes(addr).is_err());
    }
}
