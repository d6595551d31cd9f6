//! Task service (owned by the shim-service owner).
