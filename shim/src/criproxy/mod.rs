//! `containerd-shim-lazy-v2 cri-proxy`: how Kubernetes imagePullSecrets reach lazy mounts.
//!
//! containerd uses the credentials of a CRI `PullImage` for that pull only and never passes them to
//! runtimes, so a pod whose private lazy image needs a pull secret would pull its stub and then fail
//! every read. This proxy sits between the kubelet (`--image-service-endpoint`) and containerd's CRI
//! socket: it forwards every gRPC call unchanged (HTTP/2 frames in, the same frames out, trailers
//! included) and, for `ImageService/PullImage`, also records the request's image reference and
//! `AuthConfig` in the credential directory the shim's registry client asks first
//! ([`vfs::registry::image_creds`]: root-only files, one per repository, expiring). It never
//! changes, delays beyond reading one small request, or answers a call itself except to report that
//! containerd is unreachable.
//!
//! - [`record`]: finding the image and credentials in a PullImage request body.

pub mod record;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{UnixListener, UnixStream};
use vfs::registry::image_creds::{ImageCredStore, DEFAULT_DIR};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// PullImage requests are a reference, credentials and a pod config: a few KiB.
const MAX_PULL_REQUEST: usize = 4 << 20;

/// How long recorded credentials stay usable when the command line does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

const USAGE: &str = "usage: containerd-shim-lazy-v2 cri-proxy --listen SOCKET --containerd SOCKET \
                     [--creds-dir DIR (default /run/containerd-shim-lazy/creds)] [--ttl-secs N (default 43200)]";

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the kubelet connects (`--image-service-endpoint unix://SOCKET`).
    pub listen: PathBuf,
    /// containerd's gRPC socket (its CRI plugin).
    pub containerd: PathBuf,
    pub creds_dir: PathBuf,
    pub ttl: Duration,
}

impl Options {
    pub fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut listen = None;
        let mut containerd = None;
        let mut creds_dir = PathBuf::from(DEFAULT_DIR);
        let mut ttl = DEFAULT_TTL;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
            match a.as_str() {
                "--listen" => listen = Some(PathBuf::from(value()?)),
                "--containerd" => containerd = Some(PathBuf::from(value()?)),
                "--creds-dir" => creds_dir = PathBuf::from(value()?),
                "--ttl-secs" => {
                    let v = value()?;
                    ttl = Duration::from_secs(
                        v.parse().with_context(|| format!("--ttl-secs {v:?}: not a number of seconds"))?,
                    );
                }
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let strip = |p: PathBuf| -> PathBuf {
            p.to_str().and_then(|s| s.strip_prefix("unix://")).map(PathBuf::from).unwrap_or(p)
        };
        Ok(Options {
            listen: strip(listen.with_context(|| format!("--listen is required\n{USAGE}"))?),
            containerd: strip(containerd.with_context(|| format!("--containerd is required\n{USAGE}"))?),
            creds_dir,
            ttl,
        })
    }
}

/// Entry point of the subcommand: logs to stderr, serves until SIGTERM or SIGINT.
pub fn main(args: &[String]) -> i32 {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("containerd-shim-lazy-v2 cri-proxy: {e:#}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-shim-lazy-v2 cri-proxy: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(Arc::new(opts))) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-lazy-v2 cri-proxy: {e:#}");
            1
        }
    }
}

