//! Faults on a node running lazy containers (issue 12), against containerd 1.6, docker-registry and
//! the real shim, with the registry behind an emulated link (harness::link):
//!
//! - the shim is SIGKILLed while `prefetch = "all"` streams the image over a slow link: containerd's
//!   cleanup (the shim's `delete` action) and `ctr task delete` leave no mount, FUSE connection,
//!   cgroup or process, and no lock in the node cache survives (the lock files themselves are kept
//!   by design: empty, one per data blob, and a fresh lock on each succeeds at once);
//! - containerd is SIGKILLed and restarted while lazy containers run and while another one's
//!   Create is stuck reading its lazy rootfs behind a cut link: afterwards every running container
//!   is RUNNING, exec works in each and reads the right bytes, the stuck one runs once the link is
//!   back (or fails cleanly), and deleting everything leaves nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::cleanup::is_mounted;
use harness::containerd::{Containerd, StartOptions, RUNTIME};
use harness::link::{Link, Shape};
use harness::load::{self, FuseCtl, LoadImage};
use harness::registry::Registry;
use harness::scenario::wait_until;
use harness::{prerequisites_met, Prereq};

const PREREQS: &[Prereq] = &[
    Prereq::Root,
    Prereq::Fuse,
    Prereq::Tool("containerd"),
    Prereq::Tool("ctr"),
    Prereq::Tool("docker-registry"),
    Prereq::Tool("skopeo"),
];

/// A registry reached through a link, and a containerd.
struct Node {
    registry: Registry,
    link: Link,
    /// `127.0.0.1:PORT` of the link's route to the registry.
    via_link: String,
    ctrd: Containerd,
}

fn node(test: &str) -> Option<Node> {
    if !prerequisites_met(test, PREREQS) {
        return None;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    let link = Link::new(Shape::unshaped()).expect("starting the link emulator");
    let via_link = format!("127.0.0.1:{}", link.route(registry.port()).expect("a link route to the registry"));
    let ctrd = Containerd::start_with(&StartOptions::default()).expect("starting containerd");
    Some(Node { registry, link, via_link, ctrd })
}

/// A shim config in `dir` with its own node cache and extra `[fetch]` lines; returns (config, cache).
fn shim_config(ctrd: &Containerd, name: &str, fetch: &str) -> (PathBuf, PathBuf) {
    let dir = ctrd.scratch(name);
    let cache = dir.join("cache");
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[cache]\ndir = \"{}\"\n[fetch]\n{fetch}", cache.display())).unwrap();
    (path, cache)
}

/// `ctr run -d` of `image` as `id` with shim config `config`, logging to `log`, started and not waited for.
fn spawn_run(ctrd: &Containerd, image: &str, id: &str, config: &Path, log: &Path, cmd: &[&str]) -> std::process::Child {
    let uri = format!("file://{}", log.display());
    let config = config.display().to_string();
    let mut args =
        vec!["run", "-d", "--runtime", RUNTIME, "--runtime-config-path", &config, "--log-uri", &uri, image, id];
    args.extend(cmd);
    let mut c = ctrd.ctr_command(&args);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("spawning ctr run")
}

