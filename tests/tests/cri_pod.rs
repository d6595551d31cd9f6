//! End-to-end through CRI (issue 5): a kubelet's sequence of CRI calls against containerd 1.6's CRI
//! plugin with the RuntimeClass handlers `lazy` and `lazy-sandbox` of
//! runtimeclass/containerd/config-v2.toml (shim profiles runtimeclass/shim/*.toml, with the cache
//! and hosts dirs moved into the test's temp dir): PullImage of a LAZY image, RunPodSandbox,
//! Create/StartContainer, the CRI log file, ExecSync, UpdateContainerResources, ContainerStats,
//! Stop/Remove; the pause and app containers share one shim; afterwards nothing is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::containerd::{busybox_image, Version};
use harness::cri::{self, CriContainerd, Handler, KUBELET_MASKED_PATHS, KUBELET_READONLY_PATHS};
use harness::images::Entry;
use harness::registry::Registry;
use harness::wait_for;
use k8s_cri::v1 as api;

/// The repository's shim profile for `handler`, with host paths moved under the CRI temp dir. A
/// host without the cgroup v2 pids controller (this hybrid one) cannot enforce lazy-sandbox's
/// default_pids_limit: the copy then allows unenforced limits, or every Create would fail.
fn shim_profile(handler: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../runtimeclass/shim/{handler}.toml"));
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .replace("/var/lib/containerd-shim-lazy/", "{dir}/")
        .replace("/etc/containerd/certs.d", "{dir}/hosts");
    if v2_controller("pids") || text.contains("default_pids_limit = 0") {
        text
    } else {
        text.replace("allow_unenforced_limits = false", "allow_unenforced_limits = true")
    }
}

