//! OCI distribution client: manifests and blobs, HTTP Range reads, pushes, auth and retries.
//!
//! Owns every HTTP request the crate makes. Knows nothing of chunks or indexes: callers ask for
//! byte ranges of blobs by digest. Everything is async (tokio); blocking callers (FUSE threads) go
//! through a runtime handle in [`crate::fetch`].
//!
//! CONTRACT (signatures other modules rely on; the registry owner implements the bodies and may add
//! private modules such as auth.rs, config.rs, reference.rs under this directory):
//!
//! ```ignore
//! pub struct Reference { pub registry: String, pub repository: String, pub tag: Option<String>, pub digest: Option<Digest> }
//! impl FromStr for Reference   // "host[:port]/repo[:tag][@sha256:..]"; docker.io normalisation ("busybox" -> docker.io/library/busybox)
//! impl Display for Reference
//!
//! pub struct ClientConfig {
//!     pub plain_http: PlainHttp,                 // Always | Never | Auto (Auto = http for loopback hosts, as containerd does)
//!     pub ca_file: Option<PathBuf>, pub client_cert: Option<(PathBuf, PathBuf)>,
//!     pub credentials: Option<(String, String)>, // else docker config.json (DOCKER_CONFIG or /root/.docker/config.json)
//!     pub connect_timeout: Duration, pub request_timeout: Duration,
//!     pub deadline: Duration,                    // give up retrying a request after this long
//!     pub max_concurrency: usize,
//! }
//! impl Default for ClientConfig
//!
//! #[derive(Clone)] pub struct Client   // cheap to clone, one per registry host+repository is fine
//! impl Client {
//!     pub fn new(config: ClientConfig) -> Result<Client, RegistryError>;
//!     pub async fn get_manifest(&self, r: &Reference) -> Result<Manifest { media_type: String, digest: Digest, bytes: Bytes }, RegistryError>;
//!     pub async fn get_blob(&self, r: &Reference, digest: &Digest) -> Result<Bytes, RegistryError>;           // whole blob, verified
//!     pub async fn get_blob_to_file(&self, r: &Reference, digest: &Digest, dest: &Path) -> Result<u64, RegistryError>; // streamed, verified
//!     pub async fn get_blob_range(&self, r: &Reference, digest: &Digest, range: Range<u64>) -> Result<Bytes, RegistryError>;
//!     pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError>;
//!     pub async fn push_blob(&self, r: &Reference, digest: &Digest, data: Bytes) -> Result<(), RegistryError>;   // skips if present
//!     pub async fn push_blob_file(&self, r: &Reference, digest: &Digest, path: &Path) -> Result<(), RegistryError>;
//!     pub async fn push_manifest(&self, r: &Reference, media_type: &str, bytes: Bytes) -> Result<Digest, RegistryError>;
//!     pub fn stats(&self) -> &Arc<crate::stats::Stats> ... (or take a Stats in new); bytes received / requests counted
//! }
//! ```
