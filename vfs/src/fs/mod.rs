//! The filesystem: logic over an index and a chunk source (plain Rust, testable without a mount),
//! plus the FUSE adapter, the only code in the crate that touches /dev/fuse.
