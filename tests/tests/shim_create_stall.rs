//! One shim serves a whole pod: a container whose Create is stuck on its lazy image (the registry
//! accepts connections and never answers) must not stall its siblings. While that Create waits,
//! State, Kill and ExecProcess of a running sibling answer within 200 ms, a second Create of the
//! same id fails with a clear error, and once the stuck Create fails it has left no mount, no
//! cgroup and no process behind; the id can then be created again.
//!
//! Driven over ttrpc as containerd drives it (harness::shim_direct), against the real shim binary,
//! docker-registry and `lazyctl convert`.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{CreateTaskRequest, Mount};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedOutputStream;
use harness::containerd::busybox_image;
use harness::registry::Registry;
use harness::scenario::{publish_and_convert, VFS_PREREQS};
use harness::shim_direct::{go_client_spec, DirectShim};
use harness::{cleanup, lazyctl, prerequisites_met};

const SIGKILL: u32 = 9;
const SIGCONT: u32 = 18;
/// What the issue asks of a sibling's calls while another container of the pod is being created.
const SIBLING_LIMIT: Duration = Duration::from_millis(200);

/// A TCP server that accepts every connection and never says a word: a registry that hangs.
struct Blackhole {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the blackhole registry");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                // Read and drop what clients send, so their writes never block on a full buffer.
                for c in &mut held {
                    let _ = c.set_nonblocking(true);
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                }
            }
        });
        Blackhole { port, stop }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// runtimeoptions.v1.Options { config_path } as CRI and `ctr --runtime-config-path` send it.
fn config_path_option(path: &Path) -> Any {
    let mut value = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(2, &path.display().to_string()).unwrap();
        out.flush().unwrap();
    }
    Any { type_url: "runtimeoptions.v1.Options".into(), value, ..Default::default() }
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Children of `parent` (from /proc/PID/stat).
fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// A shim with a lazy image whose index points at a registry that never answers.
struct Setup {
    s: DirectShim,
    _registry: Registry,
    _blackhole: Blackhole,
    /// Create of container "stuck", whose prestart hook reads /etc/passwd from the lazy rootfs.
    request: CreateTaskRequest,
    bundle: PathBuf,
    /// A string in the hook's command line.
    hook: String,
    deadline_secs: u64,
}

fn setup(test: &str) -> Option<Setup> {
    if !prerequisites_met(test, VFS_PREREQS) {
        return None;
    }
    let mut s = DirectShim::new(test)?;
    let registry = Registry::start().expect("starting docker-registry");
    let published = publish_and_convert(&registry, &busybox_image().unwrap(), "stall", &[]).expect("publish + convert");
    let mut index = lazyctl::fetch_index(&published.lazy).expect("the lazy image's index");
    let blackhole = Blackhole::start();
    assert!(index.source.starts_with(&registry.host()), "index source {:?}", index.source);
    index.source = index.source.replacen(&registry.host(), &format!("127.0.0.1:{}", blackhole.port), 1);
    let stub = s.path("stub");
    std::fs::create_dir_all(stub.join(".lazy")).unwrap();
    std::fs::write(stub.join(vfs::index::INDEX_PATH), index.encode()).unwrap();
    let config = s.path("shim.toml");
    let deadline_secs = 6;
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = \"{}\"\n[fetch]\nprefetch = \"none\"\nconnect_timeout_secs = 1\nrequest_timeout_secs = 2\ndeadline_secs = {deadline_secs}\n",
            s.path("cache").display()
        ),
    )
    .unwrap();

    // The prestart hook reads /etc/passwd from the lazy rootfs, whose chunk must come from the
    // hanging registry (up to the fetch deadline, then EIO: the hook fails, and so does Create).
    let bundle = s.bundle("stuck");
    let passwd = bundle.join("rootfs/etc/passwd");
    let mut spec = go_client_spec(&s.cgroups_path("stuck"), &["sh"], false);
    spec["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/busybox", "args": ["busybox", "cat", passwd]}]});
    s.write_spec("stuck", &spec).unwrap();
    let request = CreateTaskRequest {
        id: "stuck".into(),
        bundle: bundle.display().to_string(),
        rootfs: vec![Mount {
            type_: "bind".into(),
            source: stub.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
            ..Default::default()
        }],
        options: Some(config_path_option(&config)).into(),
        ..Default::default()
    };
    let hook = passwd.display().to_string();
    Some(Setup { s, _registry: registry, _blackhole: blackhole, request, bundle, hook, deadline_secs })
}

