//! The manager composes the controllers: it resolves and creates the container's cgroup, enables controllers
//! in the parents, checks that every requested hard limit can be enforced (or warns under the policy), writes
//! the planned settings, attaches the device program, and removes the cgroup on delete.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Linux, LinuxResources};

use super::controller::{Controller, Enforcement, Setting};
use super::{cpu, cpuset, devices, fs, hugetlb, io, memory, pids, unified};
use super::{CgroupError, CgroupMount, CgroupPolicy};

/// How long delete keeps retrying rmdir while the last processes exit.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// A container cgroup under a cgroup2 root (the real mount, or a temp dir in unit tests).
#[derive(Debug)]
pub struct Manager {
    mount: CgroupMount,
    path: PathBuf,
    id: String,
    policy: CgroupPolicy,
}

/// Turns `linux.cgroupsPath` into a path relative to the cgroup2 root. Empty means `/<namespace>/<id>` (what
/// containerd's runc shim does for `ctr run`); relative paths are taken relative to the root too.
pub fn resolve_cgroups_path(linux: Option<&Linux>, namespace: &str, id: &str) -> Result<PathBuf, CgroupError> {
    let given =
        linux.and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let text = if given.is_empty() { format!("/{namespace}/{id}") } else { given.clone() };
    let bad = |reason: &str| CgroupError::InvalidPath { path: text.clone(), reason: reason.into() };
    if !text.starts_with('/') && text.split(':').count() == 3 {
        return Err(bad(
            "systemd cgroup paths (slice:prefix:name) are not supported by this shim: use the cgroupfs driver \
             (kubelet cgroupDriver: cgroupfs, and SystemdCgroup = false in containerd's runtime options)",
        ));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(&text).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad("must not contain \"..\": give a path below the cgroup root"))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("names the cgroup root; a container needs its own cgroup"));
    }
    Ok(rel)
}

fn controllers_in(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_string).collect()
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::io("create cgroup directory", path, e)),
    }
}

/// Enables every controller `dir` has in its children (like runc), one at a time so one refusal (EBUSY when
/// `dir` holds processes, a controller the kernel cannot move) does not block the others. The leaf's
/// cgroup.controllers tells afterwards what actually arrived.
fn enable_controllers(dir: &Path) {
    let Ok(Some(avail)) = fs::read_opt(&dir.join("cgroup.controllers")) else {
        return;
    };
    let ctl = dir.join("cgroup.subtree_control");
    let enabled = fs::read_opt(&ctl).ok().flatten().map(|t| controllers_in(&t)).unwrap_or_default();
    for c in controllers_in(&avail).difference(&enabled) {
        if let Err(e) = fs::write(&ctl, &format!("+{c}")) {
            log::debug!("cannot enable the {c} controller in {}: {e}", ctl.display());
        }
    }
}

impl Manager {
    /// Creates `<root>/<rel>` with the parents' controllers enabled and applies `resources`. On failure the
    /// new cgroup is removed again.
    pub fn create(
        mount: CgroupMount,
        rel: &Path,
        id: &str,
        resources: Option<&LinuxResources>,
        policy: &CgroupPolicy,
    ) -> Result<Manager, CgroupError> {
        let path = mount.root.join(rel);
        let mut dir = mount.root.clone();
        for c in rel.components() {
            enable_controllers(&dir);
            dir.push(c);
            mkdir(&dir)?;
        }
        let m = Manager { mount, path, id: id.to_string(), policy: *policy };
        if let Some(res) = resources {
            if let Err(e) = m.apply(res) {
                if let Err(rm) = std::fs::remove_dir(&m.path) {
                    log::warn!("container {id}: cannot remove cgroup {} after failed create: {rm}", m.path.display());
                }
                return Err(e);
            }
        }
        Ok(m)
    }

