//! The launcher driven directly (no containerd): a busybox-static rootfs and an OCI spec shaped
//! like containerd's default (`ctr oci spec`), through `shim::launcher::{create, start, exec}`.
//! Each test checks what a user of the container sees: output, exit status, hostname, mounts,
//! devices, capabilities, user, masked and read-only paths, errors.
//!
//! Needs root and /bin/busybox (busybox-static), and the shim binary built
//! (`cargo build -p containerd-shim-lazy`): the launcher re-executes it as its helper.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use harness::prereq::CONTAINERD_PREREQS;
use harness::{prerequisites_met, Prereq};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};
use shim::launcher::{self, CreateRequest, ExecRequest, LaunchError, Stdio};

const BUSYBOX: &str = "/bin/busybox";

/// Root, busybox-static and the built shim binary; otherwise SKIP (or FAIL with CI=true).
fn ready(test: &str) -> bool {
    if !prerequisites_met(test, &[Prereq::Root]) {
        return false;
    }
    let shim = harness::bins::bin_dir().join("containerd-shim-lazy-v2");
    let mut missing = Vec::new();
    if !Path::new(BUSYBOX).is_file() {
        missing.push("needs /bin/busybox (apt-get install busybox-static)".to_string());
    }
    if !shim.is_file() {
        missing.push(format!("needs {} (cargo build -p containerd-shim-lazy)", shim.display()));
    }
    if !missing.is_empty() {
        let text = format!("{test}: {}", missing.join("; "));
        if harness::prereq::in_ci() {
            panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
        }
        eprintln!("SKIP {text}");
        return false;
    }
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        launcher::set_helper_exe(shim);
        // The container's init is re-parented to us when the helper exits (the shim is a
        // subreaper too), so we can wait for it.
        // SAFETY: prctl with an integer argument; affects only this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
    true
}

/// A bundle (config.json written by [`Bundle::run`]) with a busybox rootfs. Drop kills what is
/// still running and removes the directory.
struct Bundle {
    dir: tempfile::TempDir,
    pids: Vec<i32>,
}

impl Bundle {
    fn new() -> Bundle {
        let dir = tempfile::Builder::new().prefix("launcher-test").tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "home/user", "run"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nwheel:x:10:\nuser:x:1000:\n").unwrap();
        std::fs::set_permissions(rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        Bundle { dir, pids: Vec::new() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates (and, when `start`, starts) the container; returns its init pid and the readers
    /// of its stdout/stderr.
    fn create(&mut self, spec: &Value, start: bool) -> Result<Running, LaunchError> {
        std::fs::write(self.path().join("config.json"), serde_json::to_vec_pretty(spec).unwrap()).unwrap();
        let spec: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let stdio = Stdio { stdin: None, stdout: Some(out_w), stderr: Some(err_w) };
        let req = CreateRequest { id: "launcher-test", bundle: self.path(), spec: &spec, stdio };
        let mut placed = Vec::new();
        let result = launcher::create(req, &mut |pid| {
            placed.push(pid);
            Ok(())
        });
        let mut created = match result {
            Ok(c) => c,
            Err(e) => {
                for pid in placed {
                    self.pids.push(pid);
                }
                return Err(e);
            }
        };
        assert_eq!(placed, vec![created.pid], "place is called once with the init pid");
        self.pids.push(created.pid);
        reap(created.helper_pid);
        if start {
            created.start()?;
        }
        Ok(Running { pid: created.pid, stdout: out_r, stderr: err_r, created })
    }

    /// Runs `args` to completion in a container made from `spec` (with `args` put in).
    fn run(&mut self, mut spec: Value, args: &[&str]) -> Outcome {
        spec["process"]["args"] = json!(args);
        let running = self.create(&spec, true).unwrap_or_else(|e| panic!("create/start failed: {e}"));
        running.wait()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

struct Running {
    pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    #[allow(dead_code)]
    created: launcher::Created,
}

#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Running {
    fn wait(self) -> Outcome {
        let read_all = |fd: OwnedFd| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::fs::File::from(fd).read_to_string(&mut s);
                s
            })
        };
        let (out, err) = (read_all(self.stdout), read_all(self.stderr));
        let code = wait_exit(self.pid, Duration::from_secs(60));
        Outcome { code, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
    }
}

fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), None);
}

