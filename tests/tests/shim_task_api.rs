//! Task API behaviours where containerd's Go client (Docker, nerdctl, BuildKit, CRI plugins) expects the
//! runc shim's answers, driven over ttrpc exactly as containerd forwards them (see harness::shim_direct):
//! Kill(all) of a never-started task, a deny-all device list, ResizePty without a terminal, a container in
//! the host's pid namespace, ShimCgroup, the socket file after the last Delete/Shutdown, cgroup removal,
//! `-info`, and containerd 2.3's BootstrapParams on `start`'s stdin.

use std::path::Path;
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedOutputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::types::introspection::RuntimeInfo;
use harness::shim_direct::{any_of, go_client_spec, DirectShim};

const SIGKILL: u32 = 9;

/// After Delete: the container's cgroup directory is gone and the shim never said it kept it.
fn assert_cgroup_removed(s: &DirectShim, id: &str) {
    let dir = s.cgroup_dir(id);
    assert!(!dir.exists(), "cgroup {} of deleted container {id} still exists; shim log:\n{}", dir.display(), s.log());
    assert!(!s.log().contains("still in use"), "shim log:\n{}", s.log());
}

fn setup(test: &str, id: &str, args: &[&str], terminal: bool) -> Option<DirectShim> {
    let mut s = DirectShim::new(test)?;
    let spec = go_client_spec(&s.cgroups_path(id), args, terminal);
    s.write_bundle(id, &spec).unwrap();
    s.start(id, b"").unwrap();
    Some(s)
}

#[test]
fn kill_all_of_a_created_task_publishes_exit_and_wait_returns_137() {
    let Some(s) =
        setup("kill_all_of_a_created_task_publishes_exit_and_wait_returns_137", "c1", &["sleep", "1000"], false)
    else {
        return;
    };
    let pid = s.create("c1", false, None, None).unwrap().pid;
    assert!(pid > 0);
    s.kill("c1", SIGKILL, true).unwrap();
    let exit = s.wait("c1", "", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}; shim log:\n{}", s.log()));
    assert_eq!(exit.exit_status, 137);
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s.init_exits("c1").iter().any(|e| e.exit_status == 137)),
        "TaskExit 137 published; events: {:?}",
        s.events().iter().map(|e| e.topic.clone()).collect::<Vec<_>>()
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the init {pid} is gone");
    let d = s.delete("c1").unwrap();
    assert_eq!(d.exit_status, 137);
    assert_cgroup_removed(&s, "c1");
}

#[test]
fn deny_all_device_list_still_allows_dev_null_and_terminals() {
    let script = "echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 3 /dev/urandom | wc -c && \
                  head -c 1 /dev/full >/dev/null && echo DEV-OK; exec sleep 1000";
    let Some(s) = setup("deny_all_device_list_still_allows_dev_null_and_terminals", "d1", &["sh", "-c", script], true)
    else {
        return;
    };
    let out = s.capture("d1.out").unwrap();
    s.create("d1", true, Some(&out), None).unwrap_or_else(|e| panic!("create with a terminal: {e}; log:\n{}", s.log()));
    s.start_task("d1", "").unwrap();
    let text = out.wait_for("DEV-OK", Duration::from_secs(10));
    assert!(text.contains("DEV-OK"), "the init's terminal output: {text:?}");
    assert!(!text.contains("Operation not permitted"), "{text:?}");

    // An exec with its own terminal (a new /dev/pts/N), as `docker exec -it` / `nerdctl exec -it`.
    let eout = s.capture("d1-exec.out").unwrap();
    s.exec("d1", "e1", &["sh", "-c", "tty; echo EXEC-OK"], true, &eout).unwrap();
    s.start_task("d1", "e1").unwrap_or_else(|e| panic!("exec with a terminal: {e}; log:\n{}", s.log()));
    let exit = s.wait("d1", "e1", Duration::from_secs(10)).unwrap();
    let text = eout.wait_for("EXEC-OK", Duration::from_secs(5));
    assert_eq!(exit.exit_status, 0, "exec output: {text:?}");
    assert!(text.contains("/dev/pts/") && text.contains("EXEC-OK"), "exec terminal output: {text:?}");

    s.kill("d1", SIGKILL, true).unwrap();
    s.wait("d1", "", Duration::from_secs(10)).unwrap();
    s.delete("d1").unwrap();
    assert_cgroup_removed(&s, "d1");
}

