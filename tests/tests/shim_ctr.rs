//! End-to-end: containerd (1.6.20, 1.7.24 and 2.1.9) + ctr drive `containerd-shim-lazy-v2` (runtime io.containerd.lazy.v2)
//! on a plain busybox OCI image pushed to a local docker-registry. Each test has its own registry,
//! containerd and namespace, and checks that nothing (shim process, mount, cgroup) is left behind.

use std::time::Duration;

use harness::containerd::RUNTIME;
use harness::{prerequisites_met, wait_for, Prereq};

use harness::containerd::{busybox_env_on as setup, BusyboxEnv as Env, Version};

/// Each scenario runs on containerd 1.6.20 (Debian 12), 1.7.24 (trixie) and 2.1.9 (sid): the plain
/// test name is 1.6, `_on_1_7` / `_on_2_1` the newer ones.
macro_rules! on_every_containerd {
    ($body:ident: $v16:ident, $v17:ident, $v21:ident) => {
        #[test]
        fn $v16() {
            $body(stringify!($v16), Version::V1_6)
        }
        #[test]
        fn $v17() {
            $body(stringify!($v17), Version::V1_7)
        }
        #[test]
        fn $v21() {
            $body(stringify!($v21), Version::V2_1)
        }
    };
}

/// After every container is deleted: the shim exits and no mount or cgroup of ours remains.
fn assert_clean(env: &Env) {
    wait_for("every shim process has exited", Duration::from_secs(15), || env.ctrd.shim_pids().is_empty());
    assert_eq!(env.ctrd.mounts(), Vec::<std::path::PathBuf>::new(), "mounts left behind");
    assert_eq!(env.ctrd.leftover_cgroups(), Vec::<std::path::PathBuf>::new(), "cgroups left behind");
}

fn task_status(env: &Env, id: &str) -> String {
    let out = env.ctrd.ctr(&["task", "ls"]);
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

fn task_pid(env: &Env, id: &str) -> i32 {
    let out = env.ctrd.ctr(&["task", "ls"]);
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

on_every_containerd!(shim_run_rm_prints_output_and_exit_code_body: shim_run_rm_prints_output_and_exit_code, shim_run_rm_prints_output_and_exit_code_on_1_7, shim_run_rm_prints_output_and_exit_code_on_2_1);
fn shim_run_rm_prints_output_and_exit_code_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let out = env.ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, &env.image, "hi", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(out.code, 3, "ctr run exit code; output:\n{}\ncontainerd log:\n{}", out.all(), env.ctrd.log());
    assert_eq!(out.stdout, "hi\n", "stdout; stderr: {}", out.stderr);
    // Output of a process that exits at once is not lost, 20 times in a row.
    for i in 0..20 {
        let id = format!("quick{i}");
        let out = env.ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, &env.image, &id, "echo", "quick"]);
        assert_eq!((out.code, out.stdout.as_str()), (0, "quick\n"), "run {i}: {}", out.all());
    }
    assert_clean(&env);
}

