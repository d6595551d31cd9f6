//! unified: the OCI `linux.resources.unified` map written verbatim, after checking each key names an existing
//! controller file of this cgroup (no paths, no cgroup core files the shim itself manages).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Enforcement, Setting};
use super::CgroupError;

pub(crate) struct Unified;

/// Core files the shim manages itself; writing them through `unified` would break tracking or placement.
const FORBIDDEN: &[&str] =
    &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze", "cgroup.type"];

pub(crate) fn validate_key(key: &str) -> Result<(), CgroupError> {
    let field = format!("unified[{key:?}]");
    if key.is_empty() || key.contains('/') || key.contains("..") || key.contains('\0') {
        return Err(CgroupError::invalid(field, "a key must be a plain cgroup file name like \"memory.high\""));
    }
    if !key.contains('.') {
        return Err(CgroupError::invalid(field, "a key must be <controller>.<file>, like \"memory.high\""));
    }
    if FORBIDDEN.contains(&key) {
        return Err(CgroupError::invalid(field, "this file is managed by the shim and cannot be set via unified"));
    }
    // Existence is checked by the manager against the live cgroup once controllers are enabled: a missing
    // file there means the controller is unavailable or the key is misspelt.
    Ok(())
}

impl Controller for Unified {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(map) = res.unified() else {
            return Ok(vec![]);
        };
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            validate_key(k)?;
            out.push(Setting { file: k.clone(), value: map[k].clone(), enforcement: Enforcement::Unified });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxResourcesBuilder;
    use std::collections::HashMap;

    #[test]
    fn keys_are_validated() {
        let plan = |k: &str| {
            let m: HashMap<String, String> = [(k.to_string(), "1".to_string())].into();
            Unified::plan(&LinuxResourcesBuilder::default().unified(m).build().unwrap(), Path::new("/x"))
        };
        let p = plan("memory.high").unwrap();
        assert_eq!((p[0].file.as_str(), p[0].value.as_str()), ("memory.high", "1"));
        for bad in ["../memory.max", "a/b.c", "memory", "cgroup.procs", ""] {
            let e = plan(bad).unwrap_err();
            assert!(e.is_invalid_argument() && e.to_string().contains("unified"), "{bad}: {e}");
        }
    }
}