/// Exit code (128+signal for a signal) of a child (or re-parented orphan) of this process.
fn wait_exit(pid: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            // Not (yet) ours: the helper that forked it has not exited, so it was not re-parented.
            Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            panic!("container process {pid} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// containerd 1.6's default spec (`ctr oci spec`) plus what `ctr run` adds (cgroup mount,
/// hostname, env).
fn default_spec() -> Value {
    let caps = json!(harness::shim_direct::DEFAULT_CAPS);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "launcher-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[test]
fn output_and_exit_status_reach_the_caller() {
    if !ready("output_and_exit_status_reach_the_caller") {
        return;
    }
    let mut b = Bundle::new();
    let out = b.run(default_spec(), &["sh", "-c", "echo hi; echo oops >&2; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (3, "hi\n", "oops\n"));
}

#[test]
fn hostname_user_groups_cwd_env_umask_and_pid1() {
    if !ready("hostname_user_groups_cwd_env_umask_and_pid1") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10], "umask": 63});
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["env"].as_array_mut().unwrap().push(json!("FOO=bar"));
    let out =
        b.run(spec, &["sh", "-c", "hostname; id -u; id -g; id -G; pwd; echo $FOO $HOME; umask; echo $$; ulimit -n"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "launcher-test\n1000\n1000\n1000 10\n/tmp\nbar /home/user\n0077\n1\n1024\n", "{out:?}");
}

#[test]
fn mounts_devices_and_symlinks_look_like_runc() {
    if !ready("mounts_devices_and_symlinks_look_like_runc") {
        return;
    }
    let mut b = Bundle::new();
    let out = b.run(
        default_spec(),
        &[
            "sh",
            "-c",
            "cut -d' ' -f5 /proc/self/mountinfo; ls -l /dev /dev/null; echo x > /dev/null && echo devnull-ok",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    for mp in ["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/run"] {
        assert!(lines.contains(&mp), "mount point {mp} missing in {out:?}");
    }
    assert!(lines.contains(&"/proc/keys"), "masked /proc/keys must be a mount: {out:?}");
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        assert!(
            lines.iter().any(|l| l.starts_with("crw-rw-rw-") && l.ends_with(&format!(" {dev}"))),
            "/dev/{dev} must be a 0666 char device: {out:?}"
        );
    }
    for link in [
        "fd -> /proc/self/fd",
        "stdin -> /proc/self/fd/0",
        "stdout -> /proc/self/fd/1",
        "stderr -> /proc/self/fd/2",
        "ptmx -> pts/ptmx",
    ] {
        assert!(out.stdout.contains(link), "/dev/{link} missing: {out:?}");
    }
    assert!(lines.iter().any(|l| l.contains(" 1,   3 ") && l.ends_with(" /dev/null")), "/dev/null is 1:3: {out:?}");
    assert!(out.stdout.contains("devnull-ok"), "{out:?}");
}

#[test]
fn capabilities_are_the_specs_sets() {
    if !ready("capabilities_are_the_specs_sets") {
        return;
    }
    let mut b = Bundle::new();
    let out = b.run(default_spec(), &["sh", "-c", "grep Cap /proc/self/status"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The 14 default capabilities of containerd: the same mask runc shows for `ctr run`.
    let want = "00000000a80425fb";
    assert_eq!(
        out.stdout,
        format!(
            "CapInh:\t0000000000000000\nCapPrm:\t{want}\nCapEff:\t{want}\nCapBnd:\t{want}\nCapAmb:\t0000000000000000\n"
        ),
        "{out:?}"
    );
    // A non-root user without ambient caps ends up with none effective (as with runc).
    let mut spec = default_spec();
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    spec["process"]["capabilities"]["effective"] = json!([]);
    spec["process"]["capabilities"]["permitted"] = json!([]);
    let out = b.run(spec, &["sh", "-c", "grep CapEff /proc/self/status; id -u"]);
    assert_eq!(out.stdout, "CapEff:\t0000000000000000\n1000\n", "{out:?}");
}

#[test]
fn masked_and_readonly_paths_hold() {
    if !ready("masked_and_readonly_paths_hold") {
        return;
    }
    let mut b = Bundle::new();
    let out = b.run(
        default_spec(),
        &["sh", "-c", "wc -c < /proc/keys; ls /proc/acpi | wc -l; (echo evil > /proc/sys/kernel/hostname) 2>&1; hostname; touch /sys/x 2>&1"],
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0].trim(), "0", "/proc/keys must read as /dev/null: {out:?}");
    assert_eq!(lines[1].trim(), "0", "/proc/acpi must be an empty tmpfs: {out:?}");
    assert!(lines[2].contains("Read-only file system"), "/proc/sys must be read-only: {out:?}");
    assert_eq!(lines[3], "launcher-test", "{out:?}");
    assert!(lines[4].contains("Read-only file system"), "/sys is mounted ro: {out:?}");
}

#[test]
fn readonly_rootfs_refuses_writes_but_tmpfs_mounts_work() {
    if !ready("readonly_rootfs_refuses_writes_but_tmpfs_mounts_work") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["root"]["readonly"] = json!(true);
    let out = b.run(spec, &["sh", "-c", "touch /newfile; echo rc=$?; touch /run/ok && echo run-ok"]);
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(out.stdout, "rc=1\nrun-ok\n", "{out:?}");
    assert!(!b.path().join("rootfs/newfile").exists());
}

#[test]
fn missing_executable_fails_create_like_runc_and_leaves_no_process() {
    if !ready("missing_executable_fails_create_like_runc_and_leaves_no_process") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["process"]["args"] = json!(["no-such-program", "arg"]);
    let err = match b.create(&spec, false) {
        Ok(r) => panic!("create must fail, got pid {}", r.pid),
        Err(e) => e,
    };
    assert_eq!(err.to_string(), "exec: \"no-such-program\": executable file not found in $PATH");
    assert!(err.is_user_error());
    // The init exits on its own after reporting; it is re-parented to us and must go away.
    for pid in b.pids.clone() {
        assert!(wait_exit(pid, Duration::from_secs(10)) != 0);
    }
    spec["process"]["args"] = json!(["/bin/nope"]);
    let err = b.create(&spec, false).err().expect("create must fail");
    assert_eq!(err.to_string(), "exec: \"/bin/nope\": stat /bin/nope: no such file or directory");
}

/// A profile shaped like containerd's default (default ERRNO/EPERM, three x86 arches, a long allow
/// list including names libseccomp may not know, argument conditions on personality, clone and
/// socket) that additionally leaves mkdir/mkdirat out.
fn seccomp_profile() -> Value {
    let header = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").unwrap_or_default();
    let mut names: Vec<String> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define __NR_"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| !["mkdir", "mkdirat", "personality", "clone", "socket"].contains(&n.as_str()))
        .collect();
    if names.is_empty() {
        names = ["read", "write", "openat", "close", "execve", "exit_group", "brk", "mmap"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    names.push("no_such_syscall_in_this_kernel".into());
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}
        ]
    })
}

#[test]
fn seccomp_profile_loads_and_denies_a_syscall() {
    if !ready("seccomp_profile_loads_and_denies_a_syscall") {
        return;
    }
    let mut b = Bundle::new();
    for nnp in [true, false] {
        let mut spec = default_spec();
        spec["process"]["noNewPrivileges"] = json!(nnp);
        spec["linux"]["seccomp"] = seccomp_profile();
        let out = b.run(
            spec,
            &["sh", "-c", "mkdir /tmp/d; echo rc=$?; touch /tmp/f && echo touch-ok; grep Seccomp: /proc/self/status"],
        );
        assert!(out.stderr.contains("Operation not permitted"), "nnp={nnp}: {out:?}");
        assert_eq!(out.stdout, "rc=1\ntouch-ok\nSeccomp:\t2\n", "nnp={nnp}: {out:?}");
    }
}

#[test]
fn exec_joins_the_running_containers_namespaces() {
    if !ready("exec_joins_the_running_containers_namespaces") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["process"]["args"] = json!(["sleep", "60"]);
    let running = b.create(&spec, true).expect("create");
    let spec_obj: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).unwrap();
    let mut process = spec_obj.process().clone().unwrap();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /home".into(),
    ]));
    process.set_cwd("/tmp".into());
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let req = ExecRequest {
        container_pid: running.pid,
        spec: &spec_obj,
        process: &process,
        stdio: Stdio { stdin: None, stdout: Some(out_w), stderr: None },
    };
    let mut placed = None;
    let execd = launcher::exec(req, &mut |pid| {
        placed = Some(pid);
        Ok(())
    })
    .expect("exec");
    assert_eq!(placed, Some(execd.pid));
    b.pids.push(execd.pid);
    reap(execd.helper_pid);
    let mut out = String::new();
    std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
    assert_eq!(wait_exit(execd.pid, Duration::from_secs(30)), 0);
    assert_eq!(out, "launcher-test\nsleep 60 \nuser\n");
    // A missing executable in exec is reported the same way.
    process.set_args(Some(vec!["nope".into()]));
    let req = ExecRequest { container_pid: running.pid, spec: &spec_obj, process: &process, stdio: Stdio::default() };
    let mut failed = None;
    let err = launcher::exec(req, &mut |pid| {
        failed = Some(pid);
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "exec: \"nope\": executable file not found in $PATH");
    // The failed process exits by itself; reap it, or the container's init could not finish
    // dying (a pid namespace's init waits for every member to be reaped).
    assert_eq!(wait_exit(failed.expect("placed"), Duration::from_secs(10)), 1);
    let _ = kill(Pid::from_raw(running.pid), Signal::SIGKILL);
    assert_eq!(wait_exit(running.pid, Duration::from_secs(10)), 137);
}