on_every_containerd!(shim_detached_exec_ps_pause_kill_metrics_delete_body: shim_detached_exec_ps_pause_kill_metrics_delete, shim_detached_exec_ps_pause_kill_metrics_delete_on_1_7, shim_detached_exec_ps_pause_kill_metrics_delete_on_2_1);
fn shim_detached_exec_ps_pause_kill_metrics_delete_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &env.image, "d1", "sleep", "1000"]).unwrap();
    assert_eq!(task_status(&env, "d1"), "RUNNING");
    let init = task_pid(&env, "d1");
    assert!(init > 0);

    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo from-exec; exit 5"]);
    assert_eq!((out.code, out.stdout.as_str()), (5, "from-exec\n"), "{}", out.all());

    c.ctr_ok(&["task", "exec", "-d", "--exec-id", "bg", "d1", "sleep", "999"]).unwrap();
    let ps = c.ctr_ok(&["task", "ps", "d1"]).unwrap();
    let pids: Vec<i32> = ps.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert!(pids.contains(&init), "ctr task ps lists the init pid {init}: {ps}");
    assert_eq!(pids.len(), 2, "init and the background exec: {ps}");

    // Kill one exec process.
    c.ctr_ok(&["task", "kill", "--exec-id", "bg", "-s", "SIGKILL", "d1"]).unwrap();
    wait_for("the killed exec is gone from ps", Duration::from_secs(10), || {
        c.ctr_ok(&["task", "ps", "d1"]).unwrap().lines().skip(1).count() == 1
    });

    c.ctr_ok(&["task", "pause", "d1"]).unwrap();
    assert_eq!(task_status(&env, "d1"), "PAUSED");
    let state = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(state.lines().any(|l| l.starts_with("State:") && l.contains("S")), "{state}");
    c.ctr_ok(&["task", "resume", "d1"]).unwrap();
    assert_eq!(task_status(&env, "d1"), "RUNNING");

    let metrics = c.ctr(&["task", "metrics", "d1"]);
    assert_eq!(metrics.code, 0, "ctr task metrics: {}", metrics.all());
    assert!(!metrics.stdout.trim().is_empty());

    c.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", "d1"]).unwrap();
    wait_for("d1 stopped", Duration::from_secs(10), || task_status(&env, "d1") == "STOPPED");
    c.ctr_ok(&["task", "delete", "d1"]).unwrap();
    c.ctr_ok(&["container", "rm", "d1"]).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{init}")).exists(), "init {init} still exists");
    assert_clean(&env);
}

/// ctr sends the terminal size (ResizePty) only AFTER Start, with runc too: wait until the size is
/// set (busybox `stty size` fails while it is 0x0), then print it.
const SIZE_PROBE: &str =
    "for i in 1 2 3 4 5 6 7 8 9 10; do stty size 2>/dev/null | grep -q . && break; sleep 0.2; done; stty size; tty; exit 4";

on_every_containerd!(shim_terminal_mode_with_size_body: shim_terminal_mode_with_size, shim_terminal_mode_with_size_on_1_7, shim_terminal_mode_with_size_on_2_1);
fn shim_terminal_mode_with_size_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    if !prerequisites_met(test, &[Prereq::Tool("script")]) {
        return;
    }
    // `script` gives ctr a pty; stty sets its size, which ctr sends as ResizePty.
    let ctr =
        env.ctrd.ctr_command(&["run", "--rm", "-t", "--runtime", RUNTIME, &env.image, "tty1", "sh", "-c", SIZE_PROBE]);
    let cmdline: Vec<String> = std::iter::once(ctr.get_program())
        .chain(ctr.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    // script's stdin stays open (a pipe we hold): on EOF script would feed its pty an EOF that
    // races with the container's first reads.
    let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("stty rows 33 cols 101; {}", cmdline.join(" ")), "/dev/null"])
        .stdin(std::process::Stdio::from(stdin_r))
        .output()
        .unwrap();
    drop(stdin_w);
    let text = String::from_utf8_lossy(&out.stdout);
    log::info!("terminal output: {text:?}");
    let log: Vec<String> =
        env.ctrd.log().lines().filter(|l| l.contains("tty1") || l.contains("esize")).map(String::from).collect();
    assert!(
        text.contains("33 101"),
        "terminal size inside the container: {text:?}\ncontainerd log:\n{}",
        log.join("\n")
    );
    assert!(text.contains("/dev/pts/"), "stdin is a pty: {text:?}");
    assert_eq!(out.status.code(), Some(4), "exit code through the terminal: {text:?}");
    assert_clean(&env);
}

