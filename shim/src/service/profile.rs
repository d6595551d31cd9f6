//! The `[security]` section of the shim config applied to a container's OCI spec: the one place
//! where a RuntimeClass profile (e.g. `lazy-sandbox`) overrides what the pod asked for. Runs at
//! Create before the cgroup and the launcher see the spec, and on every exec process spec.
//! Pure functions: they only edit the spec and say what they changed (for a debug log).

use std::collections::HashSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxPidsBuilder, LinuxResources, LinuxSeccomp, Process, Spec};

use super::config::SecurityConfig;
use super::error::{Error, Result};

/// containerd 1.6.20's default seccomp profile (what `ctr run --seccomp` and CRI's
/// `RuntimeDefault` give a container with the default capability set), captured on this project's
/// build host from containerd itself by the ignored test
/// `tests/tests/shim_profiles.rs::capture_containerd_default_seccomp` (`ctr container create
/// --seccomp`, then linux.seccomp of `ctr container info`). Regenerate it that way, never by hand.
const DEFAULT_SECCOMP: &str = include_str!("default_seccomp.json");

/// containerd's default seccomp profile, parsed.
pub fn default_seccomp() -> LinuxSeccomp {
    serde_json::from_str(DEFAULT_SECCOMP).expect("default_seccomp.json is a valid linux.seccomp (unit-tested)")
}

/// The capabilities `[security] capabilities` allows, or None when it is empty (no restriction).
fn allowed(cfg: &SecurityConfig) -> Result<Option<Capabilities>> {
    if cfg.capabilities.is_empty() {
        return Ok(None);
    }
    let mut set = HashSet::new();
    for name in &cfg.capabilities {
        let cap: Capability =
            serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|_| Error::Config {
                path: "[security] capabilities".into(),
                reason: format!("{name:?} is not a Linux capability name (e.g. \"CAP_CHOWN\")"),
            })?;
        set.insert(cap);
    }
    Ok(Some(set))
}

/// Applies the process-level settings (capabilities, no_new_privileges) to one process: the init
/// process of a Create or an exec. Returns what it changed.
pub fn apply_process(cfg: &SecurityConfig, process: &mut Process) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if cfg.no_new_privileges && process.no_new_privileges() != Some(true) {
        process.set_no_new_privileges(Some(true));
        changed.push("process.noNewPrivileges = true".to_string());
    }
    // No process.capabilities means no capabilities at all (runc, our launcher): nothing to narrow.
    if let (Some(allowed), Some(mut caps)) = (allowed(cfg)?, process.capabilities().clone()) {
        let mut dropped: HashSet<Capability> = HashSet::new();
        let mut narrow = |set: &Option<Capabilities>| -> Option<Capabilities> {
            let set = set.as_ref()?;
            dropped.extend(set.difference(&allowed).copied());
            Some(set.intersection(&allowed).copied().collect())
        };
        let (b, e, p, i, a) = (
            narrow(caps.bounding()),
            narrow(caps.effective()),
            narrow(caps.permitted()),
            narrow(caps.inheritable()),
            narrow(caps.ambient()),
        );
        caps.set_bounding(b).set_effective(e).set_permitted(p).set_inheritable(i).set_ambient(a);
        process.set_capabilities(Some(caps));
        if !dropped.is_empty() {
            let mut names: Vec<String> = dropped.iter().map(|c| format!("CAP_{c}")).collect();
            names.sort();
            changed.push(format!("dropped capabilities {}", names.join(" ")));
        }
    }
    Ok(changed)
}

