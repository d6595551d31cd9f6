//! Manager tests against a temp dir shaped like cgroupfs (files pre-created, as youki's set_fixture does).

use std::path::Path;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::*;

const FILES: &[&str] = &[
    "cgroup.procs",
    "memory.max",
    "memory.low",
    "memory.swap.max",
    "cpu.weight",
    "cpu.max",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
    "memory.high",
];

/// A fake root whose container cgroup `default/c1` exists with `controllers` available.
fn fixture(controllers: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
    std::fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
    let leaf = d.path().join("default/c1");
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(leaf.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
    for f in FILES {
        std::fs::write(leaf.join(f), "untouched").unwrap();
    }
    d
}

fn read(d: &Path, f: &str) -> String {
    std::fs::read_to_string(d.join("default/c1").join(f)).unwrap()
}

fn create(d: &Path, res: &LinuxResources, allow: bool) -> Result<Manager, CgroupError> {
    let policy = CgroupPolicy { allow_unenforced_limits: allow };
    Manager::create(CgroupMount::at(d), Path::new("default/c1"), "c1", Some(res), &policy)
}

fn limits() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(33554432i64).build().unwrap())
        .cpu(LinuxCpuBuilder::default().shares(1024u64).quota(10000i64).period(100000u64).cpus("0").build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(5i64).build().unwrap())
        .build()
        .unwrap()
}

#[test]
fn every_field_lands_in_its_file() {
    let d = fixture("cpuset cpu io memory hugetlb pids");
    let m = create(d.path(), &limits(), false).unwrap();
    assert_eq!(read(d.path(), "memory.max"), "33554432");
    assert_eq!(read(d.path(), "cpu.weight"), "39");
    assert_eq!(read(d.path(), "cpu.max"), "10000 100000");
    assert_eq!(read(d.path(), "cpuset.cpus"), "0");
    assert_eq!(read(d.path(), "pids.max"), "5");
    assert_eq!(read(d.path(), "memory.low"), "untouched");
    // The root got the controllers enabled for its children (the fake keeps the last write).
    let ctl = std::fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap();
    assert!(ctl.starts_with('+'), "{ctl:?}");
    // Update in place.
    let raised = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(67108864i64).build().unwrap())
        .build()
        .unwrap();
    m.apply(&raised).unwrap();
    assert_eq!(read(d.path(), "memory.max"), "67108864");
    m.add_pid(4242).unwrap();
    assert_eq!(read(d.path(), "cgroup.procs"), "4242");
}

#[test]
fn unenforceable_limit_fails_naming_controller_and_fix_and_writes_nothing() {
    let d = fixture("hugetlb");
    let mut mount = CgroupMount::at(d.path());
    mount.hybrid = true;
    let policy = CgroupPolicy::default();
    let e = Manager::create(mount, Path::new("default/c1"), "c1", Some(&limits()), &policy).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("memory limit"), "{msg}");
    assert!(msg.contains("the memory controller is not available in cgroup v2 at"), "{msg}");
    assert!(msg.contains("(hybrid cgroup host)"), "{msg}");
    assert!(msg.contains("systemd.unified_cgroup_hierarchy=1"), "{msg}");
    assert!(msg.contains("allow_unenforced_limits = true"), "{msg}");
    assert!(e.is_failed_precondition());
    assert_eq!(read(d.path(), "cpu.weight"), "untouched");
}

#[test]
fn policy_allows_unenforced_limits_and_priorities_are_skipped() {
    let d = fixture("hugetlb");
    create(d.path(), &limits(), true).unwrap();
    assert_eq!(read(d.path(), "memory.max"), "untouched");
    // ctr run's cpu.shares=1024 alone is a priority: fine without the cpu controller, no policy needed.
    let shares = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(1024u64).build().unwrap())
        .build()
        .unwrap();
    create(d.path(), &shares, false).unwrap();
    assert_eq!(read(d.path(), "cpu.weight"), "untouched");
}

#[test]
fn unified_keys_must_name_existing_files() {
    let d = fixture("memory");
    let ok = LinuxResourcesBuilder::default()
        .unified(
            [("memory.high".to_string(), "1000000".to_string())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap();
    create(d.path(), &ok, false).unwrap();
    assert_eq!(read(d.path(), "memory.high"), "1000000");
    let typo = LinuxResourcesBuilder::default()
        .unified(
            [("memory.hgih".to_string(), "1".to_string())].into_iter().collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap();
    let e = create(d.path(), &typo, false).unwrap_err();
    assert!(e.to_string().contains("memory.hgih") && e.is_invalid_argument(), "{e}");
}

#[test]
fn cgroups_path_resolution() {
    let l = |p: &str| LinuxBuilder::default().cgroups_path(std::path::PathBuf::from(p)).build().unwrap();
    assert_eq!(resolve_cgroups_path(None, "default", "c1").unwrap(), Path::new("default/c1"));
    assert_eq!(resolve_cgroups_path(Some(&l("/k8s.io/abc")), "x", "y").unwrap(), Path::new("k8s.io/abc"));
    let e = resolve_cgroups_path(Some(&l("system.slice:cri-containerd:abc")), "x", "y").unwrap_err();
    assert!(e.to_string().contains("systemd") && e.is_invalid_argument(), "{e}");
    assert!(resolve_cgroups_path(Some(&l("/a/../../etc")), "x", "y").is_err());
    assert!(resolve_cgroups_path(Some(&l("/")), "x", "y").is_err());
}

#[test]
fn missing_knob_of_an_available_controller_is_unenforceable_too() {
    let d = fixture("memory");
    std::fs::remove_file(d.path().join("default/c1/memory.swap.max")).unwrap();
    let res = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(100i64 << 20).swap(200i64 << 20).build().unwrap())
        .build()
        .unwrap();
    let msg = create(d.path(), &res, false).unwrap_err().to_string();
    assert!(msg.contains("swap limit") && msg.contains("memory controller's memory.swap.max"), "{msg}");
    assert!(msg.contains("swapaccount=1"), "{msg}");
    // Under the policy the memory limit is still written.
    create(d.path(), &res, true).unwrap();
    assert_eq!(read(d.path(), "memory.max"), "104857600");
}
