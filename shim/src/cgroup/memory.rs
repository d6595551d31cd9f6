//! memory: limit -> memory.max, reservation -> memory.low, swap (OCI: memory+swap) -> memory.swap.max.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Memory;

/// "max" for -1, the number otherwise; other negatives are invalid.
fn limit_value(field: &str, v: i64) -> Result<String, CgroupError> {
    match v {
        -1 => Ok("max".into()),
        v if v < 0 => Err(CgroupError::invalid(field, format!("{v} is negative (use -1 for unlimited)"))),
        v => Ok(v.to_string()),
    }
}

/// runc's ConvertMemorySwapToCgroupV2Value: OCI swap is memory+swap, cgroup v2 memory.swap.max is swap alone.
/// Returns None for "leave unchanged".
pub(crate) fn swap_value(swap: i64, limit: i64) -> Result<Option<String>, CgroupError> {
    if limit == -1 && swap == 0 {
        return Ok(Some("max".into()));
    }
    match swap {
        0 => return Ok(None),
        -1 => return Ok(Some("max".into())),
        _ => {}
    }
    if limit == 0 || limit == -1 {
        return Err(CgroupError::invalid("memory.swap", "a swap limit needs a memory limit (OCI swap is memory+swap)"));
    }
    if limit < 0 || swap < 0 {
        return Err(CgroupError::invalid("memory.swap", format!("invalid values swap {swap}, limit {limit}")));
    }
    if swap < limit {
        return Err(CgroupError::invalid(
            "memory.swap",
            format!("memory+swap {swap} is below the memory limit {limit}; it must be >= the limit"),
        ));
    }
    Ok(Some((swap - limit).to_string()))
}

impl Controller for Memory {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(m) = res.memory() else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        let limit = m.limit().unwrap_or(0);
        if limit != 0 {
            let v = limit_value("memory.limit", limit)?;
            if v == "max" {
                out.push(Setting::priority("memory.max", v));
            } else {
                out.push(Setting::limit("memory.max", v, format!("memory limit ({limit} bytes)")));
            }
        }
        if let Some(swap) = swap_value(m.swap().unwrap_or(0), limit)? {
            if swap == "max" {
                out.push(Setting::if_present("memory.swap.max", swap));
            } else {
                let what = format!("swap limit ({swap} bytes)");
                out.push(Setting::limit("memory.swap.max", swap, what));
            }
        }
        if let Some(r) = m.reservation().filter(|r| *r != 0) {
            // A reservation protects memory from reclaim; without the controller nothing is protected,
            // but nothing is limited either: a priority.
            out.push(Setting::priority("memory.low", limit_value("memory.reservation", r)?));
        }
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            log::debug!("memory.kernel/kernelTCP limits do not exist in cgroup v2; ignored");
        }
        if let Some(s) = m.swappiness() {
            log::debug!("memory.swappiness {s} does not exist in cgroup v2; ignored");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

    fn plan(limit: Option<i64>, swap: Option<i64>, res: Option<i64>) -> Result<Vec<Setting>, CgroupError> {
        let mut b = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            b = b.limit(l);
        }
        if let Some(s) = swap {
            b = b.swap(s);
        }
        if let Some(r) = res {
            b = b.reservation(r);
        }
        let r = LinuxResourcesBuilder::default().memory(b.build().unwrap()).build().unwrap();
        Memory::plan(&r, Path::new("/nonexistent"))
    }

    fn files(s: &[Setting]) -> Vec<(String, String)> {
        s.iter().map(|s| (s.file.clone(), s.value.clone())).collect()
    }

    #[test]
    fn limit_swap_reservation_map_like_runc() {
        let s = plan(Some(33554432), Some(67108864), Some(16777216)).unwrap();
        assert_eq!(
            files(&s),
            vec![
                ("memory.max".into(), "33554432".into()),
                ("memory.swap.max".into(), "33554432".into()),
                ("memory.low".into(), "16777216".into()),
            ]
        );
        assert!(matches!(s[0].enforcement, super::super::controller::Enforcement::Limit(_)));
    }

    #[test]
    fn unlimited_memory_means_unlimited_swap() {
        let s = plan(Some(-1), None, None).unwrap();
        assert_eq!(files(&s), vec![("memory.max".into(), "max".into()), ("memory.swap.max".into(), "max".into())]);
    }

    #[test]
    fn invalid_swap_is_rejected_with_the_field() {
        let e = plan(Some(100), Some(50), None).unwrap_err();
        assert!(e.to_string().contains("memory.swap"), "{e}");
        assert!(e.is_invalid_argument());
        let e = plan(None, Some(500), None).unwrap_err();
        assert!(e.to_string().contains("needs a memory limit"), "{e}");
        assert!(plan(Some(-5), None, None).is_err());
    }
}
