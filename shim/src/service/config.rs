//! Shim configuration: a TOML file, default [`DEFAULT_CONFIG_PATH`] (a missing default file means
//! defaults), overridden by the runtime option `ConfigPath` (runtimeoptions.v1.Options, what
//! containerd 1.6's CRI and `ctr --runtime-config-path` send) and by `config_body` (containerd 1.7+
//! sends the runtime's options table as TOML there).
//!
//! Also decodes the `options` Any of CreateTaskRequest: every options type containerd clients send
//! to a non-runc runtime is accepted; only runtimeoptions' ConfigPath/config_body are used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd-shim-lazy/config.toml";

/// runtimeoptions.v1.Options (containerd's pkg/runtimeoptions): not in containerd-shim-protos.
const RUNTIMEOPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Shim log level (error, warn, info, debug, trace); containerd's `--log-level debug` also
    /// turns on debug.
    pub log_level: String,
    pub cache: CacheConfig,
    pub fetch: FetchConfig,
    pub registry: RegistryConfig,
    pub cgroup: CgroupConfig,
    pub security: SecurityConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Node-wide chunk cache shared by every lazy container.
    pub dir: PathBuf,
    /// Size cap of the cache in MiB; least recently used chunks are evicted past it.
    pub max_size_mb: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    pub connect_timeout_secs: u64,
    /// Bound on one HTTP exchange including its body.
    pub request_timeout_secs: u64,
    /// A read of the lazy filesystem fails (EIO) after retrying this long while the registry is down.
    pub deadline_secs: u64,
    /// Registry requests in flight at once per container for on-demand reads (and half as many
    /// for the spans fetched around them).
    pub concurrency: usize,
    pub prefetch: PrefetchMode,
    /// Registry requests the prefetcher keeps in flight at once, beside on-demand reads.
    pub prefetch_concurrency: usize,
    /// Largest span (compressed MiB): the rest of a file a read missed in, or the span ahead of a
    /// reader streaming through one large file. Spans start at 256 KiB around a miss and double
    /// while reads stay in one region, up to 4 MiB while the reader hops between files (a program
    /// start). 0: fetch only what is read.
    pub readahead_max_mb: u64,
    /// Serve fully cached files with FUSE passthrough from the verified file store (Linux 6.9+,
    /// falls back to FUSE reads by itself where unsupported). false: every read goes through FUSE.
    pub passthrough: bool,
    /// Record the names, symlinks and directories a container's start asks for (its first
    /// minute) in `<cache.dir>/starts`, and replay them right after the next mount of the same
    /// image on this node, so the kernel's caches hold the answers before the workload asks.
    pub start_logs: bool,
    /// Serve the container's FUSE requests through FUSE over io_uring (Linux 6.14+, when the
    /// fuse module's `enable_uring` parameter is on): each CPU's requests are answered on that CPU,
    /// without the cross-CPU wakeups of /dev/fuse. false: always /dev/fuse.
    pub io_uring: bool,
}

/// `[fetch] prefetch = "none" | "prioritized" | "all"`: the filesystem's own mode, so the
/// config, `lazyctl mount --prefetch` and the mount agree on names and meaning.
pub use vfs::fs::PrefetchMode;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd's hosts.toml directory (`<dir>/<host[:port]>/hosts.toml`): mirrors tried in
    /// order before the registry, plain HTTP, CA, client certificates, headers. Loopback
    /// registries fall back to plain HTTP as containerd does.
    pub hosts_dir: PathBuf,
    /// docker config.json with registry credentials (`auths`, `credHelpers`, `credsStore`);
    /// default: docker's usual places.
    pub credentials_file: Option<PathBuf>,
    /// kubelet's CredentialProviderConfig (`--image-credential-provider-config`): its plugins are
    /// asked for credentials before docker's config.
    pub credential_provider_config: Option<PathBuf>,
    /// Directory of the plugin binaries (`--image-credential-provider-bin-dir`).
    pub credential_provider_bin_dir: PathBuf,
    /// Credentials handed over per image by `containerd-shim-lazy-v2 cri-proxy` from CRI PullImage
    /// (Kubernetes imagePullSecrets), asked before every other source. A directory that does not
    /// exist holds none.
    pub pull_credentials_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Run containers whose hard limits (memory, cpu, pids, io) this host cannot enforce (e.g. a
    /// cgroup v2 hierarchy without those controllers) instead of failing Create.
    pub allow_unenforced_limits: bool,
}