#[test]
fn hooks_run_in_order_with_state_and_a_failing_hook_fails_create() {
    if !ready("hooks_run_in_order_with_state_and_a_failing_hook_fails_create") {
        return;
    }
    let mut b = Bundle::new();
    let log = b.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat) >> {}", log.display())]});
    let mut spec = default_spec();
    spec["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
    });
    // startContainer runs inside the container: its path resolves in the container's rootfs.
    spec["hooks"]["startContainer"] = json!([{"path": "/bin/sh", "args": ["sh", "-c", "echo started > /tmp/hook"]}]);
    let out = b.run(spec.clone(), &["cat", "/tmp/hook"]);
    assert_eq!(out.stdout, "started\n", "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let phases: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(phases, ["prestart", "createRuntime", "createContainer"], "{text}");
    let states: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l.split_once(' ').unwrap().1).unwrap()).collect();
    assert_eq!(states[1]["id"], "launcher-test");
    assert_eq!(states[1]["status"], "creating");
    assert_eq!(states[1]["bundle"], b.path().to_str().unwrap());
    let pid = states[1]["pid"].as_i64().unwrap();
    assert!(pid > 1, "the runtime's pid of the init, not its pid in the container: {text}");
    assert_eq!(states[2]["pid"].as_i64(), Some(pid), "createContainer sees the same pid: {text}");
    assert_eq!(states[2]["status"], "created");

    spec["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 4"]}]});
    let err = b.create(&spec, false).err().expect("a failing createRuntime hook fails create");
    assert_eq!(err.to_string(), "createRuntime hook /bin/sh: exit status 4: no network for you");
}