#[test]
fn resize_pty_without_a_terminal_succeeds_like_runc() {
    let Some(s) = setup("resize_pty_without_a_terminal_succeeds_like_runc", "r1", &["sleep", "1000"], false) else {
        return;
    };
    s.create("r1", false, None, None).unwrap();
    s.start_task("r1", "").unwrap();
    s.resize_pty("r1", "", 120, 40).unwrap_or_else(|e| panic!("ResizePty of the init without a terminal: {e}"));
    let out = s.capture("r1-exec.out").unwrap();
    s.exec("r1", "x1", &["sleep", "1000"], false, &out).unwrap();
    s.start_task("r1", "x1").unwrap();
    s.resize_pty("r1", "x1", 80, 24).unwrap_or_else(|e| panic!("ResizePty of an exec without a terminal: {e}"));
    s.kill("r1", SIGKILL, true).unwrap();
    s.wait("r1", "", Duration::from_secs(10)).unwrap();
    s.delete("r1").unwrap();
    assert_cgroup_removed(&s, "r1");
}

#[test]
fn host_pid_namespace_init_exit_kills_the_rest_and_exits_promptly() {
    let Some(mut s) = DirectShim::new("host_pid_namespace_init_exit_kills_the_rest_and_exits_promptly") else { return };
    let mut spec = go_client_spec(
        &s.cgroups_path("h1"),
        &[
            "sh",
            "-c",
            "sleep 1000 & echo $! > /tmp/bg; sleep 0.2; tr '\\0' ' ' < /proc/$!/cmdline > /tmp/bgcmd; exit 3",
        ],
        false,
    );
    // No pid namespace: the host's (docker run --pid=host, hostPID: true).
    spec["linux"]["namespaces"] =
        serde_json::json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]);
    // Devices as ctr and CRI send them (allowed), so that only the pid namespace differs.
    spec["linux"]["resources"]["devices"] = serde_json::json!([{"allow": true, "access": "rwm"}]);
    let bundle = s.write_bundle("h1", &spec).unwrap();
    s.start("h1", b"").unwrap();
    // The background sleep inherits stdout, as every child of a shell does.
    let out = s.capture("h1.out").unwrap();
    s.create("h1", false, Some(&out), None).unwrap();
    let started = Instant::now();
    s.start_task("h1", "").unwrap();
    let exit = s.wait("h1", "", Duration::from_secs(10)).unwrap();
    let took = started.elapsed();
    assert_eq!(exit.exit_status, 3);
    let bg: i32 = std::fs::read_to_string(bundle.join("rootfs/tmp/bg")).unwrap().trim().parse().unwrap();
    assert!(bg > 1, "a host pid");
    let cmd = std::fs::read_to_string(bundle.join("rootfs/tmp/bgcmd")).unwrap_or_default();
    assert!(cmd.contains("sleep 1000"), "the background process ran: {cmd:?}");
    let gone = s.wait_until(Duration::from_secs(2), |_| !Path::new(&format!("/proc/{bg}")).exists());
    assert!(
        gone,
        "the container's other process {bg} was killed when its init exited (runc does this without a pid namespace)"
    );
    assert!(
        took < Duration::from_millis(2500),
        "Wait returned {took:?} after Start: TaskExit must not wait for stdout to drain"
    );
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s.init_exits("h1").iter().any(|e| e.exit_status == 3)),
        "TaskExit published"
    );
    s.delete("h1").unwrap();
    assert_cgroup_removed(&s, "h1");
}

/// A cgroup made for the test, removed on drop (after the shim in it is gone).
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.exists() && std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn shim_cgroup_in_runc_options_moves_the_shim_into_it() {
    let Some(mut s) = DirectShim::new("shim_cgroup_in_runc_options_moves_the_shim_into_it") else { return };
    let root = s.cgroup_dir("x").parent().unwrap().parent().unwrap().to_path_buf();
    let rel = format!("{}-shims", s.namespace());
    let cg = TestCgroup(root.join(&rel));
    std::fs::create_dir(&cg.0).unwrap();
    let spec = go_client_spec(&s.cgroups_path("s1"), &["sleep", "1000"], false);
    s.write_bundle("s1", &spec).unwrap();
    let opts = RuncOptions { shim_cgroup: format!("/{rel}"), ..Default::default() };
    let any = any_of("containerd.runc.v1.Options", &opts);
    // What containerd 1.6-2.2 write on start's stdin: the runtime options as an Any.
    s.start("s1", &any.write_to_bytes().unwrap()).unwrap();
    let pid = s.shim_pid();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("/{rel}"))),
        "shim {pid} is in /{rel}: {membership}"
    );
    // Create carries the same options; the container itself goes to its own cgroup.
    s.create("s1", false, None, Some(any)).unwrap();
    s.start_task("s1", "").unwrap();
    s.kill("s1", SIGKILL, false).unwrap();
    s.wait("s1", "", Duration::from_secs(10)).unwrap();
    s.delete("s1").unwrap();
    assert_cgroup_removed(&s, "s1");
    drop(s);
    drop(cg);
}

