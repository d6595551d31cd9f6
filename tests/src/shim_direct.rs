//! The shim driven the way containerd drives it, without containerd: `start` run with the bundle as its
//! working directory (and whatever stdin a given containerd version writes), then task API v2 calls over
//! ttrpc to the address it printed, with a fake containerd events service collecting what the shim
//! publishes. This reproduces what containerd's Go client can ask for but `ctr` cannot express (Kill(all)
//! of a created task, a deny-all device list, runc options with ShimCgroup, BootstrapParams on stdin).
//!
//! Drop kills the shim and every process in the instance's cgroups, removes those cgroups, the socket
//! and the temp dir, also when the test failed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::{
    ConnectRequest, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest,
    KillRequest, ResizePtyRequest, ShutdownRequest, StartRequest, StateRequest, StateResponse, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Client, Events, TaskClient};
use containerd_shim_protos::ttrpc::asynchronous::{transport::Listener, Server, TtrpcContext};
use serde_json::{json, Value};

use crate::prereq::{prerequisites_met, Prereq};

const BUSYBOX: &str = "/bin/busybox";

/// An event the shim published: its topic and payload.
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    pub event: Any,
}

#[derive(Default)]
struct Collector {
    events: Mutex<Vec<Published>>,
}

struct Sink(Arc<Collector>);

#[async_trait::async_trait]
impl Events for Sink {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> containerd_shim_protos::ttrpc::Result<Empty> {
        let env = req.envelope;
        let topic = env.topic.clone();
        let event = env.event.clone().unwrap_or_default();
        self.0.events.lock().unwrap().push(Published { topic, event });
        Ok(Empty::default())
    }
}

/// A shim server started through `start`, plus the fake containerd it reports to.
pub struct DirectShim {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    namespace: String,
    collector: Arc<Collector>,
    events_server: Option<Server>,
    client: Option<TaskClient>,
    socket: Option<PathBuf>,
    shim_pid: Option<i32>,
    logs: Vec<Arc<Mutex<Vec<u8>>>>,
}