#[test]
fn terminal_gives_a_controlling_pty_with_the_requested_size() {
    if !ready("terminal_gives_a_controlling_pty_with_the_requested_size") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["process"]["terminal"] = json!(true);
    spec["process"]["consoleSize"] = json!({"height": 40, "width": 120});
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    spec["process"]["args"] =
        json!(["sh", "-c", "tty; stty size; test -c /dev/console && echo console-ok; stat -c %u:%g $(tty)"]);
    let running = b.create(&spec, true).expect("create with terminal");
    let master = running.created.pty_master.as_ref().expect("pty master").try_clone().unwrap();
    let pid = running.pid;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut f = std::fs::File::from(master);
        let mut buf = [0u8; 1024];
        // EIO once the slave side is closed.
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    assert_eq!(wait_exit(pid, Duration::from_secs(30)), 0);
    drop(running);
    let out = reader.join().unwrap();
    assert_eq!(
        out.replace('\r', ""),
        "/dev/pts/0\n40 120\nconsole-ok\n1000:5\n",
        "a non-root user owns its pty (group tty from gid=5)"
    );
}

#[test]
fn unsupported_spec_fields_are_clear_errors() {
    if !ready("unsupported_spec_fields_are_clear_errors") {
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    let err = b.create(&spec, false).err().expect("user namespace refused");
    assert!(matches!(err, LaunchError::InvalidSpec(_)), "{err:?}");
    assert!(err.to_string().contains("user namespaces are not supported"), "{err}");

    let mut spec = default_spec();
    spec["process"]["apparmorProfile"] = json!("cri-containerd.apparmor.d");
    let err = b.create(&spec, false).err().expect("apparmor refused");
    assert!(err.to_string().contains("apparmorProfile"), "{err}");

    let mut spec = default_spec();
    spec["linux"]["personality"] = json!({"domain": "LINUX32"});
    let err = b.create(&spec, false).err().expect("personality refused");
    assert_eq!(
        err.to_string(),
        "invalid OCI spec: linux.personality is not supported by containerd-shim-lazy; remove it or use io.containerd.runc.v2"
    );

    // Lowering oom_score_adj needs CAP_SYS_RESOURCE; runc fails then, so do we (where it fails).
    let mut spec = default_spec();
    spec["process"]["oomScoreAdj"] = json!(-998);
    let original = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let lowering_allowed = std::fs::write("/proc/self/oom_score_adj", "-999").is_ok();
    let _ = std::fs::write("/proc/self/oom_score_adj", original.trim());
    match b.create(&spec, false) {
        Ok(_) => assert!(lowering_allowed, "create must fail where lowering oom_score_adj is denied"),
        Err(e) => assert!(e.to_string().contains("oom_score_adj -998"), "{e}"),
    }
}

/// What a user compares between runtimes: identity, capabilities, mounts with their options,
/// /dev, hostname, environment, cwd and limits. Mount ids and times are left out.
const PARITY_SCRIPT: &str = "id; grep Cap /proc/self/status; \
    awk '{ for (i = 7; $i != \"-\"; i++) ; print $5, $6, $(i+1), $(i+3) }' /proc/self/mountinfo; \
    stat -c '%n %A %U %G %t:%T %N' /dev/* /dev/pts/* /dev/shm /dev/mqueue; \
    hostname; env | sort; pwd; ulimit -a; umask; cat /proc/self/oom_score_adj; \
    grep -E 'NoNewPrivs|Seccomp:|SigIgn|SigBlk' /proc/self/status";

/// Signal 32 is glibc's internal SIGCANCEL: runc's Go init sometimes leaves it ignored, sometimes
/// not (seen both ways on the same host), and no application can use it. Compare without it.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("SigIgn:\t").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            Some(mask) => format!("SigIgn:\t{:016x}\n", mask & !(1u64 << 31)),
            None => format!("{l}\n"),
        })
        .collect()
}

