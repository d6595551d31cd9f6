//! Where a conversion's image comes from: a registry reference or an OCI image layout
//! (`oci:DIR[:TAG]`, as skopeo and umoci write), and which platform of a multi-platform image.
//! Produces the image config and the layer blobs as local files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;

use super::{ConvertError, LayerBlob};
use crate::digest::Digest;
use crate::platform::Platform;
use crate::registry::{Client, Reference};

const MEDIA_INDEXES: [&str; 2] = [crate::registry::MEDIA_OCI_INDEX, crate::registry::MEDIA_DOCKER_LIST];

/// The image to convert, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Layout { dir: PathBuf, tag: Option<String> },
    Registry(Reference),
}

impl FromStr for SourceRef {
    type Err = ConvertError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("oci:") {
            Some(rest) => {
                // DIR may itself contain ':' only if a tag follows; the tag is after the last ':'
                // when that part has no '/'.
                let (dir, tag) = match rest.rsplit_once(':') {
                    Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
                    _ => (rest, None),
                };
                Ok(SourceRef::Layout { dir: PathBuf::from(dir), tag })
            }
            None => Ok(SourceRef::Registry(s.parse().map_err(crate::registry::RegistryError::from)?)),
        }
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceRef::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            SourceRef::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            SourceRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

/// The selected image: its config document, its platform and its layers on local disk.
#[derive(Debug)]
pub struct SourceImage {
    pub config: Value,
    pub platform: Platform,
    pub layers: Vec<LayerBlob>,
}

struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
}

fn source_err(image: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError::Source { image: image.to_string(), reason: reason.into() }
}

fn descriptor(image: &str, v: &Value, what: &str) -> Result<Descriptor, ConvertError> {
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| source_err(image, format!("{what}: descriptor has no digest")))?;
    let digest = digest.parse::<Digest>().map_err(|e| source_err(image, format!("{what}: {e}")))?;
    Ok(Descriptor {
        media_type: v.get("mediaType").and_then(Value::as_str).unwrap_or_default().to_string(),
        digest,
        size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
    })
}

fn parse_json(image: &str, what: &str, bytes: &[u8]) -> Result<Value, ConvertError> {
    serde_json::from_slice(bytes).map_err(|e| source_err(image, format!("{what} is not valid JSON: {e}")))
}

fn is_index(doc: &Value, media_type: &str) -> bool {
    MEDIA_INDEXES.contains(&media_type) || (media_type.is_empty() && doc.get("manifests").is_some())
}

/// Picks the manifest for `want` from an image index.
fn select_platform(image: &str, index: &Value, want: &Platform) -> Result<Descriptor, ConvertError> {
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| source_err(image, "image index has no manifests"))?;
    let mut seen = Vec::new();
    for m in manifests {
        let Some(p) = m.get("platform").and_then(Platform::from_json) else { continue };
        if want.matches(&p) {
            return descriptor(image, m, "manifest");
        }
        seen.push(p.to_string());
    }
    Err(source_err(
        image,
        format!("no manifest for platform {want} (the image has: {}); pass --platform", seen.join(", ")),
    ))
}

