//! Client tests against a tiny HTTP/1.1 server on 127.0.0.1 whose answers each test scripts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;
use crate::registry::PlainHttp;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn resp(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    Resp { status, headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.to_vec() }
}

type Handler = Arc<dyn Fn(&Req, &str) -> Resp + Send + Sync>;

/// Serves `handler` on 127.0.0.1:<free port> until dropped (the task ends with the runtime).
/// The handler also gets the server's own `host:port`, to write absolute URLs.
struct Server {
    addr: String,
    log: Arc<parking_lot::Mutex<Vec<Req>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(handler: impl Fn(&Req, &str) -> Resp + Send + Sync + 'static) -> Server {
    serve_on(0, handler).await
}

async fn serve_on(port: u16, handler: impl Fn(&Req, &str) -> Resp + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let (log2, addr2) = (log.clone(), addr.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (handler, log, addr) = (handler.clone(), log2.clone(), addr2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end..].to_vec();
                while body.len() < len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&tmp[..n]),
                    }
                }
                let req = Req { method, path, headers, body };
                log.lock().push(req.clone());
                let r = handler(&req, &addr);
                let mut out =
                    format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", r.status, r.body.len());
                for (k, v) in &r.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                if req.method != "HEAD" {
                    bytes.extend_from_slice(&r.body);
                }
                let _ = sock.write_all(&bytes).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Server { addr, log, task }
}

fn client(deadline: Duration) -> Client {
    Client::new(ClientConfig {
        deadline,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        docker_config: Some("/nonexistent/lazy-test-config.json".into()),
        ..ClientConfig::default()
    })
    .unwrap()
}

fn reference(addr: &str) -> Reference {
    format!("{addr}/test/repo").parse().unwrap()
}

const BLOB: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn range_of(req: &Req) -> Option<(usize, usize)> {
    let v = req.header("range")?.strip_prefix("bytes=")?;
    let (s, e) = v.split_once('-')?;
    Some((s.parse().ok()?, e.parse().ok()?))
}

#[tokio::test]
async fn range_reads_check_content_range_and_slice_full_answers() {
    let good = serve(|req, _| match range_of(req) {
        Some((s, e)) => resp(206, &[("Content-Range", &format!("bytes {s}-{e}/{}", BLOB.len()))], &BLOB[s..=e]),
        None => resp(200, &[], BLOB),
    })
    .await;
    let c = client(Duration::from_secs(5));
    let d = Digest::of(BLOB);
    let got = c.get_blob_range(&reference(&good.addr), &d, 10..20).await.unwrap();
    assert_eq!(&got[..], &BLOB[10..20]);
    assert_eq!(good.log.lock()[0].path, format!("/v2/test/repo/blobs/{d}"));
    assert_eq!(&c.get_blob(&reference(&good.addr), &d).await.unwrap()[..], BLOB);
    let wrong = c.get_blob(&reference(&good.addr), &Digest::of(b"other")).await.unwrap_err().to_string();
    assert!(wrong.contains("digest mismatch"), "{wrong}");

    let ignores_range = serve(|_, _| resp(200, &[], BLOB)).await;
    let got = c.get_blob_range(&reference(&ignores_range.addr), &d, 30..36).await.unwrap();
    assert_eq!(&got[..], &BLOB[30..36]);

    let lies = serve(|_, _| resp(206, &[("Content-Range", "bytes 0-9/36")], &BLOB[..10])).await;
    let e = c.get_blob_range(&reference(&lies.addr), &d, 10..20).await.unwrap_err().to_string();
    assert!(e.contains("Content-Range") && e.contains("test/repo") && e.contains(&d.to_string()), "{e}");
}

#[tokio::test]
async fn retries_5xx_then_succeeds_and_404_is_final() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let s = serve(move |req, _| {
        if req.path.contains("missing") {
            return resp(404, &[], b"{}");
        }
        if n2.fetch_add(1, Ordering::SeqCst) < 2 {
            resp(503, &[], b"busy")
        } else {
            resp(200, &[], BLOB)
        }
    })
    .await;
    let c = client(Duration::from_secs(5));
    assert_eq!(&c.get_blob(&reference(&s.addr), &Digest::of(BLOB)).await.unwrap()[..], BLOB);
    assert_eq!(n.load(Ordering::SeqCst), 3);
    let r: Reference = format!("{}/test/missing", s.addr).parse().unwrap();
    let e = c.get_blob(&r, &Digest::of(BLOB)).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("test/missing") && e.to_string().contains("not found"), "{e}");
    assert_eq!(s.log.lock().iter().filter(|r| r.path.contains("missing")).count(), 1, "404 is not retried");
}

