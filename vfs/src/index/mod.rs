//! The lazy image index: the MERGED root filesystem of every layer of an image (whiteouts and opaque
//! directories already applied), the chunk table of every regular file, and the prefetch order.
//!
//! [`model`] is the in-memory form every other module uses; [`codec`] is its compact, versioned
//! on-disk encoding, whose decoder must stay safe on hostile input (it is read from images).

pub mod codec;
pub mod model;

pub use codec::{IndexError, INDEX_MAGIC, INDEX_VERSION};
pub use model::{BlobRef, Chunk, DirEntry, Index, Inode, Kind, Xattr, ROOT};

/// Where the index lives inside the stub image's single layer (and so inside the unpacked snapshot).
pub const INDEX_PATH: &str = ".lazy/index";
