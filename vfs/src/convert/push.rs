//! Pushes a converted image: data blobs (skipped when the registry already has them: that is how
//! images sharing base layers share blobs), the stub layer and config, both manifests by digest,
//! and finally the image index under the destination tag, so the tag never names a half-pushed image.

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::{BlobFile, ConvertError};
use crate::index::BlobRef;
use crate::registry::{Client, Reference, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use crate::stub::StubImage;

/// Data blobs pushed concurrently (each upload streams from its temp file).
const PUSH_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushSummary {
    pub blobs_pushed: u64,
    pub blobs_present: u64,
    pub bytes_pushed: u64,
    /// Digest of the image index the tag now points at.
    pub index_digest: String,
}

/// `reused`: blobs of earlier images the index references; they must still be in the repository.
pub async fn push(
    client: &Client,
    dst: &Reference,
    blobs: &[BlobFile],
    reused: &[BlobRef],
    stub: &StubImage,
) -> Result<PushSummary, ConvertError> {
    let mut summary = push_blobs(client, dst, blobs, reused).await?;
    let repo = dst.repository_only();
    client.push_blob(&repo, &stub.layer_digest, Bytes::from(stub.layer.clone())).await?;
    client.push_blob(&repo, &stub.config_digest, Bytes::from(stub.config.clone())).await?;
    client.push_blob(&repo, &stub.blobs_config_digest, Bytes::from(stub.blobs_config.clone())).await?;
    client.push_manifest(&repo, MEDIA_OCI_MANIFEST, Bytes::from(stub.manifest.clone())).await?;
    client.push_manifest(&repo, MEDIA_OCI_MANIFEST, Bytes::from(stub.blobs_manifest.clone())).await?;
    let tagged = Reference { tag: Some(dst.tag.clone().unwrap_or_else(|| "latest".into())), digest: None, ..repo };
    let digest = client.push_manifest(&tagged, MEDIA_OCI_INDEX, Bytes::from(stub.image_index.clone())).await?;
    summary.index_digest = digest.to_string();
    Ok(summary)
}

/// Pushes data blobs only (no manifest, no tag): what a mount of an index needs before the image
/// is published (`lazyctl optimize` mounts its first conversion this way). Checks that the reused
/// blobs of earlier images are still there.
pub async fn push_blobs(
    client: &Client,
    dst: &Reference,
    blobs: &[BlobFile],
    reused: &[BlobRef],
) -> Result<PushSummary, ConvertError> {
    let repo = dst.repository_only();
    for b in reused {
        if !client.blob_exists(&repo, &b.digest).await? {
            return Err(ConvertError::Source {
                image: repo.to_string(),
                reason: format!(
                    "data blob {} of an earlier lazy image vanished while converting; run the conversion again",
                    b.digest
                ),
            });
        }
    }
    let results: Vec<(bool, u64)> = futures::stream::iter(blobs)
        .map(|b| {
            let repo = repo.clone();
            async move {
                if client.blob_exists(&repo, &b.digest).await? {
                    log::debug!("{repo}: data blob {} already present", b.digest);
                    return Ok::<_, ConvertError>((false, 0));
                }
                client.push_blob_file(&repo, &b.digest, &b.path).await?;
                Ok((true, b.size))
            }
        })
        .buffer_unordered(PUSH_CONCURRENCY)
        .try_collect()
        .await?;
    let mut summary = PushSummary::default();
    for (pushed, bytes) in results {
        if pushed {
            summary.blobs_pushed += 1;
            summary.bytes_pushed += bytes;
        } else {
            summary.blobs_present += 1;
        }
    }
    Ok(summary)
}