    /// The manager for an existing cgroup, None when it does not exist.
    pub fn open(mount: CgroupMount, rel: &Path, id: &str) -> Option<Manager> {
        let path = mount.root.join(rel);
        path.is_dir().then(|| Manager { mount, path, id: id.to_string(), policy: CgroupPolicy::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Controllers available in this cgroup (its cgroup.controllers).
    pub fn available(&self) -> Result<BTreeSet<String>, CgroupError> {
        Ok(fs::read_opt(&self.path.join("cgroup.controllers"))?.map(|t| controllers_in(&t)).unwrap_or_default())
    }

    /// Every planned write for `res`, in the order they are applied (devices are separate).
    pub(crate) fn plan(&self, res: &LinuxResources) -> Result<Vec<Setting>, CgroupError> {
        let d = &self.path;
        let mut out = memory::Memory::plan(res, d)?;
        out.extend(cpu::Cpu::plan(res, d)?);
        out.extend(cpuset::Cpuset::plan(res, d)?);
        out.extend(pids::Pids::plan(res, d)?);
        out.extend(io::Io::plan(res, d)?);
        out.extend(hugetlb::Hugetlb::plan(res, d)?);
        out.extend(unified::Unified::plan(res, d)?);
        Ok(out)
    }

    fn unenforceable(&self, what: &str, controller: &str) -> CgroupError {
        let fix = if controller.contains(' ') {
            // A knob missing from an available controller (memory.swap.max without swap accounting).
            "use a kernel that provides this file (for swap: CONFIG_MEMCG_SWAP, boot with swapaccount=1)".to_string()
        } else if self.mount.hybrid {
            "boot with systemd.unified_cgroup_hierarchy=1".to_string()
        } else {
            format!(
                "enable it in the parent cgroups' cgroup.subtree_control (the shim's own cgroup must delegate \
                 the {controller} controller)"
            )
        };
        CgroupError::Unenforceable {
            what: what.to_string(),
            controller: if controller.contains(' ') {
                controller.to_string()
            } else {
                format!("{controller} controller")
            },
            mount: self.mount.root.clone(),
            hybrid: self.mount.hybrid_note(),
            fix,
        }
    }

    /// Checks, then writes every resource setting, then (re)attaches the device program. Nothing is written
    /// when a hard limit cannot be enforced and the policy does not allow that.
    pub fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let settings = self.plan(res)?;
        let mut rules = devices::parse_rules(res.devices().as_deref().unwrap_or(&[]))?;
        if res.devices().is_some() {
            rules = devices::with_runc_defaults(rules);
        }
        let avail = self.available()?;
        let mut writes = Vec::new();
        let mut unenforced = Vec::new();
        for s in settings {
            let present = self.path.join(&s.file).exists();
            let has_controller = s.controller() == "cgroup" || avail.contains(s.controller());
            match &s.enforcement {
                Enforcement::Limit(what) if !has_controller => {
                    unenforced.push((what.clone(), s.controller().to_string()))
                }
                // The controller is there but this knob is not (e.g. memory.swap.max without swap
                // accounting): as unenforceable as a missing controller; name the file.
                Enforcement::Limit(what) if !present => {
                    unenforced.push((what.clone(), format!("{} controller's {}", s.controller(), s.file)))
                }
                Enforcement::Limit(_) => writes.push(s),
                Enforcement::Unified if !has_controller => {
                    unenforced.push((format!("unified {}={:?}", s.file, s.value), s.controller().to_string()))
                }
                Enforcement::Unified if !present => {
                    return Err(CgroupError::invalid(
                        format!("unified[{:?}]", s.file),
                        format!("{} has no such file (is the key misspelt?)", self.path.display()),
                    ))
                }
                Enforcement::Unified => writes.push(s),
                Enforcement::Priority if has_controller && present => writes.push(s),
                Enforcement::Priority => {
                    log::debug!(
                        "container {}: {}={} skipped: the {} controller is not available",
                        self.id,
                        s.file,
                        s.value,
                        s.controller()
                    )
                }
                Enforcement::IfPresent if present => writes.push(s),
                Enforcement::IfPresent => log::debug!("container {}: {} not present; skipped", self.id, s.file),
            }
        }
        if let Some((what, controller)) = unenforced.first() {
            if !self.policy.allow_unenforced_limits {
                return Err(self.unenforceable(what, controller));
            }
            for (what, controller) in &unenforced {
                if let CgroupError::Unenforceable { controller, mount, hybrid, fix, .. } =
                    self.unenforceable(what, controller)
                {
                    log::warn!(
                        "container {}: {what} NOT ENFORCED: the {controller} is not available in cgroup v2 at \
                         {}{hybrid}; running anyway because allow_unenforced_limits = true (to enforce: {fix})",
                        self.id,
                        mount.display()
                    );
                }
            }
        }
        for s in &writes {
            fs::write(&self.path.join(&s.file), &s.value)?;
        }
        if !rules.is_empty() || res.devices().is_some() {
            if let Err(e) = devices::apply(&self.path, &rules) {
                if !self.policy.allow_unenforced_limits {
                    return Err(e);
                }
                log::warn!("container {}: device rules NOT ENFORCED (allow_unenforced_limits = true): {e}", self.id);
            }
        }
        Ok(())
    }

    /// Moves `pid` into this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Removes child cgroups depth-first, then this one, retrying EBUSY while processes drain.
    pub fn delete(&self) -> Result<(), CgroupError> {
        remove_tree(&self.path, Instant::now() + DELETE_TIMEOUT)
    }
}

fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgroupError::io("list cgroup", dir, e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path(), deadline)?;
        }
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::io(
                    "remove cgroup (processes still inside after 5 s; kill them first)",
                    dir,
                    e,
                ))
            }
            Err(e) => return Err(CgroupError::io("remove cgroup", dir, e)),
        }
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