/// Accepts kubelet connections on `opts.listen` until SIGTERM/SIGINT; each gets its own HTTP/2
/// connection to containerd.
pub async fn serve(opts: Arc<Options>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if let Some(parent) = opts.listen.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by an earlier run would make bind fail.
    if std::fs::symlink_metadata(&opts.listen).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt as _;
        m.file_type().is_socket()
    }) {
        let _ = std::fs::remove_file(&opts.listen);
    }
    let listener =
        UnixListener::bind(&opts.listen).with_context(|| format!("listening on {}", opts.listen.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&opts.listen, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", opts.listen.display()))?;
    }
    let store = ImageCredStore::new(&opts.creds_dir);
    let pruned = store.prune();
    log::info!(
        "cri-proxy: serving {} in front of containerd {}; PullImage credentials go to {} for {:?}{}",
        opts.listen.display(),
        opts.containerd.display(),
        opts.creds_dir.display(),
        opts.ttl,
        if pruned > 0 { format!(" ({pruned} expired records removed)") } else { String::new() }
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting a CRI client")?;
                let opts = opts.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, opts).await {
                        log::warn!("cri-proxy: connection: {e:#}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&opts.listen);
    log::info!("cri-proxy: stopped");
    Ok(())
}

async fn connection(down: UnixStream, opts: Arc<Options>) -> anyhow::Result<()> {
    let up = UnixStream::connect(&opts.containerd)
        .await
        .with_context(|| format!("connecting to containerd's CRI socket {}", opts.containerd.display()))?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(up))
        .await
        .with_context(|| format!("HTTP/2 handshake with containerd at {}", opts.containerd.display()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("cri-proxy: containerd connection: {e}");
        }
    });
    let service = hyper::service::service_fn(move |req| forward(req, sender.clone(), opts.clone()));
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(down), service)
        .await
        .context("serving a CRI client")
}

async fn forward(
    req: Request<Incoming>,
    mut sender: SendRequest<Body>,
    opts: Arc<Options>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body: Body = if record::is_pull_image(parts.uri.path()) {
        let bytes = match Limited::new(body, MAX_PULL_REQUEST).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return Ok(grpc_error(13, &format!("cri-proxy: reading the PullImage request: {e}"))),
        };
        remember(&bytes, &opts);
        Full::new(bytes).map_err(|never| match never {}).boxed()
    } else {
        body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed()
    };
    let path = parts.uri.path().to_string();
    if let Err(e) = sender.ready().await {
        return Ok(grpc_error(
            14,
            &format!("cri-proxy: containerd at {} is unreachable: {e}", opts.containerd.display()),
        ));
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed())),
        Err(e) => Ok(grpc_error(
            14,
            &format!("cri-proxy: forwarding {path} to containerd at {}: {e}", opts.containerd.display()),
        )),
    }
}

/// Records the credentials of a PullImage request body; never fails the pull.
fn remember(body: &[u8], opts: &Options) {
    match record::pull_credentials(body) {
        Ok(Some((image, auth))) => match ImageCredStore::new(&opts.creds_dir).put(&image, &auth, opts.ttl) {
            Ok(Some(path)) => {
                log::info!("cri-proxy: PullImage {image}: recorded its credentials in {}", path.display())
            }
            Ok(None) => {
                log::debug!("cri-proxy: PullImage {image}: AuthConfig without username or password; nothing recorded")
            }
            Err(e) => log::warn!("cri-proxy: PullImage {image}: cannot record its credentials: {e}"),
        },
        Ok(None) => {}
        Err(e) => log::warn!("cri-proxy: {e}; forwarding the request unchanged"),
    }
}

/// A trailers-only gRPC answer with `code` (13 internal, 14 unavailable).
fn grpc_error(code: u32, message: &str) -> Response<Body> {
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    let h = resp.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", code.into());
    if let Ok(v) = hyper::header::HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_need_both_sockets() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = Options::parse(&args(
            "--listen unix:///run/p.sock --containerd /run/containerd/containerd.sock --ttl-secs 60",
        ))
        .unwrap();
        assert_eq!(o.listen, PathBuf::from("/run/p.sock"));
        assert_eq!(o.creds_dir, PathBuf::from(DEFAULT_DIR));
        assert_eq!(o.ttl, Duration::from_secs(60));
        let e = Options::parse(&args("--listen /a")).unwrap_err().to_string();
        assert!(e.contains("--containerd is required"), "{e}");
        assert!(Options::parse(&args("--listen /a --containerd /b --bogus")).is_err());
    }
}
