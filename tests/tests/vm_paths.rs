//! Issue 14: the VM harness itself (tests/src/vm.rs) with host paths the guest would hide. The guest
//! mounts its own tmpfs over /tmp, /run and /var/tmp; a guest command naming host files below them must
//! either work (the files are exposed read-only at the same path) or fail ON THE HOST with an error that
//! names the path, never as an exit 127 inside the guest.

use std::path::{Path, PathBuf};

use harness::vm::{self, VmConfig, VmError};

/// A scratch dir directly under `parent`, removed on drop.
fn scratch(parent: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lazy-vm-paths-")
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("creating a temp dir under {parent}: {e}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[test]
fn host_paths_under_the_guest_tmpfs_dirs_are_reachable_read_only() {
    let mut missing: Vec<String> = vm::missing_prerequisites().into_iter().collect();
    if let Some(why) = harness::Prereq::Root.missing() {
        missing.push(format!("{why} (qemu's 9p export of / must read every file)"));
    }
    if !missing.is_empty() {
        let text = format!("vm_paths: {}", missing.join("; "));
        if harness::prereq::in_ci() {
            panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
        }
        eprintln!("SKIP {text}");
        return;
    }
    // Named by argv (the script, and a file under /var/tmp), by the environment (a dir under /run), by
    // `share` only (a plain file directly under /tmp, named just inside the script), and one not named.
    let tmp = scratch("/tmp");
    let var_tmp = scratch("/var/tmp");
    let run = scratch("/run");
    let unnamed = scratch("/tmp");
    let shared = tempfile::Builder::new().prefix("lazy-vm-paths-").tempfile_in("/tmp").expect("temp file under /tmp");
    write(&tmp.path().join("data"), "from /tmp");
    write(&var_tmp.path().join("b"), "from /var/tmp");
    write(&run.path().join("c"), "from /run");
    write(shared.path(), "shared");
    let script = tmp.path().join("guest.sh");
    write(
        &script,
        &format!(
            r#"set -u
here=$(dirname "$0")
echo "a=$(cat "$here/data")"
echo "b=$(cat "$1")"
echo "c=$(cat "$C_DIR/c")"
echo "shared=$(cat '{shared}')"
if touch "$here/new" 2>/dev/null; then echo host_files=writable; else echo host_files=read-only; fi
echo scratch > /tmp/scratch && echo "guest_tmp=$(cat /tmp/scratch)"
if [ -e '{unnamed}' ]; then echo unnamed=visible; else echo unnamed=hidden; fi
echo "tmp_fs=$(awk '$2 == "/tmp" {{ print $3 }}' /proc/mounts)"
"#,
            shared = shared.path().display(),
            unnamed = unnamed.path().display(),
        ),
    );
    let b = var_tmp.path().join("b");
    let cfg = VmConfig {
        timeout: std::time::Duration::from_secs(180),
        env: vec![("C_DIR".into(), run.path().display().to_string())],
        share: vec![shared.path().to_path_buf()],
        ..VmConfig::default()
    };
    let out =
        vm::run(&["/bin/sh", script.to_str().unwrap(), b.to_str().unwrap()], &cfg).unwrap_or_else(|e| panic!("{e}"));
    println!("VM ({}) finished in {:.1} s, exit code {}", out.accel, out.elapsed.as_secs_f64(), out.exit_code);
    let tail: Vec<&str> = out.console.lines().rev().take(20).collect();
    let console = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_eq!(
        (out.exit_code, out.output.as_str()),
        (
            0,
            "a=from /tmp\nb=from /var/tmp\nc=from /run\nshared=shared\nhost_files=read-only\nguest_tmp=scratch\n\
             unnamed=hidden\ntmp_fs=tmpfs\n"
        ),
        "guest output differs; console tail:\n{console}"
    );
    assert!(!tmp.path().join("new").exists(), "the guest wrote into the host's {}", tmp.path().display());
}

#[test]
fn unreachable_host_paths_fail_on_the_host_naming_them() {
    let shm =
        tempfile::Builder::new().prefix("lazy-vm-paths-").tempfile_in("/dev/shm").expect("temp file under /dev/shm");
    let shm_path = shm.path().display().to_string();
    let gone = PathBuf::from(format!("/tmp/lazy-vm-paths-gone-{}/target/debug/guest", std::process::id()));
    let cases: Vec<(Vec<&str>, VmConfig, String)> = vec![
        (vec!["/bin/cat", &shm_path], VmConfig::default(), shm_path.clone()),
        (vec![gone.to_str().unwrap()], VmConfig::default(), gone.display().to_string()),
        (vec!["/bin/true"], VmConfig { share: vec![gone.clone()], ..VmConfig::default() }, gone.display().to_string()),
    ];
    for (argv, cfg, path) in cases {
        // Refused before anything boots: no kernel, qemu or root needed to get this answer.
        let t = std::time::Instant::now();
        match vm::run(&argv, &cfg) {
            Err(VmError::Unreachable(u)) => {
                assert_eq!(u.path, PathBuf::from(&path), "{u}");
                let text = VmError::Unreachable(u).to_string();
                assert!(text.contains(&path), "the error must name {path}: {text}");
            }
            Err(other) => panic!("{argv:?}: want an Unreachable error naming {path}, got: {other}"),
            Ok(run) => panic!("{argv:?}: the guest ran (exit {}) instead of failing on the host", run.exit_code),
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{argv:?} took {:?}: it booted", t.elapsed());
    }
}
