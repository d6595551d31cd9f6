//! A CRI (Kubernetes Container Runtime Interface) client and a CRI-enabled private containerd (1.6; 2.x),
//! to drive the shim the way a kubelet does: PullImage, RunPodSandbox with a runtime handler,
//! CreateContainer, ExecSync, UpdateContainerResources, ContainerStats, Stop/Remove.
//!
//! What CRI needs here (PLATFORM.md): a CNI conflist (plugins from /usr/lib/cni, Debian's
//! containernetworking-plugins), `restrict_oom_score_adj = true` (CAP_SYS_RESOURCE is missing),
//! a plain-http registry through `registry.config_path` + hosts.toml, a pause image (built here from
//! busybox-static and pushed to the test registry), and the runtime handlers of
//! runtimeclass/containerd/config-v2.toml with ConfigPath pointed at the test's shim configs.
//!
//! CRI writes fixed host paths: the pod's network namespace under /var/run/netns, a bridge
//! interface, CNI's result cache under /var/lib/cni. [`CriContainerd`]'s Drop stops and removes every
//! pod it can still see, then removes those (plus everything [`Containerd`]'s Drop removes), also
//! when the test failed. CRI always uses the containerd namespace `k8s.io`, so only one
//! CriContainerd may run at a time on a machine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cleanup::{force_unmount, temp_dir};
use crate::containerd::{Containerd, StartOptions, Version};
use crate::images::{Entry, Image, Layer};
use crate::registry::Registry;

/// The containerd namespace CRI puts everything in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where CNI plugins are on Debian (containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
const NETNS_DIR: &str = "/var/run/netns";
const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";

/// kubelet's default masked paths (k8s.io/kubernetes pkg/securitycontext): without a kubelet, CRI
/// applies none, so a client that wants kubelet's view must send them.
pub const KUBELET_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// kubelet's default read-only paths.
pub const KUBELET_READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// What a CRI test needs: root, FUSE, containerd, docker-registry, skopeo, `ip`, and the CNI
/// plugins. Returns false after printing `SKIP <test>: ...` when something is missing outside CI
/// (in CI a missing prerequisite fails the test, as [`crate::prerequisites_met`] does).
pub fn prerequisites_met(test: &str) -> bool {
    let prereqs = [
        crate::Prereq::Root,
        crate::Prereq::Fuse,
        crate::Prereq::Tool("containerd"),
        crate::Prereq::Tool("docker-registry"),
        crate::Prereq::Tool("skopeo"),
        crate::Prereq::Tool("ip"),
    ];
    if !crate::prerequisites_met(test, &prereqs) {
        return false;
    }
    if !Path::new(CNI_BIN_DIR).join("bridge").exists() {
        let why = format!("{test}: needs CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)");
        assert!(!crate::prereq::in_ci(), "CI=true, refusing to skip: {why}");
        eprintln!("SKIP {why}");
        return false;
    }
    true
}

