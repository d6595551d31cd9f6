//! Dedup across images: before converting into a repository, look at the lazy images already
//! there, so chunks they hold are referenced in their blobs instead of being stored again.

use crate::index::Index;
use crate::registry::{Client, Reference};

/// At most this many tags are examined (each costs a manifest and a small blob fetch).
pub const MAX_REUSE_TAGS: usize = 32;

/// Indexes of the lazy images tagged in `dst`'s repository whose data blobs live there. Failures
/// only cost dedup, never the conversion: they are logged and skipped.
pub async fn earlier_indexes(client: &Client, dst: &Reference) -> Vec<Index> {
    let repo = dst.repository_only();
    let tags = match client.list_tags(&repo).await {
        Ok(t) => t,
        Err(e) => {
            log::warn!("{repo}: cannot list tags, so no chunks of earlier images are reused: {e}");
            return Vec::new();
        }
    };
    if tags.len() > MAX_REUSE_TAGS {
        log::info!("{repo}: {} tags; reusing chunks of the first {MAX_REUSE_TAGS} only", tags.len());
    }
    let source = format!("{}/{}", repo.registry, repo.repository);
    let mut out = Vec::new();
    for tag in tags.into_iter().take(MAX_REUSE_TAGS) {
        let r = Reference { tag: Some(tag), ..repo.clone() };
        match crate::stub::fetch_index(client, &r).await {
            Ok(index) if index.source == source => {
                log::debug!("{r}: reusing chunks of {} blobs", index.blobs.len());
                out.push(index);
            }
            Ok(index) => log::debug!("{r}: its data blobs live in {}; not reused", index.source),
            Err(e) => log::debug!("{r}: not reused: {e}"),
        }
    }
    out
}
