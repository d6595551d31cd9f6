//! cpuset: cpus -> cpuset.cpus, mems -> cpuset.mems (both hard limits: they pin the workload).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Cpuset;

/// Accepts the kernel's list syntax ("0-3,5") and nothing else, so a typo fails with the field name.
fn validate_list(field: &str, v: &str) -> Result<(), CgroupError> {
    let ok = v.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().map(|a| a.trim().parse::<u32>().is_ok()).unwrap_or(false);
        let b = it.next().map(|b| b.trim().parse::<u32>().is_ok()).unwrap_or(true);
        a && b
    });
    if ok {
        Ok(())
    } else {
        Err(CgroupError::invalid(field, format!("{v:?} is not a list like \"0-3,5\"")))
    }
}

impl Controller for Cpuset {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(c) = res.cpu() else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            validate_list("cpu.cpus", cpus)?;
            out.push(Setting::limit("cpuset.cpus", cpus, format!("cpuset cpus {cpus:?}")));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            validate_list("cpu.mems", mems)?;
            out.push(Setting::limit("cpuset.mems", mems, format!("cpuset mems {mems:?}")));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};

    #[test]
    fn cpus_and_mems_map_verbatim_and_garbage_is_rejected() {
        let r = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().cpus("0-1,3").mems("0").build().unwrap())
            .build()
            .unwrap();
        let p: Vec<_> = Cpuset::plan(&r, Path::new("/x")).unwrap().into_iter().map(|s| (s.file, s.value)).collect();
        assert_eq!(p, vec![("cpuset.cpus".into(), "0-1,3".into()), ("cpuset.mems".into(), "0".into())]);
        let r = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().cpus("all").build().unwrap())
            .build()
            .unwrap();
        assert!(Cpuset::plan(&r, Path::new("/x")).unwrap_err().to_string().contains("cpu.cpus"));
    }
}
