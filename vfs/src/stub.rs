//! The stub image: a normal, runnable OCI image whose config is the source image's config and whose
//! single small layer holds the lazy index at [`INDEX_PATH`]. Unmodified containerd, ctr, CRI and
//! nerdctl pull it like any image; the lazy shim finds the index in the unpacked snapshot.
//!
//! The destination tag points at an OCI image index holding the stub manifest (with the source's
//! platform) and an artifact manifest listing every data blob (platform unknown/unknown, the way
//! attestations are attached): platform matchers never pull it, and registry garbage collection
//! keeps the data blobs because a tagged index references them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::index::{Index, IndexError, INDEX_PATH};
use crate::platform::Platform;
use crate::registry::{Client, Reference, RegistryError, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};

/// Label on the stub image's config marking it lazy.
pub const LAZY_LABEL: &str = "io.containerd.lazy.image";
pub const LAZY_LABEL_VALUE: &str = "v1";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Config media type of the artifact manifest that lists the data blobs.
pub const MEDIA_BLOBS_CONFIG: &str = "application/vnd.containerd.lazy.blobs.v1+json";
/// Media type of a data blob (concatenated, independently zstd-compressed chunks).
pub const MEDIA_CHUNKS: &str = "application/vnd.containerd.lazy.chunks.v1";
/// Annotation on the artifact manifest's descriptor in the image index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.containerd.lazy.reference-type";
pub const REFERENCE_TYPE_BLOBS: &str = "blobs";
/// Largest stub layer / index accepted from a registry (the index of a huge image is a few MiB).
pub const MAX_STUB_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StubError {
    // Errors are part of the messages (not `source`s), so `{:#}` chains do not print them twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{image}: not a lazy image: {reason}; convert it first with `lazyctl convert`")]
    NotLazy { image: String, reason: String },
    #[error("{image}: {reason}")]
    Malformed { image: String, reason: String },
    #[error("{image}: {error}")]
    Index { image: String, error: IndexError },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A built stub image, every document as the exact bytes that get pushed.
#[derive(Debug, Clone)]
pub struct StubImage {
    pub layer: Vec<u8>,
    pub layer_digest: Digest,
    pub diff_id: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub blobs_config: Vec<u8>,
    pub blobs_config_digest: Digest,
    pub blobs_manifest: Vec<u8>,
    pub blobs_manifest_digest: Digest,
    /// The OCI image index the destination tag points at.
    pub image_index: Vec<u8>,
}

/// The stub layer: an uncompressed tar with `.lazy/` and `.lazy/index`, then gzip. Deterministic
/// (fixed mtimes, owner root), so the same index always gives the same layer digest.
fn stub_layer(encoded_index: &[u8]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, ".lazy/", std::io::empty()).expect("tar into memory");
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o444);
    file.set_size(encoded_index.len() as u64);
    file.set_mtime(0);
    tar.append_data(&mut file, INDEX_PATH, encoded_index).expect("tar into memory");
    let raw = tar.into_inner().expect("tar into memory");
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).expect("gzip into memory");
    (gz.finish().expect("gzip into memory"), diff_id)
}

