//! `lazyctl optimize` (issue 8) against the real docker-registry: the workload runs in a sandbox
//! over a lazy mount of the converted image; the files it reads first become DST's prefetch list,
//! and their chunks are laid out contiguously, in that order, at the front of DST's first data blob.
//! Afterwards nothing is mounted and no sandbox process is left, also when the workload is stopped
//! at its ready line or cannot be started at all.

use std::time::{Duration, Instant};

use harness::containerd::busybox_image;
use harness::images::{self, Entry, Image, Layer};
use harness::lazyctl::{self, fetch_index, inspect_json, optimize, optimize_mounts, sandbox_helpers};
use harness::registry::Registry;
use harness::scenario::VFS_PREREQS;
use harness::{cleanup, prerequisites_met};
use vfs::index::Kind;

use harness::MIB;

/// busybox plus a layer of files in three directories (several 1 MiB chunks each) and noise.
fn image() -> Image {
    let mut image = busybox_image().expect("building the busybox image");
    let layer = Layer::new()
        .add(Entry::dir("a"))
        .add(Entry::random_file("a/noise.bin", 1, MIB))
        .add(Entry::random_file("a/x", 2, 2 * MIB + 300))
        .add(Entry::dir("b"))
        .add(Entry::random_file("b/y", 3, 100_000))
        .add(Entry::random_file("b/noise.bin", 4, 3 * MIB))
        .add(Entry::dir("c"))
        .add(Entry::random_file("c/z", 5, MIB + 5));
    image.layers.push(layer);
    image.env.push("GREETING=hello from the image".into());
    image
}

/// Pushes [`image`] as `src/opt:v1`; returns its reference.
fn publish(registry: &Registry) -> String {
    publish_with(registry, "v1", |_| {})
}

/// Pushes [`image`] as `src/opt:TAG` after `edit` changed its config's `config` object.
fn publish_with(registry: &Registry, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let layout = cleanup::temp_dir("layout-opt");
    image().write_layout(layout.path(), tag).expect("writing the layout");
    edit_config(layout.path(), edit);
    let src = registry.reference(&format!("src/opt:{tag}"));
    images::push(layout.path(), tag, &src).expect("pushing the source image");
    src
}