/// kubelet's namespace options: the pod's network and IPC, a PID namespace per container unless
/// the pod sets shareProcessNamespace (then `pid` is POD).
pub fn namespaces(pid: cri::NamespaceMode) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod sandbox config as a kubelet sends it: pod `name` in namespace `default` (with a uid unique
/// to this test process), hostname `name`, container logs under `log_dir`, kubelet's namespace options.
pub fn pod_config(name: &str, log_dir: &Path, pid: cri::NamespaceMode) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A shim configuration for one runtime handler: `(handler name, TOML of its ConfigPath file)`.
pub struct Handler {
    pub name: String,
    pub shim_config: String,
}

/// containerd with the CRI plugin, a CNI network of its own, a pause image, and CRI clients.
pub struct CriContainerd {
    // Field order is drop order after `Drop::drop`: the runtime outlives nothing it serves.
    containerd: Option<Containerd>,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    rt: tokio::runtime::Runtime,
    bridge: String,
    netns_before: BTreeSet<String>,
    network: String,
    dir: tempfile::TempDir,
}

impl CriContainerd {
    /// Builds and pushes the pause image to `registry`, writes the CNI conflist, hosts.toml and
    /// the handlers' shim configs (`{dir}` in a shim config is replaced by this instance's temp
    /// dir), starts containerd with CRI and connects.
    pub fn start(registry: &Registry, handlers: &[Handler]) -> Result<CriContainerd> {
        CriContainerd::start_on(registry, handlers, Version::V1_6)
    }

    /// [`CriContainerd::start`] on containerd `version`: 1.x gets `config-v2.toml`, 2.x the shipped
    /// `config-v3.toml` (CRI split into io.containerd.cri.v1.{runtime,images} and grpc.v1.cri).
    pub fn start_on(registry: &Registry, handlers: &[Handler], version: Version) -> Result<CriContainerd> {
        let dir = temp_dir("cri");
        let d = dir.path().to_path_buf();
        let pause = push_pause(registry)?;

        // hosts.toml: CRI pulls from the loopback registry over plain http.
        let hosts = d.join("hosts");
        let host = registry.host();
        std::fs::create_dir_all(hosts.join(&host))?;
        std::fs::write(
            hosts.join(&host).join("hosts.toml"),
            format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )?;

        // One bridge network of our own (unique bridge name, no masquerade: no iptables needed).
        let tag = std::process::id() % 100_000;
        let bridge = format!("lzcri{tag}");
        let network = format!("lazy-cri-{tag}");
        let cni = d.join("cni");
        std::fs::create_dir_all(&cni)?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network,
            "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.77.0/24"}]],
                         "dataDir": d.join("ipam").display().to_string()},
            }],
        });
        std::fs::write(cni.join("10-lazy.conflist"), serde_json::to_vec_pretty(&conflist)?)?;

        // The repository's handler snippet, with ConfigPath pointed at our shim configs.
        let snippet_path = if version.is_v2() { runtimeclass_config_v3() } else { runtimeclass_config() };
        let snippet =
            std::fs::read_to_string(&snippet_path).with_context(|| format!("reading {}", snippet_path.display()))?;
        let shim_dir = d.join("shim");
        std::fs::create_dir_all(&shim_dir)?;
        for h in handlers {
            let text = h.shim_config.replace("{dir}", &d.display().to_string());
            std::fs::write(shim_dir.join(format!("{}.toml", h.name)), text)?;
        }
        let handlers_toml: String = snippet
            .lines()
            .filter(|l| !l.trim_start().starts_with("version"))
            .map(|l| l.replace("/etc/containerd-shim-lazy/", &format!("{}/", shim_dir.display())) + "\n")
            .collect();

        let extra = if version.is_v2() {
            format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{pause}\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{hosts}\"\n\
                 [plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".cni]\n  bin_dirs = [\"{CNI_BIN_DIR}\"]\n  conf_dir = \"{cni}\"\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 {handlers_toml}",
                cni = cni.display(),
                hosts = hosts.display(),
            )
        } else {
            format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n  \
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{CNI_BIN_DIR}\"\n  conf_dir = \"{cni}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{hosts}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             {handlers_toml}",
            cni = cni.display(),
            hosts = hosts.display(),
        )
        };
        let netns_before = list_dir(Path::new(NETNS_DIR));
        let containerd = Containerd::start_with(&StartOptions {
            cri: true,
            namespace: Some(CRI_NAMESPACE.into()),
            extra_config: extra,
            version,
            ..StartOptions::default()
        })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let sock = containerd.socket();
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
            .context("connecting the CRI client to containerd's socket")?;
        let c = CriContainerd {
            containerd: Some(containerd),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
            bridge,
            netns_before,
            network,
            dir,
        };
        // CRI comes up after the socket: wait until it answers Version.
        let start = std::time::Instant::now();
        loop {
            let mut rs = c.runtime.clone();
            match c.rt.block_on(rs.version(cri::VersionRequest { version: "v1".into() })) {
                Ok(_) => break,
                Err(e) if start.elapsed() > Duration::from_secs(20) => {
                    return Err(anyhow!("CRI did not answer Version: {e}\ncontainerd log:\n{}", c.containerd().log()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(c)
    }

    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd runs until drop")
    }

    /// This instance's temp dir (pod log directories go here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Network namespaces created since this instance started.
    pub fn new_netns(&self) -> Vec<String> {
        list_dir(Path::new(NETNS_DIR)).difference(&self.netns_before).cloned().collect()
    }

    /// Runs one runtime-service call, naming it in the error.
    pub fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.runtime.clone());
        let bounded = async { tokio::time::timeout(Duration::from_secs(120), fut).await };
        match self.rt.block_on(bounded) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(anyhow!("CRI {what}: {:?}: {}", s.code(), s.message())),
            Err(_) => Err(anyhow!("CRI {what}: no answer within 120 s")),
        }
    }

    /// RunPodSandbox of `config` with the runtime handler `handler`; returns the sandbox id. The
    /// error carries the tail of containerd's log.
    pub fn run_pod(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        self.call("RunPodSandbox", |mut r| async move { r.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
            .map_err(|e| anyhow!("{e}\ncontainerd log (tail):\n{}", crate::load::tail(&self.containerd().log(), 60)))
    }

    /// PullImage; returns the image ref CRI resolved.
    pub fn pull(&self, image: &str) -> Result<String> {
        let mut images = self.images.clone();
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        };
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(300), images.pull_image(req)).await })
            .map_err(|_| anyhow!("CRI PullImage {image}: no answer within 300 s"))?
            .map_err(|s| anyhow!("CRI PullImage {image}: {:?}: {}", s.code(), s.message()))?;
        Ok(r.into_inner().image_ref)
    }

    /// Stops and removes every pod sandbox CRI still lists (best effort; for cleanup).
    pub fn remove_all_pods(&self) {
        let pods =
            self.call("ListPodSandbox", |mut c| async move {
                c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await
            })
            .map(|r| r.items)
            .unwrap_or_default();
        for p in pods {
            let id = p.id.clone();
            if let Err(e) = self.call("StopPodSandbox", |mut c| async move {
                c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id }).await
            }) {
                log::warn!("cleanup: {e}");
            }
            let id = p.id.clone();
            if let Err(e) = self.call("RemovePodSandbox", |mut c| async move {
                c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await
            }) {
                log::warn!("cleanup: {e}");
            }
        }
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        self.remove_all_pods();
        // Kills shims and containers of k8s.io, stops containerd, unmounts its dirs.
        drop(self.containerd.take());
        for ns in self.new_netns() {
            let p = Path::new(NETNS_DIR).join(&ns);
            let _ = force_unmount(&p);
            let _ = std::fs::remove_file(&p);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        for f in list_dir(Path::new(CNI_RESULTS_DIR)) {
            if f.starts_with(&format!("{}-", self.network)) {
                let _ = std::fs::remove_file(Path::new(CNI_RESULTS_DIR).join(f));
            }
        }
    }
}

