//! imagePullSecrets for lazy images (issue 11 item 4), as a kubelet started with
//! `--image-service-endpoint unix://<proxy socket>` drives it: `containerd-shim-lazy-v2 cri-proxy`
//! runs in front of containerd 1.6's CRI socket; PullImage of a private lazy image with an
//! AuthConfig (what the kubelet sends for a pod's imagePullSecrets) goes through the proxy; then a
//! pod runs that image with the `lazy` handler on a node without any registry credentials of its
//! own, and the container reads the image's file bytes from the private registry.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::bins;
use harness::cleanup::ChildGuard;
use harness::containerd::busybox_image;
use harness::cri::{self, CriContainerd, Handler, KUBELET_MASKED_PATHS, KUBELET_READONLY_PATHS};
use harness::images::{Content, Entry};
use harness::registry::{Auth, Registry};
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

const USER: &str = "dave";
const PASSWORD: &str = "pull-secret-password";

/// The repository's `lazy` profile with host paths in the CRI temp dir, no node credentials (a
/// docker config that does not exist) and the proxy's credential directory.
fn shim_profile() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtimeclass/shim/lazy.toml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let text = text
        .replace("/var/lib/containerd-shim-lazy/", "{dir}/")
        .replace("/etc/containerd/certs.d", "{dir}/hosts")
        .replace("allow_unenforced_limits = false", "allow_unenforced_limits = true");
    let marker = "# credentials_file = \"/root/.docker/config.json\"";
    assert!(text.contains(marker), "lazy.toml changed: update this test's profile edit");
    text.replace(
        marker,
        "credentials_file = \"{dir}/no-node-credentials.json\"\npull_credentials_dir = \"{dir}/creds\"",
    )
}

fn image_client(rt: &tokio::runtime::Runtime, sock: PathBuf) -> ImageServiceClient<Channel> {
    let channel = rt
        .block_on(async move {
            Endpoint::try_from("http://[::]:0")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(sock).await?,
                        ))
                    }
                }))
                .await
        })
        .expect("connecting to the CRI proxy");
    ImageServiceClient::new(channel)
}

