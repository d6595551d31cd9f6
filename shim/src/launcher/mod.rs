//! Launcher (owned by the launcher owner).