impl Setup {
    /// Waits until the Create sits in the stalled read (the lazy mount is up, the hook runs).
    fn wait_until_stuck(&self) {
        let lazy_mount = self.bundle.join("lazy");
        assert!(
            self.s.wait_until(Duration::from_secs(30), |_| cleanup::is_mounted(&lazy_mount)
                && !processes_with(&self.hook).is_empty()),
            "the stuck Create never reached its hook reading the lazy rootfs; shim log:\n{}",
            self.s.log()
        );
    }

    /// No mount, FUSE connection, cgroup or hook process of container "stuck" is left.
    fn assert_nothing_left(&self) {
        let mounts = cleanup::mounts_under(&self.bundle);
        assert!(mounts.is_empty(), "mounts left by the failed Create: {mounts:?}");
        // This test's own lazy mount only: the other test of this file (run alongside) also has a
        // container named "stuck".
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let bundle = self.bundle.display().to_string();
        let left: Vec<&str> = mountinfo.lines().filter(|l| l.contains("lazy:stuck") && l.contains(&bundle)).collect();
        assert!(left.is_empty(), "a lazy FUSE mount of the failed Create is left: {left:?}");
        let cgroup = self.s.cgroup_dir("stuck");
        assert!(!cgroup.exists(), "cgroup {} left by the failed Create", cgroup.display());
        assert!(
            self.s.wait_until(Duration::from_secs(5), |_| processes_with(&self.hook).is_empty()),
            "the hook process is left"
        );
    }
}