/// Output read from a FIFO the shim writes a process's stdout into (as containerd's FIFOs).
pub struct Capture {
    pub path: PathBuf,
    data: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle` (or `limit` passes); returns the output.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let t = self.text();
            if t.contains(needle) || start.elapsed() > limit {
                return t;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Makes a FIFO at `path` and drains it in a background thread. Opened read-write so the reader never
/// blocks on open and survives writers coming and going.
fn fifo_reader(path: &Path) -> Result<Arc<Mutex<Vec<u8>>>> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", path.display()))?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let data = Arc::new(Mutex::new(Vec::new()));
    let sink = data.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Ok(data)
}

/// The capabilities containerd's OCI defaults give a container (and runc's default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// containerd's Go client default spec (oci.WithDefaultSpec): namespaces pid ipc uts mount network, the
/// usual mounts, and a device list that ONLY denies all (the Go client adds no device allow rules; runc
/// adds its default allow-list). `cgroups_path` as containerd sets it (`/<namespace>/<id>`).
pub fn go_client_spec(cgroups_path: &str, args: &[&str], terminal: bool) -> Value {
    let caps = json!(DEFAULT_CAPS);
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "direct",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A protobuf Any as containerd marshals typeurl values (type URL = the message's full name).
pub fn any_of(type_url: &str, message: &dyn containerd_shim_protos::protobuf::MessageDyn) -> Any {
    Any { type_url: type_url.into(), value: message.write_to_bytes_dyn().expect("encode"), ..Default::default() }
}

fn ctx() -> containerd_shim_protos::ttrpc::context::Context {
    containerd_shim_protos::ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

impl DirectShim {
    /// Root, /bin/busybox and the built shim binary, else SKIP (FAIL under CI=true).
    pub fn new(test: &str) -> Option<DirectShim> {
        if !prerequisites_met(test, &[Prereq::Root]) {
            return None;
        }
        let shim = crate::bins::shim();
        let missing: Vec<String> = [
            (Path::new(BUSYBOX), "apt-get install busybox-static"),
            (shim.as_path(), "cargo build -p containerd-shim-lazy"),
        ]
        .iter()
        .filter(|(p, _)| !p.is_file())
        .map(|(p, fix)| format!("needs {} ({fix})", p.display()))
        .collect();
        if !missing.is_empty() {
            let text = format!("{test}: {}", missing.join("; "));
            if crate::prereq::in_ci() {
                panic!("CI=true and a prerequisite is missing, refusing to skip: {text}");
            }
            eprintln!("SKIP {text}");
            return None;
        }
        crate::init_logging();
        static N: AtomicU32 = AtomicU32::new(0);
        let namespace = format!("ld{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let dir = crate::cleanup::temp_dir("direct-shim");
        let collector = Arc::new(Collector::default());
        let events_sock = dir.path().join("containerd.sock.ttrpc");
        let events_server = rt
            .block_on(async {
                let l = std::os::unix::net::UnixListener::bind(&events_sock)?;
                let mut server = Server::new()
                    .add_listener(Listener::try_from(l)?)
                    .register_service(create_events(Arc::new(Sink(collector.clone()))));
                server.start().await?;
                anyhow::Ok(server)
            })
            .expect("starting the fake containerd events service");
        Some(DirectShim {
            rt,
            dir,
            namespace,
            collector,
            events_server: Some(events_server),
            client: None,
            socket: None,
            shim_pid: None,
            logs: Vec::new(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's cgroupsPath for container `id` of this instance.
    pub fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.namespace)
    }

    /// The container's cgroup v2 directory (hybrid hosts: under /sys/fs/cgroup/unified).
    pub fn cgroup_dir(&self, id: &str) -> PathBuf {
        let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        Path::new(root).join(&self.namespace).join(id)
    }

    /// The bundle directory of `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join("bundles").join(id)
    }

    /// A scratch path in the instance's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<bundle>/config.json` and the `log` FIFO containerd creates, without a rootfs (for a
    /// Create whose rootfs mounts come in the request).
    pub fn write_spec(&mut self, id: &str, spec: &Value) -> Result<PathBuf> {
        let bundle = self.bundle(id);
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(spec)?)?;
        self.logs.push(fifo_reader(&bundle.join("log"))?);
        Ok(bundle)
    }

    /// Writes `<bundle>/config.json`, a busybox rootfs and the `log` FIFO containerd creates.
    pub fn write_bundle(&mut self, id: &str, spec: &Value) -> Result<PathBuf> {
        let bundle = self.bundle(id);
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "run"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
        let list = Command::new(BUSYBOX).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        self.write_spec(id, spec)
    }

    /// Runs `<shim> ... -id ID start` in the bundle as containerd does, with `stdin` as its stdin, and
    /// returns what it printed (stdout and stderr combined, as containerd 1.6 reads them).
    pub fn run_start(&self, id: &str, stdin: &[u8]) -> Result<String> {
        let bundle = self.bundle(id);
        let mut child = Command::new(crate::bins::shim())
            .args(["-namespace", &self.namespace, "-address"])
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-publish-binary", "/bin/true", "-id", id, "-debug", "start"])
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", self.dir.path().join("containerd.sock.ttrpc"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the shim's start action")?;
        child.stdin.take().expect("piped").write_all(stdin)?;
        let out = child.wait_with_output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("start exited {}: {text}", out.status);
        }
        Ok(text)
    }

    /// Runs `<shim> ... -id ID delete` in the bundle, as containerd does when a shim died, and returns
    /// what it wrote to stderr (containerd logs it).
    pub fn run_delete(&self, id: &str) -> Result<String> {
        let out = Command::new(crate::bins::shim())
            .args(["-namespace", &self.namespace, "-address"])
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-publish-binary", "/bin/true", "-id", id, "-bundle"])
            .arg(self.bundle(id))
            .arg("delete")
            .current_dir(self.bundle(id))
            .env("TTRPC_ADDRESS", self.dir.path().join("containerd.sock.ttrpc"))
            .stdin(Stdio::null())
            .output()
            .context("running the shim's delete action")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("delete exited {}: {stderr}", out.status);
        }
        Ok(stderr)
    }

    /// `start` + connect to the printed address (a plain `unix://` address).
    pub fn start(&mut self, id: &str, stdin: &[u8]) -> Result<String> {
        let address = self.run_start(id, stdin)?;
        self.connect(&address)?;
        Ok(address)
    }

    /// Connects the task client to `address` and learns the server's pid (Connect).
    pub fn connect(&mut self, address: &str) -> Result<()> {
        let address = address.trim().to_string();
        let path = address
            .strip_prefix("unix://")
            .with_context(|| format!("start printed {address:?}, not a unix:// address"))?;
        self.socket = Some(PathBuf::from(path));
        let client = self.rt.block_on(Client::connect(&address)).with_context(|| format!("connecting to {address}"))?;
        let client = TaskClient::new(client);
        let resp = self
            .rt
            .block_on(client.connect(ctx(), &ConnectRequest { id: String::new(), ..Default::default() }))
            .context("Connect")?;
        self.shim_pid = Some(resp.shim_pid as i32);
        self.client = Some(client);
        Ok(())
    }

    /// The pid of the shim server (from Connect).
    pub fn shim_pid(&self) -> i32 {
        self.shim_pid.expect("connected")
    }

    /// The shim's socket file (from the address `start` printed).
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().expect("started")
    }

    fn client(&self) -> &TaskClient {
        self.client.as_ref().expect("connected: call start first")
    }

    /// A FIFO for a process's stdout/stderr, drained in the background.
    pub fn capture(&self, name: &str) -> Result<Capture> {
        let path = self.dir.path().join(name);
        let data = fifo_reader(&path)?;
        Ok(Capture { path, data })
    }

    pub fn create(
        &self,
        id: &str,
        terminal: bool,
        stdout: Option<&Capture>,
        options: Option<Any>,
    ) -> Result<CreateTaskResponse> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle(id).display().to_string(),
            terminal,
            stdout: stdout.map(|c| c.path.display().to_string()).unwrap_or_default(),
            stderr: if terminal {
                String::new()
            } else {
                stdout.map(|c| c.path.display().to_string()).unwrap_or_default()
            },
            options: options.into(),
            ..Default::default()
        };
        Ok(self.rt.block_on(self.client().create(ctx(), &req))?)
    }

    /// Create with a request built by the caller (rootfs mounts, options), bounded by ttrpc's 30 s.
    pub fn create_with(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        Ok(self.rt.block_on(self.client().create(ctx(), req))?)
    }

    /// Sends Create in the background (for calls made while it is in progress); see [`DirectShim::join`].
    pub fn spawn_create(&self, req: CreateTaskRequest) -> tokio::task::JoinHandle<Result<CreateTaskResponse>> {
        let client = self.client().clone();
        let ctx = containerd_shim_protos::ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64);
        self.rt.spawn(async move { Ok(client.create(ctx, &req).await?) })
    }

    /// Waits for a call sent with one of the `spawn_` methods.
    pub fn join<T>(&self, handle: tokio::task::JoinHandle<T>) -> T {
        self.rt.block_on(handle).expect("background call panicked")
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        let req = StateRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        Ok(self.rt.block_on(self.client().state(ctx(), &req))?)
    }

    pub fn start_task(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = StartRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        Ok(self.rt.block_on(self.client().start(ctx(), &req))?.pid)
    }

    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str], terminal: bool, stdout: &Capture) -> Result<()> {
        let process = json!({
            "terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        });
        let spec = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process)?,
            ..Default::default()
        };
        let req = ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            terminal,
            stdout: stdout.path.display().to_string(),
            stderr: if terminal { String::new() } else { stdout.path.display().to_string() },
            spec: Some(spec).into(),
            ..Default::default()
        };
        self.rt.block_on(self.client().exec(ctx(), &req))?;
        Ok(())
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let req = KillRequest { id: id.into(), signal, all, ..Default::default() };
        self.rt.block_on(self.client().kill(ctx(), &req))?;
        Ok(())
    }

    /// Wait with a bound: Err when it did not return within `limit`.
    pub fn wait(&self, id: &str, exec_id: &str, limit: Duration) -> Result<WaitResponse> {
        let req = WaitRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        let fut =
            self.client().wait(containerd_shim_protos::ttrpc::context::with_timeout(limit.as_nanos() as i64), &req);
        match self.rt.block_on(async { tokio::time::timeout(limit, fut).await }) {
            Ok(r) => Ok(r?),
            Err(_) => bail!("Wait({id}/{exec_id}) did not return within {limit:?}"),
        }
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = ResizePtyRequest { id: id.into(), exec_id: exec_id.into(), width, height, ..Default::default() };
        self.rt.block_on(self.client().resize_pty(ctx(), &req))?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<DeleteResponse> {
        let req = DeleteRequest { id: id.into(), ..Default::default() };
        Ok(self.rt.block_on(self.client().delete(ctx(), &req))?)
    }

    pub fn shutdown(&self) -> Result<()> {
        let req = ShutdownRequest { id: String::new(), now: false, ..Default::default() };
        self.rt.block_on(self.client().shutdown(ctx(), &req))?;
        Ok(())
    }

    /// Every event published so far.
    pub fn events(&self) -> Vec<Published> {
        self.collector.events.lock().unwrap().clone()
    }

    /// The TaskExit events of container `id`'s init published so far.
    pub fn init_exits(&self, id: &str) -> Vec<TaskExit> {
        self.events()
            .into_iter()
            .filter(|e| e.topic == "/tasks/exit")
            .filter_map(|e| TaskExit::parse_from_bytes(&e.event.value).ok())
            .filter(|e| e.container_id == id && e.id == id)
            .collect()
    }

    /// Waits until `f` holds or `limit` passes; returns whether it held.
    pub fn wait_until(&self, limit: Duration, mut f: impl FnMut(&DirectShim) -> bool) -> bool {
        crate::wait_until(limit, || f(self))
    }

    /// What the shim logged so far (its `log` FIFOs).
    pub fn log(&self) -> String {
        self.logs.iter().map(|l| String::from_utf8_lossy(&l.lock().unwrap()).into_owned()).collect::<Vec<_>>().join("")
    }

    /// Whether the shim server process still exists (not a zombie of ours: it was started detached).
    pub fn shim_alive(&self) -> bool {
        let Some(pid) = self.shim_pid else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    }
}

/// Pids of every process started with `-namespace <namespace>`: every shim this harness started,
/// also those a later `start` spawned after the first one removed its socket (last Delete).
fn shims_in(namespace: &str) -> Vec<i32> {
    let needle = format!("\0-namespace\0{namespace}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle.as_str()))
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for DirectShim {
    fn drop(&mut self) {
        self.client = None;
        if let Some(pid) = self.shim_pid {
            if self.shim_alive() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for pid in shims_in(&self.namespace) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let ns = e.path().join(&self.namespace);
            if ns.is_dir() {
                crate::containerd::kill_cgroup(&ns);
            }
        }
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        if let Some(mut server) = self.events_server.take() {
            let _ = self.rt.block_on(server.shutdown());
        }
        let mut mounts = crate::cleanup::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            if let Err(e) = crate::cleanup::force_unmount(&m) {
                log::error!("cleanup: {e}");
            }
        }
    }
}
