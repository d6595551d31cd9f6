//! Namespaces from `linux.namespaces`: which to create, which to join by path (a CNI netns, a
//! pod's shared ipc/uts), and, for exec, joining every namespace of a running container.
//!
//! The pid namespace is entered by the helper before it forks (it applies to children); all
//! others are entered by the container's init itself, so the helper stays in the runtime
//! namespaces where prestart/createRuntime hooks must run.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::error::{Step, StepError, StepResult};

/// What the spec asks for, validated before anything is forked.
#[derive(Debug)]
pub struct Plan {
    /// New namespaces the init unshares (never PID or CGROUP: see the fields below).
    pub unshare: CloneFlags,
    /// Namespaces the init joins by path, in join order (mount last).
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// A new pid namespace: the helper unshares it before forking.
    pub new_pid: bool,
    /// Join this pid namespace: the helper setns()es it before forking.
    pub join_pid: Option<PathBuf>,
    /// A new cgroup namespace, unshared by the init after the shim placed it into its cgroup.
    pub new_cgroup: bool,
    /// Whether the container has its own UTS namespace (hostname may only be set then).
    pub own_uts: bool,
    /// Whether the container has its own mount namespace (required: we pivot_root).
    pub own_mnt: bool,
}

fn flag(t: LinuxNamespaceType) -> StepResult<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::User => {
            return Err(StepError::InvalidSpec(
                "linux.namespaces: user namespaces are not supported by \
                        containerd-shim-lazy yet; remove the \"user\" namespace (and uid/gid \
                        mappings) or use io.containerd.runc.v2"
                    .into(),
            ))
        }
        LinuxNamespaceType::Time => {
            return Err(StepError::InvalidSpec(
                "linux.namespaces: time namespaces are not supported by \
                        containerd-shim-lazy; remove the \"time\" namespace"
                    .into(),
            ))
        }
    })
}

/// Validates `linux.namespaces` and turns it into a [`Plan`].
pub fn plan(spec: &Spec) -> StepResult<Plan> {
    let mut plan = Plan {
        unshare: CloneFlags::empty(),
        join: Vec::new(),
        new_pid: false,
        join_pid: None,
        new_cgroup: false,
        own_uts: false,
        own_mnt: false,
    };
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let mut seen = CloneFlags::empty();
    let mut mnt_join = None;
    for ns in &namespaces {
        let f = flag(ns.typ())?;
        if seen.contains(f) {
            return Err(StepError::InvalidSpec(format!("linux.namespaces: namespace {:?} is listed twice", ns.typ())));
        }
        seen |= f;
        match (f, ns.path()) {
            (CloneFlags::CLONE_NEWPID, None) => plan.new_pid = true,
            (CloneFlags::CLONE_NEWPID, Some(p)) => plan.join_pid = Some(p.clone()),
            (CloneFlags::CLONE_NEWCGROUP, None) => plan.new_cgroup = true,
            (CloneFlags::CLONE_NEWNS, Some(p)) => mnt_join = Some(p.clone()),
            (f, None) => plan.unshare |= f,
            (f, Some(p)) => plan.join.push((f, p.clone())),
        }
    }
    if let Some(p) = mnt_join {
        plan.join.push((CloneFlags::CLONE_NEWNS, p));
    }
    plan.own_uts = seen.contains(CloneFlags::CLONE_NEWUTS);
    plan.own_mnt = plan.unshare.contains(CloneFlags::CLONE_NEWNS);
    if !plan.own_mnt {
        return Err(StepError::InvalidSpec(
            "linux.namespaces: a new \"mount\" namespace is required (the \
                    launcher pivots into the container's root)"
                .into(),
        ));
    }
    Ok(plan)
}

/// runc's sysctl validation: only namespaced sysctls, and only when the container has its own
/// namespace for them; anything else would change the host.
pub fn check_sysctls(spec: &Spec, plan: &Plan) -> StepResult<()> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default();
    let has = |f: CloneFlags| plan.unshare.contains(f) || plan.join.iter().any(|(j, _)| *j == f);
    for key in sysctls.keys() {
        let (ok, ns) = if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            (has(CloneFlags::CLONE_NEWIPC), "ipc")
        } else if key.starts_with("net.") {
            (has(CloneFlags::CLONE_NEWNET), "network")
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            (plan.own_uts, "uts")
        } else {
            return Err(StepError::InvalidSpec(format!(
                "linux.sysctl {key:?} is not in a separate kernel namespace: setting \
                 it would change the host; remove it"
            )));
        };
        if !ok {
            return Err(StepError::InvalidSpec(format!(
                "linux.sysctl {key:?} needs the container to have its own {ns} \
                 namespace; add it to linux.namespaces or remove the sysctl"
            )));
        }
    }
    Ok(())
}

