//! Issue 4 acceptance, end to end: "memory.max 32M OOM-kills a process allocating 100 MB and a TaskOOM
//! event is observed", through containerd 1.6 + our shim inside the pure cgroup v2 VM (tests/src/vm.rs).
//!
//! The host builds a busybox OCI archive under the target dir (the guest sees the host root read-only over
//! 9p; the harness exposes the paths the command names even where the guest mounts its own tmpfs, as
//! over /tmp), then boots ONE VM running [`GUEST_SCRIPT`]: a private containerd
//! with root/state on tmpfs and the shim's directory first on PATH, `ctr image import`, `ctr events` in
//! the background, `ctr run --rm --runtime io.containerd.lazy.v2 --memory-limit 32M` of a 100 MB
//! allocation, then a bounded wait for `/tasks/oom`. The guest prints `CHECK <name> PASS|FAIL <detail>`
//! lines; any missing or failing check, or no VM exit code at all (infrastructure), fails the test.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use harness::vm::{self, VmConfig};

const CHECKS: &[&str] = &[
    "containerd_up",
    "image_import",
    "events_subscribed",
    "run_exit_137",
    "task_oom_event",
    "oom_before_exit",
    "kernel_oom_kill",
    "containerd_stopped",
];

/// Runs in the guest as `/bin/sh SCRIPT IMAGE_TAR`, with SHIM_DIR in the environment. Waits are on the
/// clock (each `ctr` call takes ~0.5 s under TCG), never on iteration counts.
const GUEST_SCRIPT: &str = r#"
set -u
TAR=$1
S=/run/lazy-ctd
mkdir -p "$S"
FAILED=0
check() { echo "CHECK $1 $2 ${3:-}"; [ "$2" = PASS ] || FAILED=1; }
now() { cut -d. -f1 /proc/uptime; }
c() { /usr/bin/ctr --address "$S/containerd.sock" --namespace default "$@"; }

# containerd's overlayfs snapshotter needs the module; the guest loads it from the host's /lib/modules.
modprobe overlay 2>&1 || echo "modprobe overlay failed (snapshotter may fall back)"
cat > "$S/config.toml" <<EOF
version = 2
root = "$S/root"
state = "$S/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$S/containerd.sock"
[ttrpc]
  address = "$S/containerd.sock.ttrpc"
[debug]
  level = "debug"
EOF
PATH="$SHIM_DIR:$PATH" /usr/bin/containerd --config "$S/config.toml" > "$S/containerd.log" 2>&1 &
CTD=$!

up=FAIL; end=$(( $(now) + 30 ))
while [ "$(now)" -lt "$end" ]; do
  if c version > /dev/null 2>&1; then up=PASS; break; fi
  kill -0 "$CTD" 2>/dev/null || break
  sleep 0.2
done
check containerd_up $up "pid $CTD"

out=$(c image import "$TAR" 2>&1); irc=$?
IMG=$(c image ls -q 2>/dev/null | head -n 1)
if [ $irc -eq 0 ] && [ -n "$IMG" ]; then check image_import PASS "$IMG"; else check image_import FAIL "rc=$irc $out"; fi

c events > "$S/events" 2>&1 &
EV=$!
sleep 1
if kill -0 "$EV" 2>/dev/null; then check events_subscribed PASS "pid $EV"; else check events_subscribed FAIL "$(cat "$S/events")"; fi

t0=$(now)
c run --rm --runtime io.containerd.lazy.v2 --memory-limit 33554432 "$IMG" oom \
  sh -c 'dd if=/dev/zero of=/dev/null bs=100M count=1' > "$S/run.out" 2>&1
rc=$?
echo "ctr run exited $rc after $(( $(now) - t0 )) s; its output:"; cat "$S/run.out"
if [ $rc -eq 137 ]; then check run_exit_137 PASS; else check run_exit_137 FAIL "exit status $rc"; fi

seen=FAIL; end=$(( $(now) + 10 ))
while [ "$(now)" -lt "$end" ]; do
  if grep '/tasks/oom' "$S/events" | grep -q '"container_id":"oom"'; then seen=PASS; break; fi
  sleep 0.2