#[tokio::test]
async fn connection_refused_gives_up_at_the_deadline_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stats = Arc::new(crate::stats::Stats::default());
    let c = Client::with_stats(
        ClientConfig {
            deadline: Duration::from_millis(800),
            initial_backoff: Duration::from_millis(20),
            ..ClientConfig::default()
        },
        stats.clone(),
    )
    .unwrap();
    let t = Instant::now();
    let e = c.get_blob_range(&reference(&format!("127.0.0.1:{port}")), &Digest::of(BLOB), 0..4).await.unwrap_err();
    let took = t.elapsed();
    assert!(e.is_unavailable());
    let msg = e.to_string();
    assert!(msg.contains(&format!("registry 127.0.0.1:{port}")) && msg.contains("deadline"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(took < Duration::from_secs(2), "gave up after {took:?}");
    let h = &stats.snapshot().hosts[&format!("127.0.0.1:{port}")];
    assert!(h.requests >= 2 && h.failures == h.requests, "it retried: {h:?}");
}

#[tokio::test]
async fn bearer_flow_and_reauth_on_expired_token() {
    let current = Arc::new(parking_lot::Mutex::new("tok1".to_string()));
    let cur = current.clone();
    let s = serve(move |req, addr| {
        if req.path.starts_with("/token") {
            assert!(req.path.contains("scope=repository%3Atest%2Frepo%3Apull"), "{}", req.path);
            assert!(req.path.contains("service=test-registry"), "{}", req.path);
            let tok = cur.lock().clone();
            return resp(200, &[("Content-Type", "application/json")], format!(r#"{{"token":"{tok}"}}"#).as_bytes());
        }
        let want = format!("Bearer {}", cur.lock());
        if req.header("authorization") != Some(want.as_str()) {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="test-registry",scope="repository:test/repo:pull""#
            );
            return resp(401, &[("WWW-Authenticate", &challenge)], b"");
        }
        resp(200, &[], BLOB)
    })
    .await;
    let c = client(Duration::from_secs(5));
    let r = reference(&s.addr);
    let d = Digest::of(BLOB);
    assert_eq!(&c.get_blob(&r, &d).await.unwrap()[..], BLOB);
    assert_eq!(s.log.lock().len(), 3, "401, token, retry");
    assert_eq!(&c.get_blob(&r, &d).await.unwrap()[..], BLOB);
    assert_eq!(s.log.lock().len(), 4, "the token is reused");
    *current.lock() = "tok2".into(); // the old token expired
    assert_eq!(&c.get_blob(&r, &d).await.unwrap()[..], BLOB);
    assert_eq!(s.log.lock().len(), 7, "401, new token, retry: the read does not fail");
}

#[tokio::test]
async fn basic_auth_uses_configured_credentials_and_says_when_there_are_none() {
    let s = serve(|req, _| match req.header("authorization") {
        Some("Basic YWxpY2U6c2VjcmV0") => resp(200, &[], BLOB),
        _ => resp(401, &[("WWW-Authenticate", r#"Basic realm="test""#)], b""),
    })
    .await;
    let d = Digest::of(BLOB);
    let anon = client(Duration::from_secs(2));
    let e = anon.get_blob(&reference(&s.addr), &d).await.unwrap_err().to_string();
    assert!(e.contains("docker login") && e.contains("test/repo"), "{e}");
    let mut cfg = ClientConfig { credentials: Some(("alice".into(), "secret".into())), ..ClientConfig::default() };
    cfg.deadline = Duration::from_secs(2);
    let c = Client::new(cfg).unwrap();
    assert_eq!(&c.get_blob(&reference(&s.addr), &d).await.unwrap()[..], BLOB);
}

#[tokio::test]
async fn push_blob_and_manifest_then_read_back() {
    let store = Arc::new(parking_lot::Mutex::new(HashMap::<String, (String, Vec<u8>)>::new()));
    let st = store.clone();
    let s = serve(move |req, _| {
        let path = req.path.clone();
        let (p, query) = path.split_once('?').unwrap_or((&path, ""));
        match req.method.as_str() {
            "HEAD" | "GET" => match st.lock().get(p) {
                Some((ct, body)) => resp(200, &[("Content-Type", ct)], body),
                None => resp(404, &[], b""),
            },
            "POST" if p == "/v2/test/repo/blobs/uploads/" => {
                resp(202, &[("Location", "/v2/test/repo/blobs/uploads/u1?state=x")], b"")
            }
            "PUT" if p == "/v2/test/repo/blobs/uploads/u1" => {
                assert!(query.contains("state=x"), "{query}");
                let digest = query.split('&').find_map(|kv| kv.strip_prefix("digest=")).unwrap().replace("%3A", ":");
                assert_eq!(req.header("content-type"), Some("application/octet-stream"));
                assert_eq!(Digest::of(&req.body).to_string(), digest);
                st.lock().insert(
                    format!("/v2/test/repo/blobs/{digest}"),
                    ("application/octet-stream".into(), req.body.clone()),
                );
                resp(201, &[], b"")
            }
            "PUT" if p.starts_with("/v2/test/repo/manifests/") => {
                let ct = req.header("content-type").unwrap().to_string();
                let d = Digest::of(&req.body).to_string();
                st.lock().insert(p.to_string(), (ct.clone(), req.body.clone()));
                st.lock().insert(format!("/v2/test/repo/manifests/{d}"), (ct, req.body.clone()));
                resp(201, &[("Docker-Content-Digest", &d)], b"")
            }
            _ => resp(405, &[], b""),
        }
    })
    .await;
    let c = client(Duration::from_secs(5));
    let r = reference(&s.addr);
    let d = Digest::of(BLOB);
    assert!(!c.blob_exists(&r, &d).await.unwrap());
    c.push_blob(&r, &d, Bytes::from_static(BLOB)).await.unwrap();
    assert!(c.blob_exists(&r, &d).await.unwrap());
    let posts = s.log.lock().iter().filter(|r| r.method == "POST").count();
    c.push_blob(&r, &d, Bytes::from_static(BLOB)).await.unwrap();
    assert_eq!(
        s.log.lock().iter().filter(|r| r.method == "POST").count(),
        posts,
        "an existing blob is not uploaded again"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &big).unwrap();
    c.push_blob_file(&r, &Digest::of(&big), &file).await.unwrap();
    let out = dir.path().join("copy");
    assert_eq!(c.get_blob_to_file(&r, &Digest::of(&big), &out).await.unwrap(), big.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), big);

    let manifest =
        Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#);
    let tagged: Reference = format!("{}/test/repo:v1", s.addr).parse().unwrap();
    let md = c.push_manifest(&tagged, MEDIA_OCI_MANIFEST, manifest.clone()).await.unwrap();
    assert_eq!(md, Digest::of(&manifest));
    let m = c.get_manifest(&tagged).await.unwrap();
    assert_eq!((m.media_type.as_str(), m.digest, &m.bytes), (MEDIA_OCI_MANIFEST, md, &manifest));
    let by_digest = Reference { digest: Some(md), tag: None, ..tagged.clone() };
    assert_eq!(c.get_manifest(&by_digest).await.unwrap().bytes, manifest);
    let accept = s.log.lock().iter().rev().find(|r| r.method == "GET").unwrap().header("accept").unwrap().to_string();
    for mt in [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST] {
        assert!(accept.contains(mt), "{accept}");
    }
}

#[tokio::test]
async fn redirects_to_storage_are_followed() {
    let s = serve(|req, addr| {
        if req.path.starts_with("/storage/") {
            return resp(206, &[("Content-Range", "bytes 1-3/36")], &BLOB[1..4]);
        }
        resp(307, &[("Location", &format!("http://{addr}/storage/blob"))], b"")
    })
    .await;
    let c = client(Duration::from_secs(5));
    let got = c.get_blob_range(&reference(&s.addr), &Digest::of(BLOB), 1..4).await.unwrap();
    assert_eq!(&got[..], &BLOB[1..4]);
}

#[test]
fn content_range_parsing() {
    assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
    assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0)));
    assert_eq!(parse_content_range("bytes 5-4/100"), None);
    assert_eq!(parse_content_range("items 1-2/3"), None);
}

#[tokio::test]
async fn a_registry_that_accepts_but_never_answers_fails_near_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // never answer, never close
        }
    });
    let c = Client::new(ClientConfig {
        deadline: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        docker_config: Some("/nonexistent/lazy-test-config.json".into()),
        ..ClientConfig::default()
    })
    .unwrap();
    let t = Instant::now();
    let e = c.get_blob_range(&reference(&addr), &Digest::of(BLOB), 0..4).await.unwrap_err();
    task.abort();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "a silent registry held the call for {:?}", t.elapsed());
}

