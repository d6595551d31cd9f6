//! The cgroup module on THIS kind of host (hybrid cgroups: v1 controllers, a cgroup2 at
//! /sys/fs/cgroup/unified without memory/cpu/pids): a hard limit is refused with an error that names the
//! controller and the fix; with allow_unenforced_limits it runs; without hard limits (ctr's cpu.shares=1024,
//! CRI's cpu.shares=2 plus device rules) it runs, and process tracking, freeze and kill-all work.

use std::path::PathBuf;
use std::process::{Child, Command};

use harness::{prerequisites_met, Prereq};
use oci_spec::runtime::{
    Linux, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxResources, LinuxResourcesBuilder,
};
use shim::cgroup::{find_cgroup2_mount, Cgroup, CgroupPolicy};

/// Removes the test's top cgroup directory tree (children first) even when an assertion failed.
struct TopGuard(PathBuf);

impl Drop for TopGuard {
    fn drop(&mut self) {
        fn rm(p: &std::path::Path) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(p);
        }
        rm(&self.0);
    }
}

/// Keeps every warning the cgroup module logs, to assert the per-container warning.
struct Capture;

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
            WARNINGS.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn linux(top: &str, name: &str, res: LinuxResources) -> Linux {
    LinuxBuilder::default().cgroups_path(PathBuf::from(format!("/{top}/{name}"))).resources(res).build().unwrap()
}

fn memory_limit() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(32i64 << 20).build().unwrap())
        .build()
        .unwrap()
}

/// What CRI sends for every pause container: cpu.shares=2 and containerd's default device rules.
fn pause_container() -> LinuxResources {
    let dev = |allow: bool, t: LinuxDeviceType, maj: Option<i64>, min: Option<i64>, acc: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(t).access(acc);
        if let Some(m) = maj {
            b = b.major(m);
        }
        if let Some(m) = min {
            b = b.minor(m);
        }
        b.build().unwrap()
    };
    use LinuxDeviceType::{A, C};
    LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(2u64).build().unwrap())
        .devices(vec![
            dev(false, A, None, None, "rwm"),
            dev(true, C, Some(1), Some(3), "rwm"),
            dev(true, C, Some(1), Some(5), "rwm"),
            dev(true, C, Some(1), Some(8), "rwm"),
            dev(true, C, Some(1), Some(9), "rwm"),
            dev(true, C, Some(5), Some(0), "rwm"),
            dev(true, C, Some(5), Some(1), "rwm"),
            dev(true, C, Some(136), None, "rwm"),
            dev(false, C, Some(10), Some(229), "rwm"),
        ])
        .build()
        .unwrap()
}

#[test]
fn hybrid_host_refuses_unenforceable_limits_and_runs_the_rest() {
    if !prerequisites_met("cgroup_host", &[Prereq::Root]) {
        return;
    }
    static CAPTURE: Capture = Capture;
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
    let mount = find_cgroup2_mount().expect("a cgroup2 mount");
    let top = format!("lazy-cgroup-host-{}", std::process::id());
    let _guard = TopGuard(mount.root.join(&top));
    let root_controllers = std::fs::read_to_string(mount.root.join("cgroup.controllers")).unwrap_or_default();
    let strict = CgroupPolicy::default();
    let lenient = CgroupPolicy { allow_unenforced_limits: true };

    if mount.hybrid && !root_controllers.split_whitespace().any(|c| c == "memory") {
        // 1. A memory limit is refused, naming the controller, the mount and both fixes; nothing is left behind.
        let e = Cgroup::create(Some(&linux(&top, "limited", memory_limit())), "default", "limited", &strict)
            .expect_err("a memory limit on a hybrid host without the v2 memory controller must fail");
        let msg = e.to_string();
        let want = format!(
            "the memory controller is not available in cgroup v2 at {} (hybrid cgroup host)",
            mount.root.display()
        );
        for part in
            ["memory limit", want.as_str(), "systemd.unified_cgroup_hierarchy=1", "allow_unenforced_limits = true"]
        {
            assert!(msg.contains(part), "error {msg:?} lacks {part:?}");
        }
        assert!(e.is_failed_precondition());
        assert!(!mount.root.join(&top).join("limited").exists(), "failed create left its cgroup behind");
        println!("refused as expected: {msg}");

        // 2. The policy switch lets it run (with a warning in the log).
        let cg = Cgroup::create(Some(&linux(&top, "lenient", memory_limit())), "default", "lenient", &lenient)
            .expect("allow_unenforced_limits = true must let the container run");
        assert!(cg.path().is_dir());
        let warned = WARNINGS.lock().unwrap().clone();
        assert!(
            warned
                .iter()
                .any(|w| w.contains("container lenient") && w.contains("NOT ENFORCED") && w.contains("memory limit")),
            "no per-container warning logged: {warned:?}"
        );
        cg.delete().unwrap();
    } else {
        println!(
            "this host's cgroup2 at {} has the memory controller ({}); the hybrid refusal case does not apply",
            mount.root.display(),
            root_controllers.trim()
        );
    }

    // 3. No hard limits (a CRI pause container): runs under the strict policy; tracking, freeze and kill work.
    let cg = Cgroup::create(Some(&linux(&top, "pause", pause_container())), "k8s.io", "pause", &strict)
        .expect("cpu.shares=2 plus default device rules must run everywhere");
    let child = ChildGuard(Command::new("sleep").arg("300").spawn().unwrap());
    let pid = child.0.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    cg.freeze().unwrap();
    let events = std::fs::read_to_string(cg.path().join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    cg.thaw().unwrap();
    assert_eq!(cg.oom_kills().unwrap(), 0);
    let stats = cg.stats().unwrap();
    assert_eq!(stats.type_url, "io.containerd.cgroups.v2.Metrics");
    cg.kill_all(libc::SIGKILL).unwrap();
    assert!(cg.pids().unwrap().is_empty());
    drop(child);
    let path = cg.path().to_path_buf();
    cg.delete().unwrap();
    assert!(!path.exists());

    // 4. Device rules are ENFORCED on this host: the BPF device program attaches to the cgroup2 hierarchy
    //    even on a hybrid host. The pause rules above allow c 1:3 but not c 10:229 (/dev/fuse) or c 1:1.
    let tmp = tempfile::tempdir().unwrap();
    let (null, mem) = (tmp.path().join("null"), tmp.path().join("mem"));
    for (p, major, minor) in [(&null, 1, 3), (&mem, 1, 1)] {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mknod has no other preconditions.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) };
        assert_eq!(r, 0, "mknod {}: {}", p.display(), std::io::Error::last_os_error());
    }
    let cg = Cgroup::create(Some(&linux(&top, "devices", pause_container())), "k8s.io", "devices", &strict).unwrap();
    let script = format!(
        "read go; head -c 1 {} >/dev/null && echo null-ok; head -c 1 {} >/dev/null || echo mem-denied",
        null.display(),
        mem.display()
    );
    let mut child = ChildGuard(
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    cg.add_pid(child.0.id() as i32).unwrap();
    {
        use std::io::Write;
        child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let _ = child.0.wait();
    drop(child);
    assert_eq!(out, "null-ok\nmem-denied\n", "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    cg.delete().unwrap();

    // 5. ctr run's cpu.shares=1024 alone.
    let shares = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(1024u64).build().unwrap())
        .build()
        .unwrap();
    let cg = Cgroup::create(Some(&linux(&top, "ctr", shares)), "default", "ctr", &strict).unwrap();
    cg.delete().unwrap();
}