/// runc 1.1.5 (Debian) and the launcher run the same bundle; their views must be identical. Two
/// specs: containerd's default for `ctr run`, and a non-root user with extra groups, a umask,
/// a read-only rootfs, a read-only /dev, no noNewPrivileges and an rlimit.
#[test]
fn same_view_as_runc_for_the_same_bundle() {
    if !ready("same_view_as_runc_for_the_same_bundle")
        || !prerequisites_met("same_view_as_runc_for_the_same_bundle", &[Prereq::Tool("runc")])
    {
        return;
    }
    let mut spec = default_spec();
    spec["process"]["env"] = json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]);
    spec["process"]["cwd"] = json!("/root");
    compare_with_runc(&spec);

    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 1000], "umask": 18});
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 512}, {"type": "RLIMIT_NPROC", "hard": 300, "soft": 200}]);
    spec["root"]["readonly"] = json!(true);
    spec["mounts"][1]["options"].as_array_mut().unwrap().push(json!("ro"));
    compare_with_runc(&spec);
}

fn compare_with_runc(spec: &Value) {
    let mut spec = spec.clone();
    spec["process"]["args"] = json!(["sh", "-c", PARITY_SCRIPT]);
    let mut ours = Bundle::new();
    let out = ours.run(spec.clone(), &["sh", "-c", PARITY_SCRIPT]);
    assert_eq!(out.code, 0, "{out:?}");
    let theirs = Bundle::new();
    std::fs::write(theirs.path().join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let id = format!("launcher-parity-{}", std::process::id());
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(state.path())
        .args(["run", "--bundle"])
        .arg(theirs.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run runc");
    // runc removes its container on exit; make sure, also when the assertions below fail.
    let _ =
        std::process::Command::new("runc").arg("--root").arg(state.path()).args(["delete", "--force", &id]).output();
    let runc_out = normalize(&String::from_utf8_lossy(&runc.stdout));
    assert!(runc.status.success(), "runc failed: {runc:?}");
    let ours_out = normalize(&out.stdout);
    let (a, b): (Vec<&str>, Vec<&str>) = (runc_out.lines().collect(), ours_out.lines().collect());
    let only_runc: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_ours: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_runc.is_empty() && only_ours.is_empty(),
        "views differ\nonly under runc: {only_runc:#?}\nonly under the launcher: {only_ours:#?}"
    );
}

/// Through containerd 1.6 and ctr: the same `ctr run` flags under io.containerd.runc.v2 and our
/// runtime give the same view, for the flags that exercise the launcher beyond the default spec:
/// containerd's default seccomp profile (`--seccomp`), a read-only rootfs with a read-only bind
/// mount, and `--privileged` (all host devices, all capabilities, no masking).
#[test]
fn ctr_flags_give_the_same_view_as_runc() {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Tool("runc"), Prereq::Tool("containerd-shim-runc-v2")]].concat();
    if !ready("ctr_flags_give_the_same_view_as_runc")
        || !prerequisites_met("ctr_flags_give_the_same_view_as_runc", &prereqs)
    {
        return;
    }
    harness::init_logging();
    let registry = harness::registry::Registry::start().expect("starting docker-registry");
    let image = harness::containerd::push_busybox(&registry).expect("pushing busybox");
    let ctrd = harness::containerd::Containerd::start().expect("starting containerd");
    ctrd.pull(&image).expect("pulling busybox");
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("file"), "from the host\n").unwrap();
    let bind = format!("type=bind,src={},dst=/mnt,options=rbind:ro", shared.path().display());
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "seccomp",
            vec!["--seccomp"],
            "grep -E 'Seccomp:|NoNewPrivs' /proc/self/status; unshare -U true 2>/dev/null; echo unshare=$?",
        ),
        (
            "read-only + ro bind",
            vec!["--read-only", "--mount", &bind],
            "awk '{print $5, $6}' /proc/self/mountinfo | sort; cat /mnt/file; touch /x 2>&1; touch /mnt/y 2>&1; true",
        ),
        (
            "privileged",
            vec!["--privileged"],
            "ls -l /dev | awk '{$6=\"\"; $7=\"\"; $8=\"\"; print}'; grep ^Cap /proc/self/status; cut -d' ' -f5 /proc/self/mountinfo | sort",
        ),
    ];
    let mut diffs = Vec::new();
    for (i, (name, flags, script)) in cases.iter().enumerate() {
        let mut outs = Vec::new();
        for runtime in ["io.containerd.runc.v2", harness::containerd::RUNTIME] {
            let id = format!("flags-{i}-{}", if runtime.contains("runc") { "runc" } else { "lazy" });
            let mut args = vec!["run", "--rm", "--runtime", runtime];
            args.extend(flags.iter().copied());
            args.extend([image.as_str(), id.as_str(), "sh", "-c", script]);
            let out = ctrd.ctr(&args);
            assert_eq!(out.code, 0, "{runtime} {name}: {}\ncontainerd log:\n{}", out.all(), ctrd.log());
            outs.push(out.stdout);
        }
        if outs[0] != outs[1] {
            let (a, b): (Vec<&str>, Vec<&str>) = (outs[0].lines().collect(), outs[1].lines().collect());
            let only_runc: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
            let only_ours: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
            diffs.push(format!("{name}: only under runc: {only_runc:#?}\nonly under lazy: {only_ours:#?}"));
        }
        if *name == "seccomp" {
            assert!(outs[1].contains("Seccomp:\t2") && outs[1].contains("unshare=1"), "{}", outs[1]);
        }
    }
    assert!(diffs.is_empty(), "differences from runc:\n{}", diffs.join("\n"));
}

