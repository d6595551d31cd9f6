//! The one parser of `/proc/self/mountinfo` (proc(5)) for the whole workspace: the lazy mount's
//! unmount checks, the shim (cgroup hierarchies, the rootfs's parent propagation) and the tests'
//! cleanup read mount tables through it, so escapes and optional fields are handled once.
//!
//! A line: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
//! Paths are octal-escaped by the kernel (space `\040`, tab `\011`, newline `\012`, backslash
//! `\134`); the optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`) run
//! up to the lone `-`. This module only reads; it never mounts anything.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the calling process's mount table is.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// The directory of the filesystem that is mounted (a bind mount of `/a/b` shows `/a/b`).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, `relatime`, ...).
    pub options: Vec<String>,
    /// Propagation and peer-group fields (`shared:4`, `master:1`, `unbindable`).
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (for a cgroup v1 hierarchy: its controllers, e.g. `rw,cpu,cpuacct`).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether mounts below this one propagate to a peer group (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// Parses a mount table; malformed lines are skipped (the kernel writes none, fixtures might).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let _major_minor = l.next()?;
    let root = unescape(l.next()?);
    let mount_point = unescape(l.next()?);
    let options = split_commas(l.next()?);
    let optional = l.filter(|f| !f.is_empty()).map(str::to_string).collect();
    let mut r = right.split(' ');
    let fstype = r.next().filter(|t| !t.is_empty())?.to_string();
    let source = unescape_string(r.next().unwrap_or_default());
    let super_options = split_commas(r.next().unwrap_or_default());
    Some(MountEntry { id, parent, root, mount_point, options, optional, fstype, source, super_options })
}

fn split_commas(s: &str) -> Vec<String> {
    s.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect()
}

/// Reads and parses the calling process's mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    read_from(Path::new(SELF_MOUNTINFO))
}

/// Reads and parses a mount table file (`/proc/<pid>/mountinfo`). The error is the bare I/O error
/// (its errno intact): the caller names the file in its own error type.
pub fn read_from(path: &Path) -> std::io::Result<Vec<MountEntry>> {
    std::fs::read_to_string(path).map(|text| parse(&text))
}

/// Whether `path` is a mount point of the calling process (compared as given: pass a canonical
/// path). An unreadable table answers false.
pub fn is_mount_point(path: &Path) -> bool {
    read().unwrap_or_default().iter().any(|m| m.mount_point == path)
}

/// Mount points at or below `dir` of the calling process, in table order (parents first).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    read().unwrap_or_default().into_iter().map(|m| m.mount_point).filter(|m| m.starts_with(dir)).collect()
}

/// Undoes the kernel's octal escapes (`\040` -> space); other bytes, and a backslash not followed
/// by three octal digits, stay as they are.
pub fn unescape(s: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_bytes(s)))
}

fn unescape_string(s: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(s)).into_owned()
}

fn unescape_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                // Three octal digits can spell up to 0o777; the kernel only writes bytes.
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate
31 22 0:27 /a\\040b /run/my\\040dir\\011tab\\134x rw master:3 propagate_from:1 - tmpfs my\\040src rw,size=10k
32 22 0:28 /user.slice /sys/fs/cgroup/cpu,cpuacct ro unbindable - cgroup cgroup rw,cpu,cpuacct
33 22 0:29 / /mnt rw - fuse.lazy lazy rw
garbage line
34 x 0:30 / /bad rw - tmpfs tmpfs rw
";

    #[test]
    fn fields_escapes_and_optional_fields() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 5, "malformed lines are skipped: {t:?}");
        let root = &t[0];
        assert_eq!((root.id, root.parent), (22, 1));
        assert_eq!(root.mount_point, Path::new("/"));
        assert!(root.is_shared());
        assert_eq!(root.super_options, ["rw", "errors=remount-ro"]);

        let odd = &t[2];
        assert_eq!(odd.root, Path::new("/a b"));
        assert_eq!(odd.mount_point, Path::new("/run/my dir\ttab\\x"));
        assert_eq!(odd.optional, ["master:3", "propagate_from:1"]);
        assert!(!odd.is_shared());
        assert_eq!(odd.source, "my src");
        assert_eq!(odd.fstype, "tmpfs");

        let v1 = &t[3];
        assert_eq!(v1.options, ["ro"]);
        assert_eq!(v1.optional, ["unbindable"]);
        assert_eq!(v1.super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(v1.root, Path::new("/user.slice"));

        let none = &t[4];
        assert!(none.optional.is_empty());
        assert_eq!(none.fstype, "fuse.lazy");
    }

    #[test]
    fn unescape_leaves_what_is_not_an_octal_escape() {
        assert_eq!(unescape(r"/run/a\040b\011c\012d\134e"), Path::new("/run/a b\tc\nd\\e"));
        assert_eq!(unescape(r"/plain\0"), Path::new("/plain\\0"));
        assert_eq!(unescape(r"/x\08y"), Path::new("/x\\08y"));
        assert_eq!(unescape(r"\"), Path::new("\\"));
    }

    #[test]
    fn the_live_table_has_proc_and_not_its_subdirectories() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self")));
        assert!(mounts_under(Path::new("/")).iter().any(|m| m == Path::new("/proc")));
    }
}