/// Builds the stub image for `index` from the source image's config document.
pub fn build(source_config: &Value, platform: &Platform, index: &Index) -> StubImage {
    let (layer, diff_id) = stub_layer(&index.encode());
    let layer_digest = Digest::of(&layer);

    let mut config = source_config.clone();
    if !config.is_object() {
        config = json!({});
    }
    let obj = config.as_object_mut().expect("object");
    obj.insert("os".into(), json!(platform.os));
    obj.insert("architecture".into(), json!(platform.architecture));
    if let Some(v) = &platform.variant {
        obj.insert("variant".into(), json!(v));
    }
    let cfg = obj.entry("config").or_insert_with(|| json!({}));
    if !cfg.is_object() {
        *cfg = json!({});
    }
    let labels = cfg.as_object_mut().expect("object").entry("Labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels.as_object_mut().expect("object").insert(LAZY_LABEL.into(), json!(LAZY_LABEL_VALUE));
    obj.insert("rootfs".into(), json!({"type": "layers", "diff_ids": [diff_id.to_string()]}));
    // History must have exactly one non-empty entry per diff id: keep the empty ones (they
    // document ENV, CMD...) and add one for the stub layer.
    let mut history: Vec<Value> = obj
        .get("history")
        .and_then(Value::as_array)
        .map(|h| h.iter().filter(|e| e.get("empty_layer").and_then(Value::as_bool) == Some(true)).cloned().collect())
        .unwrap_or_default();
    history.push(json!({"created_by": "lazyctl convert", "comment": "lazy index at /.lazy/index"}));
    obj.insert("history".into(), Value::Array(history));
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = Digest::of(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
        "annotations": {LAZY_LABEL: LAZY_LABEL_VALUE},
    }))
    .expect("json");
    let manifest_digest = Digest::of(&manifest);

    let blobs_config =
        serde_json::to_vec(&json!({"index": layer_digest.to_string(), "chunkSize": index.chunk_size})).expect("json");
    let blobs_config_digest = Digest::of(&blobs_config);
    let blob_descs: Vec<Value> = index
        .blobs
        .iter()
        .map(|b| json!({"mediaType": MEDIA_CHUNKS, "digest": b.digest.to_string(), "size": b.size}))
        .collect();
    let blobs_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "artifactType": MEDIA_BLOBS_CONFIG,
        "config": {"mediaType": MEDIA_BLOBS_CONFIG, "digest": blobs_config_digest.to_string(), "size": blobs_config.len()},
        "layers": blob_descs,
        "subject": {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_digest.to_string(), "size": manifest.len()},
    }))
    .expect("json");
    let blobs_manifest_digest = Digest::of(&blobs_manifest);

    let image_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_digest.to_string(), "size": manifest.len(), "platform": platform},
            {
                "mediaType": MEDIA_OCI_MANIFEST, "digest": blobs_manifest_digest.to_string(), "size": blobs_manifest.len(),
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {REFERENCE_TYPE_ANNOTATION: REFERENCE_TYPE_BLOBS, "vnd.docker.reference.digest": manifest_digest.to_string()},
            },
        ],
    }))
    .expect("json");

    StubImage {
        layer,
        layer_digest,
        diff_id,
        config,
        config_digest,
        manifest,
        manifest_digest,
        blobs_config,
        blobs_config_digest,
        blobs_manifest,
        blobs_manifest_digest,
        image_index,
    }
}

/// Reads `<rootfs_dir>/.lazy/index` if present: `None` means the image is not lazy. The shim calls
/// this on the unpacked stub snapshot.
pub fn read_index_from_dir(rootfs_dir: &Path) -> Result<Option<Index>, StubError> {
    let path = rootfs_dir.join(INDEX_PATH);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StubError::Io { path, error: e }),
    };
    let index = Index::decode(&bytes).map_err(|error| StubError::Index { image: path.display().to_string(), error })?;
    Ok(Some(index))
}

/// Extracts the encoded index from a stub layer (gzip or plain tar).
pub fn index_from_layer(image: &str, layer: &[u8]) -> Result<Index, StubError> {
    let reader: Box<dyn Read> =
        if layer.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::GzDecoder::new(layer)) } else { Box::new(layer) };
    let malformed = |reason: String| StubError::Malformed { image: image.to_string(), reason };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| malformed(format!("stub layer is not a tar: {e}")))? {
        let mut entry = entry.map_err(|e| malformed(format!("stub layer: {e}")))?;
        let path = entry.path_bytes().into_owned();
        let path = path.strip_prefix(b"./").unwrap_or(&path);
        if path == INDEX_PATH.as_bytes() {
            if entry.size() > MAX_STUB_BYTES {
                return Err(malformed(format!("{INDEX_PATH} of {} bytes is too large", entry.size())));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| malformed(format!("stub layer: {INDEX_PATH}: {e}")))?;
            return Index::decode(&bytes).map_err(|error| StubError::Index { image: image.to_string(), error });
        }
    }
    Err(StubError::NotLazy { image: image.to_string(), reason: format!("its first layer has no {INDEX_PATH}") })
}