/// Whether the host's cgroup v2 hierarchy has `controller`.
fn v2_controller(controller: &str) -> bool {
    ["/sys/fs/cgroup/unified/cgroup.controllers", "/sys/fs/cgroup/cgroup.controllers"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .next()
        .is_some_and(|c| c.split_whitespace().any(|w| w == controller))
}

/// A `<RFC3339Nano> stdout F <text>` line of CRI's log format.
fn is_cri_log_line(line: &str, text: &str) -> bool {
    let mut parts = line.splitn(4, ' ');
    let (Some(ts), Some(stream), Some(tag), Some(msg)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let ts_ok = ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T' && ts.contains('.');
    ts_ok && stream == "stdout" && tag == "F" && msg == text
}

struct Pod {
    sandbox_id: String,
    config: api::PodSandboxConfig,
}

fn run_pod(c: &CriContainerd, handler: &str, pid_mode: api::NamespaceMode) -> Pod {
    let log_dir = c.dir().join("logs").join(handler);
    std::fs::create_dir_all(&log_dir).unwrap();
    let config = cri::pod_config(&format!("pod-{handler}"), &log_dir, pid_mode);
    let sandbox_id = c.run_pod(&config, handler).unwrap_or_else(|e| panic!("{e}"));
    Pod { sandbox_id, config }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn exec(c: &CriContainerd, id: &str, cmd: &[&str]) -> api::ExecSyncResponse {
    let req =
        api::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: 30 };
    c.call("ExecSync", |mut r| async move { r.exec_sync(req).await }).unwrap()
}

fn bundle_address(c: &CriContainerd, id: &str) -> String {
    std::fs::read_to_string(c.containerd().bundle(id).join("address")).unwrap_or_default()
}

/// The whole kubelet sequence for one handler.
fn pod_lifecycle(c: &CriContainerd, handler: &str, image: &str, pid_mode: api::NamespaceMode) {
    let ctrd = c.containerd();
    let started = Instant::now();
    let pod = run_pod(c, handler, pid_mode);
    let sid = pod.sandbox_id.clone();
    log::info!("{handler}: sandbox {sid} running");

    let container = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), "echo hello; exec sleep 1000".into()],
        log_path: "app.log".into(),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources { cpu_shares: 256, ..Default::default() }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(cri::namespaces(pid_mode)),
                masked_paths: KUBELET_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                readonly_paths: KUBELET_READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let req = api::CreateContainerRequest {
        pod_sandbox_id: sid.clone(),
        config: Some(container),
        sandbox_config: Some(pod.config.clone()),
    };
    let cid = c
        .call("CreateContainer", |mut r| async move { r.create_container(req).await })
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log tail:\n{}", tail(&ctrd.log(), 60)))
        .container_id;
    let id = cid.clone();
    c.call("StartContainer", |mut r| async move {
        r.start_container(api::StartContainerRequest { container_id: id }).await
    })
    .unwrap_or_else(|e| panic!("{e}\ncontainerd log tail:\n{}", tail(&ctrd.log(), 60)));
    log::info!("{handler}: RunPodSandbox + CreateContainer + StartContainer in {:.1?}", started.elapsed());

    let id = cid.clone();
    let status = c
        .call("ContainerStatus", |mut r| async move {
            r.container_status(api::ContainerStatusRequest { container_id: id, verbose: false }).await
        })
        .unwrap()
        .status
        .expect("ContainerStatus has a status");
    assert_eq!(status.state(), api::ContainerState::ContainerRunning, "{status:?}");

    // The app runs from the lazy filesystem (the shim's FUSE mount in its bundle).
    let lazy = ctrd.bundle(&cid).join("lazy");
    assert!(ctrd.mounts().contains(&lazy), "lazy mount at {}: {:?}", lazy.display(), ctrd.mounts());

    // Pod grouping: the pause container and the app share one shim process and socket.
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod (pause + app), found {shims:?}");
    let (a_sandbox, a_app) = (bundle_address(c, &sid), bundle_address(c, &cid));
    assert!(!a_app.is_empty() && a_sandbox == a_app, "shim sockets: sandbox {a_sandbox:?}, app {a_app:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", shims[0])).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(&format!("-id {sid}")), "the shim was started for the sandbox: {cmdline}");

    // CRI's log file: `<RFC3339Nano> stdout F hello`.
    assert_eq!(PathBuf::from(&status.log_path), Path::new(&pod.config.log_directory).join("app.log"));
    let mut log;
    let found = {
        let start = Instant::now();
        loop {
            log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
            if log.lines().any(|l| is_cri_log_line(l, "hello")) || start.elapsed() > Duration::from_secs(10) {
                break log.lines().any(|l| is_cri_log_line(l, "hello"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(found, "CRI log {} lacks `<RFC3339Nano> stdout F hello`:\n{log}", status.log_path);

    // ExecSync: stdout, stderr and the exit code.
    let r = exec(c, &cid, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref(), String::from_utf8_lossy(&r.stderr).as_ref()),
        (7, "out\n", "err\n")
    );
    // PID 1 is the app in its own PID namespace (kubelet's default), or the pause process when the
    // pod shares one PID namespace; the hostname is the pod's.
    let r = exec(c, &cid, &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; hostname"]);
    let pid1 = if pid_mode == api::NamespaceMode::Pod { "/bin/busybox sleep 2147483647 " } else { "sleep 1000 " };
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{pid1}\npod-{handler}\n"), "{r:?}");
    // The app is in the pod's network namespace: eth0 has the IP CNI gave the sandbox.
    let id = sid.clone();
    let pod_ip = c
        .call("PodSandboxStatus", |mut r| async move {
            r.pod_sandbox_status(api::PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false }).await
        })
        .unwrap()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(pod_ip.starts_with("10.250.77."), "pod IP from the test's CNI range: {pod_ip:?}");
    let r = exec(c, &cid, &["ip", "-4", "addr", "show", "eth0"]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains(&format!("inet {pod_ip}/")), "eth0 in the app container has {pod_ip}: {r:?}");

    // kubelet's read-only and masked paths as sent: /proc/sys mounted read-only, /proc/keys
    // covered by a character device (/dev/null).
    let r = exec(
        c,
        &cid,
        &[
            "sh",
            "-c",
            "awk '$2==\"/proc/sys\"{split($4,o,\",\"); print o[1]}' /proc/mounts; test -c /proc/keys && echo masked",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout), "ro\nmasked\n", "/proc/sys read-only, /proc/keys masked: {r:?}");

    // The handler's [security] profile: `lazy` keeps the pod's own (default) security context;
    // `lazy-sandbox` forces a read-only rootfs, no_new_privileges, containerd's default seccomp
    // profile and its small capability set (also on this exec process).
    let r = exec(
        c,
        &cid,
        &["sh", "-c", "touch /x 2>&1 && echo touch-ok; grep -E '^(NoNewPrivs|Seccomp|CapBnd):' /proc/self/status"],
    );
    let out = String::from_utf8_lossy(&r.stdout).replace('\t', " ");
    let want = if handler == "lazy-sandbox" {
        "touch: /x: Read-only file system\nCapBnd: 00000000000004fb\nNoNewPrivs: 1\nSeccomp: 2\n"
    } else {
        "touch-ok\nCapBnd: 00000000a80425fb\nNoNewPrivs: 0\nSeccomp: 0\n"
    };
    assert_eq!(out, want, "{handler}: security profile seen by an exec: {r:?}");

    // UpdateContainerResources: cpu shares are a priority and accepted; a memory limit needs the
    // memory controller, which this hybrid host's cgroup v2 lacks: a clear error then.
    let id = cid.clone();
    c.call("UpdateContainerResources(cpu_shares)", |mut r| async move {
        r.update_container_resources(api::UpdateContainerResourcesRequest {
            container_id: id,
            linux: Some(api::LinuxContainerResources { cpu_shares: 512, ..Default::default() }),
            ..Default::default()
        })
        .await
    })
    .unwrap();
    let id = cid.clone();
    let mem = c.call("UpdateContainerResources(memory)", |mut r| async move {
        r.update_container_resources(api::UpdateContainerResourcesRequest {
            container_id: id,
            linux: Some(api::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
            ..Default::default()
        })
        .await
    });
    if v2_controller("memory") {
        mem.expect("memory limit with the memory controller available");
    } else if shim_profile(handler).contains("allow_unenforced_limits = true") {
        // lazy-sandbox's copy on a host without the pids controller (see shim_profile).
        mem.expect("memory limit accepted unenforced with allow_unenforced_limits = true");
        log::info!("{handler}: memory limit accepted unenforced (allow_unenforced_limits = true in the test's copy)");
    } else {
        let e = mem.expect_err("a memory limit cannot be enforced here").to_string();
        assert!(e.contains("memory controller is not available"), "{e}");
        log::info!("{handler}: memory limit refused as expected: {e}");
    }

    // ContainerStats.
    let id = cid.clone();
    let stats = c
        .call("ContainerStats", |mut r| async move {
            r.container_stats(api::ContainerStatsRequest { container_id: id }).await
        })
        .unwrap()
        .stats
        .expect("ContainerStats has stats");
    assert_eq!(stats.attributes.as_ref().map(|a| a.id.as_str()), Some(cid.as_str()), "{stats:?}");
    let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value);
    assert!(cpu.is_some_and(|n| n > 0), "cpu usage in {stats:?}");
    log::info!("{handler}: stats {stats:?}");

    // Stop (sleep as PID 1 ignores SIGTERM: CRI kills it after the timeout) and remove.
    let id = cid.clone();
    let stop_started = Instant::now();
    c.call("StopContainer", |mut r| async move {
        r.stop_container(api::StopContainerRequest { container_id: id, timeout: 2 }).await
    })
    .unwrap();
    let id = cid.clone();
    let status = c
        .call("ContainerStatus", |mut r| async move {
            r.container_status(api::ContainerStatusRequest { container_id: id, verbose: false }).await
        })
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.state(), api::ContainerState::ContainerExited, "{status:?}");
    // SIGTERM ends `sleep` unless it is PID 1 of its namespace (then CRI kills it after 2 s).
    let expected = if pid_mode == api::NamespaceMode::Pod { 143 } else { 137 };
    assert_eq!(status.exit_code, expected, "{status:?}");
    log::info!(
        "{handler}: StopContainer(timeout 2 s) took {:.1?}, exit code {}",
        stop_started.elapsed(),
        status.exit_code
    );
    let id = cid.clone();
    c.call("RemoveContainer", |mut r| async move {
        r.remove_container(api::RemoveContainerRequest { container_id: id }).await
    })
    .unwrap();
    let id = sid.clone();
    c.call("StopPodSandbox", |mut r| async move {
        r.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id }).await
    })
    .unwrap();
    let id = sid.clone();
    c.call("RemovePodSandbox", |mut r| async move {
        r.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id }).await
    })
    .unwrap();

    // Nothing left: shim, mounts, cgroups, netns.
    wait_for("the pod's shim is gone", Duration::from_secs(10), || ctrd.shim_pids().is_empty());
    assert_eq!(ctrd.mounts(), Vec::<PathBuf>::new(), "mounts left under containerd's dirs");
    assert_eq!(ctrd.leftover_cgroups(), Vec::<PathBuf>::new(), "cgroups left behind");
    assert_eq!(c.new_netns(), Vec::<String>::new(), "network namespaces left behind");
}