fn output_of(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().expect("waiting for ctr");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// What `ctr task delete` + `ctr container rm` leave of container `id`: shims, mounts, cgroups.
fn assert_nothing_left(ctrd: &Containerd, what: &str) {
    let left = load::leftovers(ctrd);
    let log: String = ctrd.log().lines().filter(|l| !l.contains("FUSE(")).collect::<Vec<_>>().join("\n");
    assert!(
        left.is_empty(),
        "{what}: left behind: {left:?}\ncontainerd log (tail, without FUSE traces):\n{}",
        load::tail(&log, 60)
    );
}

#[test]
fn shim_killed_in_the_middle_of_prefetch_leaves_no_mount_cgroup_process_fuse_connection_or_lock() {
    let Some(n) = node("shim_killed_in_the_middle_of_prefetch_leaves_no_mount_cgroup_process_fuse_connection_or_lock")
    else {
        return;
    };
    let image = load::publish(&n.registry, &n.via_link, "prefetch", 64 << 20).expect("publishing the image");
    n.ctrd.pull(&image.lazy).expect("pulling the lazy stub");
    let (config, cache) = shim_config(&n.ctrd, "prefetch", "prefetch = \"all\"\n");
    // 40 Mbit/s: the 64 MiB image takes about 13 s to stream, so the kill lands in the middle.
    n.link.set_shape(Shape::new(Duration::from_millis(2), 40.0));

    let logs = n.ctrd.scratch("logs");
    let id = "pf";
    let (code, out) =
        output_of(spawn_run(&n.ctrd, &image.lazy, id, &config, &logs.join("pf.log"), &["sleep", "100000"]));
    assert_eq!(code, 0, "ctr run: {out}");
    let mut last = None;
    let streaming = wait_until(Duration::from_secs(60), || {
        last = load::stats_of(&n.ctrd, id).ok();
        last.as_ref().is_some_and(|s| s.prefetched_chunks >= 2)
    });
    assert!(streaming, "the prefetch did not start within 60 s: stats {last:?}\n{}", load::tail(&n.ctrd.log(), 30));
    let stats = last.unwrap();
    assert!(
        stats.bytes_fetched < image.blob_bytes / 2,
        "the prefetch was nearly done before the kill ({} of {} bytes): the link shape did not hold",
        stats.bytes_fetched,
        image.blob_bytes
    );

    // What the shim holds: its process, the container's process, a FUSE connection, a cgroup.
    let lazy = n.ctrd.bundle(id).join("lazy");
    let fusectl = FuseCtl::mount().expect("mounting fusectl");
    let connection = load::fuse_connection(&lazy).expect("the lazy mount's FUSE connection");
    assert!(fusectl.exists(connection), "FUSE connection {connection} of {} not in fusectl", lazy.display());
    let shims = n.ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim serves the container: {shims:?}");
    let tasks = load::tasks(&n.ctrd).expect("ctr task ls");
    let (task_pid, status) = tasks.get(id).cloned().expect("the task is listed");
    assert_eq!(status, "RUNNING");
    assert!(!load::cgroups_of(&n.ctrd, id).is_empty(), "the container has no cgroup under {}", n.ctrd.namespace());
    let locks_before = load::check_lock_files(&cache).expect("the node cache's lock files").0;
    assert!(!locks_before.is_empty(), "the prefetch holds no lock file under {}", cache.join("locks").display());

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || load::process_gone(shims[0])), "the shim survived SIGKILL");

    // What a user does next; containerd's own cleanup of the dead shim may have run first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = n.ctrd.ctr(&["task", "delete", id]);
        if out.code == 0 || out.all().contains("not found") {
            break;
        }
        assert!(Instant::now() < deadline, "ctr task delete {id} keeps failing: {}", out.all());
        std::thread::sleep(Duration::from_millis(200));
    }
    n.ctrd.ctr_ok(&["container", "rm", id]).expect("ctr container rm");

    assert_nothing_left(&n.ctrd, "after the shim was killed mid-prefetch and the task deleted");
    assert!(load::cgroups_of(&n.ctrd, id).is_empty(), "cgroups left: {:?}", load::cgroups_of(&n.ctrd, id));
    assert!(
        wait_until(Duration::from_secs(5), || load::process_gone(task_pid)),
        "the container's process {task_pid} is left"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !fusectl.exists(connection)),
        "FUSE connection {connection} (the killed shim's lazy mount) is still in fusectl"
    );
    let (locks, problems) = load::check_lock_files(&cache).expect("the node cache's lock files");
    assert!(problems.is_empty(), "locks in {} after the shim died: {problems:?}", cache.display());
    let blobs = n.registry.lazy_data_blobs("lazy/prefetch", "v1").unwrap().len();
    assert!(locks.len() <= blobs, "{} lock files for {blobs} data blobs: {locks:?}", locks.len());
    eprintln!(
        "killed the shim after {} of {} bytes prefetched; afterwards {} lock files, all free and empty",
        stats.bytes_fetched,
        image.blob_bytes,
        locks.len()
    );
}

/// Lazy containers running and hashing their image, one lazy container in the middle of Create.
const RUNNING: usize = 30;