/// In the helper, before forking: the pid namespace the init will be PID 1 of (or join).
pub fn enter_pid_namespace(plan: &Plan) -> StepResult<()> {
    if let Some(path) = &plan.join_pid {
        let f = File::open(path).step(|| format!("open pid namespace {}", path.display()))?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWPID).step(|| format!("join pid namespace {}", path.display()))?;
    } else if plan.new_pid {
        unshare(CloneFlags::CLONE_NEWPID).step(|| "unshare pid namespace".to_string())?;
    }
    Ok(())
}

/// In the container's init: join namespaces by path (all files opened first, mount last), then
/// create the new ones.
pub fn enter_in_init(plan: &Plan) -> StepResult<()> {
    let mut files = Vec::new();
    for (f, path) in &plan.join {
        let file = File::open(path).step(|| format!("open namespace {}", path.display()))?;
        files.push((*f, path, file));
    }
    for (f, path, file) in &files {
        setns(file.as_fd(), *f).step(|| format!("join namespace {}", path.display()))?;
    }
    unshare(plan.unshare).step(|| format!("unshare namespaces {:?}", plan.unshare))
}

/// For exec: joins every namespace of `pid` that differs from ours (user first, mount last; pid
/// applies to the children forked afterwards).
pub fn join_container(pid: i32) -> StepResult<()> {
    const ORDER: [(&str, CloneFlags); 7] = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // Open them all first: after joining the mount namespace /proc may be the container's.
    let mut files = Vec::new();
    for (name, f) in ORDER {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let their_ino = match std::fs::metadata(&theirs) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "mnt" => continue,
            Err(e) => return Err(format!("exec: container process {pid}: {theirs}: {e}").into()),
        };
        let our_ino = std::fs::metadata(&ours).map(|m| m.ino()).ok();
        if our_ino == Some(their_ino) {
            continue;
        }
        let file = File::open(&theirs).step(|| format!("exec: open {theirs}"))?;
        files.push((name, f, file));
    }
    for (name, f, file) in &files {
        setns(file.as_fd(), *f).step(|| format!("exec: join the container's {name} namespace"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(ns: &str) -> Spec {
        serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{ns}}}}}"#)).unwrap()
    }

    #[test]
    fn plan_splits_new_joined_pid_and_cgroup() {
        let s = spec_with(
            r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"},{"type":"ipc"},
                {"type":"uts"},{"type":"mount"},{"type":"cgroup"}]"#,
        );
        let p = plan(&s).unwrap();
        assert!(p.new_pid && p.new_cgroup && p.own_uts && p.own_mnt);
        assert_eq!(p.unshare, CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS);
        assert_eq!(p.join, vec![(CloneFlags::CLONE_NEWNET, "/var/run/netns/cni-1".into())]);
    }

    #[test]
    fn host_sysctls_are_refused() {
        let mut s = spec_with(r#"[{"type":"mount"},{"type":"ipc"}]"#);
        let p = plan(&s).unwrap();
        let set = |s: &mut Spec, k: &str| {
            let mut l = s.linux().clone().unwrap();
            l.set_sysctl(Some([(k.to_string(), "1".to_string())].into_iter().collect()));
            s.set_linux(Some(l));
        };
        set(&mut s, "kernel.shmmax");
        check_sysctls(&s, &p).unwrap();
        set(&mut s, "vm.overcommit_memory");
        let err = check_sysctls(&s, &p).unwrap_err();
        assert!(matches!(err, StepError::InvalidSpec(_)), "{err:?}");
        assert!(err.to_string().contains("not in a separate kernel namespace"), "{err}");
        set(&mut s, "net.ipv4.ip_forward");
        let err = check_sysctls(&s, &p).unwrap_err();
        assert!(err.to_string().contains("own network namespace"), "{err}");
    }

    #[test]
    fn user_namespace_is_a_clear_error() {
        let err = plan(&spec_with(r#"[{"type":"mount"},{"type":"user"}]"#)).unwrap_err();
        assert!(matches!(err, StepError::InvalidSpec(_)), "{err:?}");
        assert!(err.to_string().contains("user namespaces are not supported"), "{err}");
    }

    #[test]
    fn mount_namespace_is_required() {
        let err = plan(&spec_with(r#"[{"type":"pid"}]"#)).unwrap_err();
        assert!(err.to_string().contains("\"mount\" namespace is required"), "{err}");
    }
}