#[test]
fn socket_file_is_gone_when_the_last_delete_returns() {
    let Some(s) = setup("socket_file_is_gone_when_the_last_delete_returns", "k1", &["sleep", "1000"], false) else {
        return;
    };
    s.create("k1", false, None, None).unwrap();
    s.start_task("k1", "").unwrap();
    assert!(s.socket().exists());
    s.kill("k1", SIGKILL, false).unwrap();
    s.wait("k1", "", Duration::from_secs(10)).unwrap();
    s.delete("k1").unwrap();
    assert!(!s.socket().exists(), "socket {} still exists after the last Delete returned", s.socket().display());
    s.shutdown().unwrap();
    assert!(s.wait_until(Duration::from_secs(10), |s| !s.shim_alive()), "the shim exits after Shutdown");
    assert_cgroup_removed(&s, "k1");
}

#[test]
fn socket_file_is_gone_when_shutdown_returns() {
    let Some(s) = setup("socket_file_is_gone_when_shutdown_returns", "n1", &["true"], false) else { return };
    assert!(s.socket().exists());
    // containerd shuts a shim down after a failed Create, with no container in it.
    s.shutdown().unwrap();
    assert!(!s.socket().exists(), "socket {} still exists after Shutdown returned", s.socket().display());
    assert!(s.wait_until(Duration::from_secs(10), |s| !s.shim_alive()), "the shim exits after Shutdown");
}

/// The launcher helper's warnings reach the shim's log (containerd's log): its stderr is the
/// container's, so they travel on a pipe of their own.
#[test]
fn launcher_helper_warnings_reach_the_shim_log() {
    let Some(mut s) = DirectShim::new("launcher_helper_warnings_reach_the_shim_log") else { return };
    let mut spec = go_client_spec(&s.cgroups_path("w1"), &["sh", "-c", "echo out"], false);
    // TSYNC is one of the flags the launcher ignores with a warning, inside the helper.
    spec["linux"]["seccomp"] =
        serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]});
    s.write_bundle("w1", &spec).unwrap();
    s.start("w1", b"").unwrap();
    let out = s.capture("w1.out").unwrap();
    s.create("w1", false, Some(&out), None).unwrap();
    s.start_task("w1", "").unwrap();
    assert_eq!(s.wait("w1", "", Duration::from_secs(10)).unwrap().exit_status, 0);
    let want = "seccomp flag SeccompFilterFlagTsync is not supported; ignoring it";
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s.log().contains(want)),
        "the helper's warning {want:?} is not in the shim log:\n{}",
        s.log()
    );
    assert!(s.log().lines().any(|l| l.contains("launcher helper") && l.contains(want)), "{}", s.log());
    assert_eq!(
        out.wait_for("out", Duration::from_secs(5)),
        "out\n",
        "nothing of the helper's log in the container's output"
    );
    s.delete("w1").unwrap();
}

