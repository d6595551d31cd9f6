//! cgroup v2 (owned by the cgroup owner).