/// True when /sys/fs/cgroup is a pure cgroup2 mount (the VM), false on this project's hybrid hosts.
fn host_is_pure_cgroup2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// On a pure v2 host the `cgroup` mount is cgroup2, scoped by a cgroup namespace when the spec
/// has one. Runs for real inside the VM (`launcher_tests_pass_in_a_cgroup_v2_vm`).
#[test]
fn cgroup2_mount_with_a_cgroup_namespace_on_a_pure_v2_host() {
    if !ready("cgroup2_mount_with_a_cgroup_namespace_on_a_pure_v2_host") {
        return;
    }
    if !host_is_pure_cgroup2() {
        eprintln!(
            "SKIP cgroup2_mount_with_a_cgroup_namespace_on_a_pure_v2_host: this host has hybrid cgroups; \
                   launcher_tests_pass_in_a_cgroup_v2_vm runs it in a pure v2 VM"
        );
        return;
    }
    let mut b = Bundle::new();
    let mut spec = default_spec();
    spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "cgroup"}));
    let out = b.run(
        spec,
        &["sh", "-c", "cat /proc/self/cgroup; awk '$5 == \"/sys/fs/cgroup\" { for (i = 7; $i != \"-\"; i++) ; print $6, $(i+1) }' /proc/self/mountinfo; ls /sys/fs/cgroup/cgroup.procs"],
    );
    assert_eq!(out.stdout, "0::/\nro,nosuid,nodev,noexec,relatime cgroup2\n/sys/fs/cgroup/cgroup.procs\n", "{out:?}");
}