/// Hardening the shim forces on every container it runs, whatever the pod asked for: what makes
/// the `lazy-sandbox` RuntimeClass stricter than `lazy`. Defaults change nothing. Applied to the
/// OCI spec at Create (and to every exec process) by `service::profile`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// A container without a seccomp profile (Unconfined) gets containerd's default profile.
    pub seccomp_default: bool,
    /// process.noNewPrivileges = true for init and every exec: setuid binaries and file
    /// capabilities cannot raise privileges.
    pub no_new_privileges: bool,
    /// The container's root filesystem is mounted read-only.
    pub readonly_rootfs: bool,
    /// Non-empty: the only capabilities (e.g. "CAP_CHOWN") a process may keep; every capability
    /// set of init and of every exec is intersected with it.
    pub capabilities: Vec<String>,
    /// /proc/sys is read-only and sysfs is mounted "ro".
    pub readonly_sys: bool,
    /// > 0: linux.resources.pids.limit for containers whose spec sets none.
    pub default_pids_limit: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            cache: CacheConfig::default(),
            fetch: FetchConfig::default(),
            registry: RegistryConfig::default(),
            cgroup: CgroupConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { dir: PathBuf::from("/var/lib/containerd-shim-lazy/cache"), max_size_mb: 10 * 1024 }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout_secs: 5,
            request_timeout_secs: 60,
            deadline_secs: 30,
            concurrency: 8,
            prefetch: PrefetchMode::Prioritized,
            prefetch_concurrency: 8,
            readahead_max_mb: 16,
            passthrough: true,
            start_logs: true,
            io_uring: true,
        }
    }
}

/// Where kubeadm-style nodes keep credential provider plugins.
pub const DEFAULT_PROVIDER_BIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec";

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
            credentials_file: None,
            credential_provider_config: None,
            credential_provider_bin_dir: PathBuf::from(DEFAULT_PROVIDER_BIN_DIR),
            pull_credentials_dir: PathBuf::from(vfs::registry::image_creds::DEFAULT_DIR),
        }
    }
}

impl FetchConfig {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }

    /// The chunk source's options.
    pub fn options(&self) -> vfs::fetch::FetchOptions {
        vfs::fetch::FetchOptions {
            deadline: self.deadline(),
            concurrency: self.concurrency.max(1),
            prefetch_concurrency: self.prefetch_concurrency.max(1),
            readahead_max: self.readahead_max_mb << 20,
            memory: Some(shim_chunk_memory()),
            ..vfs::fetch::FetchOptions::default()
        }
    }
}

/// The shim's one memory of recently read chunks, shared by every lazy mount it serves: a pod
/// shim with N lazy containers keeps 32 MiB of them, not 32 MiB per container.
fn shim_chunk_memory() -> std::sync::Arc<vfs::fetch::ChunkMemory> {
    static MEMORY: std::sync::OnceLock<std::sync::Arc<vfs::fetch::ChunkMemory>> = std::sync::OnceLock::new();
    MEMORY
        .get_or_init(|| {
            std::sync::Arc::new(vfs::fetch::ChunkMemory::new(vfs::fetch::FetchOptions::default().memory_bytes))
        })
        .clone()
}

/// What the Create request's options said about configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuntimeOptions {
    pub config_path: Option<PathBuf>,
    pub config_body: Option<String>,
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config { path: origin.into(), reason: e.to_string().trim().into() })
    }

    /// Reads a config file. A missing file is an error unless it is the default path.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::Config { path: path.display().to_string(), reason: format!("cannot read: {e}") }),
        }
    }

    /// The effective config for one Create: config_body wins over ConfigPath, which wins over the
    /// default file.
    pub fn resolve(opts: &RuntimeOptions) -> Result<Config> {
        if let Some(body) = opts.config_body.as_deref().filter(|b| !b.trim().is_empty()) {
            return Config::parse(body, "config_body of the runtime options");
        }
        match &opts.config_path {
            Some(path) => Config::load(path, false),
            None => Config::load(Path::new(DEFAULT_CONFIG_PATH), true),
        }
    }
}

/// Decodes CreateTaskRequest.options. Options types we do not use are ignored (debug log), because
/// failing on them breaks ordinary clients (containerd's Go client sends runc CreateOptions).
pub fn runtime_options(any: Option<&Any>) -> Result<RuntimeOptions> {
    let Some(any) = any else { return Ok(RuntimeOptions::default()) };
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIMEOPTIONS_TYPE {
        log::debug!("ignoring runtime options of type {:?}: only {RUNTIMEOPTIONS_TYPE} is used", any.type_url);
        return Ok(RuntimeOptions::default());
    }
    decode_runtimeoptions(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("runtime options {RUNTIMEOPTIONS_TYPE}: cannot decode: {e}")))
}