#[test]
fn plain_http_policy_picks_the_scheme() {
    let url = |plain_http, r: &str| {
        let c = Client::new(ClientConfig {
            plain_http,
            docker_config: Some("/nonexistent".into()),
            ..ClientConfig::default()
        })
        .unwrap();
        let r: Reference = r.parse().unwrap();
        c.endpoints(&r).unwrap()[0].url(&r.registry, &r.repository, "blobs/x").unwrap().to_string()
    };
    assert_eq!(url(PlainHttp::Auto, "127.0.0.1:5000/a"), "http://127.0.0.1:5000/v2/a/blobs/x");
    assert_eq!(url(PlainHttp::Auto, "localhost:5000/a"), "http://localhost:5000/v2/a/blobs/x");
    assert_eq!(url(PlainHttp::Auto, "reg.example.com/a"), "https://reg.example.com/v2/a/blobs/x");
    assert_eq!(url(PlainHttp::Never, "127.0.0.1:5000/a"), "https://127.0.0.1:5000/v2/a/blobs/x");
    assert_eq!(url(PlainHttp::Always, "reg.example.com/a"), "http://reg.example.com/v2/a/blobs/x");
    assert_eq!(url(PlainHttp::Auto, "busybox"), "https://registry-1.docker.io/v2/library/busybox/blobs/x");
}