/// Both versions use CRI's fixed namespace (k8s.io, so the same cgroup parent) and check that no
/// cgroup is left in it: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn cri_pod_lifecycle_with_lazy_handlers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    lifecycle_on("cri_pod", Version::V1_6);
}

/// containerd 2.1.9 with runtimeclass/containerd/config-v3.toml as shipped.
#[test]
fn cri_pod_lifecycle_with_lazy_handlers_on_2_1() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    lifecycle_on("cri_pod_on_2_1", Version::V2_1);
}

fn lifecycle_on(test: &str, version: Version) {
    if !cri::prerequisites_met(test) {
        return;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    // busybox plus 32 MiB the containers never read: the pods must start without downloading it.
    let mut image = busybox_image().unwrap();
    image.layers[0].push(Entry::dir("data"));
    image.layers[0].push(Entry::random_file("data/unused.bin", 11, 32 << 20));
    let image_bytes = image.file_bytes();
    let published = harness::scenario::publish_and_convert(&registry, &image, "bb", &[]).expect("publish + convert");
    let served_before = registry.served_bytes();
    let handlers: Vec<Handler> = ["lazy", "lazy-sandbox"]
        .iter()
        .map(|h| Handler { name: h.to_string(), shim_config: shim_profile(h) })
        .collect();
    let c = CriContainerd::start_on(&registry, &handlers, version).expect("starting containerd with CRI");

    let start = Instant::now();
    let image_ref = c
        .pull(&published.lazy)
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log tail:\n{}", tail(&c.containerd().log(), 40)));
    log::info!("PullImage {} -> {image_ref} in {:.1?}", published.lazy, start.elapsed());

    // `lazy` as a default pod; `lazy-sandbox` with shareProcessNamespace.
    for (handler, pid_mode) in [("lazy", api::NamespaceMode::Container), ("lazy-sandbox", api::NamespaceMode::Pod)] {
        let start = Instant::now();
        pod_lifecycle(&c, handler, &published.lazy, pid_mode);
        log::info!("{handler}: whole pod lifecycle in {:.1?}", start.elapsed());
    }
    let served = registry.served_bytes() - served_before;
    log::info!("both pods: the registry served {served} bytes (pull + lazy reads) of a {image_bytes}-byte image");
    assert!(served * 4 < image_bytes, "not lazy: the registry served {served} of {image_bytes} bytes");
    drop(c);
    assert!(!cri::link_exists(&format!("lzcri{}", std::process::id() % 100_000)), "the CNI bridge is removed");
}
