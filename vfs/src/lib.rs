//! The lazy filesystem library: everything needed to turn an OCI image into a lazy image and to serve
//! a lazy image as a read-only filesystem whose file contents stay in the registry until read.
//!
//! This crate knows nothing about containerd or the shim. The shim embeds it; `lazyctl` drives it.
//!
//! - [`index`]: the lazy image index (the merged root filesystem, chunk table, prefetch list) and its codec.
//! - [`digest`]: sha256 digests as used by OCI and by chunks.
//! - [`registry`]: an OCI distribution client (auth, ranges, retries, deadlines).
//! - [`cache`]: the node-wide, content-addressed chunk cache.
//! - [`filestore`]: whole verified files beside the chunk cache, for FUSE passthrough.
//! - [`fetch`]: turns chunk reads into verified bytes: cache first, then coalesced range requests.
//! - [`convert`]: OCI image (registry or layout) to lazy image (data blobs + stub image).
//! - [`fs`]: the filesystem logic over an index and a chunk source, plus the FUSE adapter.
//! - [`stats`]: counters a mount exposes so users can tell whether a start was lazy.
//! - [`builder`]: index + registry + cache settings -> a mounted lazy filesystem (shim and lazyctl).
//! - [`platform`]: an OCI platform (`os/architecture[/variant]`), for convert and stub images.
//! - [`mountinfo`]: the one `/proc/self/mountinfo` parser (this crate, the shim and the tests use it).

pub mod builder;
pub mod cache;
pub mod convert;
pub mod digest;
pub mod fetch;
pub mod filestore;
pub mod fs;
pub mod index;
pub mod mountinfo;
pub mod platform;
pub mod registry;
pub mod stats;
pub mod stub;

pub use digest::Digest;
pub use index::Index;