#[test]
fn cgroups_of_deleted_containers_are_removed_every_time() {
    let Some(mut s) = DirectShim::new("cgroups_of_deleted_containers_are_removed_every_time") else { return };
    // One shim for the pod (sandbox annotation), many short-lived containers, as CRI does.
    let ids: Vec<String> = (0..8).map(|i| format!("g{i}")).collect();
    for id in &ids {
        let mut spec = go_client_spec(&s.cgroups_path(id), &["sh", "-c", "exit 0"], false);
        spec["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "pod-g"});
        s.write_bundle(id, &spec).unwrap();
        // The last Delete of a pod's shim removes its socket, and the shim exits 2 s later: each
        // start here spawns a new server at the same address, so connect to it (as containerd does
        // with the address start prints) rather than keep talking to the lingering one.
        s.start(id, b"").unwrap();
        s.create(id, false, None, None).unwrap();
        s.start_task(id, "").unwrap();
        s.wait(id, "", Duration::from_secs(10)).unwrap();
        s.delete(id).unwrap();
        assert_cgroup_removed(&s, id);
    }
}

#[test]
fn info_prints_runtime_info_as_containerd_2_decodes_it() {
    let Some(_s) = DirectShim::new("info_prints_runtime_info_as_containerd_2_decodes_it") else { return };
    let run = |stdin: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(harness::bins::shim())
            .arg("-info")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(b"");
    assert!(out.status.success(), "-info exits 0: {}", String::from_utf8_lossy(&out.stderr));
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("stdout is a protobuf RuntimeInfo");
    assert_eq!(info.name, "io.containerd.lazy.v2");
    assert!(!info.version.version.is_empty());
    assert_eq!(info.features.type_url, "types.containerd.io/opencontainers/runtime-spec/1/features/Features");
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    assert_eq!(features["linux"]["cgroup"]["v2"], true);
    // The options containerd passes are echoed back (as the runc shim does).
    let opts =
        Any { type_url: "runtimeoptions.v1.Options".into(), value: vec![0x12, 2, b'/', b'c'], ..Default::default() };
    let out = run(&opts.write_to_bytes().unwrap());
    assert!(out.status.success());
    assert_eq!(RuntimeInfo::parse_from_bytes(&out.stdout).unwrap().options.as_ref(), Some(&opts));
}

/// containerd >= 2.3's `containerd.runtime.bootstrap.v1.BootstrapParams`, encoded as 2.3 writes it:
/// instance_id 1, namespace 2, log_level 3, containerd_version 4, ttrpc address 5, grpc address 6,
/// containerd_binary 7, extensions 8 (each `Extension { Any value = 1 }`, here the runtime options).
fn bootstrap_params(s: &DirectShim, id: &str, options: &Any) -> Vec<u8> {
    let mut ext = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut ext);
        o.write_bytes(1, &options.write_to_bytes().unwrap()).unwrap();
        o.flush().unwrap();
    }
    let mut out = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut out);
        o.write_string(1, id).unwrap();
        o.write_string(2, s.namespace()).unwrap();
        o.write_int32(3, -4).unwrap();
        o.write_string(4, "2.3.0").unwrap();
        o.write_string(5, &s.path("containerd.sock.ttrpc").display().to_string()).unwrap();
        o.write_string(6, &s.path("containerd.sock").display().to_string()).unwrap();
        o.write_string(7, "/usr/bin/containerd").unwrap();
        o.write_bytes(8, &ext).unwrap();
        o.flush().unwrap();
    }
    out
}

#[test]
fn start_with_containerd_2_3_bootstrap_params_prints_a_served_address() {
    let Some(mut s) = DirectShim::new("start_with_containerd_2_3_bootstrap_params_prints_a_served_address") else {
        return;
    };
    let spec = go_client_spec(&s.cgroups_path("b1"), &["sh", "-c", "echo booted"], false);
    s.write_bundle("b1", &spec).unwrap();
    let opts = any_of("containerd.runc.v1.Options", &RuncOptions { binary_name: "runc".into(), ..Default::default() });
    let printed = s.run_start("b1", &bootstrap_params(&s, "b1", &opts)).unwrap();
    // 2.3 tries the reply as a protobuf BootstrapResult first, then JSON, then a plain address: the plain
    // address must not parse as a protobuf message, or 2.3 would take garbage for the address.
    assert!(
        containerd_shim_protos::protobuf::well_known_types::empty::Empty::parse_from_bytes(printed.as_bytes()).is_err(),
        "{printed:?} would be taken as a protobuf BootstrapResult"
    );
    assert!(printed.starts_with("unix:///") && !printed.contains('\n'), "only the address is printed: {printed:?}");
    s.connect(&printed).unwrap();
    let out = s.capture("b1.out").unwrap();
    s.create("b1", false, Some(&out), Some(opts)).unwrap();
    s.start_task("b1", "").unwrap();
    assert_eq!(s.wait("b1", "", Duration::from_secs(10)).unwrap().exit_status, 0);
    assert_eq!(out.wait_for("booted", Duration::from_secs(5)).trim(), "booted");
    s.delete("b1").unwrap();
    assert_cgroup_removed(&s, "b1");
}
