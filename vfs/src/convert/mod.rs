//! Converts an OCI image into a lazy image (owned by the converter owner).