#[test]
fn unusable_tls_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let e =
        Client::new(ClientConfig { ca_file: Some(ca.clone()), ..ClientConfig::default() }).err().unwrap().to_string();
    assert!(e.contains(&ca.display().to_string()), "{e}");
    let missing = dir.path().join("missing.pem");
    let e = Client::new(ClientConfig { ca_file: Some(missing.clone()), ..ClientConfig::default() })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let e = Client::new(ClientConfig { client_cert: Some((ca.clone(), ca)), ..ClientConfig::default() })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("client certificate"), "{e}");
}

#[tokio::test]
async fn too_many_requests_honours_retry_after_within_the_deadline() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let s = serve(move |_, _| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            resp(429, &[("Retry-After", "1")], b"slow down")
        } else {
            resp(200, &[], BLOB)
        }
    })
    .await;
    let t = Instant::now();
    assert_eq!(
        &client(Duration::from_secs(5)).get_blob(&reference(&s.addr), &Digest::of(BLOB)).await.unwrap()[..],
        BLOB
    );
    assert!(t.elapsed() >= Duration::from_millis(900), "retried after {:?}, before Retry-After", t.elapsed());
    // A Retry-After beyond the deadline means giving up now, not sleeping past the deadline.
    let always = serve(|_, _| resp(429, &[("Retry-After", "60")], b"")).await;
    let t = Instant::now();
    let e = client(Duration::from_secs(1)).get_blob(&reference(&always.addr), &Digest::of(BLOB)).await.unwrap_err();
    assert!(e.is_unavailable() && e.to_string().contains("429"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_download_or_range_read_cut_off_mid_way_resumes_where_it_stopped() {
    let big: Arc<Vec<u8>> = Arc::new((0..300_000u32).map(|i| (i % 253) as u8).collect());
    let b = big.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    // The first answer to each read (the 1st and 3rd request): its headers, then 100 000 bytes of
    // its body and a reset. Every Range is honoured.
    let task = tokio::spawn(async move {
        let mut answers = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let range =
                head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string));
            seen2.lock().push(range.clone().unwrap_or_default());
            let (status, from, to) = match range.as_deref().map(str::trim).and_then(|r| r.split_once('-')) {
                Some((from, to)) => (206, from.parse().unwrap(), to.parse().map_or(b.len(), |t: usize| t + 1)),
                None => (200, 0, b.len()),
            };
            let body = &b[from..to];
            let mut o = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            if status == 206 {
                o.push_str(&format!("Content-Range: bytes {from}-{}/{}\r\n", to - 1, b.len()));
            }
            let mut o = (o + "\r\n").into_bytes();
            o.extend_from_slice(if answers % 2 == 0 { &body[..100_000] } else { body });
            answers += 1;
            let _ = sock.write_all(&o).await;
            drop(sock);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("blob");
    let c = client(Duration::from_secs(5));
    let n = c.get_blob_to_file(&reference(&addr), &Digest::of(&big), &dest).await.unwrap();
    assert_eq!(n, big.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), *big);
    let got = c.get_blob_range(&reference(&addr), &Digest::of(&big), 1000..251_000).await.unwrap();
    assert_eq!(&got[..], &big[1000..251_000]);
    task.abort();
    let seen = seen.lock().clone();
    let seen: Vec<&str> = seen.iter().map(|s| s.trim()).collect();
    assert_eq!(seen, ["", "100000-", "1000-250999", "101000-250999"], "each resumed where it stopped");
}

#[tokio::test]
async fn a_lost_upload_session_starts_a_new_one() {
    let posts = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(parking_lot::Mutex::new(false));
    let (p2, s2) = (posts.clone(), stored.clone());
    let s = serve(move |req, _| match req.method.as_str() {
        "HEAD" => resp(if *s2.lock() { 200 } else { 404 }, &[], b""),
        "POST" => {
            let n = p2.fetch_add(1, Ordering::SeqCst);
            resp(202, &[("Location", &format!("/v2/test/repo/blobs/uploads/s{n}"))], b"")
        }
        // The first session is gone by the time the PUT arrives.
        "PUT" if req.path.starts_with("/v2/test/repo/blobs/uploads/s0") => {
            resp(404, &[], br#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}"#)
        }
        "PUT" => {
            *s2.lock() = true;
            resp(201, &[], b"")
        }
        _ => resp(405, &[], b""),
    })
    .await;
    client(Duration::from_secs(5))
        .push_blob(&reference(&s.addr), &Digest::of(BLOB), Bytes::from_static(BLOB))
        .await
        .unwrap();
    assert_eq!(posts.load(Ordering::SeqCst), 2);
    assert!(*stored.lock());
}

fn ranged(req: &Req) -> Resp {
    match range_of(req) {
        Some((s, e)) => resp(206, &[("Content-Range", &format!("bytes {s}-{e}/{}", BLOB.len()))], &BLOB[s..=e]),
        None => resp(200, &[], BLOB),
    }
}

/// A client whose registry `origin` has the hosts.toml `hosts` (in a temp dir kept alive by the
/// returned guard).
fn client_with_hosts(origin: &str, hosts: &str, stats: Arc<crate::stats::Stats>) -> (Client, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join(origin)).unwrap();
    std::fs::write(d.path().join(origin).join("hosts.toml"), hosts).unwrap();
    let c = Client::with_stats(
        ClientConfig {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            docker_config: Some("/nonexistent/lazy-test-config.json".into()),
            hosts_dir: Some(d.path().to_path_buf()),
            ..ClientConfig::default()
        },
        stats,
    )
    .unwrap();
    (c, d)
}

#[tokio::test]
async fn reads_go_to_the_mirror_and_fail_over_to_the_server_once_then_come_back() {
    let origin = serve(|req, _| ranged(req)).await;
    let mirror_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stats = Arc::new(crate::stats::Stats::default());
    let hosts = format!(
        "server = \"http://{}\"\n[host.\"http://127.0.0.1:{mirror_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        origin.addr
    );
    let (c, _dir) = client_with_hosts(&origin.addr, &hosts, stats.clone());
    let (r, d) = (reference(&origin.addr), Digest::of(BLOB));
    // The mirror is dead: the first read fails over at once, later reads skip it.
    let t = Instant::now();
    assert_eq!(&c.get_blob_range(&r, &d, 0..4).await.unwrap()[..], &BLOB[..4]);
    assert!(t.elapsed() < Duration::from_secs(1), "failover took {:?}", t.elapsed());
    for i in 0..5 {
        assert_eq!(&c.get_blob_range(&r, &d, i..i + 4).await.unwrap()[..], &BLOB[i as usize..i as usize + 4]);
    }
    let snap = stats.snapshot();
    let m = &snap.hosts[&format!("127.0.0.1:{mirror_port}")];
    assert_eq!((m.requests, m.failures), (1, 1), "the dead mirror was tried once: {snap:?}");
    assert_eq!(snap.hosts[&origin.addr].requests, 6);
    assert_eq!(origin.log.lock().len(), 6);

    // The mirror comes up on its port: the prober notices and reads go to it again.
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{mirror_port}")).await.unwrap();
    drop(listener);
    let mirror = serve_on(mirror_port, |req, _| ranged(req)).await;
    let t = Instant::now();
    loop {
        assert_eq!(&c.get_blob_range(&r, &d, 0..4).await.unwrap()[..], &BLOB[..4]);
        if mirror.log.lock().iter().any(|r| r.path.contains("/blobs/")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the mirror was never used again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mirror.log.lock()[0].path, "/v2/", "the prober asks the API root");
    let req = mirror.log.lock().iter().find(|r| r.path.contains("/blobs/")).unwrap().clone();
    assert_eq!(req.path, format!("/v2/test/repo/blobs/{d}?ns={}", origin.addr.replace(':', "%3A")));
    let before = origin.log.lock().len();
    c.get_blob_range(&r, &d, 4..8).await.unwrap();
    assert_eq!(origin.log.lock().len(), before, "the origin serves nothing while the mirror is up");
}

#[tokio::test]
async fn mirror_404_falls_through_and_capabilities_are_honoured() {
    let origin = serve(|req, _| {
        if req.path.contains("/manifests/") {
            return resp(200, &[("Content-Type", MEDIA_OCI_MANIFEST)], b"{}");
        }
        ranged(req)
    })
    .await;
    let mirror = serve(|_, _| resp(404, &[], b"")).await;
    let stats = Arc::new(crate::stats::Stats::default());
    let hosts = format!(
        "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n  header = {{ X-Cache-Key = \"k1\" }}\n",
        origin.addr, mirror.addr
    );
    let (c, _dir) = client_with_hosts(&origin.addr, &hosts, stats.clone());
    let (r, d) = (reference(&origin.addr), Digest::of(BLOB));
    assert_eq!(&c.get_blob_range(&r, &d, 0..4).await.unwrap()[..], &BLOB[..4]);
    assert_eq!(mirror.log.lock().len(), 1);
    assert_eq!(mirror.log.lock()[0].header("x-cache-key"), Some("k1"));
    let tagged: Reference = format!("{}/test/repo:v1", origin.addr).parse().unwrap();
    c.get_manifest(&tagged).await.unwrap();
    assert_eq!(mirror.log.lock().len(), 1, "a pull-only mirror is not asked to resolve a tag");
    assert!(!stats.snapshot().hosts.is_empty());
}

#[tokio::test]
async fn a_mirror_that_accepts_but_never_answers_is_skipped_after_the_failover_answer_timeout() {
    let origin = serve(|req, _| ranged(req)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // never answer, never close
        }
    });
    let stats = Arc::new(crate::stats::Stats::default());
    let hosts = format!(
        "server = \"http://{}\"\n[host.\"http://{hung}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        origin.addr
    );
    let (c, _dir) = client_with_hosts(&origin.addr, &hosts, stats.clone());
    let (r, d) = (reference(&origin.addr), Digest::of(BLOB));
    let t = Instant::now();
    assert_eq!(&c.get_blob_range(&r, &d, 0..4).await.unwrap()[..], &BLOB[..4]);
    let first = t.elapsed();
    assert!(first < Duration::from_secs(5), "the hung mirror held the read for {first:?}");
    let t = Instant::now();
    for i in 0..5 {
        assert_eq!(&c.get_blob_range(&r, &d, i..i + 4).await.unwrap()[..], &BLOB[i as usize..i as usize + 4]);
    }
    assert!(t.elapsed() < Duration::from_secs(1), "reads after failover took {:?}", t.elapsed());
    task.abort();
    let snap = stats.snapshot();
    assert_eq!(snap.hosts[&hung].failures, 1, "the hung mirror was tried once: {snap:?}");
}