/// Rewrites the config of the single image in an OCI layout (new config and manifest blobs).
fn edit_config(layout: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use sha2::Digest as _;
    let blobs = layout.join("blobs/sha256");
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap()).unwrap()
    };
    let put = |v: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let hex = hex::encode(sha2::Sha256::digest(&bytes));
        std::fs::write(blobs.join(&hex), &bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    edit(&mut config["config"]);
    let (digest, size) = put(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = put(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Asserts DST's prefetch list is `want` and that its chunks, in that order, fill blob 0 from
/// offset 0 without a gap.
fn assert_hot_layout(dst: &str, want: &[&str]) {
    let index = fetch_index(dst).expect("DST's index");
    let paths: Vec<String> = index
        .prefetch
        .iter()
        .map(|&ino| {
            let (path, _) = index.walk().into_iter().find(|(_, i)| *i == ino).expect("a listed inode has a path");
            String::from_utf8_lossy(&path).into_owned()
        })
        .collect();
    assert_eq!(paths, want, "DST's prefetch list should be the files the workload read, in order");
    let mut end = 0u64;
    for (&ino, path) in index.prefetch.iter().zip(want) {
        let Kind::File { chunks, .. } = &index.inodes[ino as usize].kind else { panic!("{path} is not a file") };
        for (n, c) in chunks.iter().enumerate() {
            assert_eq!(
                (c.blob, c.offset),
                (0, end),
                "{path} chunk {n} should follow the previous listed chunk in blob 0"
            );
            end += c.compressed_len as u64;
        }
    }
    assert_eq!(index.blobs[0].size, end, "blob 0 should hold exactly the listed files");
    let summary = inspect_json(dst).expect("lazyctl inspect --json");
    assert_eq!(summary["prefetch_at_front"], true, "{summary}");
    assert_eq!(summary["prefetch_paths"], serde_json::json!(want), "{summary}");
}

/// The tests check that no optimize mount or sandbox process is left, which only means anything
/// while no other optimize runs: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn assert_nothing_left() {
    assert_eq!(optimize_mounts(), Vec::<String>::new(), "lazyctl optimize left mounts behind");
    assert_eq!(sandbox_helpers(), Vec::<u32>::new(), "lazyctl optimize left sandbox processes behind");
}

#[test]
fn optimize_lays_out_what_the_workload_reads_first() {
    harness::init_logging();
    let _turn = one_at_a_time();
    if !prerequisites_met("lazyctl_optimize", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let src = publish(&registry);
    // An unoptimized lazy image in DST's repository already holds every chunk: the hot set must be
    // written again at the front all the same.
    let plain = registry.reference("lazy/opt:plain");
    lazyctl::convert(&src, &plain, &[]).expect("lazyctl convert");
    let dst = registry.reference("lazy/opt:optimized");

    // `sh` by name: found through the image's PATH; $GREETING from the image's Env.
    let script = "cat /c/z >/dev/null; cat /a/x >/dev/null; cat /b/y >/dev/null; echo \"$GREETING\"; touch /written";
    let out = optimize(&src, &dst, &[], &["sh", "-c", script]).expect("running lazyctl optimize");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lazyctl optimize failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hello from the image"), "CMD's output is passed through with the image's Env:\n{stdout}");
    assert_hot_layout(&dst, &["/bin/busybox", "/c/z", "/a/x", "/b/y"]);
    assert!(stdout.contains("recorded 4 files"), "summary:\n{stdout}");
    assert!(stdout.contains(&format!("-> {dst}")), "summary names DST:\n{stdout}");
    assert_nothing_left();

    // The unlisted files are still there and reference the blobs DST's repository already had.
    let index = fetch_index(&dst).expect("DST's index");
    let noise = index.resolve(b"/b/noise.bin").expect("/b/noise.bin");
    let Kind::File { chunks, .. } = &index.inodes[noise as usize].kind else { panic!() };
    assert!(chunks.iter().all(|c| c.blob != 0), "an unread file is not in the hot blob");
}

#[test]
fn wait_for_stops_recording_at_the_ready_line() {
    harness::init_logging();
    let _turn = one_at_a_time();
    if !prerequisites_met("lazyctl_optimize", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let src = publish(&registry);
    let dst = registry.reference("lazy/opt:ready");
    // A "server": reads its files, says it is ready, reads more, and would run for 313 s. The
    // second read comes a second after the line, so the line is seen first even on a busy machine.
    let script = "cat /a/x >/dev/null; echo server READY; sleep 1; cat /b/y >/dev/null; exec sleep 313";
    let started = Instant::now();
    let out = optimize(&src, &dst, &["--wait-for", "READY$", "--timeout", "200"], &["/bin/sh", "-c", script])
        .expect("running lazyctl optimize");
    let took = started.elapsed();
    assert!(out.status.success(), "lazyctl optimize failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(120), "optimize should stop at the ready line, not wait for CMD ({took:?})");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped at the line \"server READY\""), "summary:\n{stdout}");
    assert_hot_layout(&dst, &["/bin/busybox", "/a/x"]);
    assert_nothing_left();
}

#[test]
fn a_command_missing_from_the_image_fails_clearly_and_leaves_nothing() {
    harness::init_logging();
    let _turn = one_at_a_time();
    if !prerequisites_met("lazyctl_optimize", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let src = publish(&registry);
    let dst = registry.reference("lazy/opt:never");
    for (cmd, want) in [
        ("/no/such/cmd", "CMD /no/such/cmd not found in the image".to_string()),
        ("python3", "CMD python3 not found in the image (PATH=/usr/sbin:/usr/bin:/sbin:/bin)".to_string()),
    ] {
        let out = optimize(&src, &dst, &[], &[cmd, "--version"]).expect("running lazyctl optimize");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "optimize with a missing CMD must fail");
        assert!(stderr.contains(&want) && stderr.contains("DST not written"), "want {want:?} in:\n{stderr}");
        assert_nothing_left();
    }
    assert!(inspect_json(&dst).is_err(), "DST must not be tagged after a failed optimize");

    // A failing workload is an error too, unless --allow-failure.
    let out =
        optimize(&src, &dst, &[], &["/bin/sh", "-c", "cat /c/z >/dev/null; exit 3"]).expect("running lazyctl optimize");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("CMD exited with status 3"), "{stderr}");
    assert_nothing_left();
    let out = optimize(&src, &dst, &["--allow-failure"], &["/bin/sh", "-c", "cat /c/z >/dev/null; exit 3"])
        .expect("running lazyctl optimize");
    assert!(out.status.success(), "--allow-failure publishes: {}", String::from_utf8_lossy(&out.stderr));
    assert_hot_layout(&dst, &["/bin/busybox", "/c/z"]);
    assert_nothing_left();
}

#[test]
fn ctrl_c_stops_the_workload_and_unmounts() {
    harness::init_logging();
    let _turn = one_at_a_time();
    if !prerequisites_met("lazyctl_optimize", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let src = publish(&registry);
    let dst = registry.reference("lazy/opt:interrupted");
    let mut child = std::process::Command::new(harness::bins::lazyctl())
        .args(["optimize", "--plain-http", &src, &dst, "--", "/bin/sh", "-c", "echo running; exec sleep 313"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting lazyctl optimize");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("reading lazyctl's stdout");
    assert_eq!(line, "running\n", "the workload's output is passed through");
    assert!(!sandbox_helpers().is_empty(), "the sandbox runs while the workload does");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("sending SIGINT");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for lazyctl") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("lazyctl optimize did not exit within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).expect("reading stderr");
    assert!(!status.success(), "an interrupted optimize fails");
    assert!(stderr.contains("interrupted (SIGINT)") && stderr.contains("DST not written"), "{stderr}");
    assert_nothing_left();
    assert!(inspect_json(&dst).is_err(), "DST must not be tagged after an interrupted optimize");
}

#[test]
fn the_workload_runs_as_the_image_user_in_its_working_directory() {
    harness::init_logging();
    let _turn = one_at_a_time();
    if !prerequisites_met("lazyctl_optimize", VFS_PREREQS) {
        return;
    }
    let registry = Registry::start().expect("starting docker-registry");
    let src = publish_with(&registry, "user", |c| {
        c["User"] = "nobody".into();
        c["WorkingDir"] = "/b".into();
    });
    let dst = registry.reference("lazy/opt:user");
    let script = "echo \"uid=$(id -u) gid=$(id -g) cwd=$(pwd) home=$HOME\"; cat y >/dev/null";
    let out = optimize(&src, &dst, &[], &["sh", "-c", script]).expect("running lazyctl optimize");
    assert!(out.status.success(), "lazyctl optimize failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("uid=65534 gid=65534 cwd=/b home=/"), "User and WorkingDir apply to CMD:\n{stdout}");
    let index = fetch_index(&dst).expect("DST's index");
    assert_eq!(index.prefetch.last().copied(), index.resolve(b"/b/y"), "the relative read of y is /b/y");
    assert_nothing_left();
}
