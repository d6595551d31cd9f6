//! Issue 4 acceptance in a pure cgroup v2 VM: boots ONE VM (tests/src/vm.rs) that runs the prebuilt
//! `cgroup-guest` binary, which performs every enforcement check through the shim's cgroup module and prints
//! a `CHECK <name> PASS|FAIL` line per check. Fails when any check fails, when a check is missing, or when
//! the VM itself fails (reported as an infrastructure failure, never as a pass).

use harness::vm::{self, VmConfig};

const CHECKS: &[&str] = &[
    "memory_oom",
    "pids_limit",
    "cpu_quota_and_freeze",
    "update_and_stats",
    "kill_all_and_delete",
    "devices",
    "io_max",
    "launcher_memory_oom",
    "launcher_devices",
];

#[test]
fn cgroup_v2_limits_are_enforced_in_a_vm() {
    let mut missing: Vec<String> = vm::missing_prerequisites().into_iter().collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (qemu's 9p export of / must read every file)".into());
    }
    if !missing.is_empty() {
        let text = format!("cgroup_vm: {}", missing.join("; "));
        if harness::prereq::in_ci() {
            panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
        }
        eprintln!("SKIP {text}");
        return;
    }
    let guest = env!("CARGO_BIN_EXE_cgroup-guest");
    // The launcher checks re-execute the shim binary as their helper: it must be built next to the guest.
    let shim = harness::bins::shim();
    let cfg = VmConfig { disk_mb: Some(64), share: vec![shim], ..VmConfig::default() };
    let run = match vm::run(&[guest], &cfg) {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    };
    println!("VM ({}) finished in {:.1} s, exit code {}", run.accel, run.elapsed.as_secs_f64(), run.exit_code);
    println!("--- guest output ---\n{}", run.output);
    let mut failed = Vec::new();
    for c in CHECKS {
        let pass = run.output.lines().any(|l| l.starts_with(&format!("CHECK {c} PASS")));
        if !pass {
            failed.push(*c);
        }
    }
    if !failed.is_empty() || run.exit_code != 0 {
        let tail: Vec<&str> = run.console.lines().rev().take(30).collect();
        panic!(
            "cgroup v2 enforcement failed in the VM: checks not passing: {failed:?}, guest exit code {}\n\
             --- guest output ---\n{}\n--- console tail ---\n{}",
            run.exit_code,
            run.output,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}