on_every_containerd!(shim_pod_group_shares_one_shim_body: shim_pod_group_shares_one_shim, shim_pod_group_shares_one_shim_on_1_7, shim_pod_group_shares_one_shim_on_2_1);
fn shim_pod_group_shares_one_shim_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;
    for id in ["p1", "p2"] {
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-x",
            &env.image,
            id,
            "sleep",
            "1000",
        ])
        .unwrap();
    }
    assert_eq!(c.shim_pids().len(), 1, "one shim serves both containers of the pod");
    let shim = c.shim_pids()[0];
    for id in ["p1", "p2"] {
        c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]).unwrap();
        wait_for("stopped", Duration::from_secs(10), || task_status(&env, id) == "STOPPED");
        c.ctr_ok(&["task", "delete", id]).unwrap();
        c.ctr_ok(&["container", "rm", id]).unwrap();
        if id == "p1" {
            assert_eq!(c.shim_pids(), vec![shim], "the shim stays while p2 lives");
        }
    }
    assert_clean(&env);
}

on_every_containerd!(shim_killed_then_task_delete_leaves_nothing_body: shim_killed_then_task_delete_leaves_nothing, shim_killed_then_task_delete_leaves_nothing_on_1_7, shim_killed_then_task_delete_leaves_nothing_on_2_1);
fn shim_killed_then_task_delete_leaves_nothing_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &env.image, "k1", "sleep", "1000"]).unwrap();
    let init = task_pid(&env, "k1");
    let address = std::fs::read_to_string(c.bundle("k1").join("address")).unwrap();
    let socket = std::path::PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for("the shim is gone", Duration::from_secs(10), || c.shim_pids().is_empty());
    let _ = c.ctr(&["task", "delete", "k1"]);
    c.ctr_ok(&["container", "rm", "k1"]).unwrap();
    wait_for("the container's init is gone", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{init}")).exists()
    });
    assert!(!socket.exists(), "the dead shim's socket {} was removed", socket.display());
    assert_clean(&env);
}

on_every_containerd!(shim_bad_input_gives_clear_errors_and_leaks_nothing_body: shim_bad_input_gives_clear_errors_and_leaks_nothing, shim_bad_input_gives_clear_errors_and_leaks_nothing_on_1_7, shim_bad_input_gives_clear_errors_and_leaks_nothing_on_2_1);
fn shim_bad_input_gives_clear_errors_and_leaks_nothing_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;

    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &env.image, "b1", "/no/such/binary"]);
    assert_ne!(out.code, 0);
    assert!(out.all().contains("/no/such/binary"), "names the missing executable: {}", out.all());
    let _ = c.ctr(&["container", "rm", "b1"]);

    let cfg = c.scratch("cfg").join("missing.toml");
    let cfg = cfg.display().to_string();
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--runtime-config-path", &cfg, &env.image, "b2", "true"]);
    assert_ne!(out.code, 0);
    assert!(out.all().contains(&format!("config {cfg}")) && out.all().contains("fix or remove it"), "{}", out.all());
    let _ = c.ctr(&["container", "rm", "b2"]);

    let bad = c.scratch("cfg").join("bad.toml");
    std::fs::write(&bad, "[fetch]\nconcurency = 3\n").unwrap();
    let bad = bad.display().to_string();
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--runtime-config-path", &bad, &env.image, "b3", "true"]);
    assert_ne!(out.code, 0);
    assert!(out.all().contains("concurency"), "names the bad key: {}", out.all());
    let _ = c.ctr(&["container", "rm", "b3"]);

    // An invalid spec field: a systemd-style cgroupsPath.
    let out =
        c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--cgroup", "system.slice:lazy:b4", &env.image, "b4", "true"]);
    assert_ne!(out.code, 0);
    assert!(out.all().contains("system.slice:lazy:b4"), "names the bad cgroupsPath: {}", out.all());
    let _ = c.ctr(&["container", "rm", "b4"]);

    let left = c.ctr_ok(&["container", "ls", "-q"]).unwrap();
    assert_eq!(left.trim(), "", "containers left");
    assert_clean(&env);
}

