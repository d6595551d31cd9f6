//! Against the real docker-registry (distribution 2.8, Debian package `docker-registry`). Ignored by
//! default because it needs that binary; run by hand with
//! `cargo test -p lazy-vfs --lib real_registry -- --ignored --nocapture`.
//! The tests/ crate covers the same ground end to end through lazyctl.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::fetch::{BlobLayout, ChunkRef, ChunkSource, FetchError, FetchOptions, RegistryChunkSource};
use crate::index::{BlobRef, Chunk};
use crate::registry::{Client, ClientConfig, Reference, MEDIA_OCI_MANIFEST};
use crate::stats::Stats;

/// A docker-registry child process, killed (and reaped) on drop.
struct RegistryProc {
    child: Child,
}

impl RegistryProc {
    fn start(config: &std::path::Path, port: u16) -> RegistryProc {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let proc = RegistryProc { child };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "docker-registry did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs the docker-registry binary; run with --ignored"]
fn real_registry_push_range_read_verify_outage_and_recovery() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let mut registry = Some(RegistryProc::start(&config, port));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = Client::new(ClientConfig { deadline: Duration::from_secs(2), ..ClientConfig::default() }).unwrap();
    let repo: Reference = format!("127.0.0.1:{port}/lazy/data").parse().unwrap();

