//! Shared end-to-end harness: start a docker-registry, a containerd, build and push images, boot
//! the cgroup v2 VM, and clean up everything each test created, also when it fails.