/// Applies the whole `[security]` section to a container's spec. Returns what it changed.
pub fn apply(cfg: &SecurityConfig, spec: &mut Spec) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if let Some(process) = spec.process_mut() {
        changed.extend(apply_process(cfg, process)?);
    }
    if cfg.readonly_rootfs {
        if let Some(root) = spec.root_mut() {
            if root.readonly() != Some(true) {
                root.set_readonly(Some(true));
                changed.push("root.readonly = true".to_string());
            }
        }
    }
    if cfg.readonly_sys {
        if let Some(mounts) = spec.mounts_mut() {
            for m in mounts.iter_mut().filter(|m| m.typ().as_deref() == Some("sysfs")) {
                let mut opts: Vec<String> = m.options().clone().unwrap_or_default();
                if !opts.iter().any(|o| o == "ro") {
                    opts.retain(|o| o != "rw");
                    opts.push("ro".into());
                    m.set_options(Some(opts));
                    changed.push(format!("sysfs mount {} ro", m.destination().display()));
                }
            }
        }
    }
    let wants_linux = cfg.seccomp_default || cfg.readonly_sys || cfg.default_pids_limit > 0;
    if wants_linux && spec.linux().is_none() {
        spec.set_linux(Some(Default::default()));
    }
    if let Some(linux) = spec.linux_mut() {
        if cfg.seccomp_default && linux.seccomp().is_none() {
            linux.set_seccomp(Some(default_seccomp()));
            changed.push("linux.seccomp = containerd's default profile".to_string());
        }
        if cfg.readonly_sys {
            let mut paths = linux.readonly_paths().clone().unwrap_or_default();
            if !paths.iter().any(|p| p == "/proc/sys") {
                paths.push("/proc/sys".into());
                linux.set_readonly_paths(Some(paths));
                changed.push("/proc/sys read-only".to_string());
            }
        }
        if cfg.default_pids_limit > 0 {
            let mut res: LinuxResources = linux.resources().clone().unwrap_or_default();
            if res.pids().as_ref().is_none_or(|p| p.limit() <= 0) {
                let pids = LinuxPidsBuilder::default()
                    .limit(cfg.default_pids_limit)
                    .build()
                    .map_err(|e| Error::Other(format!("building linux.resources.pids: {e}")))?;
                res.set_pids(Some(pids));
                linux.set_resources(Some(res));
                changed.push(format!("linux.resources.pids.limit = {}", cfg.default_pids_limit));
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxPids, Mount};

    fn spec() -> Spec {
        // oci-spec's default spec is runc's `runc spec` (caps, a sysfs mount); made as permissive
        // as a pod may ask: writable rootfs and sysfs, no seccomp, no no_new_privileges.
        let mut s = Spec::default();
        s.linux_mut().as_mut().unwrap().set_seccomp(None).set_resources(None).set_readonly_paths(None);
        s.process_mut().as_mut().unwrap().set_no_new_privileges(None);
        s.root_mut().as_mut().unwrap().set_readonly(Some(false));
        for m in s.mounts_mut().as_mut().unwrap() {
            if m.typ().as_deref() == Some("sysfs") {
                m.set_options(Some(vec!["nosuid".into(), "rw".into()]));
            }
        }
        s
    }

    fn sandbox() -> SecurityConfig {
        SecurityConfig {
            seccomp_default: true,
            no_new_privileges: true,
            readonly_rootfs: true,
            capabilities: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            readonly_sys: true,
            default_pids_limit: 1024,
        }
    }

    #[test]
    fn profile_defaults_change_nothing() {
        let mut s = spec();
        let before = serde_json::to_value(&s).unwrap();
        let changed = apply(&SecurityConfig::default(), &mut s).unwrap();
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(serde_json::to_value(&s).unwrap(), before);
    }

    #[test]
    fn profile_sandbox_hardens_every_part() {
        let mut s = spec();
        let changed = apply(&sandbox(), &mut s).unwrap();
        assert_eq!(changed.len(), 7, "{changed:?}");
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        let want: Capabilities = [Capability::Chown, Capability::Kill].into_iter().collect();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            // runc's default set has CAP_KILL but not CAP_CHOWN: only the intersection stays.
            assert!(set.as_ref().unwrap().is_subset(&want), "{set:?}");
            assert!(set.as_ref().unwrap().contains(&Capability::Kill), "{set:?}");
        }
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let sys: Vec<&Mount> =
            s.mounts().as_ref().unwrap().iter().filter(|m| m.typ().as_deref() == Some("sysfs")).collect();
        assert!(!sys.is_empty());
        for m in sys {
            let o = m.options().as_ref().unwrap();
            assert!(o.contains(&"ro".to_string()) && !o.contains(&"rw".to_string()), "{o:?}");
        }
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_string()));
        let sec = linux.seccomp().as_ref().unwrap();
        assert_eq!(sec, &default_seccomp());
        assert!(!sec.syscalls().as_ref().unwrap().is_empty());
        assert_eq!(linux.resources().as_ref().unwrap().pids().unwrap().limit(), 1024);
    }

    #[test]
    fn profile_keeps_what_the_spec_already_sets() {
        let mut s = spec();
        let own = LinuxSeccomp::default();
        let pids: LinuxPids = LinuxPidsBuilder::default().limit(7).build().unwrap();
        let linux = s.linux_mut().as_mut().unwrap();
        linux.set_seccomp(Some(own.clone()));
        linux.set_resources(Some(LinuxResources::default()));
        linux.resources_mut().as_mut().unwrap().set_pids(Some(pids));
        apply(&sandbox(), &mut s).unwrap();
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(linux.seccomp().as_ref(), Some(&own), "the pod's own seccomp profile stays");
        assert_eq!(linux.resources().as_ref().unwrap().pids().unwrap().limit(), 7);
    }

    #[test]
    fn profile_exec_process_gets_caps_and_no_new_privileges() {
        let mut p = Process::default();
        let mut caps = p.capabilities().clone().unwrap();
        caps.set_ambient(Some([Capability::NetRaw, Capability::Kill].into_iter().collect()));
        p.set_capabilities(Some(caps));
        let changed = apply_process(&sandbox(), &mut p).unwrap();
        assert!(changed.iter().any(|c| c.contains("NET_RAW")), "{changed:?}");
        assert_eq!(p.no_new_privileges(), Some(true));
        let ambient = p.capabilities().as_ref().unwrap().ambient().clone().unwrap();
        assert_eq!(ambient, [Capability::Kill].into_iter().collect());
    }

    #[test]
    fn profile_rejects_an_unknown_capability_naming_it() {
        let cfg = SecurityConfig { capabilities: vec!["CAP_FLY".into()], ..Default::default() };
        let err = apply(&cfg, &mut spec()).unwrap_err().to_string();
        assert!(err.contains("CAP_FLY") && err.contains("[security] capabilities"), "{err}");
    }
}