/// Runs this very test binary (all launcher tests but the containerd one) inside the pure cgroup
/// v2 VM (tests/src/vm.rs), where the cgroup2 code paths are the real ones.
#[test]
fn launcher_tests_pass_in_a_cgroup_v2_vm() {
    if std::env::var_os("LAUNCHER_IN_VM").is_some() {
        return;
    }
    let mut missing: Vec<String> = harness::vm::missing_prerequisites().into_iter().collect();
    if let Some(why) = Prereq::Root.missing() {
        missing.push(why);
    }
    if !missing.is_empty() {
        let text = format!("launcher_tests_pass_in_a_cgroup_v2_vm: {}", missing.join("; "));
        if harness::prereq::in_ci() {
            panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
        }
        eprintln!("SKIP {text}");
        return;
    }
    if !ready("launcher_tests_pass_in_a_cgroup_v2_vm") {
        return;
    }
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let cfg = harness::vm::VmConfig {
        env: vec![("LAUNCHER_IN_VM".into(), "1".into())],
        // The launcher re-executes the shim as its helper (the test binary is planned from argv).
        share: vec![harness::bins::shim()],
        timeout: Duration::from_secs(400),
        ..harness::vm::VmConfig::default()
    };
    let run = harness::vm::run(&[me, "--test-threads=1", "--skip", "ctr_flags_give_the_same_view_as_runc"], &cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("VM ({}) finished in {:.1} s\n{}", run.accel, run.elapsed.as_secs_f64(), run.output);
    assert_eq!(run.exit_code, 0, "launcher tests failed in the cgroup v2 VM:\n{}", run.output);
    assert!(
        run.output.contains("test cgroup2_mount_with_a_cgroup_namespace_on_a_pure_v2_host ... ok")
            && !run.output.contains("SKIP cgroup2_mount"),
        "the v2 test must really run in the VM:\n{}",
        run.output
    );
}

/// Benchmark, not a test: median wall time of create + start + exit of `true` through the
/// launcher, and of `runc run` on the same bundle. Run with
/// `cargo test -p lazy-tests --test launcher launch_latency -- --ignored --nocapture`.
#[test]
#[ignore]
fn launch_latency() {
    if !ready("launch_latency") {
        return;
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut b = Bundle::new();
    let mut ours = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = b.run(default_spec(), &["true"]);
        ours.push(t.elapsed());
        assert_eq!(out.code, 0);
        b.pids.clear();
    }
    let mut spec = default_spec();
    spec["process"]["args"] = json!(["true"]);
    std::fs::write(b.path().join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut runc = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let st = std::process::Command::new("runc")
            .arg("--root")
            .arg(state.path())
            .args(["run", "--bundle"])
            .arg(b.path())
            .arg(format!("latency-{}-{i}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .status();
        runc.push(t.elapsed());
        assert!(st.is_ok_and(|s| s.success()));
    }
    println!("launcher create+start+exit of `true`: median {:?} (20 runs)", median(ours));
    println!("runc run of `true` on the same bundle: median {:?} (20 runs)", median(runc));
}