fn pull(
    rt: &tokio::runtime::Runtime,
    client: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<api::AuthConfig>,
) -> Result<String, String> {
    let mut c = client.clone();
    let req = api::PullImageRequest {
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        auth,
        sandbox_config: None,
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), c.pull_image(req)).await }) {
        Ok(Ok(r)) => Ok(r.into_inner().image_ref),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no answer within 120 s".into()),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn a_pod_runs_a_private_lazy_image_with_only_its_pull_secret() {
    if !cri::prerequisites_met("cri_pull_secrets") {
        return;
    }
    harness::init_logging();
    let mut registry = Registry::start().expect("starting docker-registry");
    let mut image = busybox_image().unwrap();
    image.layers[0].push(Entry::dir("data"));
    image.layers[0].push(Entry::random_file("data/secret.bin", 21, 3 << 20));
    let want = Content::Random { seed: 21, len: 3 << 20 }.sha256();
    let published =
        harness::scenario::publish_and_convert(&registry, &image, "private", &[]).expect("publish + convert");
    let handlers = [Handler { name: "lazy".into(), shim_config: shim_profile() }];
    let c = CriContainerd::start(&registry, &handlers).expect("starting containerd with CRI");
    // The pause image is a node image, pulled before the registry turns private.
    let pause = cri::push_pause(&registry).expect("pause image");
    c.pull(&pause).expect("pulling the pause image");
    registry
        .set_auth(Some(Auth::Htpasswd { users: vec![(USER.into(), PASSWORD.into())] }))
        .expect("making the registry private");

    // The proxy, as a node runs it beside containerd.
    let creds = c.dir().join("creds");
    let sock = c.dir().join("cri-proxy.sock");
    let log_path = c.dir().join("cri-proxy.log");
    let child = Command::new(bins::shim())
        .args(["cri-proxy", "--listen"])
        .arg(&sock)
        .arg("--containerd")
        .arg(c.containerd().socket())
        .arg("--creds-dir")
        .arg(&creds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("starting cri-proxy");
    let _proxy = ChildGuard::new("cri-proxy", child);
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cri-proxy did not listen: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let images = image_client(&rt, sock.clone());

    // Without credentials the private registry refuses the pull (through the proxy, unchanged).
    let refused = pull(&rt, &images, &published.lazy, None).expect_err("a pull without credentials must fail");
    eprintln!("PullImage without credentials: {refused}");
    assert!(refused.contains("401") || refused.to_lowercase().contains("unauthorized"), "{refused}");
    assert!(
        std::fs::read_dir(&creds).map_or(true, |d| d.count() == 0),
        "nothing recorded for a pull without credentials"
    );

    // With the pod's pull secret (what the kubelet puts in AuthConfig).
    // containerd 1.6 parses server_address as a URL: a bare `host:port` fails the pull there.
    let auth = api::AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        server_address: format!("http://{}", registry.host()),
        ..Default::default()
    };
    let image_ref = pull(&rt, &images, &published.lazy, Some(auth)).unwrap_or_else(|e| {
        panic!("PullImage with credentials: {e}\ncontainerd log:\n{}", tail(&c.containerd().log(), 40))
    });
    eprintln!("PullImage {} -> {image_ref}", published.lazy);
    let records: Vec<PathBuf> = std::fs::read_dir(&creds).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(records.len(), 1, "one credential record: {records:?}");
    assert_eq!(
        std::fs::metadata(&records[0]).unwrap().permissions().mode() & 0o777,
        0o600,
        "record readable by root only"
    );
    assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o700);
    let proxy_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!proxy_log.contains(PASSWORD), "the proxy logged the password:\n{proxy_log}");

    // A pod with the lazy handler; the node has no registry credentials of its own.
    let log_offset = registry.log_offset();
    let log_dir = c.dir().join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let config = cri::pod_config("pull-secret", &log_dir, api::NamespaceMode::Container);
    let sid = c.run_pod(&config, "lazy").unwrap_or_else(|e| panic!("{e}"));
    let container = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: published.lazy.clone(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), "exec sleep 1000".into()],
        log_path: "app.log".into(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(cri::namespaces(api::NamespaceMode::Container)),
                masked_paths: KUBELET_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                readonly_paths: KUBELET_READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req =
        api::CreateContainerRequest { pod_sandbox_id: sid, config: Some(container), sandbox_config: Some(config) };
    let cid = c
        .call("CreateContainer", |mut r| async move { r.create_container(req).await })
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log tail:\n{}", tail(&c.containerd().log(), 60)))
        .container_id;
    let id = cid.clone();
    c.call("StartContainer", |mut r| async move {
        r.start_container(api::StartContainerRequest { container_id: id }).await
    })
    .unwrap_or_else(|e| panic!("{e}\ncontainerd log tail:\n{}", tail(&c.containerd().log(), 60)));
    let lazy = c.containerd().bundle(&cid).join("lazy");
    assert!(c.containerd().mounts().contains(&lazy), "the app runs from a lazy mount: {:?}", c.containerd().mounts());

    let req = api::ExecSyncRequest {
        container_id: cid.clone(),
        cmd: vec!["sha256sum".into(), "/data/secret.bin".into()],
        timeout: 60,
    };
    let r = c.call("ExecSync", |mut x| async move { x.exec_sync(req).await }).unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        (r.exit_code, out.split_whitespace().next().unwrap_or("")),
        (0, want.as_str()),
        "sha256sum of the private file in the container: {r:?}\ncontainerd log tail:\n{}",
        tail(&c.containerd().log(), 40)
    );
    // The bytes came lazily from the private registry, authenticated by the shim's own client.
    std::thread::sleep(Duration::from_millis(200));
    let reads: Vec<_> = registry.requests_since(log_offset).unwrap().into_iter().filter(|l| l.is_ours()).collect();
    assert!(
        reads.iter().any(|l| l.is_blob_get() && (l.status == 200 || l.status == 206)),
        "no authenticated lazy read by the shim in the registry's log: {reads:?}"
    );
    c.remove_all_pods();
}