/// Pulls a lazy image's index: image index -> stub manifest for this host -> stub layer -> index.
pub async fn fetch_index(client: &Client, reference: &Reference) -> Result<Index, StubError> {
    let image = reference.to_string();
    let malformed = |reason: String| StubError::Malformed { image: image.clone(), reason };
    let m = client.get_manifest(reference).await?;
    let mut doc: Value =
        serde_json::from_slice(&m.bytes).map_err(|e| malformed(format!("manifest is not JSON: {e}")))?;
    if m.media_type == MEDIA_OCI_INDEX || m.media_type == MEDIA_DOCKER_LIST || doc.get("manifests").is_some() {
        let host = Platform::host();
        let manifests = doc.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
        let pick = manifests
            .iter()
            .filter(|d| d.pointer(&format!("/annotations/{}", REFERENCE_TYPE_ANNOTATION.replace('/', "~1"))).is_none())
            .find(|d| {
                d.get("platform")
                    .and_then(|p| serde_json::from_value::<Platform>(p.clone()).ok())
                    .is_some_and(|p| host.matches(&p))
            })
            .ok_or_else(|| StubError::NotLazy { image: image.clone(), reason: format!("no manifest for {host}") })?;
        let digest: Digest = pick
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| malformed("image index entry without a valid digest".into()))?;
        let r = Reference { digest: Some(digest), tag: None, ..reference.clone() };
        let m = client.get_manifest(&r).await?;
        doc = serde_json::from_slice(&m.bytes).map_err(|e| malformed(format!("manifest is not JSON: {e}")))?;
    }
    let layers = doc.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(StubError::NotLazy { image, reason: format!("{} layers, a stub has exactly one", layers.len()) });
    };
    let size = layer.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size > MAX_STUB_BYTES {
        return Err(malformed(format!("stub layer of {size} bytes is too large")));
    }
    let digest: Digest = layer
        .get("digest")
        .and_then(Value::as_str)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| malformed("layer descriptor without a valid digest".into()))?;
    let bytes = client.get_blob(&reference.repository_only(), &digest).await?;
    index_from_layer(&image, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_carries_config_label_and_index() {
        let index = Index::new(
            4096,
            "127.0.0.1:5000/x".into(),
            vec![],
            vec![crate::index::Inode {
                kind: crate::index::Kind::Dir { entries: vec![] },
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: vec![],
            }],
            vec![],
        );
        let src = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sh"], "Env": ["A=1"], "WorkingDir": "/w", "User": "1000"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]},
            "history": [{"created_by": "ADD"}, {"created_by": "ENV A=1", "empty_layer": true}, {"created_by": "RUN"}],
        });
        let stub = build(&src, &Platform::host(), &index);
        let cfg: Value = serde_json::from_slice(&stub.config).unwrap();
        assert_eq!(cfg["config"]["Entrypoint"], json!(["/bin/sh"]));
        assert_eq!(cfg["config"]["WorkingDir"], json!("/w"));
        assert_eq!(cfg["config"]["Labels"][LAZY_LABEL], json!("v1"));
        assert_eq!(cfg["rootfs"]["diff_ids"], json!([stub.diff_id.to_string()]));
        assert_eq!(cfg["history"].as_array().unwrap().len(), 2);
        assert_eq!(index_from_layer("t", &stub.layer).unwrap(), index);
        let ii: Value = serde_json::from_slice(&stub.image_index).unwrap();
        assert_eq!(ii["manifests"][1]["platform"]["os"], json!("unknown"));
        assert_eq!(ii["manifests"][0]["digest"], json!(stub.manifest_digest.to_string()));

        let dir = tempfile::tempdir().unwrap();
        assert!(read_index_from_dir(dir.path()).unwrap().is_none());
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(stub.layer.as_slice()));
        ar.unpack(dir.path()).unwrap();
        assert_eq!(read_index_from_dir(dir.path()).unwrap().unwrap(), index);
    }
}
