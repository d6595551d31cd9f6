//! The same enforcement through the shim's launcher (`shim::launcher::create`), as the task service uses
//! it: a busybox bundle, the cgroup created from the spec's linux section, and the container's init placed
//! by the launcher's `place` callback before it sets anything up.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shim::cgroup::{Cgroup, CgroupPolicy};
use shim::launcher::{self, CreateRequest, Stdio};

const BUSYBOX: &str = "/bin/busybox";

/// A bundle dir with a busybox rootfs under the guest's /tmp; removed on drop.
struct Bundle(tempfile::TempDir);

impl Bundle {
    fn new() -> Result<Bundle> {
        let dir = tempfile::Builder::new().prefix("lazy-launcher-").tempdir()?;
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "run"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).context("copy /bin/busybox (busybox-static)")?;
        let list = std::process::Command::new(BUSYBOX).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        Ok(Bundle(dir))
    }
}

fn spec(name: &str, args: &[&str], resources: Value) -> Value {
    let caps =
        json!(["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID", "CAP_SETUID", "CAP_KILL"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": name,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": format!("/lazy-vm/{name}"),
            "resources": resources,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

struct Outcome {
    /// Exit code, or 128 + signal.
    code: i32,
    output: String,
}

/// Creates the cgroup and the container, starts it, waits for its init, and returns (cgroup, outcome).
/// The cgroup is returned so the caller can read counters before deleting it.
fn run(name: &str, args: &[&str], resources: Value) -> Result<(Cgroup, Outcome)> {
    let bundle = Bundle::new()?;
    let value = spec(name, args, resources);
    std::fs::write(bundle.0.path().join("config.json"), serde_json::to_vec_pretty(&value)?)?;
    let spec: oci_spec::runtime::Spec = serde_json::from_value(value)?;
    let cg = Cgroup::create(spec.linux().as_ref(), "vm", name, &CgroupPolicy::default())?;
    let (r, w) = nix::unistd::pipe()?;
    let w2 = w.try_clone()?;
    let req = CreateRequest {
        id: name,
        bundle: bundle.0.path(),
        spec: &spec,
        stdio: Stdio { stdin: None, stdout: Some(w), stderr: Some(w2) },
    };
    let mut placed = Vec::new();
    let created = launcher::create(req, &mut |pid| {
        placed.push(pid);
        cg.add_pid(pid).map_err(Into::into)
    });
    let mut created = match created {
        Ok(c) => c,
        Err(e) => {
            let _ = cg.kill_all(libc::SIGKILL);
            let _ = cg.delete();
            bail!("launcher::create: {e}");
        }
    };
    ensure!(placed == vec![created.pid], "place called with {placed:?}, init is {}", created.pid);
    ensure!(cg.pids()?.contains(&created.pid), "init {} is not in {}", created.pid, cg.path().display());
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(created.helper_pid), None);
    created.start().context("start")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut s);
        s
    });
    let code = wait_exit(created.pid, Duration::from_secs(60));
    drop(created);
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            let _ = cg.kill_all(libc::SIGKILL);
            let _ = cg.delete();
            return Err(e);
        }
    };
    let output = reader.join().unwrap_or_default();
    Ok((cg, Outcome { code, output }))
}

fn wait_exit(pid: i32, timeout: Duration) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => bail!("waitpid {pid}: {e}"),
        }
        if Instant::now() > deadline {
            bail!("container init {pid} did not exit within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Points the launcher at the shim binary built next to this one (it re-executes it as `init`).
pub fn ready() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let shim = exe.parent().map(|d| d.join("containerd-shim-lazy-v2")).unwrap_or_default();
    if !shim.is_file() {
        bail!("{} not built: run `cargo build -p containerd-shim-lazy` first", shim.display());
    }
    launcher::set_helper_exe(shim.clone());
    ensure!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} missing (apt-get install busybox-static)");
    Ok(shim)
}

pub fn check_launcher_oom() -> Result<String> {
    ready()?;
    let res = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let (cg, out) = run("launcher-oom", &["dd", "if=/dev/zero", "of=/tmp/x", "bs=100M", "count=1"], res)?;
    let kills = cg.oom_kills()?;
    cg.delete()?;
    ensure!(
        out.code == 128 + libc::SIGKILL,
        "dd with a 100 MB buffer under 32M ended with code {} ({:?})",
        out.code,
        out.output
    );
    ensure!(kills == 1, "oom_kills() = {kills}, want 1");
    Ok("container init (dd bs=100M) under memory.max 32M: SIGKILL, oom_kills()=1".into())
}

pub fn check_launcher_devices() -> Result<String> {
    ready()?;
    let res = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"},
        {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    ]});
    let script = "mknod /tmp/null c 1 3 && mknod /tmp/zero c 1 5; \
                  cat /tmp/null; echo null=$?; head -c 3 /tmp/zero | wc -c";
    let (cg, out) = run("launcher-devices", &["sh", "-c", script], res)?;
    cg.delete()?;
    ensure!(out.code == 0, "container exited {}: {:?}", out.code, out.output);
    ensure!(
        out.output.contains("Operation not permitted") && out.output.contains("null=1"),
        "opening the mknod'ed c 1:3 did not fail with EPERM: {:?}",
        out.output
    );
    ensure!(out.output.trim_end().ends_with('3'), "reading the allowed c 1:5 failed: {:?}", out.output);
    Ok(format!("in the container: {:?}", out.output.replace('\n', " | ")))
}
