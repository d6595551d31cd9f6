//! The shim's `start` and `delete` actions as containerd runs them, without containerd:
//! `start` ignores whatever stdin holds (containerd 2.3 writes BootstrapParams there), prints ONLY
//! the socket address, groups containers of one sandbox into one server; `delete` prints a
//! DeleteResponse.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::Message;
use harness::{prerequisites_met, Prereq};

/// Kills shim servers of this test (found by their -socket argument) and removes their socket.
struct Servers(Vec<String>);

impl Servers {
    fn pids(address: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(c) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> = c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            if args.iter().any(|a| a == "-socket") && args.iter().any(|a| a == address) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for a in &self.0 {
            for pid in Servers::pids(a) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(a.trim_start_matches("unix://"));
        }
    }
}

fn bundle(dir: &Path, name: &str, sandbox: &str) -> std::path::PathBuf {
    let b = dir.join(name);
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(
        b.join("config.json"),
        format!(r#"{{"annotations":{{"io.kubernetes.cri.sandbox-id":"{sandbox}"}}}}"#),
    )
    .unwrap();
    b
}

fn start(bundle: &Path, address: &str, ttrpc: &Path, id: &str, stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(harness::bins::shim())
        .args(["-namespace", "lazytest", "-address", address, "-publish-binary", "/bin/true", "-id", id, "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", ttrpc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shim_start_prints_only_the_address_and_groups_by_sandbox() {
    if !prerequisites_met("shim_start", &[Prereq::Root]) {
        return;
    }
    let dir = harness::cleanup::temp_dir("shim-start");
    let address = dir.path().join("containerd.sock").display().to_string();
    // Stands in for containerd's ttrpc socket, where the server publishes events.
    let ttrpc = dir.path().join("containerd.sock.ttrpc");
    let _events = UnixListener::bind(&ttrpc).unwrap();

    // Something like a BootstrapParams protobuf on stdin must not matter.
    let bootstrap = [0x08, 0x02, 0x12, 0x05, b'v', b'2', b'.', b'3', b'x'];
    let (code, out1, err) = start(&bundle(dir.path(), "b1", "podA"), &address, &ttrpc, "c1", &bootstrap);
    let mut servers = Servers(vec![out1.clone()]);
    assert_eq!((code, err.as_str()), (0, ""), "start failed: {err}");
    assert!(
        out1.starts_with("unix:///run/containerd/s/") && !out1.contains('\n'),
        "stdout is only the address: {out1:?}"
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("b1/address")).unwrap(), out1);

    let start_t = Instant::now();
    while Servers::pids(&out1).is_empty() {
        assert!(start_t.elapsed() < Duration::from_secs(10), "no server process for {out1}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out2, err) = start(&bundle(dir.path(), "b2", "podA"), &address, &ttrpc, "c2", b"");
    assert_eq!((code, err.as_str(), out2.as_str()), (0, "", out1.as_str()), "same sandbox, same shim");
    assert_eq!(Servers::pids(&out1).len(), 1, "one server for the pod");

    let (code, out3, err) = start(&bundle(dir.path(), "b3", "podB"), &address, &ttrpc, "c3", b"");
    servers.0.push(out3.clone());
    assert_eq!((code, err.as_str()), (0, ""));
    assert_ne!(out3, out1, "another sandbox gets another shim");
}

#[test]
fn shim_delete_action_prints_a_delete_response() {
    if !prerequisites_met("shim_delete_action", &[Prereq::Root]) {
        return;
    }
    let dir = harness::cleanup::temp_dir("shim-delete");
    let b = bundle(dir.path(), "b1", "podA");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    let out = Command::new(harness::bins::shim())
        .args(["-namespace", "lazytest-del", "-address", "/nonexistent", "-id", "gone", "-bundle"])
        .arg(&b)
        .arg("delete")
        .current_dir(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resp = containerd_shim_protos::api::DeleteResponse::parse_from_bytes(&out.stdout).expect("a DeleteResponse");
    assert_eq!(resp.exit_status, 137);
    assert!(resp.exited_at.is_some());
}