done
check task_oom_event $seen "$(grep '/tasks/oom' "$S/events" | head -n 1)"
# CRI reports "OOMKilled" only when TaskOOM arrives before TaskExit.
order=$(grep -o -E '/tasks/(oom|exit)' "$S/events" | head -n 1)
if [ "$order" = /tasks/oom ]; then check oom_before_exit PASS; else check oom_before_exit FAIL "first of oom/exit: ${order:-none}"; fi

kills=$(dmesg | grep -c 'Memory cgroup out of memory')
if [ "$kills" -ge 1 ]; then check kernel_oom_kill PASS "$(dmesg | grep 'oom-kill:' | tail -n 1)"; else check kernel_oom_kill FAIL "no memcg OOM in dmesg"; fi

kill "$EV" 2>/dev/null
kill "$CTD" 2>/dev/null
stopped=FAIL; end=$(( $(now) + 10 ))
while [ "$(now)" -lt "$end" ]; do
  if ! kill -0 "$CTD" 2>/dev/null; then stopped=PASS; break; fi
  sleep 0.2
done
check containerd_stopped $stopped
if [ $FAILED -ne 0 ]; then
  echo "--- events ---"; cat "$S/events"
  echo "--- containerd log (tail) ---"; tail -n 60 "$S/containerd.log"
fi
exit $FAILED
"#;

/// Writes the busybox image as an OCI layout tarred for `ctr image import`, plus the guest script, into `dir`.
fn prepare(dir: &Path) -> Result<()> {
    let layout = dir.join("layout");
    harness::containerd::busybox_image()?.write_layout(&layout, "1")?;
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(dir.join("image.tar"))
        .arg(".")
        .status()
        .context("running tar for the OCI archive")?;
    if !status.success() {
        bail!("tar of the busybox OCI layout {} failed: {status}", layout.display());
    }
    std::fs::write(dir.join("guest.sh"), GUEST_SCRIPT).context("writing the guest script")?;
    Ok(())
}

#[test]
fn containerd_shim_reports_task_oom_in_a_cgroup_v2_vm() {
    let mut missing: Vec<String> = vm::missing_prerequisites().into_iter().collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (qemu's 9p export of / must read every file)".into());
    }
    for bin in ["/usr/bin/containerd", "/usr/bin/ctr", "/bin/busybox"] {
        if !Path::new(bin).exists() {
            missing.push(format!("{bin} (apt-get install containerd busybox-static)"));
        }
    }
    if !missing.is_empty() {
        let text = format!("cgroup_vm_containerd: {}", missing.join("; "));
        if harness::prereq::in_ci() {
            panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
        }
        eprintln!("SKIP {text}");
        return;
    }
    let shim = harness::bins::shim();
    let shim_dir = shim.parent().expect("the shim binary has a parent dir").display().to_string();
    // Next to the build (anywhere: vm::run exposes the paths the command names); removed on drop.
    let dir = tempfile::Builder::new()
        .prefix("lazy-vm-ctd-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir under CARGO_TARGET_TMPDIR");
    prepare(dir.path()).expect("preparing the image archive and guest script");
    let script = dir.path().join("guest.sh").display().to_string();
    let tar = dir.path().join("image.tar").display().to_string();
    let cfg = VmConfig {
        timeout: std::time::Duration::from_secs(240),
        env: vec![("SHIM_DIR".into(), shim_dir)],
        share: vec![shim.clone()],
        ..VmConfig::default()
    };
    let run = match vm::run(&["/bin/sh", &script, &tar], &cfg) {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    };
    println!("VM ({}) finished in {:.1} s, exit code {}", run.accel, run.elapsed.as_secs_f64(), run.exit_code);
    println!("--- guest output ---\n{}", run.output);
    let failed: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|c| !run.output.lines().any(|l| l.starts_with(&format!("CHECK {c} PASS"))))
        .collect();
    if !failed.is_empty() || run.exit_code != 0 {
        let tail: Vec<&str> = run.console.lines().rev().take(30).collect();
        panic!(
            "TaskOOM through containerd + shim failed in the VM: checks not passing: {failed:?}, guest exit code {}\n\
             --- guest output ---\n{}\n--- console tail ---\n{}",
            run.exit_code,
            run.output,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}
