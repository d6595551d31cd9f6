//! Small cgroupfs file helpers that attach the path to every error.

use std::path::Path;

use super::CgroupError;

/// Reads a cgroup file as text.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::io("read", path, e))
}

/// Reads a cgroup file; `None` when it does not exist (controller not enabled, old kernel).
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::io("read", path, e)),
    }
}

/// Writes one value with a single write(2), as cgroupfs expects. O_TRUNC is harmless on cgroupfs (runc uses
/// it too) and makes the fake cgroupfs of the unit tests behave like the real one.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| CgroupError::io("open for writing", path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| CgroupError::io("write", path, with_value(e, value)))
}

fn with_value(e: std::io::Error, value: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{e} (value {value:?})"))
}

/// Parses flat-keyed files (cpu.stat, memory.stat, memory.events, cgroup.events): `key value` per line.
pub(crate) fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let k = it.next()?;
        let v = it.next()?.parse().ok()?;
        Some((k, v))
    })
}

/// Value of one key in a flat-keyed file's text.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    flat_keyed(text).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Parses single-value files holding a number or "max" (max -> u64::MAX).
pub(crate) fn parse_max(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}