on_every_containerd!(shim_runc_parity_body: shim_runc_parity, shim_runc_parity_on_1_7, shim_runc_parity_on_2_1);
fn shim_runc_parity_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    if !prerequisites_met(test, &[Prereq::Tool("runc"), Prereq::Tool("containerd-shim-runc-v2")]) {
        return;
    }
    let probes: &[(&str, &str)] = &[
        ("id", "id"),
        ("caps", "grep ^Cap /proc/self/status"),
        ("mount points", "awk '{print $5}' /proc/self/mountinfo | sort"),
        ("ls -l /dev", "ls -l /dev | awk '{$6=\"\"; $7=\"\"; $8=\"\"; print}'"),
        ("hostname", "hostname"),
        ("env", "env | sort"),
        ("pwd", "pwd"),
        ("ulimit -a", "ulimit -a"),
    ];
    let mut diffs = Vec::new();
    for (i, (name, script)) in probes.iter().enumerate() {
        let run = |runtime: &str| {
            // Distinct ids: runc's shim of the previous run may still be exiting under the same id.
            let id = format!("parity-{i}-{}", if runtime == RUNTIME { "lazy" } else { "runc" });
            let out = env.ctrd.ctr(&["run", "--rm", "--runtime", runtime, &env.image, &id, "sh", "-c", script]);
            assert_eq!(out.code, 0, "{runtime} {name}: {}", out.all());
            out.stdout
        };
        let runc = run("io.containerd.runc.v2");
        let ours = run(RUNTIME);
        if runc != ours {
            diffs.push(format!("--- {name} (runc)\n{runc}+++ {name} (lazy)\n{ours}"));
        }
    }
    assert!(diffs.is_empty(), "differences from runc:\n{}", diffs.join("\n"));
    assert_clean(&env);
}

on_every_containerd!(shim_log_uris_file_and_binary_body: shim_log_uris_file_and_binary, shim_log_uris_file_and_binary_on_1_7, shim_log_uris_file_and_binary_on_2_1);
fn shim_log_uris_file_and_binary_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;
    let dir = c.scratch("logs");

    let file = dir.join("c.log");
    let uri = format!("file://{}", file.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        &uri,
        &env.image,
        "f1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 2",
    ]);
    assert_eq!(out.code, 2, "{}", out.all());
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["err", "out"], "file:// log: {text:?}");

    // A logging binary gets stdout on fd 3, stderr on fd 4, and closes fd 5 when ready.
    let logger = dir.join("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\ncat <&3 > {d}/stdout & cat <&4 > {d}/stderr &\nexec 5>&-\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID $*\" > {d}/args\nwait\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?tag=x", logger.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        &uri,
        &env.image,
        "b1",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    wait_for("the logger wrote both streams", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("stdout")).is_ok_and(|s| s == "out\n")
            && std::fs::read_to_string(dir.join("stderr")).is_ok_and(|s| s == "err\n")
    });
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    assert_eq!(args.trim(), format!("{}/b1 tag x", c.namespace()));
    assert_clean(&env);
}

/// A tmux server on a private socket, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("running tmux")
    }
    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "s"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

on_every_containerd!(shim_terminal_live_resize_and_exec_tty_body: shim_terminal_live_resize_and_exec_tty, shim_terminal_live_resize_and_exec_tty_on_1_7, shim_terminal_live_resize_and_exec_tty_on_2_1);
fn shim_terminal_live_resize_and_exec_tty_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    if !prerequisites_met(test, &[Prereq::Tool("tmux")]) {
        return;
    }
    let c = &env.ctrd;
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &env.image, "t2", "sleep", "1000"]).unwrap();
    // An interactive exec with a terminal inside tmux; then tmux resizes its window.
    let ctr = c.ctr_command(&["task", "exec", "-t", "--exec-id", "sh1", "t2", "sh"]);
    let cmdline: Vec<String> = std::iter::once(ctr.get_program())
        .chain(ctr.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    // One tmux server per test: the same scenario runs on every containerd version at once.
    let tmux = Tmux { socket: format!("lazy-test-{}-{}", std::process::id(), c.namespace()) };
    let out = tmux.cmd(&["new-session", "-d", "-s", "s", "-x", "80", "-y", "24", &cmdline.join(" ")]);
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    tmux.cmd(&["send-keys", "-t", "s", "stty size", "Enter"]);
    wait_for("the shell prints 24 80", Duration::from_secs(10), || tmux.pane().contains("24 80"));
    tmux.cmd(&["resize-window", "-t", "s", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.cmd(&["send-keys", "-t", "s", "stty size", "Enter"]);
    wait_for("the shell prints 40 120 after the resize", Duration::from_secs(10), || tmux.pane().contains("40 120"));
    tmux.cmd(&["send-keys", "-t", "s", "exit", "Enter"]);
    drop(tmux);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "t2"]).unwrap();
    wait_for("t2 stopped", Duration::from_secs(10), || task_status(&env, "t2") == "STOPPED");
    c.ctr_ok(&["task", "delete", "t2"]).unwrap();
    c.ctr_ok(&["container", "rm", "t2"]).unwrap();
    assert_clean(&env);
}