    // A data blob of three zstd chunks of 1 MiB each.
    let contents: Vec<Vec<u8>> = (0..3u32)
        .map(|s| (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761).wrapping_add(s) >> 13) as u8).collect())
        .collect();
    let (blob_ref, blob, chunks) = crate::fetch::tests::make_blob(&contents);
    let blob_digest = blob_ref.digest;
    let config_blob = Bytes::from_static(b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&config_blob).to_string(), "size": config_blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": blob_digest.to_string(), "size": blob.len()}],
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let tagged: Reference = format!("127.0.0.1:{port}/lazy/data:v1").parse().unwrap();
    rt.block_on(async {
        client.push_blob(&repo, &blob_digest, Bytes::from(blob.clone())).await.unwrap();
        client.push_blob(&repo, &Digest::of(&config_blob), config_blob.clone()).await.unwrap();
        assert!(client.blob_exists(&repo, &blob_digest).await.unwrap());
        let md = client.push_manifest(&tagged, MEDIA_OCI_MANIFEST, manifest.clone()).await.unwrap();
        let m = client.get_manifest(&tagged).await.unwrap();
        assert_eq!((m.digest, m.media_type.as_str(), &m.bytes), (md, MEDIA_OCI_MANIFEST, &manifest));
        let part = client.get_blob_range(&repo, &blob_digest, 100..5000).await.unwrap();
        assert_eq!(&part[..], &blob[100..5000]);
        assert_eq!(&client.get_blob(&repo, &blob_digest).await.unwrap()[..], &blob[..]);
    });
    println!("push, manifest round trip, range read: ok");

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(cache_dir.path(), 0).unwrap());
    let stats = Arc::new(Stats::default());
    let source = RegistryChunkSource::new(
        BlobLayout::new(vec![blob_ref], chunks.iter().copied()),
        repo.clone(),
        client.clone(),
        Some(cache.clone()),
        stats.clone(),
        rt.handle().clone(),
        // Only what is read: this checks coalescing, not spans.
        FetchOptions { deadline: Duration::from_secs(3), readahead_max: 0, ..FetchOptions::default() },
    );
    let refs = ChunkRef::of_file("/big", &chunks, 0..chunks.len());
    let out = source.read_chunks(&refs[..2]);
    assert_eq!(out[0].as_ref().unwrap().as_ref(), &contents[0][..]);
    assert_eq!(out[1].as_ref().unwrap().as_ref(), &contents[1][..]);
    let s = stats.snapshot();
    assert_eq!(s.requests, 1, "two adjacent chunks, one range request");
    assert_eq!(s.bytes_fetched, chunks[1].end());
    println!("chunk source: 2 chunks in {} request(s), {} bytes fetched", s.requests, s.bytes_fetched);

    // Outage: cached chunks still read, an uncached one fails within the deadline.
    registry.take();
    assert!(source.read_chunks(&refs[..1])[0].is_ok());
    let t = Instant::now();
    let out = source.read_chunks(&refs[2..]);
    let took = t.elapsed();
    match &out[0] {
        Err(e @ FetchError::Unavailable { .. }) => println!("outage after {took:?}: {e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "{took:?}");

    // Back up: the same read succeeds (once the moment in which a failed chunk fails at once is over).
    let _registry = RegistryProc::start(&config, port);
    std::thread::sleep(crate::fetch::FAILURE_MEMO);
    let out = source.read_chunks(&refs[2..]);
    assert_eq!(out[0].as_ref().unwrap().as_ref(), &contents[2][..]);
    println!("after restart: ok; stats {:?}", stats.snapshot());
}

/// Throughput figures (printed, not asserted beyond correctness): 64 MiB of incompressible data in
/// 1 MiB chunks, read cold through the chunk source in batches of 8 chunks and one at a time,
/// compared with one whole-blob GET, then read warm from the node cache.
#[test]
#[ignore = "needs the docker-registry binary; prints figures; run with --ignored --nocapture"]
fn real_registry_throughput_figures() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let _registry = RegistryProc::start(&config, port);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = Client::new(ClientConfig::default()).unwrap();
    let repo: Reference = format!("127.0.0.1:{port}/lazy/bench").parse().unwrap();

    const N: usize = 64;
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut blob = Vec::new();
    let mut chunks = Vec::new();
    for _ in 0..N {
        let c: Vec<u8> = (0..(1 << 20) / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let z = zstd::bulk::compress(&c, 1).unwrap();
        chunks.push(Chunk {
            blob: 0,
            offset: blob.len() as u64,
            compressed_len: z.len() as u32,
            len: c.len() as u32,
            digest: Digest::of(&c),
        });
        blob.extend_from_slice(&z);
    }
    let blob_ref = BlobRef { digest: Digest::of(&blob), size: blob.len() as u64 };
    rt.block_on(client.push_blob(&repo, &blob_ref.digest, Bytes::from(blob.clone()))).unwrap();
    let mib = blob.len() as f64 / (1 << 20) as f64;

    let t = Instant::now();
    rt.block_on(client.get_blob(&repo, &blob_ref.digest)).unwrap();
    let whole = t.elapsed();
    println!("whole-blob GET ({mib:.0} MiB, verified): {:?} = {:.0} MiB/s", whole, mib / whole.as_secs_f64());

    {
        let t = Instant::now();
        let mut parts = Vec::new();
        for c in &chunks {
            parts.push(rt.block_on(client.get_blob_range(&repo, &blob_ref.digest, c.offset..c.end())).unwrap());
        }
        let t_fetch = t.elapsed();
        let t = Instant::now();
        let plain: Vec<Vec<u8>> =
            chunks.iter().zip(&parts).map(|(c, p)| zstd::bulk::decompress(p, c.len as usize).unwrap()).collect();
        let t_zstd = t.elapsed();
        let t = Instant::now();
        for p in &plain {
            Digest::of(p);
        }
        let t_hash = t.elapsed();
        let cd = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(cd.path(), 0).unwrap();
        let t = Instant::now();
        for (c, p) in chunks.iter().zip(&plain) {
            cache.put(&c.digest, p).unwrap();
        }
        println!(
            "breakdown: 64 range GETs {t_fetch:?}, zstd {t_zstd:?}, sha256 {t_hash:?}, cache put {:?}",
            t.elapsed()
        );
    }
    for batch in [8usize, 1] {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(cache_dir.path(), 0).unwrap());
        let stats = Arc::new(Stats::default());
        let source = RegistryChunkSource::new(
            BlobLayout::new(vec![blob_ref], chunks.iter().copied()),
            repo.clone(),
            client.clone(),
            Some(cache.clone()),
            stats.clone(),
            rt.handle().clone(),
            FetchOptions::default(),
        );
        let refs = ChunkRef::of_file("/bench", &chunks, 0..chunks.len());
        let t = Instant::now();
        for part in refs.chunks(batch) {
            assert!(source.read_chunks(part).iter().all(|r| r.is_ok()));
        }
        let cold = t.elapsed();
        let s = stats.snapshot();
        println!(
            "cold read, {batch} chunk(s) per call: {cold:?} = {:.0} MiB/s, {} requests",
            mib / cold.as_secs_f64(),
            s.requests
        );
        // Warm: a new cache handle over the same directory (as a new process would have) re-hashes
        // each chunk on first use; the second pass trusts the length only.
        let cache = Arc::new(ChunkCache::open(cache_dir.path(), 0).unwrap());
        let source = RegistryChunkSource::new(
            BlobLayout::new(vec![blob_ref], chunks.iter().copied()),
            repo.clone(),
            client.clone(),
            Some(cache),
            stats.clone(),
            rt.handle().clone(),
            FetchOptions::default(),
        );
        for round in ["warm, first use (re-hash)", "warm, verified"] {
            let t = Instant::now();
            for part in refs.chunks(batch) {
                assert!(source.read_chunks(part).iter().all(|r| r.is_ok()));
            }
            println!("{round}, {batch} per call: {:?} = {:.0} MiB/s", t.elapsed(), mib / t.elapsed().as_secs_f64());
        }
        assert_eq!(stats.snapshot().requests, s.requests, "warm reads send no requests");
    }
}
