//! The one parser of mount(8)-style option lists (`["ro", "rbind", "rslave", "mode=755"]`) for
//! the shim: the rootfs containerd hands over (service/rootfs.rs) and the OCI spec's mounts in the
//! container (launcher/mounts.rs) split options the same way, following runc's parseMountOptions.
//! The mount table itself is read with [`vfs::mountinfo`]. This module only parses; it never mounts.

use nix::mount::MsFlags;

/// A parsed `options` list: flags for mount(2), propagation changes applied afterwards, and the
/// filesystem data string (everything mount(2) does not know as a flag).
#[derive(Debug, PartialEq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: String,
}

/// runc's parseMountOptions.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut out = ParsedOptions { flags: MsFlags::empty(), propagation: Vec::new(), data: String::new() };
    let mut data = Vec::new();
    for o in options {
        let (clear, flag) = match o.as_str() {
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "atime" => (true, MsFlags::MS_NOATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "defaults" => (false, MsFlags::empty()),
            "dev" => (true, MsFlags::MS_NODEV),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "iversion" => (false, MsFlags::MS_I_VERSION),
            "lazytime" => (false, MsFlags::MS_LAZYTIME),
            "loud" => (true, MsFlags::MS_SILENT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "nodev" => (false, MsFlags::MS_NODEV),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "noiversion" => (true, MsFlags::MS_I_VERSION),
            "nolazytime" => (true, MsFlags::MS_LAZYTIME),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "silent" => (false, MsFlags::MS_SILENT),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "suid" => (true, MsFlags::MS_NOSUID),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                out.propagation.push(propagation(o).unwrap_or(MsFlags::MS_PRIVATE));
                continue;
            }
            // runc's tmpfs copy-up extension: not implemented, the tmpfs starts empty.
            "tmpcopyup" => continue,
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if clear {
            out.flags &= !flag;
        } else {
            out.flags |= flag;
        }
    }
    out.data = data.join(",");
    out
}

/// The propagation flags of one option or `rootfsPropagation` value; `None` for anything else.
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = ["nosuid", "noexec", "rbind", "ro", "rslave", "mode=755", "size=65536k", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse_options(&o);
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(p.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(p.data, "mode=755,size=65536k");
    }

    fn strings(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_and_bind_rootfs_options() {
        let p = parse_options(&strings(&["ro", "rbind", "lowerdir=/a:/b", "index=off"]));
        assert_eq!(p.flags, MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(p.data, "lowerdir=/a:/b,index=off");
        assert!(p.propagation.is_empty());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert!(!parse_options(&strings(&["ro", "rw"])).flags.contains(MsFlags::MS_RDONLY));
        assert!(parse_options(&strings(&["rw", "ro"])).flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(parse_options(&strings(&["nosuid", "suid", "noexec", "exec"])).flags, MsFlags::empty());
        assert_eq!(parse_options(&strings(&["noatime", "atime", "defaults"])).flags, MsFlags::empty());
    }

    #[test]
    fn propagation_is_kept_apart_from_flags_in_order() {
        let p = parse_options(&strings(&["bind", "private", "rshared", "runbindable"]));
        assert_eq!(p.flags, MsFlags::MS_BIND);
        let want =
            [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED | MsFlags::MS_REC, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC];
        assert_eq!(p.propagation, want);
        assert_eq!(propagation("rslave"), Some(MsFlags::MS_SLAVE | MsFlags::MS_REC));
        assert_eq!(propagation("slavish"), None);
    }

    #[test]
    fn unknown_options_are_data_and_tmpcopyup_is_dropped() {
        let p = parse_options(&strings(&["tmpcopyup", "mode=1777", "rro", "uid=5"]));
        assert_eq!(p.flags, MsFlags::empty());
        assert_eq!(p.data, "mode=1777,rro,uid=5");
    }
}
