//! A link emulator for benchmarks: a userspace TCP proxy on loopback that delays every segment by a
//! one-way delay in each direction and limits throughput with a shared rate, because these kernels
//! have no `sch_netem` (PLATFORM.md). Every client of a benchmark reaches the registry only
//! through a [`Link`] route, so pulls, lazy fetches and peers' fetches cross the same link.
//!
//! Model: each direction is a FIFO link of `rate` bits per second followed by a delay line. A
//! segment read from one side is scheduled on its direction's serializer (virtual time: it starts
//! when the previous segment, of ANY connection, has left, and takes `len * 8 / rate`), then
//! delivered `one_way_delay` after it left. Delivery is by timestamp, so many segments are in
//! flight at once: throughput is bounded by the rate, never by the delay (a delay line, not
//! stop-and-wait). Readers never run more than [`READ_AHEAD`] ahead of their serializer, so one
//! bulk connection cannot queue megabytes in front of a small request of another connection.
//!
//! The rate is shared by all connections and routes of a `Link`, separately per direction (a
//! full-duplex link: 200 Mbit/s down and 200 Mbit/s up). The shape can be changed at any time
//! ([`Link::set_shape`]), so a benchmark sets up its images unshaped and measures shaped.
//!
//! The link counts what crosses it ([`Link::counters`]): bytes each way and connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest segment the proxy reads and schedules at once.
const SEGMENT: usize = 32 * 1024;
/// How far a reader may run ahead of its direction's serializer.
const READ_AHEAD: Duration = Duration::from_millis(4);

/// The link's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Delay of every segment, each way (a round trip costs twice this).
    pub one_way_delay: Duration,
    /// Bits per second, per direction; None for unlimited.
    pub rate_bps: Option<u64>,
}

impl Shape {
    /// A link with round-trip time `rtt` (half each way) and `mbit` Mbit/s each way.
    pub fn new(rtt: Duration, mbit: f64) -> Shape {
        Shape { one_way_delay: rtt / 2, rate_bps: Some((mbit * 1e6) as u64) }
    }

    /// No delay, no rate limit (plain loopback through a proxy).
    pub fn unshaped() -> Shape {
        Shape { one_way_delay: Duration::ZERO, rate_bps: None }
    }

    pub fn rtt(&self) -> Duration {
        self.one_way_delay * 2
    }

    /// Bytes per second, per direction, when limited.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        self.rate_bps.map(|r| r as f64 / 8.0)
    }

    fn transmit_time(&self, len: usize) -> Duration {
        match self.rate_bps {
            Some(rate) if rate > 0 => Duration::from_secs_f64(len as f64 * 8.0 / rate as f64),
            _ => Duration::ZERO,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rate_bps {
            Some(r) => write!(f, "{:.1} ms RTT, {:.0} Mbit/s", self.rtt().as_secs_f64() * 1e3, r as f64 / 1e6),
            None if self.one_way_delay.is_zero() => write!(f, "unshaped"),
            None => write!(f, "{:.1} ms RTT, unlimited rate", self.rtt().as_secs_f64() * 1e3),
        }
    }
}

/// What crossed the link since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Bytes from the upstream (registry) to clients.
    pub down_bytes: u64,
    /// Bytes from clients to the upstream.
    pub up_bytes: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            down_bytes: self.down_bytes - o.down_bytes,
            up_bytes: self.up_bytes - o.up_bytes,
            connections: self.connections - o.connections,
        }
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Down = 0,
    Up = 1,
}

struct Shared {
    shape: Mutex<Shape>,
    /// Per direction: when the serializer is free again.
    next_free: [Mutex<Instant>; 2],
    down: AtomicU64,
    up: AtomicU64,
    connections: AtomicU64,
    /// True while the link is cut: new connections are closed at once, open ones were closed.
    cut: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn reset_queues(&self) {
        for next in &self.next_free {
            *next.lock().expect("serializer lock") = Instant::now();
        }
    }

    fn shape(&self) -> Shape {
        *self.shape.lock().expect("shape lock")
    }

    /// Schedules `len` bytes on `dir`'s serializer; returns when their last bit has left.
    fn transmit(&self, dir: Dir, len: usize, shape: &Shape) -> Instant {
        let now = Instant::now();
        let mut next = self.next_free[dir as usize].lock().expect("serializer lock");
        let start = (*next).max(now);
        *next = start + shape.transmit_time(len);
        *next
    }
}

