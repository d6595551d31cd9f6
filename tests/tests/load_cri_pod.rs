//! 30 lazy containers in one pod, through CRI (issue 12): a kubelet's calls against containerd 1.6's
//! CRI plugin with the `lazy` runtime handler. One RunPodSandbox, then 30 CreateContainer +
//! StartContainer at once, every container hashing the same 48 MiB file of one lazy image from a
//! cold node cache. Asserts what a cluster operator would check: every container's CRI log has the
//! right digest, one shim serves the whole pod, the registry served about one copy of the data (at
//! most 1.2x what one container reads), the shim's peak RSS stays within the README's bound, and
//! after StopPodSandbox + RemovePodSandbox no shim, mount or cgroup is left. No timing is
//! asserted: `bench-load --pod` prints the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use harness::cri::{self, CriContainerd, Handler};
use harness::load::{self, RssSampler};
use harness::registry::Registry;
use k8s_cri::v1 as api;

const CONTAINERS: usize = 30;
const DATA: u64 = 48 << 20;
/// README "Resources": one shim's peak RSS is at most a base plus a share per container it serves.
const RSS_BASE_MIB: u64 = 96;
const RSS_PER_CONTAINER_MIB: u64 = 8;

fn run_pod(c: &CriContainerd) -> (String, api::PodSandboxConfig) {
    let log_dir = c.dir().join("logs");
    std::fs::create_dir_all(&log_dir).expect("creating the pod log directory");
    let config = cri::pod_config("load", &log_dir, api::NamespaceMode::Container);
    let id = c.run_pod(&config, "lazy").unwrap_or_else(|e| panic!("{e}"));
    (id, config)
}

/// CreateContainer + StartContainer of container `n` of the pod; returns its id.
fn start_container(c: &CriContainerd, sandbox: &str, pod: &api::PodSandboxConfig, image: &str, n: usize) -> String {
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: format!("c{n}"), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        command: load::hash_then_sleep(),
        log_path: format!("c{n}.log"),
        ..Default::default()
    };
    let req = api::CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    };
    let id = c
        .call("CreateContainer", |mut r| async move { r.create_container(req).await })
        .unwrap_or_else(|e| panic!("container c{n}: {e}"))
        .container_id;
    let start = id.clone();
    c.call("StartContainer", |mut r| async move {
        r.start_container(api::StartContainerRequest { container_id: start }).await
    })
    .unwrap_or_else(|e| panic!("container c{n}: {e}"));
    id
}

/// The digest a container printed in its CRI log (`<time> stdout F <digest>  /data/big.bin`), if any yet.
fn logged_digest(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        let msg = l.splitn(4, ' ').nth(3)?;
        msg.ends_with(load::DATA_FILE).then(|| msg.split_whitespace().next().unwrap_or_default().to_string())
    })
}

#[test]
fn load_thirty_lazy_containers_in_one_cri_pod_fetch_the_image_once() {
    if !cri::prerequisites_met("load_cri_pod") {
        return;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    let image = load::publish(&registry, &registry.host(), "load", DATA).expect("publishing the load image");
    let handler = Handler {
        name: "lazy".into(),
        shim_config: "[cache]\ndir = \"{dir}/cache\"\n[fetch]\nprefetch = \"none\"\n".into(),
    };
    let c = CriContainerd::start(&registry, &[handler]).expect("starting containerd with CRI");
    let ctrd = c.containerd();
    c.pull(&image.lazy).unwrap_or_else(|e| panic!("{e}\ncontainerd log (tail):\n{}", load::tail(&ctrd.log(), 40)));
    let (sandbox, pod) = run_pod(&c);

    let log_offset = registry.log_offset();
    let sampler = RssSampler::start(ctrd, Duration::from_millis(100));
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CONTAINERS)
            .map(|n| {
                let (c, sandbox, pod, image) = (&c, &sandbox, &pod, &image.lazy);
                s.spawn(move || start_container(c, sandbox, pod, image, n))
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a CreateContainer + StartContainer thread panicked")).collect()
    });
    log::info!("{CONTAINERS} containers created and started in {:.1?}", started.elapsed());

    let logs: Vec<_> = (0..CONTAINERS).map(|n| Path::new(&pod.log_directory).join(format!("c{n}.log"))).collect();
    let all_logged = harness::wait_until(Duration::from_secs(300), || logs.iter().all(|l| logged_digest(l).is_some()));
    let rss = sampler.stop();
    let digests: Vec<Option<String>> = logs.iter().map(|l| logged_digest(l)).collect();
    let wrong: Vec<String> = digests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.as_deref() != Some(image.digest.as_str()))
        .map(|(n, d)| format!("c{n}: {d:?}"))
        .collect();
    assert!(
        all_logged && wrong.is_empty(),
        "containers without the right digest in their CRI log after 300 s (want {}): {wrong:?}\ncontainerd log (tail):\n{}",
        image.digest,
        load::tail(&ctrd.log(), 40)
    );
    log::info!("all {CONTAINERS} printed the right digest {:.1?} after the first CreateContainer", started.elapsed());

    // One shim for the pod: every container's bundle points at the sandbox's shim socket.
    let address = |id: &str| std::fs::read_to_string(ctrd.bundle(id).join("address")).unwrap_or_default();
    let sandbox_address = address(&sandbox);
    for id in &ids {
        assert_eq!(address(id), sandbox_address, "container {id} is served by the pod's shim");
    }
    assert_eq!(rss.shims, 1, "shims seen while the pod's containers started: {rss:?}");
    let limit_mib = RSS_BASE_MIB + RSS_PER_CONTAINER_MIB * CONTAINERS as u64;
    assert!(
        rss.hwm_max_kib < limit_mib << 10,
        "the pod's shim peaked at {} KiB RSS with {CONTAINERS} containers: more than {limit_mib} MiB",
        rss.hwm_max_kib
    );

    // The access log is written as responses complete: give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let requests = registry.requests_since(log_offset).expect("reading the registry's access log");
    let blobs: Vec<_> = requests.iter().filter(|r| r.is_blob_get()).collect();
    let blob_bytes: u64 = blobs.iter().map(|r| r.bytes).sum();
    log::info!(
        "registry: {blob_bytes} blob bytes in {} requests for {CONTAINERS} containers reading {} bytes each; shim VmHWM {} KiB",
        blobs.len(),
        image.read_bytes,
        rss.hwm_max_kib
    );
    assert!(
        blob_bytes as f64 <= image.read_bytes as f64 * 1.2,
        "the registry served {blob_bytes} blob bytes in {} requests for {CONTAINERS} containers reading {} bytes each: \
         more than 1.2x one copy",
        blobs.len(),
        image.read_bytes
    );

    // What a kubelet does when the pod goes away; then nothing of it may be left.
    let fail = |e: anyhow::Error| panic!("{e}\ncontainerd log (tail):\n{}", load::tail(&ctrd.log(), 40));
    let id = sandbox.clone();
    c.call("StopPodSandbox", |mut r| async move {
        r.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id }).await
    })
    .map(drop)
    .unwrap_or_else(fail);
    let id = sandbox.clone();
    c.call("RemovePodSandbox", |mut r| async move {
        r.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id }).await
    })
    .map(drop)
    .unwrap_or_else(fail);
    let left = load::leftovers(ctrd);
    assert!(left.is_empty(), "after StopPodSandbox + RemovePodSandbox, left behind: {left:?}");
}