/// Reads the manifest's layer descriptors and config descriptor.
fn manifest_parts(image: &str, manifest: &Value) -> Result<(Descriptor, Vec<Descriptor>), ConvertError> {
    let config = descriptor(image, manifest.get("config").unwrap_or(&Value::Null), "config")?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| source_err(image, "manifest has no layers"))?
        .iter()
        .enumerate()
        .map(|(i, l)| descriptor(image, l, &format!("layer {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, layers))
}

/// The image's platform from its config; a single-platform image must be for the wanted one.
fn config_platform(image: &str, config: &Value, want: &Platform) -> Result<Platform, ConvertError> {
    match Platform::from_json(config) {
        Some(p) if !want.matches(&p) => Err(source_err(
            image,
            format!("the image is for {p}, not {want}; pass --platform {p} to convert it anyway"),
        )),
        Some(p) => Ok(p),
        None => Ok(want.clone()),
    }
}

/// Opens an image from an OCI layout directory. Blobs are used in place; their digests are checked.
pub fn open_layout(dir: &Path, tag: Option<&str>, want: &Platform) -> Result<SourceImage, ConvertError> {
    let image = format!("oci:{}", dir.display());
    let read = |d: &Digest| -> Result<Vec<u8>, ConvertError> {
        let path = blob_path(dir, d);
        let bytes = std::fs::read(&path).map_err(|e| ConvertError::Io {
            path: path.clone(),
            what: "read blob".into(),
            error: e,
        })?;
        if Digest::of(&bytes) != *d {
            return Err(source_err(&image, format!("blob {d} does not match its digest (corrupt layout)")));
        }
        Ok(bytes)
    };
    let index_path = dir.join("index.json");
    let index_bytes = std::fs::read(&index_path).map_err(|e| ConvertError::Io {
        path: index_path.clone(),
        what: "read OCI layout index (is this an OCI layout?)".into(),
        error: e,
    })?;
    let index = parse_json(&image, "index.json", &index_bytes)?;
    let manifests = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
    let chosen = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m.pointer("/annotations/org.opencontainers.image.ref.name").and_then(Value::as_str) == Some(t))
            .ok_or_else(|| source_err(&image, format!("no manifest tagged {t:?} in index.json")))?,
        None if manifests.len() == 1 => &manifests[0],
        None => manifests
            .iter()
            .find(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name").and_then(Value::as_str) == Some("latest")
            })
            .ok_or_else(|| {
                source_err(&image, format!("{} manifests in index.json: name one with oci:DIR:TAG", manifests.len()))
            })?,
    };
    let mut desc = descriptor(&image, chosen, "manifest")?;
    let mut doc = parse_json(&image, "manifest", &read(&desc.digest)?)?;
    if is_index(&doc, &desc.media_type) {
        desc = select_platform(&image, &doc, want)?;
        doc = parse_json(&image, "manifest", &read(&desc.digest)?)?;
    }
    let (config_desc, layer_descs) = manifest_parts(&image, &doc)?;
    let config = parse_json(&image, "config", &read(&config_desc.digest)?)?;
    let platform = config_platform(&image, &config, want)?;
    let mut layers = Vec::new();
    for l in layer_descs {
        let path = blob_path(dir, &l.digest);
        verify_file(&path, &l.digest)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(l.size);
        layers.push(LayerBlob { digest: l.digest, media_type: l.media_type, size, path });
    }
    Ok(SourceImage { platform, config, layers })
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

fn verify_file(path: &Path, want: &Digest) -> Result<(), ConvertError> {
    use std::io::Read as _;
    let io = |e| ConvertError::Io { path: path.to_path_buf(), what: "read layer".into(), error: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = crate::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = h.finish();
    if got != *want {
        return Err(ConvertError::Layer {
            layer: *want,
            reason: format!("{}: content digest is {got} (corrupt layout)", path.display()),
        });
    }
    Ok(())
}

/// Fetches an image from a registry: manifest (and platform), config, and every layer into `tmp`
/// (streamed and verified by the client).
pub async fn fetch_registry(
    client: &Client,
    r: &Reference,
    want: &Platform,
    tmp: &Path,
) -> Result<SourceImage, ConvertError> {
    let image = r.to_string();
    let mut m = client.get_manifest(r).await?;
    let mut doc = parse_json(&image, "manifest", &m.bytes)?;
    if is_index(&doc, &m.media_type) {
        let desc = select_platform(&image, &doc, want)?;
        let by_digest = Reference { digest: Some(desc.digest), tag: None, ..r.clone() };
        m = client.get_manifest(&by_digest).await?;
        doc = parse_json(&image, "manifest", &m.bytes)?;
    }
    let (config_desc, layer_descs) = manifest_parts(&image, &doc)?;
    let repo = r.repository_only();
    let config = parse_json(&image, "config", &client.get_blob(&repo, &config_desc.digest).await?)?;
    let platform = config_platform(&image, &config, want)?;
    let layers = futures::stream::iter(layer_descs.into_iter().enumerate())
        .map(|(i, l)| {
            let repo = repo.clone();
            async move {
                let path = tmp.join(format!("layer-{i}-{}", l.digest.hex()));
                let size = client.get_blob_to_file(&repo, &l.digest, &path).await?;
                Ok::<_, ConvertError>(LayerBlob { digest: l.digest, media_type: l.media_type, size, path })
            }
        })
        .buffered(4)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(SourceImage { platform, config, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            "oci:/tmp/img:v1".parse::<SourceRef>().unwrap(),
            SourceRef::Layout { dir: "/tmp/img".into(), tag: Some("v1".into()) }
        );
        assert_eq!("oci:rel/dir".parse::<SourceRef>().unwrap(), SourceRef::Layout { dir: "rel/dir".into(), tag: None });
        assert!(matches!("127.0.0.1:5000/a/b:1".parse::<SourceRef>().unwrap(), SourceRef::Registry(_)));
    }
}