/// A running link emulator: a tokio runtime of its own, serving any number of routes.
/// Dropping it closes every listener and connection.
pub struct Link {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Link {
    pub fn new(shape: Shape) -> Result<Link> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("link")
            .enable_all()
            .build()
            .context("starting the link emulator's runtime")?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            shape: Mutex::new(shape),
            next_free: [Mutex::new(now), Mutex::new(now)],
            down: AtomicU64::new(0),
            up: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cut: tokio::sync::watch::channel(false).0,
        });
        Ok(Link { shared, runtime: Some(runtime) })
    }

    /// Listens on a fresh loopback port and forwards every connection to `127.0.0.1:upstream`
    /// through the link. Returns the port clients use.
    pub fn route(&self, upstream: u16) -> Result<u16> {
        self.serve(upstream, None)
    }

    /// Like [`Link::route`], but a connection that opens with a TLS handshake goes to `tls`
    /// and any other to `plain`: one `host:port` that answers both HTTP and HTTPS. SOCI needs
    /// this: it fetches its index only over HTTPS but layers of a loopback registry only over
    /// plain HTTP (containerd's resolver treats loopback hosts as plain-HTTP).
    pub fn route_by_protocol(&self, plain: u16, tls: u16) -> Result<u16> {
        self.serve(plain, Some(tls))
    }

    fn serve(&self, plain: u16, tls: Option<u16>) -> Result<u16> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a link port")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = self.shared.clone();
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut cut = shared.cut.subscribe();
                    if *cut.borrow_and_update() {
                        return; // dropping `client` closes it: the peer sees a reset or EOF
                    }
                    let mut upstream = plain;
                    if let Some(tls) = tls {
                        // Both protocols start with the client talking; 0x16 opens a TLS record.
                        let mut first = [0u8; 1];
                        if matches!(client.peek(&mut first).await, Ok(1)) && first[0] == 0x16 {
                            upstream = tls;
                        }
                    }
                    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
                    let server = match tokio::net::TcpStream::connect(upstream).await {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!("link: connecting to upstream {upstream}: {e}");
                            return;
                        }
                    };
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, shared.clone(), Dir::Up));
                    let abort = up.abort_handle();
                    tokio::select! {
                        _ = async {
                            pump(sr, cw, shared, Dir::Down).await;
                            let _ = up.await;
                        } => {}
                        // Cut: both directions are dropped, which closes both sockets mid-transfer.
                        _ = cut.wait_for(|cut| *cut) => abort.abort(),
                    }
                });
            }
        });
        Ok(port)
    }

    /// Cuts the link (closes every open connection, dropping what it still had queued, and
    /// refuses new ones) or mends it.
    pub fn set_cut(&self, cut: bool) {
        self.shared.cut.send_replace(cut);
        self.shared.reset_queues();
    }

    /// Changes the shape for every segment scheduled from now on (the queue built under the old
    /// shape is forgotten: a link sped up after a trickle is fast at once).
    pub fn set_shape(&self, shape: Shape) {
        *self.shared.shape.lock().expect("shape lock") = shape;
        self.shared.reset_queues();
    }

    pub fn shape(&self) -> Shape {
        self.shared.shape()
    }

    pub fn counters(&self) -> Counters {
        Counters {
            down_bytes: self.shared.down.load(Ordering::SeqCst),
            up_bytes: self.shared.up.load(Ordering::SeqCst),
            connections: self.shared.connections.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Copies `from` to `to` through `dir` of the link: schedule, then deliver at the timestamp.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    dir: Dir,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let mut cut = shared.cut.subscribe();
    let writer = tokio::spawn(async move {
        let deliver = async move {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at.into()).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        };
        // A cut drops what is still queued (and the socket with it): those bytes never arrive.
        tokio::select! {
            _ = deliver => {}
            _ = cut.wait_for(|cut| *cut) => {}
        }
    });
    let mut buf = vec![0u8; SEGMENT];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let shape = shared.shape();
        let departs = shared.transmit(dir, n, &shape);
        let counter = match dir {
            Dir::Down => &shared.down,
            Dir::Up => &shared.up,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if tx.send((departs + shape.one_way_delay, buf[..n].to_vec())).await.is_err() {
            break;
        }
        // Stay close to the serializer: the queue of a shared link is its other users' delay.
        if let Some(ahead) = departs.checked_duration_since(Instant::now()) {
            if ahead > READ_AHEAD {
                tokio::time::sleep_until((departs - READ_AHEAD).into()).await;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// The shape a link showed when measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measured {
    /// Median round trip of a small HTTP request on an open connection.
    pub rtt: Duration,
    /// Bytes per second of one large HTTP download (body only, from request to last byte).
    pub throughput: f64,
    /// Size of that download.
    pub bulk_bytes: u64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "measured {:.1} ms RTT, {:.0} Mbit/s ({:.1} MB/s over a {:.1} MB download)",
            self.rtt.as_secs_f64() * 1e3,
            self.throughput * 8.0 / 1e6,
            self.throughput / 1e6,
            self.bulk_bytes as f64 / 1e6
        )
    }
}

/// Measures the link in front of an HTTP server at `127.0.0.1:port`: the median of 5 round trips
/// of `GET small_path` on one kept-alive connection (after a first request that opens it), and
/// the throughput of `GET bulk_path`. Prints both next to the configured shape and returns them.
pub fn check_shape(port: u16, small_path: &str, bulk_path: &str, configured: &Shape) -> Result<Measured> {
    let mut conn = HttpConn::connect(port)?;
    conn.get(small_path)?;
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        conn.get(small_path)?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let t = Instant::now();
    let bulk_bytes = conn.get(bulk_path)?;
    let secs = t.elapsed().as_secs_f64();
    let measured = Measured { rtt: rtts[rtts.len() / 2], throughput: bulk_bytes as f64 / secs, bulk_bytes };
    println!("link: configured {configured}; {measured}");
    Ok(measured)
}

/// A minimal HTTP/1.1 client for the shape check: keep-alive, Content-Length bodies only.
struct HttpConn {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    fn connect(port: u16) -> Result<HttpConn> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(HttpConn { port, reader: BufReader::with_capacity(256 * 1024, stream) })
    }

    /// GET `path`, read the whole body; returns the body length. Fails unless 200.
    fn get(&mut self, path: &str) -> Result<u64> {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: */*\r\n\r\n", self.port)?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut len: Option<u64> = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("GET {path}: connection closed inside the headers");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok();
                }
            }
        }
        let len = len.with_context(|| format!("GET {path}: no Content-Length ({})", status.trim()))?;
        let copied = std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink())?;
        if code != 200 || copied != len {
            bail!("GET {path} through the link: {} ({copied} of {len} body bytes)", status.trim());
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A tiny HTTP server: `/small` answers 2 bytes, `/bulk` answers `bulk` bytes; keep-alive.
    fn http_server(bulk: usize) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || {
                    // Like Go's net/http (docker-registry): no Nagle delay on small answers.
                    conn.set_nodelay(true).unwrap();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut out = conn;
                    let body = vec![7u8; bulk];
                    loop {
                        let mut request = String::new();
                        if reader.read_line(&mut request).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim_end().is_empty() {
                                break;
                            }
                        }
                        let body: &[u8] = if request.contains("/bulk") { &body } else { b"{}" };
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if out.write_all(head.as_bytes()).and_then(|_| out.write_all(body)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[test]
    fn shaped_link_bounds_rtt_and_throughput() {
        let upstream = http_server(8 << 20);
        let shape = Shape::new(Duration::from_millis(20), 200.0);
        let link = Link::new(shape).unwrap();
        let port = link.route(upstream).unwrap();
        let m = check_shape(port, "/small", "/bulk", &shape).unwrap();
        assert!(m.rtt >= shape.rtt(), "round trip {:?} shorter than the configured {:?}", m.rtt, shape.rtt());
        let limit = shape.bytes_per_sec().unwrap();
        assert!(m.throughput <= limit * 1.1, "{m}: above the configured rate {limit} B/s x 1.1");
        // A delay line keeps many segments in flight; stop-and-wait would give SEGMENT per RTT
        // (1.6 MB/s, 0.07x the rate).
        assert!(m.throughput >= limit * 0.25, "{m}: the link is limited by its delay, not its rate");
        let c = link.counters();
        assert!(c.down_bytes >= 8 << 20 && c.up_bytes > 0 && c.connections == 1, "{c:?}");
    }

    #[test]
    fn shape_changes_apply_to_open_connections_and_unshaped_is_fast() {
        let upstream = http_server(1 << 20);
        let link = Link::new(Shape::unshaped()).unwrap();
        let port = link.route(upstream).unwrap();
        let mut conn = HttpConn::connect(port).unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            conn.get("/small").unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(100), "unshaped round trips took {:?}", t.elapsed());
        link.set_shape(Shape::new(Duration::from_millis(30), 100.0));
        let t = Instant::now();
        conn.get("/small").unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30), "shaped round trip took {:?}", t.elapsed());
    }

    #[test]
    fn connections_share_the_rate() {
        let upstream = http_server(4 << 20);
        let shape = Shape::new(Duration::from_millis(2), 100.0);
        let link = Link::new(shape).unwrap();
        let port = link.route(upstream).unwrap();
        let t = Instant::now();
        let threads: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || HttpConn::connect(port).unwrap().get("/bulk").unwrap()))
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let rate = total as f64 / t.elapsed().as_secs_f64();
        assert!(rate <= shape.bytes_per_sec().unwrap() * 1.1, "3 connections together got {rate} B/s");
    }

    #[test]
    fn route_by_protocol_sends_tls_handshakes_to_the_tls_upstream() {
        let plain = http_server(10);
        let tls = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tls_port = tls.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in tls.incoming().flatten() {
                let mut first = [0u8; 1];
                let _ = conn.read_exact(&mut first);
                let _ = conn.write_all(if first[0] == 0x16 { b"tls" } else { b"???" });
            }
        });
        let link = Link::new(Shape::unshaped()).unwrap();
        let port = link.route_by_protocol(plain, tls_port).unwrap();
        HttpConn::connect(port).unwrap().get("/small").unwrap();
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        conn.write_all(&[0x16, 3, 1]).unwrap();
        let mut answer = [0u8; 3];
        conn.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"tls");
    }
}
