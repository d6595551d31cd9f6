//! pids: limit -> pids.max (> 0 a hard limit; <= 0 "max").

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Pids;

impl Controller for Pids {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(p) = res.pids() else {
            return Ok(vec![]);
        };
        Ok(match p.limit() {
            l if l > 0 => vec![Setting::limit("pids.max", l.to_string(), format!("pids limit ({l})"))],
            _ => vec![Setting::priority("pids.max", "max")],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxPidsBuilder, LinuxResourcesBuilder};

    #[test]
    fn limit_maps_to_pids_max() {
        for (limit, want) in [(5i64, "5"), (0, "max"), (-1, "max")] {
            let r = LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(limit).build().unwrap())
                .build()
                .unwrap();
            let p = Pids::plan(&r, Path::new("/x")).unwrap();
            assert_eq!((p[0].file.as_str(), p[0].value.as_str()), ("pids.max", want));
        }
    }
}