#[test]
fn a_create_stuck_on_a_hanging_registry_stalls_no_sibling_and_leaves_nothing_behind() {
    let Some(mut t) = setup("a_create_stuck_on_a_hanging_registry_stalls_no_sibling_and_leaves_nothing_behind") else {
        return;
    };

    // The sibling: a plain container of the same shim, running.
    let spec = go_client_spec(&t.s.cgroups_path("sib"), &["sleep", "1000"], false);
    t.s.write_bundle("sib", &spec).unwrap();
    t.s.start("sib", b"").unwrap();
    t.s.create("sib", false, None, None).unwrap();
    t.s.start_task("sib", "").unwrap();
    let children_before = children_of(t.s.shim_pid());

    let create_sent = Instant::now();
    let stuck = t.s.spawn_create(t.request.clone());
    t.wait_until_stuck();
    let s = &t.s;

    // The sibling answers at once, again and again, while the Create is stuck.
    let capture = s.capture("sib-exec.out").unwrap();
    let mut rounds = 0;
    let mut worst = Duration::ZERO;
    while create_sent.elapsed() < Duration::from_secs(t.deadline_secs - 2) && !stuck.is_finished() {
        let (state, t_state) = timed(|| s.state("sib", ""));
        let state = state.expect("State of the sibling");
        assert_eq!(state.status, containerd_shim_protos::api::Status::RUNNING.into(), "{state:?}");
        let (kill, t_kill) = timed(|| s.kill("sib", SIGCONT, false));
        kill.expect("Kill (SIGCONT) of the sibling");
        let exec_id = format!("e{rounds}");
        let (exec, t_exec) = timed(|| s.exec("sib", &exec_id, &["echo", "ok"], false, &capture));
        exec.expect("ExecProcess in the sibling");
        for (what, took) in [("State", t_state), ("Kill", t_kill), ("ExecProcess", t_exec)] {
            assert!(
                took < SIBLING_LIMIT,
                "{what} of the sibling took {took:?} while another Create was stuck; shim log:\n{}",
                s.log()
            );
            worst = worst.max(took);
        }
        assert!(!stuck.is_finished(), "the Create finished during the measurement: it was not stuck");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rounds >= 3, "only {rounds} rounds of sibling calls while the Create was stuck");
    eprintln!("{rounds} rounds of State/Kill/ExecProcess on the sibling during the stuck Create: worst {worst:?}");

    // The id being created: a second Create and a State fail cleanly, at once.
    let (again, took) = timed(|| s.create_with(&t.request));
    let again = format!("{:#}", again.expect_err("a second Create of an id being created"));
    assert!(again.contains("FAILED_PRECONDITION") && again.contains("still being created"), "{again}");
    assert!(took < SIBLING_LIMIT, "the second Create took {took:?}");
    let state = format!("{:#}", s.state("stuck", "").expect_err("State of an id being created"));
    assert!(state.contains("still being created"), "{state}");

    // An exec started in the sibling runs.
    s.start_task("sib", "e0").unwrap();
    assert!(capture.wait_for("ok", Duration::from_secs(10)).contains("ok"), "exec output: {:?}", capture.text());

    // The stuck Create fails when the fetch deadline passes, and leaves nothing behind.
    let err = format!("{:#}", s.join(stuck).expect_err("the Create behind a hanging registry"));
    assert!(err.contains("prestart") && err.contains("/bin/busybox"), "{err}");
    t.assert_nothing_left();
    assert!(
        s.wait_until(Duration::from_secs(5), |s| children_of(s.shim_pid()).iter().all(|p| children_before.contains(p))),
        "processes of the failed Create are left: shim children {:?} (before: {children_before:?})",
        children_of(s.shim_pid())
    );

    // The id is free again: a Create that reads no file content completes, and Delete cleans up.
    let mut spec = go_client_spec(&s.cgroups_path("stuck"), &["sh"], false);
    spec["process"]["env"].as_array_mut().unwrap().push("HOME=/root".into());
    std::fs::write(t.bundle.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let created = s.create_with(&t.request).expect("Create of the freed id");
    assert!(created.pid > 0);
    assert!(cleanup::is_mounted(&t.bundle.join("lazy")));
    s.kill("stuck", SIGKILL, false).unwrap();
    s.delete("stuck").unwrap();
    t.assert_nothing_left();

    s.kill("sib", SIGKILL, false).unwrap();
    s.wait("sib", "", Duration::from_secs(10)).unwrap();
    s.delete("sib").unwrap();
}

/// containerd's cleanup after a shim died in the middle of Create (`ctr task delete` of a task whose
/// shim is gone runs the shim's `delete` action): no mount, FUSE connection, cgroup or process of
/// that container is left.
#[test]
fn shim_killed_in_the_middle_of_create_leaves_nothing_after_shim_delete() {
    let Some(mut t) = setup("shim_killed_in_the_middle_of_create_leaves_nothing_after_shim_delete") else {
        return;
    };
    t.s.start("stuck", b"").unwrap();
    let stuck = t.s.spawn_create(t.request.clone());
    t.wait_until_stuck();
    let s = &t.s;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.shim_pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    let err = format!("{:#}", s.join(stuck).expect_err("Create of a killed shim"));
    assert!(s.wait_until(Duration::from_secs(5), |s| !s.shim_alive()), "the shim survived SIGKILL");
    let stderr = s.run_delete("stuck").expect("the shim's delete action");
    t.assert_nothing_left();
    let helpers = processes_with(&format!("{} init", harness::bins::shim().display()));
    assert!(helpers.is_empty(), "launcher helpers left: {helpers:?} (Create error {err}; delete said {stderr})");
}