#[test]
fn containerd_restart_while_lazy_containers_run_and_one_is_being_created() {
    let Some(mut n) = node("containerd_restart_while_lazy_containers_run_and_one_is_being_created") else { return };
    let image: LoadImage =
        load::publish(&n.registry, &n.registry.host(), "restart", 16 << 20).expect("publishing the image");
    // The container being created reads its image through the link, into a cache of its own (so
    // nothing it needs is there yet), and waits for the link far longer than the test.
    let slow = load::publish(&n.registry, &n.via_link, "slow", 1 << 20).expect("publishing the slow image");
    n.ctrd.pull(&image.lazy).expect("pulling the lazy stub");
    n.ctrd.pull(&slow.lazy).expect("pulling the slow lazy stub");
    let (config, _cache) = shim_config(&n.ctrd, "fast", "prefetch = \"none\"\n");
    let (slow_config, _) = shim_config(
        &n.ctrd,
        "slow",
        "prefetch = \"none\"\nconnect_timeout_secs = 1\nrequest_timeout_secs = 2\ndeadline_secs = 300\n",
    );

    let fleet =
        load::start_all(&n.ctrd, &image.lazy, &config, RUNNING, "r", &load::hash_then_sleep(), None).expect("starting");
    let digests = fleet.wait_digests(Duration::from_secs(180)).expect("every container hashes its file");
    let wrong: Vec<_> = digests.iter().filter(|(_, (_, d))| *d != image.digest).collect();
    assert!(wrong.is_empty(), "wrong digests (want {}): {wrong:?}", image.digest);

    // The Create of "stuck" reads /etc/passwd from its lazy rootfs (HOME for the process) behind a cut link.
    n.link.set_cut(true);
    let stuck_log = n.ctrd.scratch("logs-stuck").join("stuck.log");
    let mut run = spawn_run(
        &n.ctrd,
        &slow.lazy,
        "stuck",
        &slow_config,
        &stuck_log,
        &["sh", "-c", "echo started; exec sleep 100000"],
    );
    let stuck_lazy = n.ctrd.bundle("stuck").join("lazy");
    assert!(
        wait_until(Duration::from_secs(30), || is_mounted(&stuck_lazy)),
        "the Create of 'stuck' never mounted its lazy rootfs\n{}",
        load::tail(&n.ctrd.log(), 30)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        load::tasks(&n.ctrd).is_ok_and(|t| t.get("stuck").is_none_or(|(_, s)| s != "RUNNING")),
        "'stuck' is not stuck"
    );

    assert!(
        run.try_wait().unwrap().is_none(),
        "ctr run of 'stuck' returned before the restart: its Create was not stuck"
    );
    n.ctrd.kill_and_restart().expect("restarting containerd");
    let (code, out) = output_of(run);
    eprintln!("ctr run of 'stuck' across the restart exited {code}: {}", out.trim());
    n.link.set_cut(false);

    // Every running container is RUNNING again, and answers exec with the right bytes.
    let mut tasks = Default::default();
    let all_running = wait_until(Duration::from_secs(30), || {
        tasks = load::tasks(&n.ctrd).unwrap_or_default();
        fleet.ids.iter().all(|id| tasks.get(id).is_some_and(|(_, s)| s == "RUNNING"))
    });
    assert!(all_running, "after the restart: {tasks:?}\ncontainerd log (tail):\n{}", load::tail(&n.ctrd.log(), 40));
    for (i, id) in fleet.ids.iter().enumerate() {
        let exec = format!("x{i}");
        let out = n.ctrd.ctr(&["task", "exec", "--exec-id", &exec, id, "sha256sum", &format!("/{}", load::DATA_FILE)]);
        assert!(
            out.code == 0 && out.stdout.starts_with(&image.digest),
            "exec in {id} after the restart: exit {}, {:?} (want {})",
            out.code,
            out.all(),
            image.digest
        );
    }

    // The one being created: it runs once the link is back (started now if the restart left it
    // CREATED), or it is gone with nothing left.
    let mut state = None;
    wait_until(Duration::from_secs(60), || {
        state = load::tasks(&n.ctrd).ok().and_then(|t| t.get("stuck").map(|(_, s)| s.clone()));
        matches!(state.as_deref(), Some("RUNNING" | "CREATED" | "STOPPED"))
    });
    eprintln!("'stuck' after the restart: task {state:?}");
    if state.as_deref() == Some("CREATED") {
        // Its Create completed, but the `ctr run` that would have started it died with containerd:
        // a user deletes the task (nothing of it may stay) and starts it again.
        n.ctrd
            .ctr_ok(&["task", "delete", "--force", "stuck"])
            .expect("ctr task delete of the task the restart left CREATED");
        let bundle_mounts = harness::cleanup::mounts_under(&n.ctrd.bundle("stuck"));
        assert!(bundle_mounts.is_empty(), "mounts of the deleted CREATED task: {bundle_mounts:?}");
        assert!(load::cgroups_of(&n.ctrd, "stuck").is_empty(), "cgroups of the deleted CREATED task");
        let uri = format!("file://{}", stuck_log.display());
        n.ctrd.ctr_ok(&["task", "start", "-d", "--log-uri", &uri, "stuck"]).expect("starting 'stuck' again");
        state = Some("RUNNING".into());
    }
    if state.as_deref() == Some("RUNNING") {
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(&stuck_log)
                .unwrap_or_default()
                .contains("started")),
            "'stuck' is RUNNING but printed nothing: {:?}",
            std::fs::read_to_string(&stuck_log)
        );
    }

    let mut ids = fleet.ids.clone();
    ids.push("stuck".into());
    load::delete_all(&n.ctrd, &ids).expect("deleting every container");
    assert_nothing_left(&n.ctrd, "after the restart and deleting every container");
    assert!(
        load::cgroups_of(&n.ctrd, "stuck").is_empty(),
        "cgroups of 'stuck' left: {:?}",
        load::cgroups_of(&n.ctrd, "stuck")
    );
}