on_every_containerd!(shim_events_in_containerd_order_body: shim_events_in_containerd_order, shim_events_in_containerd_order_on_1_7, shim_events_in_containerd_order_on_2_1);
fn shim_events_in_containerd_order_body(test: &str, version: Version) {
    let Some(env) = setup(test, version) else { return };
    let c = &env.ctrd;
    let mut events = c.ctr_command(&["events"]);
    events.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = harness::cleanup::ChildGuard::new("ctr events", events.spawn().unwrap());
    let stdout = child.take_stdout().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &env.image, "ev", "sleep", "1000"]).unwrap();
    c.ctr_ok(&["task", "exec", "--exec-id", "x1", "ev", "true"]).unwrap();
    c.ctr_ok(&["task", "pause", "ev"]).unwrap();
    c.ctr_ok(&["task", "resume", "ev"]).unwrap();
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "ev"]).unwrap();
    wait_for("ev stopped", Duration::from_secs(10), || task_status(&env, "ev") == "STOPPED");
    c.ctr_ok(&["task", "delete", "ev"]).unwrap();
    c.ctr_ok(&["container", "rm", "ev"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(child);
    let topics: Vec<String> = rx
        .try_iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")).map(String::from))
        .collect();
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit", // the exec
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit", // the init
        "/tasks/delete",
    ];
    assert_eq!(topics, want, "task events as ctr events saw them");
    assert_clean(&env);
}

/// containerd 2.x asks the shim binary itself (`<shim> -info`) what runtime it is; `ctr plugins
/// inspect-runtime` goes through containerd's introspection service to that call.
#[test]
fn shim_info_through_containerd_2_1_introspection() {
    let Some(env) = setup("shim_info_through_containerd_2_1_introspection", Version::V2_1) else { return };
    let out = env.ctrd.ctr(&["plugins", "inspect-runtime", "--runtime", RUNTIME]);
    assert_eq!(out.code, 0, "ctr plugins inspect-runtime: {}\ncontainerd log:\n{}", out.all(), env.ctrd.log());
    log::info!("inspect-runtime: {}", out.stdout);
    assert!(out.stdout.contains("io.containerd.lazy.v2"), "names the runtime: {}", out.stdout);
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "shows the shim's version: {}", out.stdout);
    assert!(out.stdout.contains("CAP_SYS_ADMIN"), "shows the OCI features: {}", out.stdout);
}

/// The check every containerd test gets at teardown (harness::containerd's Drop) can fail: a cgroup under
/// the namespace that belongs to no task fails the test, after everything was cleaned up.
#[test]
fn teardown_fails_when_a_deleted_containers_cgroup_remains() {
    let Some(env) = setup("teardown_fails_when_a_deleted_containers_cgroup_remains", Version::V1_6) else { return };
    let root = if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let ghost = std::path::Path::new(root).join(env.ctrd.namespace()).join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    assert_eq!(env.ctrd.cgroups_of_deleted_containers(), vec![ghost.clone()]);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(env)));
    assert!(dropped.is_err(), "the teardown must fail the test when {} remains", ghost.display());
    assert!(!ghost.exists(), "and still remove it");
}
