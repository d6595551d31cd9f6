//! Compact, versioned encoding of [`super::Index`] (owned by the index owner).
pub const INDEX_MAGIC: &[u8; 8] = b"LAZYIDX\0";
pub const INDEX_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("lazy index: {0}")]
    Invalid(String),
}