fn decode_runtimeoptions(
    bytes: &[u8],
) -> std::result::Result<RuntimeOptions, containerd_shim::protos::protobuf::Error> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut out = RuntimeOptions::default();
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            // field 1 type_url, 2 config_path, 3 config_body: all strings (wire type 2).
            0x0a => {
                input.read_string()?;
            }
            0x12 => out.config_path = Some(PathBuf::from(input.read_string()?)).filter(|p| !p.as_os_str().is_empty()),
            0x1a => out.config_body = Some(input.read_string()?),
            other => {
                let wire = containerd_shim::protos::protobuf::rt::WireType::new(other & 7).ok_or_else(|| {
                    containerd_shim::protos::protobuf::Error::from(std::io::Error::other("bad wire type"))
                })?;
                input.skip_field(wire)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any { type_url: type_url.into(), value, ..Default::default() }
    }

    #[test]
    fn defaults_when_default_file_missing() {
        let c = Config::load(Path::new("/nonexistent/config.toml"), true).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn explicit_missing_file_is_a_clear_error() {
        let e = Config::load(Path::new("/nonexistent/x.toml"), false).unwrap_err().to_string();
        assert!(e.starts_with("config /nonexistent/x.toml: cannot read"), "{e}");
        assert!(e.ends_with("fix or remove it"), "{e}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let e = Config::parse("[fetch]\nconcurency = 3\n", "/c.toml").unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
log_level = "debug"
[cache]
dir = "/var/cache/lazy"
max_size_mb = 512
[fetch]
connect_timeout_secs = 1
request_timeout_secs = 2
deadline_secs = 3
concurrency = 4
prefetch = "none"
[registry]
hosts_dir = "/etc/hosts.d"
credentials_file = "/root/.docker/config.json"
[cgroup]
allow_unenforced_limits = true
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.fetch.prefetch, PrefetchMode::None);
        assert_eq!(c.cache.max_size_mb, 512);
        assert!(c.cgroup.allow_unenforced_limits);
    }

    #[test]
    fn runtimeoptions_config_path_and_body() {
        // type_url="x", config_path="/a.toml", config_body="log_level = \"warn\""
        let mut v = vec![0x0a, 1, b'x', 0x12, 7];
        v.extend_from_slice(b"/a.toml");
        let body = b"log_level = \"warn\"";
        v.push(0x1a);
        v.push(body.len() as u8);
        v.extend_from_slice(body);
        let o = runtime_options(Some(&any("runtimeoptions.v1.Options", v))).unwrap();
        assert_eq!(o.config_path, Some(PathBuf::from("/a.toml")));
        assert_eq!(Config::resolve(&o).unwrap().log_level, "warn");
    }

    #[test]
    fn other_option_types_are_ignored() {
        let o = runtime_options(Some(&any("containerd.linux.runc.CreateOptions", vec![0xff, 0xff]))).unwrap();
        assert_eq!(o, RuntimeOptions::default());
    }

    /// The README's configuration reference is the user's only list of keys: it must hold every
    /// key the shim reads and nothing else, with the shim's defaults as values.
    #[test]
    fn readme_config_reference_matches_the_code() {
        let readme = include_str!("../../../README.md");
        let after = readme.split("<!-- config-reference").nth(1).expect("README has the config-reference marker");
        let block = after.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block after it");
        let documented = Config::parse(block, "README.md").expect("every README key exists in the code");

        fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    keys(v, &path, out);
                    out.push(path);
                }
            }
        }
        let mut full = Config::default();
        full.registry.credentials_file = documented.registry.credentials_file.clone();
        full.registry.credential_provider_config = documented.registry.credential_provider_config.clone();
        let (mut code, mut doc) = (Vec::new(), Vec::new());
        keys(&toml::Value::try_from(&full).unwrap(), "", &mut code);
        keys(&toml::from_str(block).unwrap(), "", &mut doc);
        code.sort();
        doc.sort();
        assert_eq!(doc, code, "README config keys vs the shim's Config");
        assert_eq!(documented, full, "README values must be the shim's defaults");
    }

    /// The shipped profiles are read by every Create of their handler: a key the shim does not know
    /// would fail every container of that RuntimeClass.
    #[test]
    fn shipped_profiles_parse() {
        for (name, text) in [
            ("lazy.toml", include_str!("../../../runtimeclass/shim/lazy.toml")),
            ("lazy-sandbox.toml", include_str!("../../../runtimeclass/shim/lazy-sandbox.toml")),
        ] {
            Config::parse(text, name).unwrap_or_else(|e| panic!("runtimeclass/shim/{name}: {e}"));
        }
    }
}