/// Whether network interface `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

impl CriContainerd {
    /// The bridge interface of this instance's CNI network.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

fn list_dir(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// runtimeclass/containerd/config-v3.toml in this repository (containerd 2.x).
pub fn runtimeclass_config_v3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtimeclass/containerd/config-v3.toml")
}

/// runtimeclass/containerd/config-v2.toml in this repository.
pub fn runtimeclass_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtimeclass/containerd/config-v2.toml")
}

/// A tiny pause image: busybox-static running `sleep` forever as PID 1 (StopPodSandbox kills it
/// with SIGKILL). Pushed as `pause:1`; returns the reference.
pub fn push_pause(registry: &Registry) -> Result<String> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (apt-get install busybox-static)")?;
    let layer = Layer::new()
        .add(Entry::dir("bin"))
        .add(Entry::dir("proc"))
        .add(Entry::dir("sys"))
        .add(Entry::dir("dev"))
        .add(Entry::file("bin/busybox", busybox).mode(0o755));
    let mut image = Image::new(vec![layer]);
    image.cmd = vec!["/bin/busybox".into(), "sleep".into(), "2147483647".into()];
    let layout = temp_dir("pause-layout");
    image.write_layout(layout.path(), "1")?;
    let reference = registry.reference("pause:1");
    crate::images::push(layout.path(), "1", &reference)?;
    Ok(reference)
}
